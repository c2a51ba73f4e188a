"""Run ffmpeg (I/O shell): locate the binary, stream `-progress` to a callback, and make
sure the child dies with us — on an error, Ctrl-C or SIGTERM it is killed before we return.
`start_ffmpeg` hands back the running child so a caller can work while it encodes.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import IO

from origin.errors import EncodeError, StoreError
from origin.ffmpeg import parse_progress

ProgressCallback = Callable[[float], None]
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: if the ingest is SIGKILLed, the kernel kills ffmpeg too."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def find_ffmpeg(configured: str | None = None) -> str:
    """The configured ffmpeg, else $EDGEFLIX_FFMPEG, else the imageio-ffmpeg wheel's binary."""
    wanted = configured or os.environ.get("EDGEFLIX_FFMPEG")
    if wanted:
        found = shutil.which(wanted)
        if not found:
            raise EncodeError(f"ffmpeg '{wanted}' not found or not executable")
        return found
    import imageio_ffmpeg

    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as exc:
        raise EncodeError(f"no ffmpeg binary: {exc} (run `make setup`)") from None


class FfmpegLookup:
    """`find_ffmpeg` on a thread: imageio-ffmpeg checks its binary by running `ffmpeg
    -version` (tens of ms, mostly waiting on that child), which can overlap the probe."""

    def __init__(self, configured: str | None = None) -> None:
        self._configured = configured
        self._found: str | None = None
        self._error: EncodeError | None = None
        self._thread = threading.Thread(target=self._run, name="find-ffmpeg", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._found = find_ffmpeg(self._configured)
        except EncodeError as exc:
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._found is not None
        return self._found


class FfmpegRun:
    """One running ffmpeg. Leaving the `with` block before `wait()` returned (an error in
    the caller, Ctrl-C, SIGTERM) kills the child and reaps it."""

    def __init__(self, args: Sequence[str], what: str) -> None:
        self.what = what
        # ffmpeg's stderr goes to a file, not a pipe nobody drains while we read -progress;
        # closed in __exit__.
        self._errors: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            # Own session: a terminal's Ctrl-C reaches us only, and we decide how ffmpeg ends.
            self.proc = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._errors,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                text=True,
            )
        except OSError as exc:
            self._errors.close()
            raise EncodeError(f"cannot run ffmpeg '{args[0]}': {exc.strerror or exc}") from None

    def wait(self, on_progress: ProgressCallback | None = None) -> None:
        """Follow `-progress` to the end; raise EncodeError (StoreError for a full disk)."""
        assert self.proc.stdout is not None
        block: list[str] = []
        for line in self.proc.stdout:
            block.append(line)
            if line.startswith("progress="):
                seconds = parse_progress(block)
                if seconds is not None and on_progress is not None:
                    on_progress(seconds)
                block = []
        code = self.proc.wait()
        if code != 0:
            self._errors.seek(0)
            raise _failure(self.what, code, self._errors.read().decode(errors="replace"))

    def __enter__(self) -> FfmpegRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._errors.close()


def start_ffmpeg(args: Sequence[str], what: str) -> FfmpegRun:
    """Spawn ffmpeg and return at once; use the result as a context manager."""
    return FfmpegRun(args, what)


def run_ffmpeg(args: Sequence[str], what: str, on_progress: ProgressCallback | None = None) -> None:
    """Run one ffmpeg to completion; raise EncodeError (or StoreError for a full disk)."""
    with start_ffmpeg(args, what) as run:
        run.wait(on_progress)


def _failure(what: str, code: int, stderr: str) -> Exception:
    if "No space left on device" in stderr:
        return StoreError(f"disk full while {what}: no space left on device")
    return EncodeError(
        f"ffmpeg failed while {what}: {first_error(stderr) or f'exit status {code}'}"
    )


# ffmpeg's own lines at `-loglevel level+...` (origin/ffmpeg.py LOGLEVEL): the contexts that
# logged it (`[vost#0:0/libx265 @ 0x5614f0721040] [enc:libx265 @ 0x...] `), the level tag.
_FFMPEG_LINE = re.compile(r"((?:\[[^\]]* @ 0x[0-9a-f]+\] )*)\[(\w+)\] (.*)")
_CONTEXT = re.compile(r"\[(?:\w+:)?([^\]@]*?) @ 0x[0-9a-f]+\]")
# Encoder libraries write to stderr themselves, past ffmpeg's log: `Svt[error]: ...`,
# `x265 [error]: ...`.
_LIBRARY_ERROR = re.compile(r"(\S+?) ?\[(?:error|fatal)\]: (.*)", re.IGNORECASE)


def first_error(stderr: str) -> str | None:
    """The first error-level line of ffmpeg's stderr, named by what logged it (`libx265:
    Image size is too small (12x12).`): the cause of a failure, where the last line is what
    failed in its wake (an output that received no packets). Lines nothing tags (another
    ffmpeg's log format): the last of them."""
    untagged = None
    for raw in stderr.splitlines():
        line = raw.strip()
        if not line:
            continue
        ours = _FFMPEG_LINE.fullmatch(line)
        if ours is not None:
            if ours.group(2) not in ("error", "fatal", "panic"):
                continue
            contexts = _CONTEXT.findall(ours.group(1))
            return f"{contexts[-1]}: {ours.group(3)}" if contexts else ours.group(3)
        library = _LIBRARY_ERROR.fullmatch(line)
        if library is not None:
            return f"{library.group(1)}: {library.group(2)}"
        untagged = line
    return untagged
