"""What the planner needs to plan what fits, on the wire: each tier's used and fillable bytes
and the fill's failures, from the appliance's figures (appliance/fleetlink_figures.py,
fleetlink_core.build_beat) through the manager's reading of a beat (fleet/grpc_api.py) to
the registry's beat and snapshot (fleet/registry.py), saved and restored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.fleetlink_core import BeatFigures, CountLedger, build_beat, no_room
from appliance.fleetlink_figures import FolderSpace, filesystem_fillable, filesystem_space
from edgeflix.proto.gen import fleet_pb2
from fleet.errors import FleetInputError
from fleet.grpc_api import MAX_HELD_TITLES, beat_from_proto, fill_failures
from fleet.model import TierSpace
from fleet.registry import (
    ApplianceRecord,
    FillFailure,
    beat_from_dict,
    beat_to_dict,
    build_snapshot,
)

NO_ROOM = (
    "title film does not fit on the hdd tier: needs 702226 bytes in all, 702226 bytes on "
    "/d0 with 640000 free below its high watermark"
)


def figures(**kw: object) -> BeatFigures:
    base: dict[str, object] = dict(
        health="ok", reasons=(), capacity_bps=1e9, load_bps=0.0, connections=0,
        tiers={"hdd": (2_200_000, 700_000)}, titles=(), plan_version=3, keys_version=1,
    )  # fmt: skip
    base.update(kw)
    return BeatFigures(**base)  # type: ignore[arg-type]


def sent(f: BeatFigures) -> fleet_pb2.HeartbeatRequest:
    ledger = CountLedger()
    return build_beat("a1", ledger.next_batch(), f)


# -- the appliance's side -------------------------------------------------------------------


def test_a_capped_disk_takes_titles_up_to_its_high_watermark() -> None:
    folder = FolderSpace("hdd", 2_200_000, 700_000, True, high_watermark=0.9)
    assert filesystem_space([folder], 10**12, 10**11) == {"hdd": (2_200_000, 700_000)}
    assert filesystem_fillable([folder], 10**12, 10**11) == {"hdd": 1_980_000}


def test_a_disk_without_max_bytes_counts_other_data_and_the_filesystems_free_space() -> None:
    # 3 MB filesystem, 1.5 MB of a foreign file on it: used 1.5 MB, full at 2.7 MB (0.9).
    folder = FolderSpace("hdd", 3_000_000, 0, False, high_watermark=0.9)
    assert filesystem_space([folder], 3_000_000, 1_500_000) == {"hdd": (3_000_000, 1_500_000)}
    assert filesystem_fillable([folder], 3_000_000, 1_500_000) == {"hdd": 2_700_000}
    # A capped folder on a nearly full filesystem: no more room than the filesystem has.
    capped = FolderSpace("hdd", 2_000_000, 100_000, True, high_watermark=0.9)
    assert filesystem_fillable([capped], 10**9, 50_000) == {"hdd": 150_000}


def test_the_fills_staging_is_no_foreign_data_and_replaced_files_no_used_room() -> None:
    # 400 kB staged for the title being filled (the planner counts that title whole) and
    # 100 kB of a replaced version's files (a load deletes them when it needs the room).
    folder = FolderSpace("hdd", 3_000_000, 600_000, False, 0.9, staged=400_000, reclaimable=100_000)
    space = filesystem_space([folder], 3_000_000, 3_000_000 - 1_000_000)
    assert space == {"hdd": (3_000_000, 500_000)}
    assert filesystem_fillable([folder], 3_000_000, 2_000_000) == {"hdd": 2_700_000}


def test_a_failed_titles_reason_says_whether_it_found_no_room() -> None:
    assert no_room(NO_ROOM)
    assert no_room(f"title x: cannot write its files on /d0: {os.strerror(28)}")
    assert not no_room("title x: no source could provide files.json (HTTP 404)")
    assert not no_room("")


def test_the_beat_carries_fillable_bytes_and_failures_with_their_reasons() -> None:
    req = sent(
        figures(
            fillable={"hdd": 1_980_000},
            fill_failed=("film", "show"),
            fill_reasons={"film": NO_ROOM, "show": "x" * 1000},
        )
    )
    tier = req.tiers[0]
    assert (tier.capacity_bytes, tier.used_bytes, tier.fillable_bytes) == (
        2_200_000, 700_000, 1_980_000,
    )  # fmt: skip
    assert list(req.fill.failed_titles) == ["film", "show"]  # what older managers read
    failures = [(f.title_id, f.no_room, len(f.reason)) for f in req.fill.failures]
    assert failures == [("film", True, len(NO_ROOM)), ("show", False, 300)]


# -- the manager's side ---------------------------------------------------------------------


def test_the_manager_keeps_used_and_fillable_bytes_and_the_failures() -> None:
    req = sent(figures(fillable={"hdd": 1_980_000}, fill_failed=("film",),
                       fill_reasons={"film": NO_ROOM}))  # fmt: skip
    beat = beat_from_proto(req, now=10.0)
    assert beat.tiers == (TierSpace("hdd", 2_200_000, 700_000, 1_980_000),)
    assert beat.tiers[0].limit_bytes == 1_980_000
    assert beat.fill_failures == (FillFailure("film", NO_ROOM, True),)
    record = ApplianceRecord("a1", "home", "http://a1", b"k" * 32, 0.0)
    snap = build_snapshot((), {"a1": record}, {"a1": beat}, 10.0, 5.0, 3, "")
    assert snap.appliances[0].no_room == frozenset({"film"})


def test_an_older_appliances_failures_are_ids_and_its_capacity_is_what_it_fills() -> None:
    req = fleet_pb2.HeartbeatRequest(
        appliance="a1", sequence=1,
        tiers=[fleet_pb2.TierSpace(tier="hdd", capacity_bytes=9, used_bytes=4)],
        fill=fleet_pb2.FillProgress(failed_titles=["film", "../etc"]),
    )  # fmt: skip
    beat = beat_from_proto(req, now=1.0)
    assert beat.fill_failures == (FillFailure("film", "", False),)  # no made-up path ids
    assert beat.tiers[0].limit_bytes == 9


def test_a_fillable_figure_over_the_capacity_is_the_capacity() -> None:
    tier = fleet_pb2.TierSpace(tier="hdd", capacity_bytes=100, used_bytes=5, fillable_bytes=10**15)
    req = fleet_pb2.HeartbeatRequest(appliance="a1", sequence=1, tiers=[tier])
    assert beat_from_proto(req, now=1.0).tiers[0].fillable_bytes == 100


def test_failures_are_bounded_and_an_unchanged_list_is_the_previous_one() -> None:
    many = fleet_pb2.FillProgress(failed_titles=["t"] * (MAX_HELD_TITLES + 1))
    with pytest.raises(FleetInputError, match="failed titles"):
        fill_failures(many)
    one = fleet_pb2.FillProgress(
        failures=[fleet_pb2.FillFailure(title_id="film", reason="a\nb  c", no_room=False)]
    )
    first = fill_failures(one)
    assert first == (FillFailure("film", "a b c", False),)  # one line
    assert fill_failures(one, first) is first


def test_a_saved_beat_keeps_tier_figures_and_failures_and_old_ones_still_load() -> None:
    req = sent(figures(fillable={"hdd": 1_980_000}, fill_failed=("film",),
                       fill_reasons={"film": NO_ROOM}))  # fmt: skip
    beat = beat_from_proto(req, now=10.0)
    doc = json.loads(json.dumps(beat_to_dict(beat)))
    back = beat_from_dict(doc, at=20.0)
    assert back.tiers == beat.tiers and back.fill_failures == beat.fill_failures
    old = {**doc, "tiers": [["hdd", 2_200_000]]}
    del old["fill_failures"]
    restored = beat_from_dict(old, at=20.0)
    assert restored.tiers == (TierSpace("hdd", 2_200_000),) and restored.fill_failures == ()


def test_fill_figures_read_the_reasons_of_the_last_runs_failures(tmp_path: Path) -> None:
    from appliance import config as appliance_config
    from appliance.fleetlink_figures import fill_figures

    toml = tmp_path / "appliance.toml"
    toml.write_text(f'[storage]\ndisks = [{{ path = "{tmp_path}/d0" }}]\n'
                    f'[fill]\nstaging = "{tmp_path}/staging"\n')  # fmt: skip
    (tmp_path / "staging").mkdir()
    state = {"titles": {"film": {"state": "failed", "error": NO_ROOM},
                        "show": {"state": "ready"}}}  # fmt: skip
    (tmp_path / "staging" / "state.json").write_text(json.dumps(state))
    figures = fill_figures(appliance_config.load(toml), None, ())
    assert figures.failed == {"film": NO_ROOM} and (figures.done, figures.total) == (0, 0)


def test_an_appliance_crosses_to_the_planner_process_with_its_room_and_failures() -> None:
    import pickle

    from fleet.model import Appliance

    box = Appliance(
        "a1", "home", "http://a1", tiers=(TierSpace("hdd", 9, 4, 8),), no_room=frozenset({"t"})
    )
    assert pickle.loads(pickle.dumps(box)) == box


def test_a_beat_details_a_bounded_number_of_failures_and_the_manager_keeps_all() -> None:
    from appliance.fleetlink_core import MAX_DETAILED_FAILURES

    ids = tuple(f"t{i:04d}" for i in range(MAX_DETAILED_FAILURES + 10))
    req = sent(figures(fill_failed=ids, fill_reasons=dict.fromkeys(ids, NO_ROOM)))
    assert len(req.fill.failures) == MAX_DETAILED_FAILURES and len(req.fill.failed_titles) == len(
        ids
    )
    kept = beat_from_proto(req, now=1.0).fill_failures
    assert [f.title_id for f in kept] == list(ids)
    assert all(f.no_room for f in kept[:MAX_DETAILED_FAILURES])
    assert not any(f.no_room or f.reason for f in kept[MAX_DETAILED_FAILURES:])


def test_a_failure_reason_reaches_the_operators_terminal_without_control_characters() -> None:
    # An appliance's reason is printed by `fleet show`: an escape sequence in it would drive
    # the operator's terminal (clear it, retitle it, hide lines).
    hostile = "no room\x1b]0;pwned\x07 \x1b[2J\x00here"
    got = fill_failures(
        fleet_pb2.FillProgress(failures=[fleet_pb2.FillFailure(title_id="film", reason=hostile)])
    )
    assert got == (FillFailure("film", "no room]0;pwned [2Jhere", False),)
