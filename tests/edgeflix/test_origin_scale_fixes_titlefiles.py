"""files.json at catalogue scale: a long title lists ~12,600 files, a catalogue thousands
of titles. Path checks must cost a few µs per entry (every rule kept), and a listing reads
only the header (`parse_header`), whatever the number of entries. Work is counted in
Python calls (sys.setprofile), never timed."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflix import titlefiles
from edgeflix.titlefiles import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    STAGING_SUFFIXES,
    TitleFiles,
    TitleFilesError,
)


def reference_check_rel_path(path: str) -> str:
    """The rules as they were written before (per-component, a PurePosixPath per path):
    the oracle the fast check must agree with, message for message."""
    pure = PurePosixPath(path)
    parts = path.split("/")
    if (
        not path
        or pure.is_absolute()
        or "\\" in path
        or any(part in ("", ".", "..") for part in parts)
        or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in path)
    ):
        raise TitleFilesError(f"invalid file path {path!r} in title")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise TitleFilesError(f"invalid file path {path!r} in title: not UTF-8") from None
    if size > MAX_PATH_BYTES:
        raise TitleFilesError(
            f"file path {path[:60]!r}… in title is {size} bytes long (at most {MAX_PATH_BYTES})"
        )
    for part in parts:
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise TitleFilesError(
                f"file path {path[:60]!r}… in title has a name longer than {MAX_NAME_BYTES} bytes"
            )
        if part.endswith(STAGING_SUFFIXES):
            raise TitleFilesError(
                f"file path {path!r} in title ends like a file being staged ({part!r})"
            )
        if part.startswith(".") and part.endswith(".tmp"):
            raise TitleFilesError(f"file path {path!r} in title is named like a temporary file")
    return path


def outcome(check: Callable[[str], str], path: str) -> str:
    try:
        return "ok " + check(path)
    except TitleFilesError as exc:
        return "refused " + str(exc)


EDGES = [
    "",
    "/",
    "/abs",
    "//x",
    "a//b",
    "a/",
    "./a",
    "a/.",
    "a/../b",
    "..",
    "...",
    "a\\b",
    "a\x00b",
    "a\nb",
    "a\x7fb",
    "a\x9fb",
    "a\xa0b",
    "a\u2028b",
    "a\u2029b",
    "x\ud800y",
    "é" * 117 + "x",
    "é" * 118,
    "n" * MAX_NAME_BYTES,
    "n" * (MAX_NAME_BYTES + 1),
    "/".join(["d" * 99] * 10) + "/" + "f" * 24,
    "/".join(["d" * 99] * 10) + "/" + "f" * 25,
    "v/s.m4s.part",
    "v.part/s.m4s",
    "v/s.part.validator",
    "v/s.part.validator.tmp",
    "a.part.m4s",
    ".x.tmp",
    "v/.x.tmp",
    ".tmp",
    "x.tmp",
    ".x",
    "v1080/seg_0a1b2c3d4e5f_01234.m4s",
]
ALPHABET = st.sampled_from([*"ab./\\\x00\n\x7f\x9f\u2028é", ".part", ".tmp", "\ud800"])


@pytest.mark.parametrize("path", EDGES)
def test_the_fast_path_check_keeps_every_rule(path: str) -> None:
    assert outcome(titlefiles.check_rel_path, path) == outcome(reference_check_rel_path, path)


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=12).map("".join))
def test_the_fast_path_check_agrees_on_any_path(path: str) -> None:
    assert outcome(titlefiles.check_rel_path, path) == outcome(reference_check_rel_path, path)


def entries(count: int, tag: str = "0a1b2c3d4e5f") -> list[dict[str, Any]]:
    """Files as a long title lists them: renditions of content-named segments."""
    out = []
    for n in range(count):
        rendition = ("v240", "v720", "v1080", "a128")[n % 4]
        digest = hashlib.sha256(f"{rendition}{n}".encode()).hexdigest()
        out.append({"path": f"{rendition}/seg_{tag}_{n:05d}.m4s", "sha256": digest, "size": n})
    return sorted(out, key=lambda e: str(e["path"]))


def header(title_id: str = "long") -> dict[str, Any]:
    return {
        "format": 1,
        "id": title_id,
        "title": f"A long film ({title_id})",
        "duration": 7200.0,
        "segment_seconds": 4.0,
        "created": "2026-01-01T00:00:00Z",
        "renditions": [
            {"id": r, "kind": "audio" if r[0] == "a" else "video", "codec": "h264",
             "codecs": "avc1.64001f", "bandwidth": 1000, "average_bandwidth": 900}
            for r in ("v240", "v720", "v1080", "a128")
        ],
    }  # fmt: skip


def doc(files: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    return {**header(), "files": files, "total_bytes": sum(f["size"] for f in files), **changes}


def rendered(count: int) -> bytes:
    """A files.json as the origin writes it (titlefiles.render)."""
    return titlefiles.render(TitleFiles.model_validate(doc(entries(count))))


def python_calls(work: Callable[[], object]) -> int:
    """Python-level calls (and generator steps) `work` makes: work, counted, not timed."""
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def test_checking_an_entry_costs_a_few_calls_not_one_per_character() -> None:
    """Before: a PurePosixPath and a generator step per character of every path."""
    small, large = rendered(300), rendered(600)
    per_entry = (
        python_calls(lambda: titlefiles.parse(large))
        - python_calls(lambda: titlefiles.parse(small))
    ) / 300
    assert per_entry <= 10, f"{per_entry:.1f} Python calls per entry"  # was 44


def title_header(model: TitleFiles) -> dict[str, Any]:
    return model.model_dump(exclude={"files"})


ODD_PATHS = [
    "v/a]b.m4s",  # a `]` in a name: the first `]` is not the list's end
    "v/a[b.m4s",
    'v/a"b.m4s',  # escaped in JSON
    "v/é.m4s",  # \u00e9 in ASCII JSON, raw UTF-8 otherwise
    "v/}],.m4s",
]


def layouts(data: dict[str, Any]) -> list[bytes]:
    """The same document in the layouts a hand or another tool could write."""
    return [
        titlefiles.render(TitleFiles.model_validate(data)),
        json.dumps(data).encode(),  # one line, keys in model order
        json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
        json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode(),
        json.dumps(dict(reversed(list(data.items()))), indent=1).encode(),
        b"\r\n\t " + json.dumps(data, indent="\t", sort_keys=True).encode() + b" \n",
        json.dumps({"files": [], **data}).encode(),  # the list first
    ]


@pytest.mark.parametrize("odd", [None, *ODD_PATHS])
def test_the_header_is_what_the_full_parse_reads(odd: str | None) -> None:
    files = entries(40)
    if odd is not None:
        files = sorted([*files, {"path": odd, "size": 7, "sha256": "a" * 64}], key=str)
    for raw in layouts(doc(files)):
        full = titlefiles.parse(raw)
        head = titlefiles.parse_header(raw)
        assert head.model_dump() == title_header(full)


@pytest.mark.parametrize("created", ['a "files": [ ] b', "[", "]", "a\\b"])
def test_a_member_before_the_files_that_looks_like_them(created: str) -> None:
    for raw in layouts(doc(entries(10), created=created)):
        assert titlefiles.parse_header(raw).created == created == titlefiles.parse(raw).created


def test_a_repeated_key_reads_as_json_reads_it() -> None:
    raw = rendered(20).replace(b'\n  "format": 1,', b'\n  "id": "first",\n  "format": 1,')
    assert json.loads(raw)["id"] == "long"  # the last one wins
    assert titlefiles.parse_header(raw).id == "long" == titlefiles.parse(raw).id


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "not a valid files.json"),
        (b"not json", "not a valid files.json"),
        (b"[]", "not a valid files.json"),
        (json.dumps(header()).encode(), "no list of files"),
        (json.dumps({**header(), "files": {}, "total_bytes": 0}).encode(), "no list of files"),
        (json.dumps(doc([], id="../up")).encode(), "invalid title id"),
        (json.dumps(doc([], duration=-1)).encode(), "not a valid files.json"),
        (json.dumps(doc([], format=2)).encode(), "unsupported files.json format 2"),
        (json.dumps(doc([], surprise=1)).encode(), "not a valid files.json"),
        (json.dumps(doc([], renditions=[{"id": "v"}])).encode(), "not a valid files.json"),
        (b'{"created": "x", "files": [', "not a valid files.json"),  # cut short
        (b'{"files": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"files": [], "renditions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "deeply"),
    ],
)
def test_a_header_that_does_not_parse_is_refused_in_one_line(raw: bytes, says: str) -> None:
    with pytest.raises(TitleFilesError) as caught:
        titlefiles.parse_header(raw, "src files.json")
    message = str(caught.value)
    assert message.startswith("src files.json: ") and says in message and "\n" not in message


def test_the_header_is_read_without_a_step_per_entry() -> None:
    """A listing of thousands of long titles reads each header in constant Python work:
    the list of files is skipped at C speed, not parsed nor checked entry by entry."""
    small, large = rendered(300), rendered(3000)
    assert titlefiles.parse_header(large).total_bytes == titlefiles.parse(large).total_bytes
    grows = python_calls(lambda: titlefiles.parse_header(large)) - python_calls(
        lambda: titlefiles.parse_header(small)
    )
    assert grows <= 10, f"{grows} more Python calls for 2,700 more entries"


def header_of_valid_json(raw: bytes) -> str:
    """What a header read must give for a document json.loads reads: the outcome of
    validating all but its list of files."""
    data = json.loads(raw)
    try:
        if isinstance(data, dict) and not isinstance(data.pop("files", None), list):
            return "refused"
        model = titlefiles.TitleHeader.model_validate(data)
    except (ValueError, TitleFilesError):
        return "refused"
    return "refused" if model.format != 1 else repr(model)


def header_read(raw: bytes) -> str:
    try:
        return repr(titlefiles.parse_header(raw))
    except TitleFilesError:
        return "refused"


SMALL = rendered(3)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SMALL)), st.sampled_from(list('[]{}",:\\\n 1'))),
                min_size=1, max_size=3))  # fmt: skip
def test_any_edit_json_still_reads_reads_the_same_header(edits: list[tuple[int, str]]) -> None:
    raw = SMALL
    for at, char in sorted(edits, reverse=True):
        raw = raw[:at] + char.encode() + raw[at:]
    try:
        expected = header_of_valid_json(raw)
    except (ValueError, RecursionError):
        return  # not JSON: only the list's own body may go unnoticed by a header read
    assert header_read(raw) == expected


@pytest.mark.parametrize("tail", [b'"x": 1}', b'"files": [], "x": 1}', b'"files": [1 }'])
def test_many_members_before_the_files_read_in_linear_work(tail: bytes) -> None:
    """Members padded with spaces match one way only: a header with thousands of them is
    refused at once, not after trying every split of its spaces (exponential in them)."""
    members = b"".join(b'"k%d": 1    ,' % n for n in range(5000))
    with pytest.raises(TitleFilesError):
        titlefiles.parse_header(b"{" + members + tail)


def test_every_staging_suffix_holds_what_the_path_check_looks_for() -> None:
    """check_rel_path looks at each part only when the path holds ".part" (or ".tmp"): a
    staging suffix without it would pass unseen."""
    assert all(".part" in suffix for suffix in STAGING_SUFFIXES)
