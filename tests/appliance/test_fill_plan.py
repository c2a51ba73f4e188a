"""The fill plan model and the reconcile core."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.fill.plan import FillPlan, PlanError, PlannedTitle, load_plan, parse_plan
from appliance.fill.reconcile import file_tasks, reconcile, remaining_bytes
from edgeflix.titlefiles import FileEntry, TitleFiles

D1, D2 = "1" * 64, "2" * 64


def test_plan_roundtrip(tmp_path: Path) -> None:
    body = {
        "titles": [
            {"id": "bunny", "digest": D1, "sources": ["http://peer:8081/", "http://origin:8080"]}
        ],
        "window": "02:00-06:00",
        "timezone": "Europe/Berlin",
        "cap_bps": 100_000_000,
        "streams": 8,
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(body))
    plan = load_plan(path)
    assert plan.titles[0].sources == ("http://peer:8081", "http://origin:8080")
    assert plan.fill_window() is not None and plan.streams == 8


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"titles": [{"id": "../x", "sources": ["http://o"]}]}, "invalid title id"),
        ({"titles": [{"id": "a", "sources": []}]}, "titles.0.sources"),
        ({"titles": [{"id": "a", "sources": ["ftp://o"]}]}, "http"),
        ({"titles": [{"id": "a", "sources": ["http://127.0.0.1:99999"]}]}, "Port out of range"),
        ({"titles": [{"id": "a", "sources": ["http://[::1"]}]}, "not a usable URL"),
        ({"titles": [{"id": "a", "sources": ["http://o:abc"]}]}, "not a usable URL"),
        ({"titles": [{"id": "a", "sources": ["http://o:0"]}]}, "port 0"),
        ({"titles": [{"id": "a", "sources": ["http://o/a b"]}]}, "not a usable URL"),
        ({"titles": [{"id": "a", "sources": [f"http://{'a' * 70}.org"]}]}, "not a usable URL"),
        ({"titles": [{"id": "a", "sources": ["http://o"]}] * 2}, "twice"),
        ({"window": "late"}, "HH:MM"),
        ({"timezone": "Nowhere/Land"}, "time zone"),
        ({"cap_bps": 0}, "cap_bps"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_plans(body: dict[str, object], match: str) -> None:
    with pytest.raises(PlanError, match=match):
        parse_plan(json.dumps(body).encode(), "plan.json")


def test_a_plan_nested_too_deeply_is_one_error() -> None:
    with pytest.raises(PlanError, match="nested too deeply"):
        parse_plan(b"[" * 200_000 + b"]" * 200_000, "plan.json")


def test_missing_plan_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no such fill plan"):
        load_plan(tmp_path / "nope.json")


def _t(title_id: str, digest: str | None = None) -> PlannedTitle:
    return PlannedTitle(id=title_id, digest=digest, sources=("http://o",))


def test_reconcile() -> None:
    plan = FillPlan(titles=(_t("a", D1), _t("b"), _t("c", D2)))
    rec = reconcile(plan, {"a": D1, "b": D2, "c": D1, "old": D1})
    assert [t.id for t in rec.fetch] == ["c"]  # c is held in another version
    assert rec.keep == ("a", "b")
    assert rec.delete == ("old",)
    assert reconcile(FillPlan(titles=(_t("a"),), prune=False), {"old": D1}).delete == ()


def _model(sizes: dict[str, int]) -> TitleFiles:
    files = tuple(FileEntry(path=p, size=s, sha256="0" * 64) for p, s in sizes.items())
    return TitleFiles(
        id="t",
        title="t",
        duration=1,
        segment_seconds=1,
        created="2024-01-01T00:00:00Z",
        renditions=(),
        files=files,
        total_bytes=sum(sizes.values()),
    )


def test_file_tasks_skip_complete_resume_partial_largest_first() -> None:
    model = _model({"a": 10, "b": 100, "c": 50, "d": 5})
    tasks = file_tasks(model, complete={"a": 10, "d": 4}, partial={"b": 40, "c": 60})
    assert [(t.entry.path, t.offset) for t in tasks] == [("b", 40), ("c", 0), ("d", 0)]
    assert remaining_bytes(tasks) == 60 + 50 + 5


def test_files_a_re_publish_changes_under_their_name_come_first() -> None:
    """A re-publish at the origin changes master.m3u8 or the poster under the same name but
    keeps the old segments for hours (origin/replaced.py): a fill that took the small
    mutable files first finishes the version it started instead of failing on them last."""
    seg = "v0/seg_0123456789_00000.m4s"
    model = _model({seg: 900, "v0/init_0123456789.mp4": 50, "master.m3u8": 10, "poster.jpg": 80})
    tasks = file_tasks(model, complete={}, partial={})
    assert [t.entry.path for t in tasks] == [
        "poster.jpg", "master.m3u8", seg, "v0/init_0123456789.mp4",
    ]  # fmt: skip
