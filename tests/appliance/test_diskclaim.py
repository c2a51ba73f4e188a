"""The disk claim marker (appliance/diskclaim.py): the pure verdict and parse, and the shell
on real folders, several processes at once."""

from __future__ import annotations

import json
import multiprocessing
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from appliance import diskclaim
from appliance.disks import Disk, DiskError
from appliance.safefiles import TitleLocks


def disk(path: Path, writable: bool = True) -> Disk:
    path.mkdir(parents=True, exist_ok=True)
    return Disk(id=str(path), path=path, tier="ssd", capacity=1 << 30, high_watermark=0.9,
                low_watermark=0.8, max_bytes=None, writable=writable)  # fmt: skip


def lock(root: Path) -> AbstractContextManager[None]:
    """The store-wide lock a Store writes claims under (in its index's locks folder)."""
    return TitleLocks(root / "locks").store_wide(diskclaim.LOCK)


@pytest.mark.parametrize(
    ("recorded", "exists", "same", "expected"),
    [
        (None, False, False, "claim"),  # new disk, or one from before markers
        ("/var/a.sqlite", False, False, "claim"),  # the index that claimed it moved away
        ("/var/a.sqlite", True, False, "taken"),  # another index, still there
        ("/var/a.sqlite", True, True, "ours"),  # ours under another name (a hard link)
        ("/var/ours.sqlite", False, False, "ours"),  # ours, rebuilt at the same path
        ("/var/ours.sqlite", True, True, "ours"),
    ],
)
def test_verdict(recorded: str | None, exists: bool, same: bool, expected: str) -> None:
    assert diskclaim.verdict(recorded, "/var/ours.sqlite", exists, same) == expected


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"[]", b'{"index": 3}', b'{"index": "relative/i.sqlite"}', b"\xff\xfe"]
)
def test_parse_takes_damage_and_foreign_files_as_no_marker(raw: bytes) -> None:
    assert diskclaim.parse(raw) is None


def test_parse_reads_a_marker() -> None:
    assert diskclaim.parse(b'{"index": "/var/i.sqlite"}\n') == diskclaim.Marker("/var/i.sqlite")


def test_another_existing_index_is_refused_and_a_moved_one_is_taken_over(tmp_path: Path) -> None:
    d0 = disk(tmp_path / "d0")
    first, second = tmp_path / "a" / "index.sqlite", tmp_path / "b" / "index.sqlite"
    first.parent.mkdir()
    first.write_bytes(b"")
    assert diskclaim.check([d0], first) == [d0]
    diskclaim.claim([d0], first, lock(tmp_path))
    assert json.loads((d0.path / diskclaim.MARKER).read_text()) == {"index": str(first)}
    assert diskclaim.check([d0], first) == []  # claimed: nothing to write any more

    with pytest.raises(DiskError, match=f"holds the titles of the appliance index {first}"):
        diskclaim.check([d0], second)
    with pytest.raises(DiskError):  # checked again under the lock: never taken over
        diskclaim.claim([d0], second, lock(tmp_path))

    first.rename(tmp_path / "a" / "moved.sqlite")  # the old index is gone from its path
    assert diskclaim.check([d0], second) == [d0]
    diskclaim.claim([d0], second, lock(tmp_path))
    assert diskclaim.check([d0], second) == []


def test_a_read_only_disk_is_checked_but_never_written(tmp_path: Path) -> None:
    ro = disk(tmp_path / "ro", writable=False)
    diskclaim.claim([ro], tmp_path / "i.sqlite", lock(tmp_path))
    assert not (ro.path / diskclaim.MARKER).exists()


def _claim_many(root: str, rounds: int) -> None:
    disks = [disk(Path(root) / f"d{i}") for i in range(3)]
    for _ in range(rounds):
        diskclaim.claim(
            disks,
            Path(root) / "i.sqlite",
            lock(Path(root)),
        )


def test_processes_claiming_at_once_all_succeed(tmp_path: Path) -> None:
    # The first commands on a new box start together; each writes the markers it finds
    # missing. Without the lock they shared the marker's temporary file and one failed.
    for d in range(3):
        (tmp_path / f"d{d}").mkdir()
    ctx = multiprocessing.get_context("spawn")
    for _ in range(5):
        for d in range(3):
            (tmp_path / f"d{d}" / diskclaim.MARKER).unlink(missing_ok=True)
        procs = [ctx.Process(target=_claim_many, args=(str(tmp_path), 1)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        for d in range(3):
            marker = (tmp_path / f"d{d}" / diskclaim.MARKER).read_bytes()
            assert diskclaim.parse(marker) == diskclaim.Marker(str(tmp_path / "i.sqlite"))
