"""The fleet manager's background ticks (fleet/server.py runs `ticker` beside its
listeners): key rotation on schedule, re-planning, reading the origin's catalogue, saving
soft state; `TickHealth`, which says when the database stopped taking the ticks' writes
(a full disk), for /healthz and /metrics; and `CatalogueReads`, the one way the catalogue
is read, shared by the ticker's polls and /steer's misses (fleet/http.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from edgeflix.log import event
from fleet.catalogue import MissRead, OriginTitle, miss_read
from fleet.config import FleetConfig, OriginConfig
from fleet.errors import FleetError, FleetInputError
from fleet.model import check_title
from fleet.planning import Planning
from fleet.service import FleetService
from fleet.store import StoreError

log = logging.getLogger("fleet")
TICK_S = 1.0
SOFT_STATE_SAVE_S = 300.0
# Sooner while the database took no write since one failed: the save is retried, and its
# going through is what says the database takes writes again when nothing else writes.
SOFT_STATE_RETRY_S = 30.0
# A tick failing tick after tick (the database's disk full) is said once, then this often.
TICK_FAILED_LOG_S = 60.0
ORIGIN_TIMEOUT_S = 10.0
STORE_ACTION = (
    "free space on, or repair, the filesystem holding it: until then no enrolment, admin "
    "change, plan, key rotation or count is saved (steering and beats go on)"
)
# Longest a /steer for an unlisted title waits for the catalogue read it triggered or
# joined: a player's first request stays fast, and a slow origin is answered 404 (the read
# goes on, and the player's retry finds the title). Which misses wait at all: miss_read.
MISS_WAIT_S = 1.0
# The largest size a listing may give a title (what SQLite and the protos' size fields
# hold): a bigger one is no origin's, and overflowed float arithmetic on /steer's count.
MAX_TITLE_BYTES = 2**63 - 1


class OriginCatalog:
    """The origin's `GET /titles`, read every poll and parsed only when its bytes changed:
    thousands of titles parsed and looked up in the database every few seconds were, on
    the loop that answers /steer, tens of ms of stall for a catalogue that rarely moves."""

    def __init__(self, origin_url: str) -> None:
        self.url = origin_url.rstrip("/") + "/titles"
        self._digest = b""
        self._read = b""

    async def read(self, client: httpx.AsyncClient) -> list[OriginTitle] | None:
        """The titles, or None when the answer is the one applied last time."""
        resp = await client.get(self.url)
        resp.raise_for_status()
        digest = hashlib.sha256(resp.content).digest()
        if digest == self._digest:
            return None
        titles = catalog_from_json(resp.json())
        self._read = digest
        return titles

    def applied(self) -> None:
        """The titles read last are stored: the same answer is not applied again. Not
        before: a listing whose database write failed is applied again on the next poll."""
        self._digest = self._read


class CatalogueReads:
    """The origin's catalogue read and applied one read at a time: the ticker's polls
    (`poll`) and /steer's misses (`after_miss`) share the read in flight, and misses start
    one only as `miss_read` allows, so a flood of /steer for made-up names costs the origin
    at most one read per `[origin] miss_refresh_s`, and holds no connection waiting on an
    origin slow to answer."""

    def __init__(
        self,
        svc: FleetService,
        origin: OriginConfig,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.svc = svc
        self.origin = OriginCatalog(origin.url)
        self.on_miss = origin.refresh_on_miss
        self.every_s = origin.miss_refresh_s
        self.monotonic = monotonic
        self.reads = 0  # started, for tests and curious operators
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[Exception | None] | None = None
        self._last = float("-inf")  # when the last read started
        # The last read finished within a miss's wait (MISS_WAIT_S), applied or not: a down
        # origin refuses at once and a miss may wait for the next read; a hung one does not.
        self._ok = False
        self._waiting = 0  # misses waiting for a read now
        self._closed = False

    def _in_flight(self) -> bool:
        return self._task is not None and not self._task.done()

    def _read_now(self, trigger: str) -> asyncio.Task[Exception | None]:
        """The read in flight, or a new one."""
        if self._task is None or self._task.done():
            self._last = self.monotonic()
            self.reads += 1
            self._task = asyncio.get_running_loop().create_task(self._read(trigger))
        return self._task

    async def poll(self) -> Exception | None:
        """The ticker's poll: what the read failed with (an unreadable origin is logged
        here; a store error is the caller's to report), None when it was applied."""
        if self._closed:
            return None
        return await asyncio.shield(self._read_now("poll"))

    def _miss(self) -> MissRead:
        if not self.on_miss or self._closed:
            return "refuse"
        now, in_flight = self.monotonic(), self._in_flight()
        return miss_read(
            now, self._last, in_flight, self.every_s, origin_ok=self._ok, waiting=self._waiting
        )

    def may_help(self) -> bool:
        """Whether a /steer miss now would read the catalogue or wait for the read in
        flight (else it is a 404 at once, with no wait)."""
        return self._miss() != "refuse"

    async def after_miss(self, wait_s: float = MISS_WAIT_S) -> bool:
        """A /steer for an unlisted title: True once a read (the one in flight, or one
        started now) has applied the catalogue within `wait_s`, so the lookup is worth one
        more try; False at once when `miss_read` says not to wait, else when the read
        failed or is slower. Never raises: the 404 stands."""
        action = self._miss()
        if action == "refuse":
            return False
        task = self._read_now("steer")
        if action == "start":
            return False
        self._waiting += 1
        try:
            done, _ = await asyncio.wait({task}, timeout=wait_s)
        finally:
            self._waiting -= 1
        if not done or task.cancelled() or task.exception() is not None:
            return False
        return task.result() is None

    async def _read(self, trigger: str) -> Exception | None:
        started = self.monotonic()
        error = await self._read_apply(trigger)
        self._ok = self.monotonic() - started < MISS_WAIT_S
        return error

    async def _read_apply(self, trigger: str) -> Exception | None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=ORIGIN_TIMEOUT_S)
        try:
            titles = await self.origin.read(self._client)
        # Whatever reading and parsing its answer raises is the origin's fault (InvalidURL,
        # which is no HTTPError; JSON nested past the recursion limit), not a failed tick
        # that skips planning and saves, nor a /steer answered 500.
        except Exception as exc:
            # A steer's read fails at most once per miss_refresh_s; the ticker's polls
            # say the origin's state at the warning level.
            level = logging.WARNING if trigger == "poll" else logging.INFO
            error = str(exc) or type(exc).__name__  # a timeout's str is empty
            event(log, "fleet.origin_unreadable", level, error=error, trigger=trigger)
            return exc
        if titles is None:
            return None
        try:
            self.svc.set_origin_titles(titles)
        except (FleetError, sqlite3.Error) as exc:
            if trigger != "poll":  # the ticker's next poll reads it again and reports it
                event(log, "fleet.origin_listing_unsaved", logging.WARNING, error=str(exc))
            return exc
        self.origin.applied()
        return None

    async def aclose(self) -> None:
        """No more reads: the one in flight is cancelled, the client closed."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()


def catalog_from_json(doc: Any) -> list[OriginTitle]:
    """The origin's `GET /titles` answer; ValueError when it is not one (`[origin] url`
    names another server). Entries no origin makes (a title id that is no safe path
    component, a record that is not an object, a size that is no int64 count of bytes) are
    left out, not planned."""
    titles = doc.get("titles") if isinstance(doc, dict) else None
    if not isinstance(titles, list):
        raise ValueError("the answer to GET /titles has no 'titles' list: is [origin] url right?")
    out = []
    for t in titles:
        if not isinstance(t, dict) or not isinstance(t.get("id"), str):
            continue
        try:
            title_id = check_title(t["id"])
            # What an appliance stores: the media and files.json (an older origin lists
            # only the media; the planner's headroom absorbs the difference then).
            total = int(t.get("total_bytes") or 0) + int(t.get("files_json_bytes") or 0)
        # OverflowError: a size of 1e400, which JSON reads as infinity.
        except (FleetInputError, TypeError, ValueError, OverflowError):
            continue
        if not 0 <= total <= MAX_TITLE_BYTES:
            continue
        digest = t.get("digest")
        out.append(OriginTitle(title_id, digest if isinstance(digest, str) else "", total))
    if titles and not out:
        # Read as an empty catalogue it would withdraw every title from steering.
        raise ValueError(f"none of the {len(titles)} entries of GET /titles is a title")
    return out


class TickHealth:
    """How the background ticks and the database's writes fare, for the log, `/healthz` and
    `/metrics`. A failing tick is logged when the trouble starts, then once a minute with how
    many failed since: with the database's disk full every planning round failed, a line
    every 2 s that said nothing new and buried the rest.

    A failed store write stays the problem until the store takes one again (its changes
    count moves on a tick that does not fail): ticks that write nothing say nothing of the
    disk, and clearing on them made a full disk read healthy between planning rounds.
    Writes outside the ticks report here too (`write_failed`, `wrote`): an enrolment
    (fleet/grpc_api.py) or an operator's change through the admin API (fleet/http.py) that
    the database refused left /healthz "ok" while each one failed."""

    def __init__(self, db: str | Path, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db = str(db)
        self.monotonic = monotonic
        self.tick_problem: str | None = None  # why the last tick failed
        self.store_problem: str | None = None  # why the store's last write failed
        self._changes = 0  # the store's changes count when that write failed
        self._failed = 0  # ticks failed since the trouble started
        self._unlogged = 0  # of which not said yet
        self._logged_at = float("-inf")

    def problem(self) -> str | None:
        """What /healthz reports: None when all is well."""
        if self.store_problem is not None:
            return f"writes to {self.db} fail: {self.store_problem}"
        if self.tick_problem is not None:
            return f"background work (key rotation, planning) is failing: {self.tick_problem}"
        return None

    def store_writable(self) -> bool:
        return self.store_problem is None

    def failed(self, error: str, store: bool, changes: int) -> None:
        now = self.monotonic()
        first = self.problem() is None
        self.tick_problem = error
        if store:
            self.store_problem, self._changes = error, changes
        self._failed += 1
        self._unlogged += 1
        if not first and now - self._logged_at < TICK_FAILED_LOG_S:
            return
        if store:
            action = STORE_ACTION
        else:
            action = "retried every tick; key rotation and planning wait for it"
        fields: dict[str, Any] = {"error": error, "db": self.db, "action": action}
        if not first:
            fields["failed_ticks"] = self._unlogged
        event(log, "fleet.tick_failed", logging.ERROR, **fields)
        self._logged_at, self._unlogged = now, 0

    def passed(self, changes: int) -> None:
        if self.problem() is None:
            return
        self.tick_problem = None
        if self.store_problem is not None and changes != self._changes:
            self.store_problem = None
        self._recovered("fleet.tick_recovered")

    def write_failed(self, error: str, changes: int, what: str) -> None:
        """A write outside the ticks (`what`: "enrolment", "drain"…) failed for the store;
        `changes`: the store's changes count read after the failure. Logged when the store
        stops taking writes; while it does not, the ticks' own line (once a minute) says so."""
        first = self.store_problem is None
        self.store_problem, self._changes = error, changes
        if first:
            event(log, "fleet.store_write_failed", logging.ERROR, error=error, db=self.db,
                  write=what, action=STORE_ACTION)  # fmt: skip

    def wrote(self, changes: int) -> None:
        """A write outside the ticks went through; the store takes writes again if its
        changes count moved since the last one that failed (as `passed`)."""
        if self.store_problem is None or changes == self._changes:
            return
        self.store_problem = None
        self._recovered("fleet.store_recovered")

    def _recovered(self, name: str) -> None:
        if self.problem() is None:
            event(log, name, failed_ticks=self._failed, db=self.db)
            self._failed = self._unlogged = 0
            self._logged_at = float("-inf")


def store_changes(svc: FleetService) -> int:
    """Rows the manager's database connection has written since it opened (a statement
    whose transaction then failed counts too: read after a failure, it is the baseline)."""
    try:
        return svc.store.conn.total_changes
    except sqlite3.Error:  # closed: the manager is stopping
        return -1


async def ticker(
    svc: FleetService,
    config: FleetConfig,
    planning: Planning,
    monotonic: Callable[[], float] = time.monotonic,
    health: TickHealth | None = None,
    catalogue: CatalogueReads | None = None,
) -> None:
    """Key rotation, re-planning, catalog reads (through `catalogue`, shared with /steer)
    and keeping popularity; a failure is logged (TickHealth), never fatal. Intervals are
    timed on `monotonic`, not the wall clock: a wall clock stepped back (NTP, an RTC kept
    in local time) stopped planning, origin polls and soft-state saves for as long as the
    step, for good after a step of years. Closes `catalogue` when it stops."""
    health = health if health is not None else TickHealth(config.server.db, monotonic)
    last_plan = last_poll = float("-inf")
    last_save = monotonic()
    reads = catalogue if catalogue is not None else CatalogueReads(svc, config.origin, monotonic)
    try:
        while True:
            now = monotonic()
            try:
                svc.maybe_rotate_keys()
                if now - last_poll >= config.origin.poll_s:
                    last_poll = now
                    error = await reads.poll()  # an unreadable origin is logged there
                    if isinstance(error, FleetError | sqlite3.Error):
                        raise error
                # A new appliance gets its first plan on its first beats, not minutes later.
                fresh = svc.replan_due and all(n in svc.beats for n in svc.records)
                if fresh or now - last_plan >= config.planner.interval_s:
                    last_plan = now
                    await planning.replan()
                every = SOFT_STATE_SAVE_S if health.store_writable() else SOFT_STATE_RETRY_S
                if now - last_save >= every:
                    last_save = now
                    svc.save_soft_state()
            except (FleetError, sqlite3.Error) as exc:
                store = isinstance(exc, StoreError | sqlite3.Error)
                health.failed(str(exc), store, store_changes(svc))
            except Exception as exc:
                # Anything else too: a ticker that died would silently stop key rotation
                # and planning for as long as the manager runs.
                health.failed(f"{type(exc).__name__}: {exc}", False, store_changes(svc))
            else:
                health.passed(store_changes(svc))
            await asyncio.sleep(TICK_S)
    finally:
        await reads.aclose()
