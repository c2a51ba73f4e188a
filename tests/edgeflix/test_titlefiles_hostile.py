"""A hostile files.json: everything an origin (or a peer) could send that the fill must
refuse with one line before it stages anything, rather than crash on, hang on, or let
overwrite its own staging. Pure: documents built here, parsed as the fill parses them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from appliance.fill.layout import StagingLayout
from appliance.fill.partfile import validator_path
from edgeflix import titlefiles
from edgeflix.titlefiles import TitleFiles, TitleFilesError

HELLO = {"size": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}
EMPTY = {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()}


def doc(files: list[dict[str, Any]], title_id: str = "h1") -> bytes:
    """A files.json of these entries, as raw bytes (a hostile source may send anything)."""
    return json.dumps(
        {
            "format": 1,
            "id": title_id,
            "title": title_id,
            "duration": 1.0,
            "segment_seconds": 1.0,
            "created": "2024-01-01T00:00:00Z",
            "renditions": [],
            "files": files,
            "total_bytes": sum(f["size"] for f in files),
        }
    ).encode()


def refused(raw: bytes) -> str:
    with pytest.raises(TitleFilesError) as caught:
        titlefiles.parse(raw, "src files.json")
    message = str(caught.value)
    assert message.startswith("src files.json: ") and "\n" not in message
    return message


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    assert "nested too deeply" in refused(b"[" * 200_000 + b"]" * 200_000)
    assert "nested too deeply" in refused(b'{"files": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("L" * 300, "longer than"),  # ENAMETOOLONG when staged
        ("a/" + "é" * 120, "longer than"),  # 240 bytes of UTF-8 in 120 characters
        ("L" * 240, "longer than"),  # fits NAME_MAX, but not with .part.validator.tmp
        ("/".join(["d" * 250] * 20), "bytes long"),
        ("/".join(["d" * 40] * 30), "bytes long"),  # 1229 bytes, each part short
        ("x\ud800y", "not UTF-8"),  # a lone surrogate: no file name on disk
        ("v/s.m4s.part", "staged"),
        ("v/s.m4s.part.validator", "staged"),
        ("v/s.m4s.part.validator.tmp", "staged"),
        ("v.part/s.m4s", "staged"),  # a folder where `v`'s .part would go
        ("files.json.part", "staged"),
        ("v/.seg.m4s.1a2b3c4d.tmp", "temporary"),  # reconcile would sweep it as debris
    ],
)
def test_bad_paths_are_refused(path: str, says: str) -> None:
    assert says in refused(doc([{**HELLO, "path": "a.m4s"}, {**HELLO, "path": path}]))


def test_paths_at_the_limits_are_fine() -> None:
    longest = "n" * titlefiles.MAX_NAME_BYTES
    deep = "/".join(["d" * 99] * 10) + "/" + "f" * 24  # exactly MAX_PATH_BYTES
    assert len(deep.encode()) == titlefiles.MAX_PATH_BYTES
    names = [
        longest,
        deep,
        "a.part.m4s",
        "partial.m4s",
        "v/files.json",
        "x.validator",
        ".x",
        "y.tmp",
    ]
    model = titlefiles.parse(doc([{**HELLO, "path": p} for p in names]))
    assert [f.path for f in model.files] == names


@pytest.mark.parametrize(
    "paths",
    [["c", "c/d"], ["c/d/e", "c"], ["a/b", "a/b/c/d"], ["files.json"], ["files.json/x"]],
)
def test_entries_that_cannot_all_be_files_are_refused(paths: list[str]) -> None:
    message = refused(doc([{**HELLO, "path": p} for p in paths]))
    assert "folder of other files" in message or "own files.json" in message


def test_the_whole_list_check_holds_for_a_model_built_in_code() -> None:
    """The origin builds its TitleFiles itself: the same refusal, one line, not pydantic's."""
    with pytest.raises(TitleFilesError, match="folder of other files"):
        TitleFiles(
            id="h1",
            title="h1",
            duration=1.0,
            segment_seconds=1.0,
            created="2024-01-01T00:00:00Z",
            renditions=(),
            files=tuple(titlefiles.FileEntry(path=p, **HELLO) for p in ("c", "c/d")),
            total_bytes=10,
        )


def test_too_many_files_are_refused_before_a_model_per_entry() -> None:
    many = [{**EMPTY, "path": f"z/{i:07d}"} for i in range(titlefiles.MAX_FILES + 1)]
    assert f"lists {titlefiles.MAX_FILES + 1} files" in refused(doc(many))
    assert len(titlefiles.parse(doc(many[:-1])).files) == titlefiles.MAX_FILES


def test_every_name_the_fill_stages_under_is_reserved(tmp_path: Any) -> None:
    """layout.py and partfile.py name staged files by suffixes STAGING_SUFFIXES reserves:
    no title's file can be named like another's .part, validator or its temporary file."""
    part = StagingLayout(tmp_path).part("v/s.m4s")
    validator = validator_path(part)
    staged = [part, validator, validator.with_name(validator.name + ".tmp")]
    suffixes = [p.name.removeprefix("s.m4s") for p in staged]
    assert sorted(suffixes) == sorted(titlefiles.STAGING_SUFFIXES)
    longest = max(len(s) for s in titlefiles.STAGING_SUFFIXES)
    assert titlefiles.MAX_NAME_BYTES + longest == 255
