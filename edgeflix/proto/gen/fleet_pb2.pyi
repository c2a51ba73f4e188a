from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Health(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_UNSPECIFIED: _ClassVar[Health]
    HEALTH_OK: _ClassVar[Health]
    HEALTH_DEGRADED: _ClassVar[Health]
    HEALTH_FAILING: _ClassVar[Health]
HEALTH_UNSPECIFIED: Health
HEALTH_OK: Health
HEALTH_DEGRADED: Health
HEALTH_FAILING: Health

class EnrolRequest(_message.Message):
    __slots__ = ("name", "join_token", "public_key", "url", "tls_public_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TLS_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    join_token: str
    public_key: bytes
    url: str
    tls_public_key: bytes
    def __init__(self, name: _Optional[str] = ..., join_token: _Optional[str] = ..., public_key: _Optional[bytes] = ..., url: _Optional[str] = ..., tls_public_key: _Optional[bytes] = ...) -> None: ...

class EnrolResponse(_message.Message):
    __slots__ = ("appliance", "site", "heartbeat_interval_ms", "client_cert_pem", "ca_cert_pem")
    APPLIANCE_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    appliance: str
    site: str
    heartbeat_interval_ms: int
    client_cert_pem: bytes
    ca_cert_pem: bytes
    def __init__(self, appliance: _Optional[str] = ..., site: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., client_cert_pem: _Optional[bytes] = ..., ca_cert_pem: _Optional[bytes] = ...) -> None: ...

class TierSpace(_message.Message):
    __slots__ = ("tier", "capacity_bytes", "used_bytes", "fillable_bytes")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILLABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    tier: str
    capacity_bytes: int
    used_bytes: int
    fillable_bytes: int
    def __init__(self, tier: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., fillable_bytes: _Optional[int] = ...) -> None: ...

class HeldTitle(_message.Message):
    __slots__ = ("title_id", "digest", "complete", "size_bytes", "tier")
    TITLE_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    title_id: str
    digest: str
    complete: bool
    size_bytes: int
    tier: str
    def __init__(self, title_id: _Optional[str] = ..., digest: _Optional[str] = ..., complete: _Optional[bool] = ..., size_bytes: _Optional[int] = ..., tier: _Optional[str] = ...) -> None: ...

class TitleCounts(_message.Message):
    __slots__ = ("title_id", "requests", "bytes")
    TITLE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    title_id: str
    requests: int
    bytes: int
    def __init__(self, title_id: _Optional[str] = ..., requests: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class TitleCountsBatch(_message.Message):
    __slots__ = ("counts",)
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedCompositeFieldContainer[TitleCounts]
    def __init__(self, counts: _Optional[_Iterable[_Union[TitleCounts, _Mapping]]] = ...) -> None: ...

class FillFailure(_message.Message):
    __slots__ = ("title_id", "reason", "no_room")
    TITLE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NO_ROOM_FIELD_NUMBER: _ClassVar[int]
    title_id: str
    reason: str
    no_room: bool
    def __init__(self, title_id: _Optional[str] = ..., reason: _Optional[str] = ..., no_room: _Optional[bool] = ...) -> None: ...

class FillProgress(_message.Message):
    __slots__ = ("plan_version", "bytes_done", "bytes_total", "failed_titles", "failures")
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FAILED_TITLES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    plan_version: int
    bytes_done: int
    bytes_total: int
    failed_titles: _containers.RepeatedScalarFieldContainer[str]
    failures: _containers.RepeatedCompositeFieldContainer[FillFailure]
    def __init__(self, plan_version: _Optional[int] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., failed_titles: _Optional[_Iterable[str]] = ..., failures: _Optional[_Iterable[_Union[FillFailure, _Mapping]]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("appliance", "sequence", "health", "health_detail", "capacity_bps", "load_bps", "connections", "tiers", "titles", "counts_zstd", "plan_version", "keys_version", "fill", "url", "titles_digest", "keys_digest", "plan_digest", "boot", "titles_omitted")
    APPLIANCE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_DETAIL_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BPS_FIELD_NUMBER: _ClassVar[int]
    LOAD_BPS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    TITLES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_ZSTD_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEYS_VERSION_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TITLES_DIGEST_FIELD_NUMBER: _ClassVar[int]
    KEYS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PLAN_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BOOT_FIELD_NUMBER: _ClassVar[int]
    TITLES_OMITTED_FIELD_NUMBER: _ClassVar[int]
    appliance: str
    sequence: int
    health: Health
    health_detail: str
    capacity_bps: float
    load_bps: float
    connections: int
    tiers: _containers.RepeatedCompositeFieldContainer[TierSpace]
    titles: _containers.RepeatedCompositeFieldContainer[HeldTitle]
    counts_zstd: bytes
    plan_version: int
    keys_version: int
    fill: FillProgress
    url: str
    titles_digest: bytes
    keys_digest: bytes
    plan_digest: bytes
    boot: bytes
    titles_omitted: bool
    def __init__(self, appliance: _Optional[str] = ..., sequence: _Optional[int] = ..., health: _Optional[_Union[Health, str]] = ..., health_detail: _Optional[str] = ..., capacity_bps: _Optional[float] = ..., load_bps: _Optional[float] = ..., connections: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[TierSpace, _Mapping]]] = ..., titles: _Optional[_Iterable[_Union[HeldTitle, _Mapping]]] = ..., counts_zstd: _Optional[bytes] = ..., plan_version: _Optional[int] = ..., keys_version: _Optional[int] = ..., fill: _Optional[_Union[FillProgress, _Mapping]] = ..., url: _Optional[str] = ..., titles_digest: _Optional[bytes] = ..., keys_digest: _Optional[bytes] = ..., plan_digest: _Optional[bytes] = ..., boot: _Optional[bytes] = ..., titles_omitted: _Optional[bool] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("plan_version", "keys_version", "drained", "heartbeat_interval_ms", "fill_now", "stale", "titles_digest")
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEYS_VERSION_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    FILL_NOW_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    TITLES_DIGEST_FIELD_NUMBER: _ClassVar[int]
    plan_version: int
    keys_version: int
    drained: bool
    heartbeat_interval_ms: int
    fill_now: bool
    stale: bool
    titles_digest: bytes
    def __init__(self, plan_version: _Optional[int] = ..., keys_version: _Optional[int] = ..., drained: _Optional[bool] = ..., heartbeat_interval_ms: _Optional[int] = ..., fill_now: _Optional[bool] = ..., stale: _Optional[bool] = ..., titles_digest: _Optional[bytes] = ...) -> None: ...

class GetPlanRequest(_message.Message):
    __slots__ = ("appliance", "have_version")
    APPLIANCE_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    appliance: str
    have_version: int
    def __init__(self, appliance: _Optional[str] = ..., have_version: _Optional[int] = ...) -> None: ...

class PlannedTitle(_message.Message):
    __slots__ = ("title_id", "digest", "size_bytes", "tier", "sources")
    TITLE_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    title_id: str
    digest: str
    size_bytes: int
    tier: str
    sources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, title_id: _Optional[str] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., tier: _Optional[str] = ..., sources: _Optional[_Iterable[str]] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("version", "site", "fill_window", "timezone", "titles", "cap_bps")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    FILL_WINDOW_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    TITLES_FIELD_NUMBER: _ClassVar[int]
    CAP_BPS_FIELD_NUMBER: _ClassVar[int]
    version: int
    site: str
    fill_window: str
    timezone: str
    titles: _containers.RepeatedCompositeFieldContainer[PlannedTitle]
    cap_bps: int
    def __init__(self, version: _Optional[int] = ..., site: _Optional[str] = ..., fill_window: _Optional[str] = ..., timezone: _Optional[str] = ..., titles: _Optional[_Iterable[_Union[PlannedTitle, _Mapping]]] = ..., cap_bps: _Optional[int] = ...) -> None: ...

class PlanResponse(_message.Message):
    __slots__ = ("version", "unchanged", "plan_zstd", "digest")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    PLAN_ZSTD_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    version: int
    unchanged: bool
    plan_zstd: bytes
    digest: bytes
    def __init__(self, version: _Optional[int] = ..., unchanged: _Optional[bool] = ..., plan_zstd: _Optional[bytes] = ..., digest: _Optional[bytes] = ...) -> None: ...

class Key(_message.Message):
    __slots__ = ("id", "secret", "activates", "retires", "verify_until", "verify_for_s")
    ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    ACTIVATES_FIELD_NUMBER: _ClassVar[int]
    RETIRES_FIELD_NUMBER: _ClassVar[int]
    VERIFY_UNTIL_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FOR_S_FIELD_NUMBER: _ClassVar[int]
    id: str
    secret: bytes
    activates: float
    retires: float
    verify_until: float
    verify_for_s: float
    def __init__(self, id: _Optional[str] = ..., secret: _Optional[bytes] = ..., activates: _Optional[float] = ..., retires: _Optional[float] = ..., verify_until: _Optional[float] = ..., verify_for_s: _Optional[float] = ...) -> None: ...

class KeySet(_message.Message):
    __slots__ = ("version", "keys", "digest", "rebased")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REBASED_FIELD_NUMBER: _ClassVar[int]
    version: int
    keys: _containers.RepeatedCompositeFieldContainer[Key]
    digest: bytes
    rebased: bool
    def __init__(self, version: _Optional[int] = ..., keys: _Optional[_Iterable[_Union[Key, _Mapping]]] = ..., digest: _Optional[bytes] = ..., rebased: _Optional[bool] = ...) -> None: ...

class GetKeysRequest(_message.Message):
    __slots__ = ("appliance", "have_version")
    APPLIANCE_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    appliance: str
    have_version: int
    def __init__(self, appliance: _Optional[str] = ..., have_version: _Optional[int] = ...) -> None: ...

class KeysResponse(_message.Message):
    __slots__ = ("unchanged", "keys")
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    unchanged: bool
    keys: KeySet
    def __init__(self, unchanged: _Optional[bool] = ..., keys: _Optional[_Union[KeySet, _Mapping]] = ...) -> None: ...

class SteerRequest(_message.Message):
    __slots__ = ("client_ip", "title_id")
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    TITLE_ID_FIELD_NUMBER: _ClassVar[int]
    client_ip: str
    title_id: str
    def __init__(self, client_ip: _Optional[str] = ..., title_id: _Optional[str] = ...) -> None: ...

class SteerCandidate(_message.Message):
    __slots__ = ("name", "site", "url", "reason", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    site: str
    url: str
    reason: str
    kind: str
    def __init__(self, name: _Optional[str] = ..., site: _Optional[str] = ..., url: _Optional[str] = ..., reason: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class SteerResponse(_message.Message):
    __slots__ = ("urls", "candidates", "outcome", "client_site", "expires", "excluded")
    URLS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SITE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    urls: _containers.RepeatedScalarFieldContainer[str]
    candidates: _containers.RepeatedCompositeFieldContainer[SteerCandidate]
    outcome: str
    client_site: str
    expires: int
    excluded: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, urls: _Optional[_Iterable[str]] = ..., candidates: _Optional[_Iterable[_Union[SteerCandidate, _Mapping]]] = ..., outcome: _Optional[str] = ..., client_site: _Optional[str] = ..., expires: _Optional[int] = ..., excluded: _Optional[_Iterable[str]] = ...) -> None: ...
