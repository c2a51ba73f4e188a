"""`files.json`: the list of every file of a title with size and SHA-256, plus title metadata.

It is the unit of fill: the origin writes it last when it packages a title, appliances verify
every file against it before a title becomes servable, and the fleet compares titles by the
SHA-256 of its bytes (`digest`). One reader and one writer live here so all agree; a
listing of titles (`origin ls`, `GET /titles`) reads only the header (`read_header`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edgeflix.errors import EdgeflixError

FORMAT = 1
FILES_JSON = "files.json"
# Title ids are path components in URLs and on disk: keep them boring.
TITLE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
CHUNK = 1 << 20
# Names the fill gives a file while it stages it, beside it: `<file>.part`, the If-Range
# validator `<file>.part.validator` and its `.tmp` (appliance/fill/layout.py, partfile.py).
# A title's own file named so would overwrite another's staging; the origin never writes one.
STAGING_SUFFIXES = (".part", ".part.validator", ".part.validator.tmp")
# Bytes (UTF-8) of one path component: NAME_MAX (255) with room for the longest staging
# suffix, so the staged name fits too (else ENAMETOOLONG mid-fill); and of a whole path,
# leaving PATH_MAX (4096) room for the disk's and the title's folders.
MAX_NAME_BYTES = 255 - max(len(suffix) for suffix in STAGING_SUFFIXES)
MAX_PATH_BYTES = 1024
# Files one title may list: a 3-hour title of 2 s segments in 8 renditions and audio is
# ~50,000; every file costs the fill and the store memory and time (300,000 took 1 GB).
MAX_FILES = 100_000


class TitleFilesError(EdgeflixError):
    """A files.json is missing, malformed, or does not match the files beside it."""


def check_title_id(title_id: str) -> str:
    """Return `title_id` if it is safe as one path component, else raise with the reason."""
    if not TITLE_ID_RE.match(title_id) or ".." in title_id:
        raise TitleFilesError(
            f"invalid title id {title_id!r}: use letters, digits, '.', '_' or '-' "
            "(no '/', no '..', at most 128 characters)"
        )
    return title_id


# What no path may hold: C0 and C1 controls (a NUL cannot name a file; a newline would break
# playlists), DEL, the Unicode line and paragraph separators, and a backslash.
_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")
_BAD_PARTS = frozenset(("", ".", ".."))  # "" also stands for an empty or absolute path


def check_rel_path(path: str) -> str:
    """A relative POSIX path inside a title: no absolute paths, no `..`, no empty parts, no
    control characters (a NUL cannot name a file; a newline would break playlists), valid
    UTF-8, no part longer than MAX_NAME_BYTES nor path longer than MAX_PATH_BYTES, and no
    part named like a staged file (STAGING_SUFFIXES).

    Runs once per entry of every files.json read (tens of thousands for a long title): a
    split, a set test and one regex, with each part looked at only when a rule may refuse it.
    """
    parts = path.split("/")
    if not _BAD_PARTS.isdisjoint(parts) or _BAD_CHAR.search(path):
        raise TitleFilesError(f"invalid file path {path!r} in title")
    try:
        size = len(path.encode("utf-8"))  # a lone surrogate cannot name a file
    except UnicodeEncodeError:
        raise TitleFilesError(f"invalid file path {path!r} in title: not UTF-8") from None
    if size > MAX_PATH_BYTES:
        raise TitleFilesError(
            f"file path {path[:60]!r}… in title is {size} bytes long (at most {MAX_PATH_BYTES})"
        )
    # Every staging suffix holds ".part"; a temporary name ends in ".tmp".
    if size > MAX_NAME_BYTES or ".part" in path or ".tmp" in path:
        for part in parts:
            _check_name(path, part)
    return path


def _check_name(path: str, part: str) -> None:
    if len(part.encode("utf-8")) > MAX_NAME_BYTES:
        raise TitleFilesError(
            f"file path {path[:60]!r}… in title has a name longer than {MAX_NAME_BYTES} bytes"
        )
    if part.endswith(STAGING_SUFFIXES):
        raise TitleFilesError(
            f"file path {path!r} in title ends like a file being staged ({part!r})"
        )
    if part.startswith(".") and part.endswith(".tmp"):
        # How the appliance names a file it is writing: reconcile sweeps such leftovers.
        raise TitleFilesError(f"file path {path!r} in title is named like a temporary file")


_UNDER_FILES_JSON = FILES_JSON + "/"


def check_layout(paths: Collection[str]) -> None:
    """The paths of one title can all be files at once: none is also a folder of another
    (`c` and `c/d`), and none is, or is under, the title's own files.json."""
    folders: set[str] = set()
    for path in paths:
        if path == FILES_JSON or path.startswith(_UNDER_FILES_JSON):
            raise TitleFilesError(f"file path {path!r} in title is the title's own {FILES_JSON}")
        # Its folders, deepest first, up to one already seen (whose own are in too): most
        # paths share their folder with the one before, so this is one set lookup each.
        folder = path.rpartition("/")[0]
        while folder and folder not in folders:
            folders.add(folder)
            folder = folder.rpartition("/")[0]
    clash = next((p for p in paths if p in folders), None)
    if clash is not None:
        raise TitleFilesError(f"file path {clash!r} in title is also a folder of other files")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Model):
    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        return check_rel_path(value)


class RenditionInfo(_Model):
    id: str
    kind: Literal["video", "audio"]
    codec: str  # h264 | hevc | av1 | aac
    codecs: str  # RFC 6381 string, e.g. avc1.64001f
    bandwidth: int  # peak bits/s over segments
    average_bandwidth: int
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    vmaf: float | None = None
    segments: int = 0


class TitleHeader(_Model):
    """A files.json without its list of files: what a catalogue of titles shows."""

    format: int = FORMAT
    id: str
    title: str
    duration: float = Field(ge=0)
    segment_seconds: float = Field(gt=0)
    created: str  # ISO 8601 UTC
    renditions: tuple[RenditionInfo, ...]
    total_bytes: int = Field(ge=0)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_title_id(value)


class TitleFiles(TitleHeader):
    files: tuple[FileEntry, ...]

    @model_validator(mode="after")
    def _files_fit_together(self) -> TitleFiles:
        check_layout([f.path for f in self.files])
        return self

    def entry(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)


def sha256_file(path: Path, on_chunk: Callable[[int], None] | None = None) -> str:
    """SHA-256 of a file; `on_chunk` is told each chunk's size as it is read (a throttle)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return digest.hexdigest()


def digest_bytes(raw: bytes) -> str:
    """The title digest: SHA-256 of the files.json bytes exactly as published."""
    return hashlib.sha256(raw).hexdigest()


@contextlib.contextmanager
def _refusals(source: str) -> Iterator[None]:
    """Whatever parsing `source` raises, as one TitleFilesError line naming it."""
    try:
        yield
    except RecursionError:  # json's decoder recurses per level: "[[[[…" exhausts the stack
        raise TitleFilesError(f"{source}: not a valid files.json: nested too deeply") from None
    except TitleFilesError as exc:  # a bad path, raised as is through the model's validators
        message = str(exc)
        if not message.startswith(source):
            message = f"{source}: {message}"
        raise TitleFilesError(message) from None
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TitleFilesError(f"{source}: not a valid files.json: {first}") from None


def _check_format(model: TitleHeader, source: str) -> None:
    if model.format != FORMAT:
        raise TitleFilesError(f"{source}: unsupported files.json format {model.format}")


def parse(raw: bytes, source: str = FILES_JSON) -> TitleFiles:
    with _refusals(source):
        data: Any = json.loads(raw)
        files = data.get("files") if isinstance(data, dict) else None
        if isinstance(files, list) and len(files) > MAX_FILES:  # before a model per entry
            raise TitleFilesError(
                f"{source}: lists {len(files)} files, more than a title may ({MAX_FILES})"
            )
        model = TitleFiles.model_validate(data)
    _check_format(model, source)
    paths = [f.path for f in model.files]
    if len(set(paths)) != len(paths):
        raise TitleFilesError(f"{source}: duplicate file paths")
    if sum(f.size for f in model.files) != model.total_bytes:
        raise TitleFilesError(f"{source}: total_bytes does not match the file sizes")
    return model


def parse_header(raw: bytes, source: str = FILES_JSON) -> TitleHeader:
    """The header of a files.json, checked as `parse` checks it, with its list of files
    skipped, not parsed: for listing titles verified when they were published (a long title
    lists tens of thousands of files; a catalogue, thousands of titles)."""
    with _refusals(source):
        data: Any = _loads_header(raw)
        if isinstance(data, dict) and not isinstance(data.pop("files", None), list):
            raise TitleFilesError(f"{source}: not a valid files.json: no list of files")
        model = TitleHeader.model_validate(data)
    _check_format(model, source)
    return model


def _loads_header(raw: bytes) -> Any:
    """json.loads(raw) with the list of files read as [] when it is laid out as `render`
    writes it (else all of it is parsed): its entries are not looked at, the rest is."""
    cut = _cut_files(raw)
    if cut is not None:
        with contextlib.suppress(ValueError, RecursionError):
            return json.loads(cut)
    return json.loads(raw)  # says what is wrong, if anything


# `render` writes the short members first (sorted: created, duration), then the files. This
# matches up to the files' `[` when each member before is a plain string or a bare number:
# json.loads then reads the same tokens in what is left, so that `[` opens the top-level list.
_WS = rb"[ \t\n\r]*"
_PLAIN = rb'"[^"\\]*"'  # a string without escapes
# A number, true, false or null (json.loads checks which). No whitespace in it, so each
# member matches one way only: a match that fails gives up in linear time, not exponential.
_BARE = rb'[^"\\\[\]{}, \t\n\r]*'
_MEMBER = _WS + _PLAIN + _WS + b":" + _WS + b"(?:" + _PLAIN + b"|" + _BARE + b")" + _WS + b","
_FILES_AT = re.compile(
    _WS + rb"\{(?:" + _MEMBER + b")*" + _WS + b'"files"' + _WS + rb":" + _WS + rb"\["
)


def _cut_files(raw: bytes) -> bytes | None:
    """`raw` with the body of its list of files cut out, or None when the list is not
    plainly flat. Scans at C speed, no copy of the list: its end is its first `]` when no
    `[` nor `\\` is in between (so each `"` opens or closes a string) and an even count of
    `"` since the last newline before it (JSON has none inside a string) leaves it outside
    any string."""
    match = _FILES_AT.match(raw)
    if match is None:
        return None
    start = match.end() - 1
    end = raw.find(b"]", start)
    if end < 0 or raw.find(b"[", start + 1, end) >= 0 or raw.find(b"\\", start + 1, end) >= 0:
        return None
    line = max(raw.rfind(b"\n", start, end), start)
    if raw.count(b'"', line + 1, end) % 2:
        return None  # that `]` is in a name
    return raw[: start + 1] + raw[end:]


def _read_raw(title_dir: Path) -> bytes:
    path = title_dir / FILES_JSON
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TitleFilesError(f"{title_dir}: no files.json (not a packaged title)") from None
    except OSError as exc:
        raise TitleFilesError(f"{path}: cannot read: {exc.strerror}") from None


def read(title_dir: Path) -> tuple[TitleFiles, str]:
    """Read and validate `title_dir/files.json`; return it with its digest."""
    raw = _read_raw(title_dir)
    return parse(raw, str(title_dir / FILES_JSON)), digest_bytes(raw)


def read_header(title_dir: Path) -> tuple[TitleHeader, str]:
    """`read` for a listing: the header (parse_header) and the digest of the whole file."""
    raw = _read_raw(title_dir)
    return parse_header(raw, str(title_dir / FILES_JSON)), digest_bytes(raw)


def render(model: TitleFiles) -> bytes:
    """Canonical bytes for a files.json (stable, so equal titles have equal digests)."""
    return (json.dumps(model.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def sizes(title_dir: Path) -> dict[str, int]:
    """Every file under `title_dir` except files.json itself: relative path → size, sorted."""
    found = {}
    for path in sorted(p for p in title_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(title_dir).as_posix()
        if rel != FILES_JSON:
            found[rel] = path.stat().st_size
    return found


def scan(title_dir: Path) -> list[FileEntry]:
    """Hash every file under `title_dir` except files.json itself, sorted by path."""
    return [
        FileEntry(path=rel, size=size, sha256=sha256_file(title_dir / rel))
        for rel, size in sizes(title_dir).items()
    ]


def verify(title_dir: Path, model: TitleFiles) -> list[str]:
    """Problems (one line each) between `model` and the files on disk; empty when all match."""
    problems = []
    for entry in model.files:
        path = title_dir / entry.path
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{entry.path}: missing")
            continue
        if size != entry.size:
            problems.append(f"{entry.path}: size {size} != {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{entry.path}: SHA-256 mismatch")
    return problems
