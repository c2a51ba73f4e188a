"""What the fleet manager keeps across a restart beside its tables, in the store's meta
table: the decayed popularity counts (weeks of them, fleet/demand.py) and each appliance's
last beat. FleetService (fleet/service.py) saves them every few minutes and on stop
(fleet/ticker.py, fleet/server.py) and restores them when it starts.

Either may be missing or unreadable (never saved yet, or saved by another version): counts
then rebuild from beats, and an appliance with no beat kept is unreachable until it beats,
as it would be with nothing saved.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from edgeflix.log import event
from fleet.registry import ApplianceRecord, Beat, beat_from_dict, beat_to_dict
from fleet.store import Store

log = logging.getLogger("fleet")
POPULARITY_META = "popularity"
BEATS_META = "last_beats"


def save(
    store: Store,
    popularity: Mapping[str, Any],
    beats: Mapping[str, Beat],
    records: Mapping[str, ApplianceRecord],
) -> None:
    """Keep `popularity` (Demand.to_dict) and the beats of appliances still enrolled, with
    when each arrived."""
    store.set_meta(POPULARITY_META, json.dumps(popularity, separators=(",", ":")))
    kept = {name: {**beat_to_dict(b), "at": b.at} for name, b in beats.items() if name in records}
    store.set_meta(BEATS_META, json.dumps(kept, separators=(",", ":")))


def kept_popularity(store: Store) -> dict[str, Any]:
    """The popularity counts as `save` kept them ({} when none are)."""
    return _json_or_empty(store.meta(POPULARITY_META))


def restore_beats(
    store: Store, records: Mapping[str, ApplianceRecord], now: float, mono: float
) -> dict[str, Beat]:
    """Saved beats of appliances still enrolled, received when they were (`at`, on the wall
    clock `now` reads; `seen` that long before `mono`); one of another shape is skipped (its
    appliance is unreachable until it beats, as it would be with nothing saved)."""
    beats = {}
    for name, doc in _json_or_empty(store.meta(BEATS_META)).items():
        if name not in records or not isinstance(doc, dict):
            continue
        try:
            at = _saved_at(doc.get("at"), now)
            beats[name] = beat_from_dict(doc, at, mono - (now - at))
        except (AttributeError, KeyError, TypeError, ValueError):
            event(log, "fleet.beat_unrestored", logging.WARNING, appliance=name)
    return beats


def heard_since(beats: dict[str, Beat], started: float) -> dict[str, Beat]:
    """The beats as liveness measures them: one restored from before this manager started
    counts as received at its start (it could hear none before), so its appliance has the
    usual missed-beats grace to beat again; its real age stays in `beats` for display."""
    if all(b.seen is None or b.seen >= started for b in beats.values()):
        return beats
    return {
        name: b if b.seen is None or b.seen >= started else replace(b, seen=started)
        for name, b in beats.items()
    }


def _json_or_empty(raw: str | None) -> dict[str, Any]:
    """Kept state, or nothing when it is missing or unreadable (counts rebuild from beats)."""
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _saved_at(value: Any, now: float) -> float:
    """When a saved beat arrived: `now` if not saved (a file from before it was) or not a
    time, and at the latest `now` (saved while the clock was ahead, and set right since)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return now
    return min(float(value), now)
