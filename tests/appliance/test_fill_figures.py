"""The fill's /metrics families from a run's state document."""

from __future__ import annotations

from appliance.fill.figures import fill_families
from edgeflix.metrics import render


def test_families_from_a_run() -> None:
    doc = {
        "updated": 100.0,
        "titles": {
            "a": {"state": "ready", "done": 10, "total": 10, "retries": 3, "digest_failures": 1},
            "b": {"state": "failed", "done": 4, "total": 9, "retries": 8, "digest_failures": 3},
            "c": {"state": "held"},
            "junk": "not a title",
        },
    }
    text = render(fill_families(doc, now=130.0))
    assert 'edgeflix_appliance_fill_titles{state="failed"} 1' in text
    assert 'edgeflix_appliance_fill_titles{state="ready"} 1' in text
    assert 'edgeflix_appliance_fill_titles{state="downloading"} 0' in text
    assert 'edgeflix_appliance_fill_hash_failures{title="b"} 3' in text
    assert 'edgeflix_appliance_fill_retries{title="a"} 3' in text
    assert 'edgeflix_appliance_fill_bytes_planned{title="b"} 9' in text
    assert "edgeflix_appliance_fill_state_age_seconds 30" in text


def test_no_run_yet_still_has_the_families() -> None:
    text = render(fill_families(None, now=0.0))
    assert "# TYPE edgeflix_appliance_fill_titles gauge" in text
    assert 'edgeflix_appliance_fill_titles{state="failed"} 0' in text
    # A dashboard can chart titles waiting for their site peer before any has had to.
    assert 'edgeflix_appliance_fill_titles{state="deferred"} 0' in text
    assert "edgeflix_appliance_fill_state_age_seconds" in text  # HELP/TYPE, no sample


def test_only_counters_end_in_total() -> None:
    """`_total` is the counter suffix (promtool check metrics, OpenMetrics): a gauge named so
    reads as a counter to rate() and lint."""
    for name, kind, _, _ in fill_families(None, now=0.0):
        assert name.endswith("_total") == (kind == "counter"), name
