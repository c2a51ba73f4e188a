"""The appliance's TOML config (`edgeflix appliance … --config FILE`), typed and validated once.

Every default works on one machine on loopback with data under ./var/. Environment
overrides use the prefix EDGEFLIX_APPLIANCE (e.g. EDGEFLIX_APPLIANCE__SERVE__WORKERS=2).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edgeflix.config import ConfigList, ConfigModel, ConfigPath, load_config
from edgeflix.configtypes import (
    FleetGrpcAddress,
    HostPort,
    Name,
    ReachableUrl,
    is_wildcard_host,
    parse_hostport,
)
from edgeflix.text import shown_bytes

ENV_PREFIX = "EDGEFLIX_APPLIANCE"
Tier = Literal["ssd", "hdd"]


class DiskConfig(ConfigModel):
    path: ConfigPath
    # Left out: detected from the block device under `path` (rotational flag).
    tier: Tier | None = None
    # Loads and fills place no title that would take the disk above `high`; a tier move
    # lands a title only below `low`, so moves leave room for the next load. Nothing
    # deletes titles to get a disk back down: the fleet's plan decides what a box holds
    # (titles dropped from it go at the next fill), or `appliance rm` by hand.
    high_watermark: float = Field(0.90, gt=0, le=1)
    low_watermark: float = Field(0.80, gt=0, le=1)
    # Cap on the bytes the appliance keeps on this disk (a disk shared with other data, or
    # tests); left out, the whole filesystem counts and the watermarks apply to its usage.
    # With it, what the index holds there counts, for placement and for health alike.
    max_bytes: int | None = Field(None, gt=0)

    @field_validator("path")
    @classmethod
    def _path_is_text(cls, path: Path) -> Path:
        # A disk's path is its key in the index (SQLite text) and a label in /metrics and
        # /status: bytes that are not UTF-8 (an environment override decodes them as lone
        # surrogates) would fail there at every use, long after the config was accepted.
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{shown_bytes(str(path))} is not UTF-8 text; rename the folder or mount "
                "the disk at a UTF-8 path"
            ) from None
        return path

    @model_validator(mode="after")
    def _watermarks_ordered(self) -> DiskConfig:
        if self.low_watermark > self.high_watermark:
            raise ValueError("low_watermark must not exceed high_watermark")
        return self


class StorageConfig(ConfigModel):
    disks: ConfigList[DiskConfig] = (DiskConfig(path=Path("var/appliance/disk0")),)
    index: ConfigPath = Path("var/appliance/index.sqlite")
    # Requests per second (decayed) above which a title belongs on the fast tier.
    hot_rate: float = Field(1.0, ge=0)
    decay_half_life_s: float = Field(600.0, gt=0)
    # Background tier moves are throttled to this many bytes/s.
    move_bytes_per_s: int = Field(50 * 1024 * 1024, gt=0)
    # How often the background mover folds request counts into rates and plans moves.
    move_interval_s: float = Field(10.0, gt=0)
    # The background scrub re-reads every stored file at this many bytes/s, forever, to find
    # damage that keeps a file's size (appliance/scrub.py); 0 turns it off.
    scrub_bytes_per_s: int = Field(10 * 1024 * 1024, ge=0)
    # The running daemon reconciles the index with the disks this often (appliance/sweeper.py):
    # what a one-off command killed mid-way left behind goes without a restart.
    reconcile_interval_s: float = Field(300.0, gt=0)
    # After a title is replaced, the old version's segments the new one lacks stay servable
    # this long for the players that started on it (appliance/replaced.py); 0: not kept.
    replaced_keep_s: float = Field(6 * 3600.0, ge=0)

    @field_validator("disks")
    @classmethod
    def _some_disks(cls, disks: tuple[DiskConfig, ...]) -> tuple[DiskConfig, ...]:
        if not disks:
            raise ValueError("at least one disk is needed")
        paths = [d.path.resolve() for d in disks]
        if len(set(paths)) != len(paths):
            raise ValueError("a disk path is listed twice")
        return disks


class ServeConfig(ConfigModel):
    listen: HostPort = "127.0.0.1:8081"
    workers: int = Field(1, ge=1, le=256)
    header_timeout_s: float = Field(10.0, gt=0)
    keepalive_timeout_s: float = Field(75.0, gt=0)
    max_connections: int = Field(4096, ge=1)
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    # Off: bodies are copied through user space (file systems without sendfile; tests of both).
    sendfile: bool = True
    # A response whose bytes are not cached waits this long for a reader thread to read them
    # from the disk (the event loop never does: a dying disk would stall every connection of
    # the worker), then gets a 503, or is cut if its head went out.
    disk_timeout_s: float = Field(10.0, gt=0)
    # Reader threads per worker for those reads; a disk stuck in a read holds one.
    disk_threads: int = Field(4, ge=1, le=64)
    # SIGTERM: stop accepting, let in-flight responses finish for this long, then close.
    shutdown_timeout_s: float = Field(10.0, ge=0)


class KeyConfig(ConfigModel):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    secret: str  # base64, at least 16 bytes once decoded

    @field_validator("secret")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("secret must be base64") from None
        if len(raw) < 16:
            raise ValueError("secret must be at least 16 bytes")
        return value

    def secret_bytes(self) -> bytes:
        return base64.b64decode(self.secret)


class AuthConfig(ConfigModel):
    tokens: Literal["required", "off"] = "off"
    keys: ConfigList[KeyConfig] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> AuthConfig:
        # "required" with no keys is checked in ApplianceConfig: the fleet may supply them.
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("a key id is listed twice")
        return self


class AdminConfig(ConfigModel):
    listen: HostPort = "127.0.0.1:8082"


class FillConfig(ConfigModel):
    # A JSON fill plan (appliance/fill/plan.py); the fleet manager delivers it later.
    plan: ConfigPath | None = None
    # Fill state and each title's files.json; the files themselves download, resumable,
    # into `.staging/` on the disk each will be stored on (renamed in once verified).
    staging: ConfigPath = Path("var/appliance/fill")
    # Against sick sources (appliance/fill/transport.py Timeouts, retry.py RetryPolicy):
    # a response head must arrive whole within head_timeout_s, each read within
    # read_timeout_s, and a body slower than low_speed_bps over low_speed_s is dropped.
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    head_timeout_s: float = Field(30.0, gt=0)
    low_speed_bps: float = Field(1024.0, ge=0)
    low_speed_s: float = Field(60.0, gt=0)
    # Failed attempts per source before the next one (backoff from retry_base_s, doubling
    # up to retry_max_s, with jitter); a file failing its SHA-256 is fetched again this often.
    attempts_per_source: int = Field(4, ge=1, le=100)
    digest_restarts: int = Field(2, ge=0, le=20)
    retry_base_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    # A title whose site peer lacks it yet (still filling it from the origin) waits for it
    # (appliance/fill/peerwait.py): peer_wait_s first, doubling up to 4x, at most peer_waits
    # times a run (0: straight to the origin), never into the last peer_window_share of the
    # window (nor into the title's transfer time at the cap): that is kept for the origin.
    peer_wait_s: float = Field(120.0, gt=0, le=24 * 3600.0)
    peer_waits: int = Field(4, ge=0, le=20)
    peer_window_share: float = Field(0.25, ge=0, le=1)

    @model_validator(mode="after")
    def _retry_order(self) -> FillConfig:
        if self.retry_max_s < self.retry_base_s:
            raise ValueError("retry_max_s must be at least retry_base_s")
        return self


class FleetLinkConfig(ConfigModel):
    """`[fleet]`: enrol with the fleet manager and heartbeat to it (appliance/fleetlink.py).
    Without `url` the appliance runs on its own config alone."""

    # The fleet manager's gRPC address, HOST:PORT.
    url: FleetGrpcAddress | None = None
    # Name in the fleet registry (and on the steering answer); left out: the top-level name.
    name: Name | None = None
    # One-time token from `edgeflix fleet join-token --site S`; the site comes from it.
    join_token: str = ""
    # Base URL players and peers reach this appliance at; left out: http://<serve.listen>
    # (so needed when that listens on all interfaces, 0.0.0.0 or [::]).
    # A wildcard host (0.0.0.0, [::]) is refused: the fleet sends players to this URL.
    public_url: ReachableUrl | None = None
    # Until the fleet states its own interval (EnrolResponse / HeartbeatResponse).
    heartbeat_s: float = Field(5.0, gt=0)
    # Serve on cached keys and plan this long after the last answer from the fleet.
    grace_period_s: float = Field(72 * 3600.0, gt=0)
    # Past the grace period: "degrade" keeps serving with the cached keys, reports degraded
    # health and deletes nothing on the stale plan; "stop" also drops the keys, so token
    # URLs are refused (Open Connect's behaviour).
    after_grace: Literal["degrade", "stop"] = "degrade"
    # Key pair, enrolment, plan and keys; left out: `fleet/` next to the storage index.
    state_dir: ConfigPath | None = None
    # A fleet with `[server] tls = true`: its CA certificate (fleet-ca.pem, copied by the
    # operator) and its enrolment listener (`[server] enrol_grpc`); after enrolment the
    # link uses `url` with the client certificate the fleet issued.
    ca: ConfigPath | None = None
    enrol_url: FleetGrpcAddress | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> FleetLinkConfig:
        if (self.ca is None) != (self.enrol_url is None):
            raise ValueError("[fleet] ca and enrol_url go together (a fleet running TLS)")
        return self


class ApplianceConfig(ConfigModel):
    name: Name = "appliance"
    storage: StorageConfig = StorageConfig()
    serve: ServeConfig = ServeConfig()
    auth: AuthConfig = AuthConfig()
    admin: AdminConfig = AdminConfig()
    fill: FillConfig = FillConfig()
    fleet: FleetLinkConfig = FleetLinkConfig()

    @model_validator(mode="after")
    def _keys_when_required(self) -> ApplianceConfig:
        if self.auth.tokens == "required" and not self.auth.keys and self.fleet.url is None:
            raise ValueError(
                "tokens = 'required' needs at least one key in [auth] keys or a [fleet] url"
            )
        return self

    @model_validator(mode="after")
    def _public_url_when_wildcard(self) -> ApplianceConfig:
        # The URL the fleet steers players to is http://<serve.listen> unless given; a
        # wildcard address (all interfaces) is no address a player can reach.
        if self.fleet.url is None or self.fleet.public_url is not None:
            return self
        host, _ = parse_hostport(self.serve.listen)
        if is_wildcard_host(host):
            raise ValueError(
                f"[serve] listen = '{self.serve.listen}' listens on all interfaces: set "
                "[fleet] public_url to the URL players reach this appliance at "
                "(e.g. http://192.168.1.10:8081)"
            )
        return self

    def fleet_state_dir(self) -> Path:
        return self.fleet.state_dir or self.storage.index.parent / "fleet"


def load(path: Path | None) -> ApplianceConfig:
    """Load an appliance config. Relative disk/index paths are relative to the working directory."""
    return load_config(ApplianceConfig, path, env_prefix=ENV_PREFIX)
