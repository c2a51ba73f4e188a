"""zstd framing for the large fields of fleet.proto: per-title counts and plans.

Shared by the appliance (which packs counts and unpacks plans) and the fleet manager (the
reverse), so both agree byte for byte. Decompression is size-capped before anything is
allocated: a peer cannot make us hold more than `max_bytes`, whatever its frame declares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import zstandard
from google.protobuf.message import DecodeError

from edgeflix.errors import EdgeflixError
from edgeflix.proto.gen import fleet_pb2

MAX_BYTES = 32 * 1024 * 1024
# The most titles one counts batch may list: every title of a 50,000-title catalogue (more
# than one appliance holds) watched since its last beat, twice over.
MAX_COUNT_ENTRIES = 100_000
# The most a counts batch may inflate to: 48 bytes an entry, a 32-character id with large
# counts (a 50,000-title batch of ids up to 80 characters fits). Parsing runs in C holding
# the GIL: the 2.4 M two-byte entries this could hold take ~0.1 s to parse and refuse, what
# gRPC itself spends on any 4 MiB message; the 3.7 M that 32 MiB held took 6.5 s.
MAX_COUNTS_BYTES = MAX_COUNT_ENTRIES * 48
# The largest gRPC message either side takes (gRPC's default is 4 MiB): a beat listing the
# most held titles the manager accepts (fleet/grpc_api.py MAX_HELD_TITLES, 100,000) with
# 128-character ids is about 21 MB; 4 MiB refused the beats of an appliance holding ~50k.
MAX_MESSAGE_BYTES = 24 * 1024 * 1024
# The manager's refusal (FAILED_PRECONDITION) of a beat that leaves its held titles out under a
# digest the manager does not keep (it restarted, or missed a change): the appliance sends
# the list at once, so the manager never steers on a list it does not have.
TITLES_NEEDED = "heartbeat: send the held titles (the manager keeps no list under this digest)"
_LEVEL = 3
_PIECE = 64 * 1024


class CodecError(EdgeflixError):
    """A compressed field that is corrupt, not what it claims, or too large."""


@dataclass(frozen=True)
class Counts:
    requests: int
    bytes: int


def _compress(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=_LEVEL, write_content_size=True).compress(raw)


def _decompress(blob: bytes, what: str, max_bytes: int) -> bytes:
    """The one frame in `blob`, never more than `max_bytes` of it held at once.

    python-zstandard's max_output_size caps only frames that do not state their size: a
    frame that declares one gets a buffer of that size, so 32 KB declaring 1 GiB made us
    allocate 1 GiB (and a 4 MiB gRPC message can declare far more). The declared size is
    therefore read and refused first; a frame without one is measured as a stream, in
    bounded pieces, before it is decompressed."""
    if not blob:
        return b""
    try:
        declared = zstandard.frame_content_size(blob)
        if declared > max_bytes:
            raise CodecError(f"{what}: the zstd frame declares {declared} bytes, over {max_bytes}")
        # No size in the header (not what our packers write): measured, so that the
        # buffer allocated is the frame's size, not the limit. 0 would mean "no limit".
        size = declared if declared >= 0 else max(_measure(blob, what, max_bytes), 1)
        return zstandard.ZstdDecompressor().decompress(
            blob, max_output_size=size, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise CodecError(f"{what}: not a valid zstd frame under {max_bytes} bytes: {exc}") from None


def _measure(blob: bytes, what: str, max_bytes: int) -> int:
    """The size of the frame's output, decompressed in 64 KiB pieces and dropped;
    CodecError as soon as it passes `max_bytes`. A truncated frame may measure short:
    the decompression after it says so."""
    size = 0
    for piece in zstandard.ZstdDecompressor().read_to_iter(blob, write_size=_PIECE):
        size += len(piece)
        if size > max_bytes:
            raise CodecError(f"{what}: the zstd frame holds more than {max_bytes} bytes")
    return size


def pack_counts(counts: Mapping[str, Counts]) -> bytes:
    batch = fleet_pb2.TitleCountsBatch(
        counts=[
            fleet_pb2.TitleCounts(title_id=t, requests=c.requests, bytes=c.bytes)
            for t, c in sorted(counts.items())
        ]
    )
    return _compress(batch.SerializeToString(deterministic=True)) if counts else b""


def unpack_counts(
    blob: bytes, max_bytes: int = MAX_COUNTS_BYTES, max_entries: int = MAX_COUNT_ENTRIES
) -> dict[str, Counts]:
    """Title → counts. CodecError for more than `max_entries` titles or a title listed
    twice: pack_counts writes each once (an appliance merges its beats before packing), and
    each entry is an object the manager builds and holds while it reads the beat."""
    batch = fleet_pb2.TitleCountsBatch()
    try:
        batch.ParseFromString(_decompress(blob, "counts", max_bytes))
    except DecodeError:
        raise CodecError("counts: not a TitleCountsBatch") from None
    if len(batch.counts) > max_entries:
        raise CodecError(f"counts: {len(batch.counts)} titles, over {max_entries}")
    out = {c.title_id: Counts(c.requests, c.bytes) for c in batch.counts}
    if len(out) != len(batch.counts):
        raise CodecError("counts: a title is listed twice")
    return out


def pack_plan(plan: fleet_pb2.Plan) -> bytes:
    return _compress(plan.SerializeToString(deterministic=True))


def unpack_plan(blob: bytes, max_bytes: int = MAX_BYTES) -> fleet_pb2.Plan:
    plan = fleet_pb2.Plan()
    try:
        plan.ParseFromString(_decompress(blob, "plan", max_bytes))
    except DecodeError:
        raise CodecError("plan: not a Plan") from None
    return plan
