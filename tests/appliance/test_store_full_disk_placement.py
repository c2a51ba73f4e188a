"""A disk of a tier with no room left (other data filled it, or its share of titles did)
takes no new files while another disk of the tier has room: a title is not refused for
lack of room on one disk when the rest of the tier can take it."""

from __future__ import annotations

from pathlib import Path

from appliance import config as appliance_config
from appliance.index import READY, title_files
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title

SIZES = tuple(20_000 + i * 1000 for i in range(24))


def write_config(tmp_path: Path, full_max: int, roomy_max: int) -> Path:
    config = tmp_path / "appliance.toml"
    config.write_text(
        f'[storage]\nindex = "{tmp_path / "index.sqlite"}"\ndisks = [\n'
        f'  {{ path = "{tmp_path / "full"}", tier = "ssd", max_bytes = {full_max} }},\n'
        f'  {{ path = "{tmp_path / "roomy"}", tier = "ssd", max_bytes = {roomy_max} }},\n]\n'
    )
    return config


def test_new_titles_go_round_a_disk_with_no_room(tmp_path: Path) -> None:
    full, roomy = tmp_path / "full", tmp_path / "roomy"
    for disk in (full, roomy):
        disk.mkdir()
    big = sum(SIZES) * 4
    # A first title lands on one disk (the other was out of service then)...
    cfg = appliance_config.load(write_config(tmp_path, big, big))
    store = Store(cfg.storage, out_of_service=[str(roomy)])
    try:
        store.load("first", make_title(tmp_path / "src", "first", SIZES))
    finally:
        store.close()
    # ... which is then over its high watermark (its quota cut to what it holds).
    cfg = appliance_config.load(write_config(tmp_path, sum(SIZES), big))
    store = Store(cfg.storage)
    try:
        second = make_title(tmp_path / "src", "second", SIZES)
        assert store.load("second", second).state == READY
        assert {f.disk for f in title_files(store.conn, "second")} == {str(roomy.resolve())}
        # The fill stages each file where the load will put it: the same disk.
        placer = store.placer("third", 0.0)
        assert {placer(f"v0/seg{i}.m4s") for i in range(20)} == {str(roomy.resolve())}
    finally:
        store.close()
