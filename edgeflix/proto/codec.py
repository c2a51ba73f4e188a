"""zstd framing for the large fields of fleet.proto: per-title counts and plans.

Shared by the appliance (which packs counts and unpacks plans) and the fleet manager (the
reverse), so both agree byte for byte. Decompression is size-capped: a peer cannot make us
allocate more than `max_bytes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import zstandard
from google.protobuf.message import DecodeError

from edgeflix.errors import EdgeflixError
from edgeflix.proto.gen import fleet_pb2

MAX_BYTES = 32 * 1024 * 1024
_LEVEL = 3


class CodecError(EdgeflixError):
    """A compressed field that is corrupt, not what it claims, or too large."""


@dataclass(frozen=True)
class Counts:
    requests: int
    bytes: int


def _compress(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=_LEVEL, write_content_size=True).compress(raw)


def _decompress(blob: bytes, what: str, max_bytes: int) -> bytes:
    if not blob:
        return b""
    try:
        # With write_content_size the frame states its size; max_output_size caps it.
        return zstandard.ZstdDecompressor().decompress(blob, max_output_size=max_bytes)
    except zstandard.ZstdError as exc:
        raise CodecError(f"{what}: not a valid zstd frame under {max_bytes} bytes: {exc}") from None


def pack_counts(counts: Mapping[str, Counts]) -> bytes:
    batch = fleet_pb2.TitleCountsBatch(
        counts=[
            fleet_pb2.TitleCounts(title_id=t, requests=c.requests, bytes=c.bytes)
            for t, c in sorted(counts.items())
        ]
    )
    return _compress(batch.SerializeToString(deterministic=True)) if counts else b""


def unpack_counts(blob: bytes, max_bytes: int = MAX_BYTES) -> dict[str, Counts]:
    """Title → counts; a title listed twice is summed (a batch may merge several beats)."""
    batch = fleet_pb2.TitleCountsBatch()
    try:
        batch.ParseFromString(_decompress(blob, "counts", max_bytes))
    except DecodeError:
        raise CodecError("counts: not a TitleCountsBatch") from None
    out: dict[str, Counts] = {}
    for c in batch.counts:
        prev = out.get(c.title_id, Counts(0, 0))
        out[c.title_id] = Counts(prev.requests + c.requests, prev.bytes + c.bytes)
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
