"""`files.json`: the list of every file of a title with size and SHA-256, plus title metadata.

It is the unit of fill: the origin writes it last when it packages a title, appliances verify
every file against it before a title becomes servable, and the fleet compares titles by the
SHA-256 of its bytes (`digest`). One reader and one writer live here so all agree.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Collection
from pathlib import Path, PurePosixPath
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


def check_rel_path(path: str) -> str:
    """A relative POSIX path inside a title: no absolute paths, no `..`, no empty parts, no
    control characters (a NUL cannot name a file; a newline would break playlists), valid
    UTF-8, no part longer than MAX_NAME_BYTES nor path longer than MAX_PATH_BYTES, and no
    part named like a staged file (STAGING_SUFFIXES)."""
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
        size = len(path.encode("utf-8"))  # a lone surrogate cannot name a file
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
            # How the appliance names a file it is writing: reconcile sweeps such leftovers.
            raise TitleFilesError(f"file path {path!r} in title is named like a temporary file")
    return path


def check_layout(paths: Collection[str]) -> None:
    """The paths of one title can all be files at once: none is also a folder of another
    (`c` and `c/d`), and none is, or is under, the title's own files.json."""
    folders: set[str] = set()
    for path in paths:
        if path.split("/", 1)[0] == FILES_JSON:
            raise TitleFilesError(f"file path {path!r} in title is the title's own {FILES_JSON}")
        slash = path.find("/")
        while slash >= 0:
            folders.add(path[:slash])
            slash = path.find("/", slash + 1)
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


class TitleFiles(_Model):
    format: int = FORMAT
    id: str
    title: str
    duration: float = Field(ge=0)
    segment_seconds: float = Field(gt=0)
    created: str  # ISO 8601 UTC
    renditions: tuple[RenditionInfo, ...]
    files: tuple[FileEntry, ...]
    total_bytes: int = Field(ge=0)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_title_id(value)

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


def parse(raw: bytes, source: str = FILES_JSON) -> TitleFiles:
    try:
        data: Any = json.loads(raw)
        files = data.get("files") if isinstance(data, dict) else None
        if isinstance(files, list) and len(files) > MAX_FILES:  # before a model per entry
            raise TitleFilesError(
                f"{source}: lists {len(files)} files, more than a title may ({MAX_FILES})"
            )
        model = TitleFiles.model_validate(data)
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
    if model.format != FORMAT:
        raise TitleFilesError(f"{source}: unsupported files.json format {model.format}")
    paths = [f.path for f in model.files]
    if len(set(paths)) != len(paths):
        raise TitleFilesError(f"{source}: duplicate file paths")
    if sum(f.size for f in model.files) != model.total_bytes:
        raise TitleFilesError(f"{source}: total_bytes does not match the file sizes")
    return model


def read(title_dir: Path) -> tuple[TitleFiles, str]:
    """Read and validate `title_dir/files.json`; return it with its digest."""
    path = title_dir / FILES_JSON
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TitleFilesError(f"{title_dir}: no files.json (not a packaged title)") from None
    except OSError as exc:
        raise TitleFilesError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(raw, str(path)), digest_bytes(raw)


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
