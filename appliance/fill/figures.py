"""The fill's figures for Prometheus `/metrics`, from the run state the fill publishes in
`[fill] staging/state.json` (runner.write_state): per title its state, bytes, retries and
files that failed their SHA-256. Pure over the document; server.py's metrics_text calls it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeflix.metrics import Sample

P = "edgeflix_appliance_fill_"
STATES = ("waiting", "downloading", "paused", "deferred", "loading", "ready", "held", "failed")
Family = tuple[str, str, str, list[Sample]]


def fill_families(doc: Mapping[str, Any] | None, now: float) -> list[Family]:
    """Gauges of the current (or last) fill run; no run yet gives the families empty, so a
    dashboard's queries work before the first fill."""
    titles: Mapping[str, Any] = (doc or {}).get("titles") or {}
    states = dict.fromkeys(STATES, 0)
    done, total, retries, bad = [], [], [], []
    for title_id, prog in sorted(titles.items()):
        if not isinstance(prog, Mapping):
            continue
        state = str(prog.get("state", "waiting"))
        states[state] = states.get(state, 0) + 1
        label = {"title": title_id}
        done.append(Sample(label, _num(prog.get("done"))))
        total.append(Sample(label, _num(prog.get("total"))))
        retries.append(Sample(label, _num(prog.get("retries"))))
        bad.append(Sample(label, _num(prog.get("digest_failures"))))
    updated = (doc or {}).get("updated")
    age = [Sample({}, max(now - updated, 0.0))] if isinstance(updated, int | float) else []
    return [
        (P + "titles", "gauge", "Titles of the current or last fill run, by state.",
         [Sample({"state": s}, n) for s, n in sorted(states.items())]),
        (P + "bytes_done", "gauge", "Bytes of a title verified or staged so far.", done),
        # Not `bytes_total`: this is a gauge, and `_total` is the counter suffix (promtool
        # lint, OpenMetrics); rate() over it would mean nothing.
        (P + "bytes_planned", "gauge", "Bytes of a title to fill, by its file list.", total),
        (P + "retries", "gauge", "Failed attempts in the run (resets, timeouts, 5xx...).",
         retries),
        (P + "hash_failures", "gauge", "Files whose bytes failed SHA-256 in the run (never "
         "stored).", bad),
        (P + "state_age_seconds", "gauge", "Seconds since the fill last published its state.",
         age),
    ]  # fmt: skip


def read_families(staging: Path, now: float) -> list[Family]:
    try:
        doc = json.loads((staging / "state.json").read_text())
    except (OSError, ValueError):
        doc = None
    return fill_families(doc if isinstance(doc, dict) else None, now)


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
