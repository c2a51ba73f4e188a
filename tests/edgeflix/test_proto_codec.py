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
    MAX_COUNT_ENTRIES,
    MAX_COUNTS_BYTES,
    CodecError,
    Counts,
    pack_counts,
    unpack_counts,
    unpack_plan,
)
from edgeflix.proto.gen import fleet_pb2

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


def counts_frame(entry: bytes, n: int) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(entry * n)


def one_entry(title_id: str) -> bytes:
    inner = fleet_pb2.TitleCounts(title_id=title_id, requests=1, bytes=1).SerializeToString()
    return b"\x0a" + bytes([len(inner)]) + inner


def test_counts_inflating_far_past_any_catalogue_are_refused_from_the_header() -> None:
    """/tmp/rev_abuse/t5.py: 2.8 KB inflating to 32 MiB, 3.7 M entries, held the fleet's
    loop 6.5 s. Counts may inflate to MAX_COUNTS_BYTES (MAX_COUNT_ENTRIES real entries)."""
    entry = one_entry("t")
    bomb = counts_frame(entry, (32 * 1024 * 1024 - 16) // len(entry))
    assert len(bomb) < 4096
    with pytest.raises(CodecError, match=f"over {MAX_COUNTS_BYTES}"):
        unpack_counts(bomb)
    assert MAX_COUNTS_BYTES < 8 * 1024 * 1024


def test_more_entries_than_the_cap_are_refused() -> None:
    entry = one_entry("t")
    assert (MAX_COUNT_ENTRIES + 1) * len(entry) < MAX_COUNTS_BYTES  # under the byte cap
    with pytest.raises(CodecError, match=f"over {MAX_COUNT_ENTRIES}"):
        unpack_counts(counts_frame(entry, MAX_COUNT_ENTRIES + 1))
    # Two-byte empty entries, the most the byte cap holds, are refused the same way.
    with pytest.raises(CodecError, match=f"over {MAX_COUNT_ENTRIES}"):
        unpack_counts(counts_frame(b"\x0a\x00", MAX_COUNTS_BYTES // 2))


def test_a_large_catalogues_counts_pass() -> None:
    """Every title of a 50,000-title catalogue with traffic in one batch, ids of 36
    characters (a UUID) and large counts: well inside both caps."""
    counts = {f"{i:08d}-0000-4000-8000-{i:012d}": Counts(500, 9 * 10**9) for i in range(50_000)}
    assert unpack_counts(pack_counts(counts)) == counts
