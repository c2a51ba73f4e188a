"""Tier moves in the background: request counts from the serving workers in, title moves out.

How counts travel: each serving worker counts hits per title in memory (`HitRecorder.hit`, the
server's per-request callback) and every few seconds appends them to the `hits` table of a small
SQLite file beside the index (`index.hits.sqlite`, so workers never contend with the index's
writer). One process, the daemon's main process, owns a `Tiering`: `tick()` drains that table
into decayed per-title rates (tiering.py; persisted in the same file, so a restart does not make
every title look cold), plans moves and runs them through `Store.move`, throttled to
`storage.move_bytes_per_s`. `MoverThread` calls `tick()` periodically; serving never waits on it.
A failed move waits out a backoff (tiering.backoff_after) before its title is tried again, and
its write errors are reported against their disk (diskwatch.DiskWatch.write_failed, through the
daemon); disks whose writes fail take no moves (`not_writable`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import tiering
from appliance.disks import SYSFS, CapacityError, StorageError
from appliance.index import READY, all_titles, title_files
from appliance.placement import blamed_disks, withheld
from appliance.safefiles import UNLINK_GRACE_S, Throttle
from edgeflix.log import event

if TYPE_CHECKING:
    # Serving workers import this module for HitRecorder: keep pydantic and the store out.
    from appliance.config import StorageConfig, Tier
    from appliance.store import Store

log = logging.getLogger("appliance.mover")
FLUSH_EVERY_S = 5.0
# A worker's flush gives up quickly when the file is busy and keeps its counts for next time:
# it runs on the serving loop and must never hold requests up.
_WORKER_BUSY_S = 0.05


def hits_path(index: Path) -> Path:
    return index.with_name(index.name + ".hits.sqlite")


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    try:
        return _open_hits(path, timeout)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError):
            raise  # busy or unopenable: the caller retries later
        # Damaged. It holds only request counts and decayed rates, which rebuild themselves
        # from traffic: start a fresh one rather than stop loads and tiering for good.
        event(log, "hits.damaged", logging.WARNING, path=str(path), reason=str(exc))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return _open_hits(path, timeout)


def _open_hits(path: Path, timeout: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=timeout)
    try:
        # Plain SQL rather than sqlite-utils here: this runs in every serving worker.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hits (title TEXT NOT NULL, count INTEGER NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS rates (title TEXT PRIMARY KEY, value REAL NOT NULL, "
            "at REAL NOT NULL)"
        )
        problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            raise sqlite3.DatabaseError(problem)
    except BaseException:
        conn.close()
        raise
    return conn


class HitRecorder:
    """The serving worker's side: `hit(title)` per request, `flush()` every few seconds."""

    def __init__(
        self,
        index: Path,
        *,
        flush_every_s: float = FLUSH_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = hits_path(index)
        self._pending: Counter[str] = Counter()
        self._conn: sqlite3.Connection | None = None
        self._every = flush_every_s
        self._clock = clock
        self._last = clock()

    def hit(self, title_id: str, count: int = 1) -> None:
        self._pending[title_id] += count

    def due(self) -> bool:
        return bool(self._pending) and self._clock() - self._last >= self._every

    def flush(self) -> int:
        """Write the pending counts; returns how many hits went out (0 if the file was busy)."""
        self._last = self._clock()
        if not self._pending:
            return 0
        batch = dict(self._pending)
        try:
            if self._conn is None:
                self._conn = _connect(self._path, _WORKER_BUSY_S)
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT INTO hits (title, count) VALUES (?, ?)", batch.items())
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            event(log, "hits.flush_deferred", logging.DEBUG, reason=str(exc))
            return 0
        self._pending.subtract(batch)
        self._pending = +self._pending  # drop the zeros
        return sum(batch.values())

    def close(self) -> None:
        self.flush()
        if self._conn is not None:
            self._conn.close()


class RateBook:
    """The main process's side: drains worker counts into decayed per-title rates."""

    def __init__(
        self, index: Path, half_life_s: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._conn = _connect(hits_path(index), 30.0)
        self._half_life = half_life_s
        self._clock = clock

    def drain(self) -> dict[str, int]:
        """Fold every pending hit into the rates; returns the counts folded in."""
        now = self._clock()
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            counts = dict(
                self._conn.execute("SELECT title, SUM(count) FROM hits GROUP BY title").fetchall()
            )
            for title_id, count in counts.items():
                old = self._conn.execute(
                    "SELECT value, at FROM rates WHERE title = ?", (title_id,)
                ).fetchone()
                new = tiering.observe(
                    tiering.Rate(*old) if old else None, int(count), now, self._half_life
                )
                self._conn.execute(
                    "INSERT OR REPLACE INTO rates (title, value, at) VALUES (?, ?, ?)",
                    (title_id, new.value, new.at),
                )
            self._conn.execute("DELETE FROM hits")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return {title_id: int(count) for title_id, count in counts.items()}

    def rates(self) -> dict[str, float]:
        now = self._clock()
        rows = self._conn.execute("SELECT title, value, at FROM rates").fetchall()
        if any(at > now for _, _, at in rows):
            # Stamped while the clock was ahead, and set right since: stamped now in the file
            # too, or every later read would take them as fresh again (tiering.rebased).
            self._conn.execute("UPDATE rates SET at = ? WHERE at > ?", (now, now))
        return {
            title_id: tiering.decayed(tiering.Rate(value, at), now, self._half_life)
            for title_id, value, at in rows
        }

    def rate(self, title_id: str) -> float:
        return self.rates().get(title_id, 0.0)

    def forget(self, keep: set[str]) -> None:
        """Drop the rates of titles no longer on the appliance."""
        known = {row[0] for row in self._conn.execute("SELECT title FROM rates")}
        gone = known - keep
        if gone:
            self._conn.executemany("DELETE FROM rates WHERE title = ?", [(t,) for t in gone])

    def close(self) -> None:
        self._conn.close()


def title_rate(index: Path, half_life_s: float, title_id: str) -> float:
    """A title's decayed request rate for choosing its tier at load; 0 (cold) when the hit
    file cannot be read, since a tier hint is no reason to refuse a load."""
    try:
        book = RateBook(index, half_life_s)
        try:
            return book.rate(title_id)
        finally:
            book.close()
    except (sqlite3.Error, OSError) as exc:
        event(log, "hits.unreadable", logging.WARNING, path=str(hits_path(index)), reason=str(exc))
        return 0.0


class Tiering:
    """One round of tiering: drain hits, plan moves, run them (blocking; call off the loop)."""

    def __init__(
        self,
        store: Store,
        book: RateBook,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        grace_s: float = UNLINK_GRACE_S,
        backoffs: dict[str, tiering.Backoff] | None = None,
        on_write_error: Callable[[str, OSError], None] | None = None,
    ) -> None:
        """`backoffs`: titles whose last moves failed (title → when to try again, on
        `clock`), updated in place, so the caller keeps them from round to round.
        `on_write_error(disk, error)`: a move's failed write, with the disk it was on."""
        self.store, self.book = store, book
        self._clock, self._sleep, self._grace = clock, sleep, grace_s
        # Titles whose move waits for room: said once, not every round (the figures in the
        # reason drift with every write), and tried each round, to move once room appears.
        self._waiting: set[str] = set()
        self.backoffs = {} if backoffs is None else backoffs
        self._on_write_error = on_write_error

    def tick(self, should_stop: Callable[[], bool] = lambda: False) -> list[tiering.Move]:
        """Returns the moves that were carried out."""
        self.book.drain()
        titles = all_titles(self.store.conn)
        self.book.forget({t.id for t in titles})
        placed: dict[str, Tier] = {t.id: t.tier for t in titles if t.state == READY}  # type: ignore[misc]
        config = self.store.config
        plan = tiering.plan_moves(placed, self.book.rates(), config.hot_rate, self.store.tiers)
        throttle = Throttle(config.move_bytes_per_s, self._clock, self._sleep)
        done = []
        planned = {m.title_id for m in plan}
        self._waiting &= planned
        for title_id in set(self.backoffs) - planned:
            del self.backoffs[title_id]  # no longer to be moved: a later move starts afresh
        for move in tiering.due(plan, self.backoffs, self._clock()):
            if should_stop():
                break
            try:
                moved = self.store.move(
                    move.title_id,
                    move.to_tier,
                    throttle=throttle,
                    should_stop=should_stop,
                    grace_s=self._grace,
                    sleep=self._sleep,
                )
            except CapacityError as exc:
                if move.title_id not in self._waiting:
                    event(log, "title.move_waits_for_room", logging.INFO,
                          title=move.title_id, to=move.to_tier, reason=str(exc))  # fmt: skip
                self._waiting.add(move.title_id)
                continue
            except InterruptedError as exc:  # stopping: the title is not to blame
                event(
                    log, "title.move_failed", logging.WARNING, title=move.title_id, reason=str(exc)
                )
                continue
            except (StorageError, OSError) as exc:
                self._failed(move, exc)
                continue
            self._waiting.discard(move.title_id)
            self.backoffs.pop(move.title_id, None)
            if moved:
                done.append(move)
        return done

    def _failed(self, move: tiering.Move, exc: StorageError | OSError) -> None:
        """Log it, back the title off, report a failed write against its disk, and drop a
        file the move found damaged."""
        now = self._clock()
        wait = tiering.backoff_after(self.backoffs.get(move.title_id), now)
        self.backoffs[move.title_id] = wait
        event(log, "title.move_failed", logging.WARNING, title=move.title_id, reason=str(exc),
              failures=wait.failures, retry_in_s=round(wait.until - now, 1))  # fmt: skip
        if isinstance(exc, OSError) and self._on_write_error is not None:
            # Only the destination tier's disks are written; a path elsewhere is the source.
            written = [d.id for d in self.store.disks_of(move.to_tier)]
            for disk, error in blamed_disks([exc], written).items():
                self._on_write_error(disk, error)
        self._drop_if_damaged(exc)

    def _drop_if_damaged(self, exc: BaseException) -> None:
        """A file the move found damaged is dropped as verify and the scrub drop one
        (repair.drop): missing, its title incomplete, so no longer served, and no longer
        moved either (only ready titles are), until a fill brings it back whole. Under the
        title's lock, and only while the file is the one the move read and still fails its
        check: nothing changed in between."""
        from appliance.repair import Report, check_content, drop
        from appliance.tiermove import DamagedSource

        if not isinstance(exc, DamagedSource):
            return
        found, store = exc.file, self.store
        with store.locks.hold(found.title, wait=False) as held:
            if not held:
                return  # someone else has it now; the next round looks again
            current = [f for f in title_files(store.conn, found.title) if f.path == found.path]
            if current != [found]:
                return
            problem = check_content(found)
            if problem:
                drop(store, found.title, [(found, f"{problem} (found by a tier move)")], Report())


class MoverThread(threading.Thread):
    """Runs `Tiering.tick()` every `interval_s` (default: `storage.move_interval_s`) in the
    background until `stop()`."""

    def __init__(
        self,
        config: StorageConfig,
        *,
        interval_s: float | None = None,
        sysfs: Path | None = None,
        out_of_service: Callable[[], set[str]] = set,
        not_writable: Callable[[], set[str]] = set,
        on_write_error: Callable[[str, OSError], None] | None = None,
    ):
        """`not_writable`: disks that take no moves now (the health monitor's: read-only,
        full, failing their writes); `on_write_error`: see Tiering."""
        super().__init__(name="tier-mover", daemon=True)
        self._config, self._sysfs, self._out_of_service = config, sysfs, out_of_service
        self._not_writable, self._on_write_error = not_writable, on_write_error
        self._interval = config.move_interval_s if interval_s is None else interval_s
        self._stop_event = threading.Event()
        self._backoffs: dict[str, tiering.Backoff] = {}  # kept from round to round

    def run(self) -> None:
        # The book is opened inside the loop: a hits file that cannot be opened now (a
        # folder in its place, a full disk) must not end tiering for the daemon's lifetime.
        book: RateBook | None = None
        try:
            while not self._stop_event.wait(self._interval):
                try:
                    if book is None:
                        book = RateBook(self._config.index, self._config.decay_half_life_s)
                    self._tick(book)
                except (StorageError, sqlite3.Error, OSError) as exc:
                    event(log, "tiering.tick_failed", logging.WARNING, reason=str(exc))
        finally:
            if book is not None:
                book.close()

    def _tick(self, book: RateBook) -> None:
        from appliance.store import Store

        # A store per round: disks the health monitor took out (or gave back) since the last
        # round are left out of placement, and a disk dead at start cannot kill the thread.
        # The store's SQLite connection must be made on the thread that uses it.
        sysfs = SYSFS if self._sysfs is None else self._sysfs
        store = Store(self._config, out_of_service=self._out_of_service(), sysfs=sysfs)
        try:
            store.disks = withheld(store.disks, self._not_writable())
            tiers = Tiering(
                store, book, sleep=self._interruptible_sleep, backoffs=self._backoffs,
                on_write_error=self._on_write_error,
            )  # fmt: skip
            tiers.tick(self._stop_event.is_set)
        finally:
            store.close()

    def _interruptible_sleep(self, seconds: float) -> None:
        self._stop_event.wait(seconds)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop_event.set()
        self.join(timeout)
