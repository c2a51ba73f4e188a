"""The fleet's view of the world as frozen values: sites, appliance snapshots, the fleet.

Steering (fleet/steering.py) and planning (fleet/planner.py) are pure functions over a
`FleetSnapshot`; the server rebuilds the snapshot on every heartbeat and never mutates one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from edgeflix import fillwindow
from edgeflix.configtypes import NAME_RE, is_wildcard_host, parse_base_url
from edgeflix.errors import ConfigError
from edgeflix.titlefiles import TitleFilesError, check_title_id
from fleet.errors import FleetInputError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ApplianceState = Literal["ok", "degraded", "failing", "unreachable", "drained"]
APPLIANCE_STATES: tuple[ApplianceState, ...] = (
    "ok",
    "degraded",
    "failing",
    "unreachable",
    "drained",
)
# States in which an appliance may take new sessions (degraded ranks after ok).
SERVING_STATES: frozenset[ApplianceState] = frozenset({"ok", "degraded"})


# Appliance and site names: one URL path segment, a TLS common name, a log field.


def check_name(name: str, what: str) -> str:
    if not NAME_RE.match(name):
        raise FleetInputError(
            f"{what} name {name[:80]!r} is not 1-64 letters, digits, '.', '_' or '-'"
        )
    return name


def check_title(title_id: str) -> str:
    """A title id as the origin and appliances accept it (one safe path component)."""
    try:
        return check_title_id(title_id)
    except TitleFilesError:
        raise FleetInputError(
            f"invalid title id {title_id[:80]!r}: use letters, digits, '.', '_' or '-' "
            "(no '/', no '..', at most 128 characters)"
        ) from None


def parse_prefix(text: str) -> Network:
    """A site prefix. An IPv4-mapped IPv6 one (::ffff:10.0.0.0/104) is the IPv4 prefix it
    maps, as parse_address makes the clients in it IPv4 addresses."""
    try:
        prefix = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise FleetInputError(f"'{text}' is not an IP prefix like 192.168.1.0/24") from None
    mapped = prefix.network_address.ipv4_mapped if prefix.version == 6 else None
    if mapped is not None and prefix.prefixlen >= 96:
        return ipaddress.IPv4Network((mapped, prefix.prefixlen - 96))
    return prefix


def parse_address(text: str) -> Address:
    """An address; IPv4-mapped IPv6 (what a dual-stack socket reports for an IPv4 client)
    is the IPv4 address, so it matches the site's IPv4 prefixes."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise FleetInputError(f"'{text[:80]}' is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_appliance_url(url: str) -> str:
    """The base URL players and peers reach an appliance at: http(s)://HOST[:PORT], HOST
    not a wildcard address. An appliance listening on all interfaces (0.0.0.0, [::]) with
    no public URL would otherwise register that, and players be steered to it."""
    try:
        base = parse_base_url(url)
    except ConfigError:
        raise FleetInputError(f"appliance URL '{url}' is not http(s)://HOST[:PORT]") from None
    host = urlsplit(base).hostname or ""
    if is_wildcard_host(host):
        raise FleetInputError(
            f"appliance URL '{base}' is a wildcard address (all interfaces), which no "
            "player can reach: set [fleet] public_url in the appliance's config to the URL "
            "players reach it at (e.g. http://192.168.1.10:8081)"
        )
    return base


@dataclass(frozen=True)
class FillWindow:
    """A site's daily local-time window such as 02:00-06:00; it may wrap past midnight, and
    00:00-24:00 (start == end) is always open. Open or not by the appliances' own rule, DST
    nights included (edgeflix/fillwindow.py)."""

    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, text: str) -> FillWindow:
        try:
            return cls(*fillwindow.parse_times(text))
        except fillwindow.WindowError as exc:
            raise FleetInputError(str(exc)) from None

    def is_open(self, now: dt.datetime, zone: dt.tzinfo) -> bool:
        """Open at instant `now` (aware) in `zone`, as the site's appliances decide it."""
        return fillwindow.FillWindow(self.start, self.end, zone).is_open(now)

    def __str__(self) -> str:
        # What plans carry to the appliances: it must parse back ("00:00-24:00", never the
        # empty "00:00-00:00").
        return fillwindow.format_times(self.start, self.end)


@dataclass(frozen=True)
class Site:
    name: str
    prefixes: tuple[Network, ...]
    fill_window: FillWindow = FillWindow(dt.time(2, 0), dt.time(6, 0))
    timezone: str = "UTC"

    @classmethod
    def build(
        cls,
        name: str,
        prefixes: Iterable[str],
        fill_window: str = "02:00-06:00",
        timezone: str = "UTC",
    ) -> Site:
        try:
            fillwindow.iana_zone(timezone)
        except fillwindow.WindowError as exc:
            raise FleetInputError(f"site {name}: {exc}") from None
        return cls(
            name=name,
            prefixes=tuple(parse_prefix(p) for p in prefixes),
            fill_window=FillWindow.parse(fill_window),
            timezone=timezone,
        )

    def in_fill_window(self, now: dt.datetime) -> bool:
        """`now` must be timezone-aware; DST nights as the appliance reads them."""
        return self.fill_window.is_open(now, fillwindow.iana_zone(self.timezone))


@dataclass(frozen=True)
class HeldTitle:
    """A title on an appliance: `digest` identifies its bytes, `complete` once verified."""

    digest: str
    complete: bool = True
    size_bytes: int = 0
    tier: str = ""

    def __reduce__(self) -> tuple[type[HeldTitle], tuple[str, bool, int, str]]:
        # Pickled by value (a planning round sends every appliance's titles to the planner
        # process): 5x faster than a dataclass's default, and the GIL is held throughout.
        return HeldTitle, (self.digest, self.complete, self.size_bytes, self.tier)


@dataclass(frozen=True)
class TierSpace:
    """Disk space of one storage tier of an appliance ("ssd" is the fast tier)."""

    tier: str
    capacity_bytes: int
    # Room taken on its disks: the appliance's titles (files.json included) and, on a disk
    # without max_bytes, other data on the filesystem too (fleet.proto TierSpace).
    used_bytes: int = 0
    # The most `used_bytes` may reach before the appliance refuses titles there (its high
    # watermarks); 0: not said (an older appliance), take `capacity_bytes`.
    fillable_bytes: int = 0

    @property
    def limit_bytes(self) -> int:
        """What the appliance fills the tier up to."""
        if 0 < self.fillable_bytes < self.capacity_bytes:
            return self.fillable_bytes
        return self.capacity_bytes


@dataclass(frozen=True)
class Appliance:
    """What the fleet last heard from one appliance (a heartbeat, plus registry state)."""

    name: str
    site: str
    url: str
    state: ApplianceState = "ok"
    capacity_bps: float = 1e9
    load_bps: float = 0.0
    connections: int = 0
    # title id → what is held; never mutated after construction.
    titles: Mapping[str, HeldTitle] = field(default_factory=dict)
    tiers: tuple[TierSpace, ...] = ()
    keys_version: int = 0  # the URL-token key set it reported running
    # Titles its last fill run found no room for (FillProgress.failures): the planner
    # places them elsewhere until a run of it succeeds or no longer tries them.
    no_room: frozenset[str] = frozenset()

    @property
    def utilisation(self) -> float:
        return self.load_bps / self.capacity_bps if self.capacity_bps > 0 else float("inf")

    @property
    def spare_bps(self) -> float:
        return max(self.capacity_bps - self.load_bps, 0.0)

    def holds_complete(self, title_id: str) -> bool:
        held = self.titles.get(title_id)
        return held is not None and held.complete

    def holds_older(self, title_id: str, digest: str | None) -> bool:
        """Holds the title complete, but not the version `digest` (when one is known)."""
        held = self.titles.get(title_id)
        return bool(digest) and held is not None and held.digest != digest

    @property
    def disk_bytes(self) -> int:
        return sum(t.capacity_bytes for t in self.tiers)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Titles as columns, not objects: each planning round sends every appliance to the
        # planner process (fleet/planning.py), and pickling thousands of HeldTitles one by
        # one held the GIL, and so stopped /steer, ten times as long.
        held = list(self.titles.values())
        columns = (
            tuple(self.titles),
            tuple(h.digest for h in held),
            bytes(h.complete for h in held),
            tuple(h.size_bytes for h in held),
            tuple(h.tier for h in held),
        )
        return _appliance_from_columns, (
            self.name, self.site, self.url, self.state, self.capacity_bps, self.load_bps,
            self.connections, self.tiers, columns, self.keys_version, self.no_room,
        )  # fmt: skip


def _appliance_from_columns(
    name: str,
    site: str,
    url: str,
    state: ApplianceState,
    capacity_bps: float,
    load_bps: float,
    connections: int,
    tiers: tuple[TierSpace, ...],
    columns: tuple[tuple[str, ...], tuple[str, ...], bytes, tuple[int, ...], tuple[str, ...]],
    keys_version: int,
    no_room: frozenset[str] = frozenset(),
) -> Appliance:
    titles = {t: HeldTitle(d, bool(c), n, tier) for t, d, c, n, tier in zip(*columns, strict=True)}
    return Appliance(
        name, site, url, state, capacity_bps, load_bps, connections, titles, tiers, keys_version,
        no_room,
    )  # fmt: skip


@dataclass(frozen=True)
class FleetSnapshot:
    """Sites and appliances at one instant, plus where the origin serves titles."""

    sites: tuple[Site, ...]
    appliances: tuple[Appliance, ...]
    origin_url: str = ""
    # The oldest key set that holds a key URLs may be signed with now (fleet/keys.py
    # signers): an appliance running an older one (just enrolled, or not synced since a
    # rotation) would refuse its URLs. 0: tokens are off, or no key yet.
    min_keys_version: int = 0
    # The origin's current files.json digest per title: steering prefers appliances holding
    # that version (a title being updated is on some appliances in both versions a while).
    digests: Mapping[str, str] = field(default_factory=dict)
    # Titles the origin listed once and no longer does (`origin rm`): not steered, though
    # appliances hold them until their next fill prunes them. A title the fleet has not
    # seen listed yet (published since the last poll) is not among them.
    withdrawn: frozenset[str] = frozenset()

    def site_of(self, address: Address) -> Site | None:
        """Longest prefix match over every site's prefixes (IPv4 and IPv6 alike)."""
        best: Site | None = None
        best_len = -1
        for site in self.sites:
            for prefix in site.prefixes:
                if (
                    prefix.version == address.version
                    and address in prefix
                    and prefix.prefixlen > best_len
                ):
                    best, best_len = site, prefix.prefixlen
        return best

    def site(self, name: str) -> Site | None:
        return next((s for s in self.sites if s.name == name), None)

    def in_site(self, name: str) -> tuple[Appliance, ...]:
        return tuple(a for a in self.appliances if a.site == name)
