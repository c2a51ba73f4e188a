"""fleet.proto: committed stubs match `make proto`, and the zstd fields round-trip."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from edgeflix.proto.codec import (
    CodecError,
    Counts,
    pack_counts,
    pack_plan,
    unpack_counts,
    unpack_plan,
)
from edgeflix.proto.gen import fleet_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_are_what_protoc_generates(tmp_path: Path) -> None:
    protos = sorted((ROOT / "edgeflix/proto").glob("*.proto"))
    virtual = [f"edgeflix/proto/gen/{p.name}" for p in protos]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iedgeflix/proto/gen=edgeflix/proto",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *virtual,
        ],
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    fresh = tmp_path / "edgeflix/proto/gen"
    for made in sorted(fresh.iterdir()):
        assert filecmp.cmp(made, ROOT / "edgeflix/proto/gen" / made.name, shallow=False), (
            f"{made.name} differs from a fresh `make proto`: regenerate, never hand-edit"
        )


def test_counts_round_trip_and_refuse_a_title_listed_twice() -> None:
    counts = {"film": Counts(3, 9_000_000), "show.s01e01": Counts(1, 5)}
    blob = pack_counts(counts)
    assert unpack_counts(blob) == counts
    assert pack_counts({}) == b"" and unpack_counts(b"") == {}
    twice = fleet_pb2.TitleCountsBatch(
        counts=[fleet_pb2.TitleCounts(title_id="a", requests=1, bytes=2)] * 2
    )
    raw = zstandard.ZstdCompressor().compress(twice.SerializeToString())
    with pytest.raises(CodecError, match="listed twice"):
        unpack_counts(raw)  # pack_counts never writes one: not a batch an appliance sent


def test_plan_round_trip() -> None:
    plan = fleet_pb2.Plan(
        version=7,
        site="home",
        fill_window="02:00-06:00",
        titles=[fleet_pb2.PlannedTitle(title_id="a", sources=["http://o"])],
    )
    assert unpack_plan(pack_plan(plan)) == plan


def test_corrupt_or_oversized_blobs_are_refused() -> None:
    with pytest.raises(CodecError, match="not a valid zstd frame"):
        unpack_counts(b"garbage")
    big = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * 100_000)
    with pytest.raises(CodecError):
        unpack_counts(big, max_bytes=1000)
    with pytest.raises(CodecError, match="not a Plan"):
        unpack_plan(zstandard.ZstdCompressor().compress(b"\xff\xff\xff"))
