"""The ingest's checks of what ffmpeg wrote, before anything is published."""

from __future__ import annotations

import pytest

from origin.errors import EncodeError
from origin.ingest import check_alignment
from tests.origin.test_manifests import _video


def test_a_rendition_missing_frames_is_refused() -> None:
    """The frame count stays a real check: the source's frames at its (nominal) rate, each
    in every rendition, give or take one (a last frame's rounding)."""
    videos = [_video(720, [5, 4, 1]), _video(360, [2, 2, 1])]  # 3 segments of 50 frames
    check_alignment(videos, 2.0, 150)
    check_alignment(videos, 2.0, 151)
    with pytest.raises(EncodeError, match="h264_720p: 150 frames, the source has 152"):
        check_alignment(videos, 2.0, 152)
