"""RFC 6381 codec strings (the CODECS attribute of HLS and `codecs` of DASH), pure: built from
the decoder configuration records an MP4 init segment carries (avcC, hvcC, av1C).
"""

from __future__ import annotations


def avc1(avcc: bytes) -> str:
    """`avc1.PPCCLL` from an AVCDecoderConfigurationRecord."""
    if len(avcc) < 4 or avcc[0] != 1:
        raise ValueError("not an avcC record")
    return f"avc1.{avcc[1]:02x}{avcc[2]:02x}{avcc[3]:02x}"


def hvc1(hvcc: bytes) -> str:
    """`hvc1.P.C.TL.CC` from an HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 annex E)."""
    if len(hvcc) < 13 or hvcc[0] != 1:
        raise ValueError("not an hvcC record")
    space = ("", "A", "B", "C")[hvcc[1] >> 6]
    tier = "H" if hvcc[1] & 0x20 else "L"
    profile = hvcc[1] & 0x1F
    compat = int.from_bytes(hvcc[2:6], "big")
    compat_rev = int(f"{compat:032b}"[::-1], 2)  # the string carries it bit-reversed
    constraints = list(hvcc[6:12])
    while constraints and constraints[-1] == 0:
        constraints.pop()
    level = hvcc[12]
    parts = [f"hvc1.{space}{profile}", f"{compat_rev:X}", f"{tier}{level}"]
    parts += [f"{c:X}" for c in constraints]
    return ".".join(parts)


def av01(av1c: bytes) -> str:
    """`av01.P.LLT.DD` from an AV1CodecConfigurationRecord."""
    if len(av1c) < 4 or av1c[0] & 0x7F != 1:
        raise ValueError("not an av1C record")
    profile = av1c[1] >> 5
    level = av1c[1] & 0x1F
    tier = "H" if av1c[2] & 0x80 else "M"
    high_bitdepth, twelve_bit = bool(av1c[2] & 0x40), bool(av1c[2] & 0x20)
    depth = 12 if twelve_bit else 10 if high_bitdepth else 8
    return f"av01.{profile}.{level:02d}{tier}.{depth:02d}"


def mp4a(asc: bytes | None) -> str:
    """`mp4a.40.N`, N the audio object type of the AudioSpecificConfig (2 is AAC-LC)."""
    aot = asc[0] >> 3 if asc else 2
    if aot == 31 and asc is not None and len(asc) >= 2:  # escape: 32 + next six bits
        aot = 32 + (((asc[0] & 0x07) << 3) | (asc[1] >> 5))
    return f"mp4a.40.{aot or 2}"


def codec_string(codec: str, extradata: bytes | None) -> str:
    if codec == "aac":
        return mp4a(extradata)
    if not extradata:
        raise ValueError(f"no decoder configuration for {codec}")
    if codec == "h264":
        return avc1(extradata)
    if codec == "hevc":
        return hvc1(extradata)
    if codec == "av1":
        return av01(extradata)
    raise ValueError(f"no codec string for {codec}")
