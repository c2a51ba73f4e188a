"""Run ffmpeg (I/O shell): locate the binary, stream `-progress` to a callback, and make
sure the child dies with us — on an error, Ctrl-C or SIGTERM it is killed before we return.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence

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


def run_ffmpeg(args: Sequence[str], what: str, on_progress: ProgressCallback | None = None) -> None:
    """Run one ffmpeg to completion; raise EncodeError (or StoreError for a full disk)."""
    with tempfile.TemporaryFile() as errors:
        # Own session: a terminal's Ctrl-C reaches us only, and we decide how ffmpeg ends.
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            text=True,
        )
        try:
            assert proc.stdout is not None
            block: list[str] = []
            for line in proc.stdout:
                block.append(line)
                if line.startswith("progress="):
                    seconds = parse_progress(block)
                    if seconds is not None and on_progress is not None:
                        on_progress(seconds)
                    block = []
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        if code != 0:
            errors.seek(0)
            text = errors.read().decode(errors="replace")
            raise _failure(what, code, text)


def _failure(what: str, code: int, stderr: str) -> Exception:
    if "No space left on device" in stderr:
        return StoreError(f"disk full while {what}: no space left on device")
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else f"exit status {code}"
    return EncodeError(f"ffmpeg failed while {what}: {last}")
