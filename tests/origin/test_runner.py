"""How a failed ffmpeg is told: by its first error (the cause), named by what logged it."""

from __future__ import annotations

from pathlib import Path

import pytest

from origin.errors import EncodeError
from origin.ffmpeg import LOGLEVEL
from origin.runner import find_ffmpeg, first_error, run_ffmpeg

# What ffmpeg 7 printed for an AV1 rung under 64 pixels, with the poster as a second output.
SVT_TOO_SMALL = """\
Svt[info]: -------------------------------------------
Svt[warn]: AQ mode 2 is unsupported with source dimensions (48 / 48), setting AQ mode to 0
Svt[error]: Adaptive quantization can not be turned OFF when RC ON
[libsvtav1 @ 0x5614f0721b80] [error] Error setting encoder parameters: bad parameter (0x80001005)
[vf#0:0 @ 0x5614f07225c0] [error] Error sending frames to consumers: Invalid argument
[out#1/image2 @ 0x5614f07202c0] [error] Nothing was written into output file, because at \
least one of its streams received no packets.
"""


def test_the_first_error_line_is_the_cause() -> None:
    assert first_error(SVT_TOO_SMALL) == (
        "Svt: Adaptive quantization can not be turned OFF when RC ON"
    )
    nested = (
        "[vost#0:0/libx265 @ 0x55c1] [enc:libx265 @ 0x55c2] [error] Could not open encoder\n"
        "[out#0/mp4 @ 0x55c3] [error] Nothing was written into output file\n"
    )
    assert first_error(nested) == "libx265: Could not open encoder"
    assert first_error("[fatal] Error opening output files: Filter not found\n") == (
        "Error opening output files: Filter not found"
    )
    assert first_error("x265 [error]: Image size is too small\n") == (
        "x265: Image size is too small"
    )
    # Untagged (an ffmpeg without level tags): the last line, as before.
    assert first_error("Something\nThe end\n") == "The end"
    assert first_error("") is None


def test_a_failed_encode_names_the_encoder_not_the_poster(tmp_path: Path) -> None:
    """x265 refuses a 12x12 picture; the poster output of the same run then 'received no
    packets', ffmpeg's last line."""
    args = [find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", LOGLEVEL, "-y",
            "-f", "lavfi", "-i", "testsrc2=size=12x12:rate=25:duration=0.2",
            "-c:v", "libx265", "-x265-params", "log-level=error", "-f", "mp4",
            str(tmp_path / "out.mp4"), "-frames:v", "1", "-f", "image2", "-update", "1",
            str(tmp_path / "poster.jpg")]  # fmt: skip
    with pytest.raises(EncodeError) as caught:
        run_ffmpeg(args, "encoding tiny.mp4")
    message = str(caught.value)
    assert message.startswith("ffmpeg failed while encoding tiny.mp4: libx265: ")
    assert "too small" in message and "Nothing was written" not in message
    assert "\n" not in message
