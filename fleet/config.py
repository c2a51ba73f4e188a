"""fleet.toml, typed and validated once: `[server]`, `[[sites]]` and the tuning sections.

Every default works on one machine on loopback with data under ./var/. Environment
overrides use the prefix EDGEFLIX_FLEET (e.g. EDGEFLIX_FLEET__SERVER__HTTP=127.0.0.1:0).
The pure cores take their policies from here through the `*_policy()` helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edgeflix.config import ConfigList, ConfigModel, ConfigPath, load_config
from edgeflix.configtypes import HostPort, Name, ReachableUrl
from edgeflix.tokens import MAX_TTL_S
from fleet.errors import FleetInputError
from fleet.keys import KeyPolicy
from fleet.model import Network, Site
from fleet.plans import PlannerPolicy
from fleet.popularity import PopularityPolicy
from fleet.steering import SteeringPolicy

ENV_PREFIX = "EDGEFLIX_FLEET"


class ServerConfig(ConfigModel):
    grpc: HostPort = "127.0.0.1:7070"
    http: HostPort = "127.0.0.1:7080"
    db: ConfigPath = Path("var/fleet/fleet.sqlite")
    # "token": appliances need a one-time join token; "open": anyone on the network may
    # enrol (loopback demos only).
    enrolment: Literal["token", "open"] = "token"
    # With "open": at most this many appliances enrolled, past which Enrol is refused (each
    # one is a row, a planner entry and a share of every snapshot). Join tokens: no limit.
    open_enrolment_limit: int = Field(1000, ge=1)
    # The HTTP admin API (all but /steer, /healthz, /metrics; fleet/admin.py): "loopback"
    # lets callers on this machine in without the token (admin-token beside `db`), "token"
    # asks every caller for it.
    admin: Literal["loopback", "token"] = "loopback"
    # TLS on every listener (fleet/tls.py), one server certificate from the fleet's own CA
    # naming their hosts and `tls_names`: `grpc` then requires a client certificate issued
    # at enrolment; `enrol_grpc` is a second, server-authenticated listener where appliances
    # without a certificate yet call Enrol (and services call Steer); `http` serves HTTPS
    # only (TLS 1.2 at least), since it carries the admin token and signed /steer URLs. The
    # CA is made at first start beside `db` (fleet-ca.pem, public: copy it to appliances as
    # `[fleet] ca`, and give its path to the CLI as $EDGEFLIX_FLEET_CA with an https:// URL).
    tls: bool = False
    enrol_grpc: HostPort | None = None
    # Extra names (DNS or IP) for the server certificate, beyond the listeners' hosts.
    tls_names: ConfigList[str] = ()
    # Whether `http` is HTTPS: unset, as `tls` says. false keeps it plain HTTP with tls on
    # (Prometheus scrapes and health checks as before tls covered HTTP); the admin token of
    # callers from other machines then crosses the network in clear, which `fleet serve`
    # warns of (fleet.http_in_clear). true needs tls: the certificate comes from its CA.
    http_tls: bool | None = None
    # Longest a client may take over the TLS handshake on the HTTPS listener before its
    # connection is closed. asyncio's own default (60 s) let a client that trickles or
    # withholds its hello hold a descriptor that long before any HTTP bound applies (those
    # start once the handshake is done); a real handshake takes a few round trips.
    tls_handshake_timeout_s: float = Field(10.0, gt=0, le=60)

    @model_validator(mode="after")
    def _tls_listeners(self) -> ServerConfig:
        if self.tls and self.enrol_grpc is None:
            raise ValueError("server.tls needs server.enrol_grpc (HOST:PORT for enrolment)")
        if self.http_tls and not self.tls:
            raise ValueError(
                "server.http_tls = true needs server.tls = true (the HTTPS certificate comes "
                "from the fleet's CA)"
            )
        return self

    @property
    def https(self) -> bool:
        """Whether the HTTP listener serves HTTPS (only)."""
        return self.tls if self.http_tls is None else self.http_tls


class SiteConfig(ConfigModel):
    name: Name
    prefixes: ConfigList[str] = ()
    fill_window: str = "02:00-06:00"
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _valid_site(self) -> SiteConfig:
        try:
            self.to_site()
        except FleetInputError as exc:
            raise ValueError(str(exc)) from None
        return self

    def to_site(self) -> Site:
        return Site.build(self.name, self.prefixes, self.fill_window, self.timezone)


class OriginConfig(ConfigModel):
    # Where the origin serves /titles/<id>/…: the last-resort steering target and fill source,
    # so an address players and appliances can reach (http(s)://HOST[:PORT], no wildcard).
    url: ReachableUrl = "http://127.0.0.1:8080"
    # How often the catalog (GET /titles) is read from the origin.
    poll_s: float = Field(30.0, gt=0)
    # A /steer for a title the last read did not list reads the catalogue at once (and asks
    # again), so a title published since that read plays at once, not after up to poll_s:
    # at most one read in flight, and none sooner than this after the one before, so a
    # flood of /steer for made-up names makes no flood of origin reads.
    refresh_on_miss: bool = True
    miss_refresh_s: float = Field(5.0, gt=0)


class HeartbeatConfig(ConfigModel):
    interval_s: float = Field(5.0, gt=0)
    # An appliance missing this many beats in a row is `unreachable`.
    missed_beats: int = Field(3, ge=1)


class SteeringConfig(ConfigModel):
    load_threshold: float = Field(0.9, gt=0, le=1)
    epsilon: float = Field(0.25, ge=0)
    min_urls: int = Field(2, ge=1)
    max_urls: int = Field(3, ge=1)
    origin_fallback: bool = True
    # At most what `appliance sign` allows: a longer lifetime makes URLs no token can carry.
    token_ttl_s: int = Field(4 * 3600, gt=0, le=MAX_TTL_S)
    # Bind URLs to the client address (breaks players that change address mid-session).
    bind_client_ip: bool = False


class PlannerConfig(ConfigModel):
    # How often plans are recomputed (appliances fill only inside their window anyway).
    interval_s: float = Field(300.0, gt=0)
    hysteresis: float = Field(0.25, ge=0)
    replica_load_share: float = Field(0.5, gt=0)
    # Share of what each appliance tier takes (its high watermarks) that plans fill: the rest
    # is headroom for files.json, which the origin's sizes leave out, and size drift.
    fill_ratio: float = Field(0.98, gt=0, le=1)
    max_fill_bytes: int | None = Field(None, gt=0)
    half_life_s: float = Field(14 * 86_400.0, gt=0)
    young_half_life_s: float = Field(86_400.0, gt=0)
    young_age_s: float = Field(28 * 86_400.0, ge=0)
    miss_session_share: float = Field(0.5, gt=0, le=1)
    boost_rank: int = Field(5, ge=1)
    boost_factor: float = Field(1.0, ge=0)


class KeysConfig(ConfigModel):
    rotate_every_s: float = Field(24 * 3600.0, gt=0)
    lead_s: float = Field(60.0, ge=0)
    skew_s: float = Field(60.0, ge=0)


class FleetConfig(ConfigModel):
    server: ServerConfig = ServerConfig()
    sites: ConfigList[SiteConfig] = ()
    origin: OriginConfig = OriginConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    steering: SteeringConfig = SteeringConfig()
    planner: PlannerConfig = PlannerConfig()
    keys: KeysConfig = KeysConfig()

    @model_validator(mode="after")
    def _consistent(self) -> FleetConfig:
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError("a site name is listed twice")
        owner: dict[Network, str] = {}
        for site in self.site_list():
            for prefix in site.prefixes:
                other = owner.setdefault(prefix, site.name)
                if other != site.name:
                    # Longest-prefix match cannot choose between equal prefixes.
                    raise ValueError(f"prefix {prefix} is listed in sites {other} and {site.name}")
        if self.steering.min_urls > self.steering.max_urls:
            raise ValueError("steering.min_urls must not exceed steering.max_urls")
        if self.keys.rotate_every_s <= self.keys.lead_s:
            raise ValueError("keys.rotate_every_s must exceed keys.lead_s")
        return self

    def site_list(self) -> tuple[Site, ...]:
        return tuple(s.to_site() for s in self.sites)

    def steering_policy(self) -> SteeringPolicy:
        s = self.steering
        return SteeringPolicy(
            s.load_threshold, s.epsilon, s.min_urls, s.max_urls, s.origin_fallback
        )

    def planner_policy(self) -> PlannerPolicy:
        p = self.planner
        return PlannerPolicy(
            hysteresis=p.hysteresis,
            replica_load_share=p.replica_load_share,
            fill_ratio=p.fill_ratio,
            max_fill_bytes=p.max_fill_bytes,
        )

    def popularity_policy(self) -> PopularityPolicy:
        p = self.planner
        return PopularityPolicy(
            half_life_s=p.half_life_s,
            young_half_life_s=p.young_half_life_s,
            young_age_s=p.young_age_s,
            miss_session_share=p.miss_session_share,
            boost_rank=p.boost_rank,
            boost_factor=p.boost_factor,
        )

    def key_policy(self) -> KeyPolicy:
        k = self.keys
        return KeyPolicy(
            rotate_every_s=k.rotate_every_s,
            max_token_ttl_s=float(self.steering.token_ttl_s),
            lead_s=k.lead_s,
            skew_s=k.skew_s,
        )


def load(path: Path | None) -> FleetConfig:
    """Load fleet.toml (or all defaults). Relative paths are relative to the working directory."""
    return load_config(FleetConfig, path, env_prefix=ENV_PREFIX)
