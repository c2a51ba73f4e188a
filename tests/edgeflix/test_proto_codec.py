"""zstd fields (edgeflix/proto/codec.py) are size-capped before anything is allocated: a
frame declaring more than the limit is refused from its header, one declaring nothing is
measured in pieces, and only one whole frame is read."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from edgeflix.proto.codec import (
    MAX_BYTES,
    CodecError,
    Counts,
    pack_counts,
    unpack_counts,
    unpack_plan,
)

GIB = 1 << 30
_BLOCK = 128 * 1024  # the largest zstd block


def rle_frame(size: int, declare: bool = True) -> bytes:
    """A real zstd frame of `size` zero bytes made of RLE blocks (4 bytes per 128 KiB):
    1 GiB in 32 KiB, as the reviewer sent it."""
    if declare:  # single segment, 8-byte content size
        head = b"\x28\xb5\x2f\xfd\xe0" + struct.pack("<Q", size)
    else:  # no content size; a window descriptor of 128 KiB
        head = b"\x28\xb5\x2f\xfd\x00" + bytes([7 << 3])
    blocks = []
    left = size
    while left > 0:
        n = min(left, _BLOCK)
        left -= n
        blocks.append(struct.pack("<I", (left == 0) | (1 << 1) | (n << 3))[:3] + b"\0")
    return head + b"".join(blocks)


def peak_bytes(call: object) -> int:
    """The most Python-tracked memory (bytes objects included) held during `call()`."""
    tracemalloc.start()
    try:
        call()  # type: ignore[operator]
    except CodecError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_the_crafted_frames_are_what_they_claim() -> None:
    small = rle_frame(300_000)
    assert zstandard.frame_content_size(small) == 300_000
    assert zstandard.ZstdDecompressor().decompress(small) == b"\0" * 300_000
    assert zstandard.frame_content_size(rle_frame(GIB)) == GIB
    assert len(rle_frame(GIB)) < 40_000
    assert zstandard.frame_content_size(rle_frame(10, declare=False)) == -1


@pytest.mark.parametrize("unpack", [unpack_counts, unpack_plan])
def test_a_frame_declaring_a_gibibyte_is_refused_without_allocating_it(unpack: object) -> None:
    bomb = rle_frame(GIB)
    with pytest.raises(CodecError, match=f"declares {GIB} bytes"):
        unpack(bomb)  # type: ignore[operator]
    assert peak_bytes(lambda: unpack(bomb)) < 1 << 20  # type: ignore[operator]


def test_a_frame_declaring_no_size_is_measured_in_pieces() -> None:
    bomb = rle_frame(GIB, declare=False)
    with pytest.raises(CodecError, match="holds more than"):
        unpack_counts(bomb)
    # Pieces of 64 KiB, not a buffer of the limit (32 MiB) nor of the frame.
    assert peak_bytes(lambda: unpack_counts(bomb)) < MAX_BYTES // 8
    # Under the limit it still decodes, in a buffer of its own size.
    raw = pack_counts({"film": Counts(3, 3000)})
    plain = zstandard.ZstdDecompressor().decompress(raw)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(plain)
    assert zstandard.frame_content_size(unsized) == -1
    assert unpack_counts(unsized) == unpack_counts(raw) == {"film": Counts(3, 3000)}
    assert peak_bytes(lambda: unpack_counts(unsized)) < 1 << 20


def test_only_one_whole_frame_is_read() -> None:
    blob = pack_counts({"film": Counts(3, 3000)})
    for bad in (blob[:-2], blob + b"junk", blob + blob):
        with pytest.raises(CodecError, match="not a valid zstd frame"):
            unpack_counts(bad)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 100_000)
    for bad in (unsized[:-5], unsized + b"junk"):
        with pytest.raises(CodecError, match="not a valid zstd frame"):
            unpack_counts(bad)


@given(st.binary(max_size=200), st.booleans())
def test_any_bytes_are_counts_or_a_codec_error(tail: bytes, magic: bool) -> None:
    blob = (b"\x28\xb5\x2f\xfd" if magic else b"") + tail
    try:
        counts = unpack_counts(blob, max_bytes=4096)
    except CodecError:
        return
    assert all(isinstance(c, Counts) for c in counts.values())
