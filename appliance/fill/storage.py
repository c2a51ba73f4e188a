"""The fill client's view of the title store (appliance/store.py), through its public API:
what is servable, load a finished staging folder, remove a title; and taking a dead disk's
files out of service so those titles are re-filled onto the remaining disks.
"""

from __future__ import annotations

from pathlib import Path

from appliance.config import StorageConfig
from appliance.index import INCOMPLETE, MISSING, OK, READY, transaction
from appliance.mover import RateBook
from appliance.store import Store


class StoreStorage:
    """Adapts Store to runner.Storage. SQLite connections belong to the thread that opened
    them, so the Store is opened lazily by the first call, in the runner's storage thread."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.config)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def held(self) -> dict[str, str]:
        # Incomplete titles (a file lost with a disk) are not held: the fill fetches them again.
        return {t.id: t.digest for t in self.store.listing() if t.state == READY}

    def load(self, title_id: str, folder: Path) -> None:
        # The observed request rate picks the tier, exactly as `appliance load` does.
        book = RateBook(self.store.config.index, self.store.config.decay_half_life_s)
        try:
            rate = book.rate(title_id)
        finally:
            book.close()
        self.store.load(title_id, folder, replace=True, rate=rate)

    def remove(self, title_id: str) -> None:
        self.store.remove(title_id)


def mark_disk_missing(store: Store, disk_id: str) -> list[str]:
    """Every file the index places on `disk_id` becomes missing and its titles incomplete (no
    longer served: players get 404 and fail over). Returns the titles affected."""
    with transaction(store.conn) as conn:
        titles = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT title FROM files WHERE disk = ? AND state = ?", (disk_id, OK)
            )
        ]
        conn.execute(
            "UPDATE files SET state = ? WHERE disk = ? AND state = ?", (MISSING, disk_id, OK)
        )
        conn.executemany(
            "UPDATE titles SET state = ? WHERE id = ? AND state = ?",
            [(INCOMPLETE, t, READY) for t in titles],
        )
    return sorted(titles)
