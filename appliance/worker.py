"""One serving worker of `appliance run` (started by supervisor.py as `python -m appliance.worker`).

Single-threaded uvloop server on a SO_REUSEPORT socket shared with its siblings; reads the
index through its own read-only connection; writes its counters for the supervisor to merge.
Kept free of pydantic and the storage writer so an idle worker stays small.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from appliance.keyfile import KeyedSite, KeyFile
from appliance.server import ApplianceSite, HitSink
from edgeflix.http.runner import serve_forever
from edgeflix.http.server import ServerSettings, bind
from edgeflix.http.stats import ServerStats, title_traffic
from edgeflix.log import setup_logging


class CounterFile:
    """The worker's counters as JSON, replaced atomically, and per-title deltas to the sink."""

    def __init__(self, path: Path, site: ApplianceSite, hits: HitSink | None) -> None:
        self.path, self.site, self.hits = path, site, hits
        self._reported: dict[str, tuple[int, int]] = {}

    def __call__(self, stats: ServerStats) -> None:
        snap = stats.snapshot()
        snap["token_rejections"] = dict(self.site.token_rejections)
        snap["keys_generation"] = self.site.keys_generation
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(snap))
        os.replace(tmp, self.path)
        if self.hits is None:
            return
        traffic = title_traffic(stats)
        for title, (count, _) in traffic.items():
            delta = count - self._reported.get(title, (0, 0))[0]
            if delta:
                self.hits.hit(title, delta)
        self._reported = traffic
        if self.hits.due():
            self.hits.flush()


class ServingView:
    """The server's `refresh`: a value that moves whenever a route it remembered may be void,
    because the index changed or the key file changed what a URL grants (a SIGHUP reload,
    the fleet's keys). The keys are applied here, not on the tick, so no request falls
    between the site's new grants and the server forgetting its routes: one remembered
    while tokens were off would go on serving without a token. The counters report the new
    generation only after both happened."""

    def __init__(
        self, storage: Callable[[], object], key_file: KeyFile | None, site: KeyedSite
    ) -> None:
        self.storage, self.key_file, self.site = storage, key_file, site
        self.grants = 0  # bumped whenever the key file changed what a URL grants

    def __call__(self) -> object:
        changed = self.key_file is not None and self.key_file.refresh(self.site)
        if changed:
            self.grants += 1
        storage: object
        try:
            storage = self.storage()
        except Exception:
            if not changed:
                raise  # the server logs it and keeps its view
            storage = object()  # a view never seen: the routes go now, the index error later
        return self.grants, storage


def main() -> None:
    from appliance.index import IndexReader
    from appliance.mover import HitRecorder

    setup_logging()
    spec = json.loads(sys.stdin.read())
    index = Path(spec["index"])
    # Freshness is checked once per loop iteration (the server's `refresh`), not per request.
    locator = IndexReader(index, refresh_per_call=False)
    hits = HitRecorder(index)
    keys = {kid: base64.b64decode(secret) for kid, secret in spec["keys"].items()}
    site = ApplianceSite(locator, tokens_required=spec["tokens_required"], keys=keys)
    # SIGHUP reloads (and the fleet's keys) reach the worker through this file.
    key_file = KeyFile(Path(spec["keys_file"])) if spec.get("keys_file") else None
    if key_file is not None:
        key_file.refresh(site)
    counters = CounterFile(Path(spec["counters"]), site, hits)
    sock = bind(spec["host"], spec["port"], reuse_port=True)
    refresh = ServingView(locator.refresh, key_file, site)

    def ready() -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()

    try:
        serve_forever(
            site,
            ServerSettings(**spec["settings"]),
            sock,
            ready=ready,
            stop_timeout_s=spec["stop_timeout_s"],
            tick=counters,
            refresh=refresh,
        )
    finally:
        hits.flush()
        locator.close()


if __name__ == "__main__":
    main()
