"""The origin's titles as its listings said them (fleet/ticker.py reads `GET /titles` and
hands each answer to FleetService.set_origin_titles): what is planned, what steering may hand
out, which counts popularity keeps (fleet/demand.py). No I/O but a log line: the store's
record of listings (release times, withdrawn titles) comes in with each one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from edgeflix.log import event
from fleet.plans import CatalogTitle
from fleet.registry import Beat

log = logging.getLogger("fleet")


class CatalogueMisses(Protocol):
    """A fresh read of the origin's catalogue for steering's misses, HTTP /steer and gRPC
    Steer (ticker.CatalogueReads)."""

    def may_help(self) -> bool: ...

    async def after_miss(self) -> bool: ...


@dataclass(frozen=True)
class OriginTitle:
    id: str
    digest: str
    total_bytes: int


class Catalogue:
    """The last listing's state. `withdrawn`: see FleetSnapshot.withdrawn, as of the
    origin's last listing, kept in the store: a restart with the origin unreachable refuses
    them still."""

    def __init__(self, withdrawn: frozenset[str]) -> None:
        self.titles: dict[str, OriginTitle] = {}
        self.read = False  # the origin listed titles at least once (see planned)
        # What /steer may hand out: the titles of the origin's last listing of any since
        # this start, None until one (see take).
        self.listed: frozenset[str] | None = None
        self.releases: dict[str, float] = {}
        self.withdrawn = withdrawn

    def take(
        self,
        listing: dict[str, OriginTitle],
        releases: dict[str, float],
        withdrawn: frozenset[str],
    ) -> None:
        """The origin answered its listing, recorded in the store as `releases`, `withdrawn`."""
        self.titles, self.releases, self.withdrawn = listing, releases, withdrawn
        # An empty listing is taken as neither the catalogue nor a withdrawal (an origin
        # pointed at a mistyped or fresh store would prune every appliance and refuse every
        # title at once): appliances keep and serve what they hold until it lists titles.
        self.read = bool(listing)
        if listing:
            # Steering refuses (404) a title not listed: its origin URL would 404 and no
            # appliance is planned to hold it. One ingested since the last poll makes
            # /steer read the catalogue at once (see miss_read: one read at a time, none
            # sooner than [origin] miss_refresh_s after the last, so no client makes the
            # manager call the origin at will, nor waits long on a slow one). Before a
            # listing of titles since this start (the origin unreachable, or listing
            # nothing) nothing is refused this way, and a title no appliance holds goes to
            # the origin; an empty listing keeps the one before.
            self.listed = frozenset(listing)
        else:
            kept = "appliances keep and serve what they hold until the origin lists titles"
            event(log, "fleet.origin_empty", logging.WARNING, action=kept)

    def planned(self, beats: Iterable[Beat]) -> dict[str, CatalogTitle]:
        """The origin's titles. Until it has listed some (unreachable since the manager
        started, or listing none), the titles appliances report (`beats`) stand in for it;
        after that, a title the origin no longer lists (withdrawn) is planned nowhere, so
        appliances prune it."""
        out: dict[str, CatalogTitle] = {}
        if not self.read:
            for beat in beats:
                for tid, held in beat.titles.items():
                    if held.complete and held.size_bytes > 0:
                        out.setdefault(tid, CatalogTitle(held.size_bytes, held.digest))
        for t in self.titles.values():
            out[t.id] = CatalogTitle(t.total_bytes, t.digest)
        return out

    def digests(self) -> dict[str, str]:
        """Each listed title's digest (steering prefers holders of its current version)."""
        return {t.id: t.digest for t in self.titles.values()}

    def countable(self, title: str, beat: Beat) -> bool:
        """Whether a beat's count for `title` is kept: the origin lists it, or (until the
        origin has listed titles) it listed it once or the sender holds it. Each title
        counted is an entry in popularity, kept for weeks and saved: an appliance's made-up
        ids, a million a beat, made gigabytes of them and stalled every planning round."""
        if self.read:
            return title in self.titles
        return title in self.releases or title in beat.titles


MissRead = Literal["join", "read", "start", "refuse"]
# A miss waits only for a read that started this recently: a healthy origin answers in
# tens of ms, so a read out longer is a slow or hung origin's. A miss waiting on it held its
# connection (a request in flight, which the connection cap never evicts) for up to
# ticker.MISS_WAIT_S, and with the origin hung a read was out all the time: a flood of
# made-up names held every connection and locked players out.
MISS_JOIN_S = 0.2
# The most misses waiting at once, however healthy the origin; the rest are 404 at once.
MISS_WAITERS_MAX = 32


def miss_read(
    now: float,
    last_read: float,
    in_flight: bool,
    every_s: float,
    *,
    origin_ok: bool,
    waiting: int,
    join_s: float = MISS_JOIN_S,
    waiters_max: int = MISS_WAITERS_MAX,
) -> MissRead:
    """What a /steer for a title the catalogue does not list does: `join` (wait for) the
    read of the catalogue in flight, start a `read` and wait for it, `start` one and answer
    404 now, or `refuse` (404 at once, no read). Any read counts (the ticker's polls too): a
    flood of made-up names costs the origin at most one read per `every_s`, one at a time.

    A miss waits only while the origin answers promptly (`origin_ok`: the last read ended
    within a miss's wait, applied or not: a down origin refuses at once, a hung one does
    not), fewer than `waiters_max` wait already (`waiting`), and for a read that started
    less than `join_s` ago: no slow or hung origin holds players' connections. With the
    origin slow a read still starts (`start`), so its recovery is seen."""
    may_wait = origin_ok and waiting < waiters_max
    if in_flight:
        return "join" if may_wait and now - last_read < join_s else "refuse"
    if now - last_read < every_s:
        return "refuse"
    return "read" if may_wait else "start"
