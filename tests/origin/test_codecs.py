from __future__ import annotations

import pytest

from origin.codecs import av01, avc1, codec_string, hvc1, mp4a


def test_avc1_from_avcc() -> None:
    assert avc1(bytes([1, 0x64, 0x00, 0x1F, 0xFF])) == "avc1.64001f"
    with pytest.raises(ValueError):
        avc1(b"\x00\x01")


def test_hvc1_main_profile_level_93() -> None:
    # general_profile_space 0, tier main, profile 1, compat flags 0x60000000, level 93.
    record = bytes([1, 0x01, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 93]) + bytes(10)
    assert hvc1(record) == "hvc1.1.6.L93.90"


def test_av01_main_8bit() -> None:
    assert av01(bytes([0x81, 0x08, 0x0C, 0x00])) == "av01.0.08M.08"


def test_mp4a_object_type() -> None:
    assert mp4a(bytes([0x11, 0x90])) == "mp4a.40.2"
    assert mp4a(bytes([0x2B, 0x92])) == "mp4a.40.5"
    assert mp4a(None) == "mp4a.40.2"


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError):
        codec_string("vp9", b"\x01")
