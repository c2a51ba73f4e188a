"""Tier space the fleet link reports: each filesystem counted once, however many disk folders
share it (the README's example puts disk0 and disk1 on one filesystem)."""

from __future__ import annotations

import shutil
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from appliance import config
from appliance.fleetlink_figures import FolderSpace, filesystem_space, tier_space
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title, storage_toml, title_bytes

GB = 10**9


def test_two_folders_of_one_filesystem_in_two_tiers_split_it() -> None:
    folders = [FolderSpace("ssd", 100 * GB, 0, False), FolderSpace("hdd", 100 * GB, 0, False)]
    space = filesystem_space(folders, total=100 * GB, free=60 * GB)
    assert space == {"ssd": (50 * GB, 20 * GB), "hdd": (50 * GB, 20 * GB)}


def test_two_folders_of_one_filesystem_in_one_tier_count_it_once() -> None:
    folders = [FolderSpace("hdd", 100 * GB, 3 * GB, False), FolderSpace("hdd", 100 * GB, 0, False)]
    assert filesystem_space(folders, total=100 * GB, free=60 * GB) == {"hdd": (100 * GB, 40 * GB)}


def test_max_bytes_folders_keep_their_own_caps_while_they_fit() -> None:
    folders = [FolderSpace("ssd", 10 * GB, 2 * GB, True), FolderSpace("hdd", 30 * GB, 0, True)]
    space = filesystem_space(folders, total=100 * GB, free=10 * GB)
    assert space == {"ssd": (10 * GB, 2 * GB), "hdd": (30 * GB, 0)}
    # caps adding up past the filesystem: scaled down to it, in proportion
    folders = [FolderSpace("ssd", 80 * GB, 0, True), FolderSpace("hdd", 120 * GB, 0, True)]
    space = filesystem_space(folders, total=100 * GB, free=100 * GB)
    assert space == {"ssd": (40 * GB, 0), "hdd": (60 * GB, 0)}


def test_a_lone_folder_is_what_disks_measure_says() -> None:
    assert filesystem_space([FolderSpace("hdd", 100, 7, False)], 100, 40) == {"hdd": (100, 60)}
    assert filesystem_space([FolderSpace("hdd", 30, 7, True)], 100, 40) == {"hdd": (30, 7)}


folder = st.builds(
    FolderSpace,
    st.sampled_from(["ssd", "hdd", "nvme"]),
    st.integers(0, 10**13),
    st.integers(0, 10**12),
    st.booleans(),
)


@given(st.lists(folder, min_size=1, max_size=5), st.integers(0, 10**13), st.integers(0, 10**13))
def test_never_more_space_than_the_filesystem(
    folders: list[FolderSpace], total: int, free: int
) -> None:
    free = min(free, total)
    space = filesystem_space(folders, total, free)
    assert set(space) == {f.tier for f in folders}
    assert sum(cap for cap, _ in space.values()) <= min(total, sum(f.capacity for f in folders))
    for tier, (cap, _) in space.items():
        assert cap <= sum(f.capacity for f in folders if f.tier == tier)


def test_tier_space_counts_a_shared_filesystem_once(tmp_path: Path) -> None:
    # ssd0 and hdd1 are two folders of tmp_path's filesystem, as in the README's example
    cfg = config.load(storage_toml(tmp_path, tiers=("ssd", "hdd")))
    store = Store(cfg.storage)
    store.load("film", make_title(tmp_path / "src", "film"))
    store.close()
    total = shutil.disk_usage(tmp_path).total
    space = tier_space(cfg, set())
    assert set(space) == {"ssd", "hdd"}
    capacity = sum(cap for cap, _ in space.values())
    assert total - 2 <= capacity <= total  # once, give or take the split's rounding
    used = sum(u for _, u in space.values())
    assert title_bytes(tmp_path / "src" / "film") <= used <= total


def test_a_shared_folder_out_of_service_leaves_the_other_the_filesystem(tmp_path: Path) -> None:
    cfg = config.load(storage_toml(tmp_path, tiers=("ssd", "hdd")))
    Store(cfg.storage).close()
    total = shutil.disk_usage(tmp_path).total
    out = {str(cfg.storage.disks[0].path.resolve())}
    assert tier_space(cfg, out)["hdd"][0] == total and "ssd" not in tier_space(cfg, out)
