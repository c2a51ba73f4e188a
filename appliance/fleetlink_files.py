"""What the fleet link keeps on disk, as data and without I/O: its records (the enrolment,
the plan and the key set it runs), the JSON each file holds, and each file's JSON read back
checked whole: ValueError (or KeyError, TypeError) when damaged, NewerFormat when a later
version wrote it. fleetlink_state.py reads and writes the files, and decides what one that
does not read means for the box.

Versions of the appliance come and go over the same folder (an upgrade, a rollback), so a
reader ignores fields it does not know, and each file may say its `format` (absent: 1). A
file of a later format than this code knows is read as one it cannot read. Only the
enrolment (the box's identity with the fleet) refuses the start then; without a plan the box
serves what it holds and waits for the fleet's; without keys it refuses token URLs until the
fleet sends its set; without a contact the grace period counts from the enrolment; without
a clock correction the first call refused for this box's clock learns it again.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from appliance.fleetlink_core import check_plan
from appliance.fleetlink_keys import FleetKey, KeyHistory, check_keys
from edgeflix.versioning import Versioned

KEY_FILE = "appliance.key"
ENROLMENT_FILE = "enrolment.json"
PLAN_FILE = "plan.json"
KEYS_FILE = "keys.json"
CONTACT_FILE = "contact.json"
TLS_KEY_FILE = "tls.key"  # P-256: grpc's BoringSSL takes no Ed25519 client certificate
TLS_CERT_FILE = "tls.crt"  # issued by the fleet's CA at enrolment
PROBLEM_FILE = "problem.json"  # what the link last failed on, for `appliance status`
JOIN_FILE = "join.json"  # a digest of the join token the enrolment was made with
CLOCK_FILE = "clock.json"  # the correction learned of the fleet's time (fleetlink_clock.py)

# The `format` this code reads and writes, per file (absent from a file: 1). A later one is
# a file this code cannot read. keys.json 2: revoked and carried keys, which a reader that
# ignored them would verify a revoked key with.
FORMATS = {
    ENROLMENT_FILE: 1,
    PLAN_FILE: 1,
    KEYS_FILE: 2,
    CONTACT_FILE: 1,
    PROBLEM_FILE: 1,
    JOIN_FILE: 1,
    CLOCK_FILE: 1,
}


@dataclass(frozen=True)
class Enrolment:
    appliance: str
    site: str
    fleet: str  # the gRPC address enrolled with
    url: str  # the URL the fleet steers players to
    heartbeat_interval_ms: int
    enrolled_at: float


@dataclass(frozen=True)
class SavedKeys:
    keys: Versioned[tuple[FleetKey, ...]]  # the fleet's set, as it sent it
    digest: bytes  # KeySet.digest (b"": saved without one)
    history: KeyHistory  # revoked and carried keys (fleetlink_keys.next_key_history)


@dataclass(frozen=True)
class StoredPlan:
    version: int
    document: dict[str, Any]  # the fill-plan JSON (appliance/fill/plan.py)
    sizes: dict[str, int]  # title → bytes, for fill progress
    digest: bytes = b""  # PlanResponse.digest: reported in beats (b"": unknown)


@dataclass(frozen=True)
class SavedCorrection:
    """The correction the link held (fleet time less this box's clock, fleetlink_rpc), with
    the readings that say whether it still applies (fleetlink_clock.restored_correction)."""

    correction: float
    at: float  # this box's wall clock when it was learned, or last taken by the fleet
    mono: float  # its monotonic clock then: within one boot, a step since shows against it
    boot: str  # the kernel's boot id then ("": unknown); `mono` means nothing in another
    fleet: str  # the fleet's gRPC address it was learned of


class NewerFormat(ValueError):
    """A file written by a later version of the appliance, in a format this one does not know."""


def check_format(data: dict[str, Any], name: str) -> None:
    """NewerFormat for a `format` above what this code knows; ValueError for one not a
    whole number."""
    found = data.get("format", 1)
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise ValueError(f"format {found!r} is not a whole number")
    if found > FORMATS[name]:
        raise NewerFormat(
            f"format {found} (a later version of the appliance wrote it; this one reads "
            f"{FORMATS[name]})"
        )


def _number(value: Any) -> float:
    """A finite JSON number (not a bool, a string or null); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _digest(data: dict[str, Any]) -> bytes:
    """The fleet's digest kept beside a plan or key set (files from before it: none)."""
    raw = data.get("digest", "")
    if not isinstance(raw, str):
        raise ValueError("digest is not a string")
    return bytes.fromhex(raw)


# -- enrolment.json -------------------------------------------------------------------------


def parse_enrolment(data: dict[str, Any]) -> Enrolment:
    """enrolment.json, its format checked by the caller (a later one is read too): fields
    this version does not know are ignored."""
    known = {f.name for f in dataclasses.fields(Enrolment)}
    e = Enrolment(**{k: v for k, v in data.items() if k in known})
    texts = (e.appliance, e.site, e.fleet, e.url)
    if not all(isinstance(t, str) for t in texts) or not e.appliance:
        raise ValueError("a name or address is not text")
    interval = e.heartbeat_interval_ms
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
        raise ValueError("heartbeat_interval_ms is not a whole number of ms")
    return Enrolment(e.appliance, e.site, e.fleet, e.url, interval, _number(e.enrolled_at))


def enrolment_json(e: Enrolment) -> bytes:
    # No "format" while it is 1: versions before this one refuse a field they do not
    # know in this file, and a rollback to one must still start.
    return json.dumps(e.__dict__, indent=2, sort_keys=True).encode()


# -- plan.json ------------------------------------------------------------------------------


def parse_plan(data: Any) -> StoredPlan:
    """plan.json; ValueError when damaged (NewerFormat: of a later format). Fields of the
    plan it does not know are ignored (fleetlink_core.to_fill_plan)."""
    try:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        check_format(data, PLAN_FILE)
        version, document, sizes = data["version"], data["document"], data["sizes"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError("version is not a positive whole number")
        if not isinstance(document, dict) or not isinstance(sizes, dict):
            raise ValueError("document and sizes are not objects")
        if not isinstance(document.get("titles"), list):
            raise ValueError("the document lists no titles")
        # The plan goes to the fill scheduler (and its titles are walked to sign peer
        # URLs) at once: checked here as a plan from the fleet is, whole.
        check_plan(document)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes.values()):
            raise ValueError("a size is not a whole number")
        return StoredPlan(version, document, sizes, _digest(data))
    except NewerFormat:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"damaged ({exc})") from None


def plan_json(plan: StoredPlan) -> bytes:
    body = {
        "format": FORMATS[PLAN_FILE],
        "version": plan.version,
        "document": plan.document,
        "sizes": plan.sizes,
        "digest": plan.digest.hex(),
    }
    return json.dumps(body, sort_keys=True).encode()


# -- keys.json ------------------------------------------------------------------------------


def _key(k: Any) -> FleetKey:
    return FleetKey(
        str(k["id"]),
        base64.b64decode(k["secret"], validate=True),
        _number(k["activates"]),
        _number(k["retires"]),
        _number(k["verify_until"]),
        _number(k.get("verify_for_s", 0)),  # files from before it: not said
    )


def _key_json(k: FleetKey) -> dict[str, Any]:
    return {**k.__dict__, "secret": base64.b64encode(k.secret).decode()}


def _history(data: dict[str, Any]) -> KeyHistory:
    """Revoked and carried keys beside a saved key set (files from before them: none)."""
    revoked = data.get("revoked", {})
    if not isinstance(revoked, dict):
        raise ValueError("revoked is not an object")
    carried = tuple(_key(k) for k in data.get("carried", []))
    if carried:
        check_keys(carried)
    return KeyHistory({str(i): _number(u) for i, u in revoked.items()}, carried)


def parse_keys(data: Any) -> SavedKeys:
    """keys.json, checked as the fleet's key sets are, before the workers see it; KeyError,
    TypeError, ValueError or binascii.Error when damaged (NewerFormat: of a later format)."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    check_format(data, KEYS_FILE)
    keys = tuple(_key(k) for k in data["keys"])
    check_keys(keys)  # what the fleet's key sets must pass, before the workers see it
    versioned = Versioned("keys", int(data["version"]), keys)
    return SavedKeys(versioned, _digest(data), _history(data))


def keys_json(keys: Versioned[tuple[FleetKey, ...]], digest: bytes, history: KeyHistory) -> bytes:
    body = {
        "format": FORMATS[KEYS_FILE],
        "digest": digest.hex(),
        "version": keys.version,
        "keys": [_key_json(k) for k in keys.payload],
        "revoked": dict(history.revoked),
        "carried": [_key_json(k) for k in history.carried],
    }
    return json.dumps(body, sort_keys=True).encode()


# -- contact.json, join.json ----------------------------------------------------------------


def parse_contact(data: Any) -> float:
    """contact.json: when the fleet last answered, as saved."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    check_format(data, CONTACT_FILE)
    return _number(data["at"])


def token_digest(token: str) -> str:
    """What join.json keeps of a join token: enough to tell a new one, nothing to enrol with."""
    return hashlib.sha256(token.encode()).hexdigest()


# -- clock.json -----------------------------------------------------------------------------


def parse_clock(data: Any) -> SavedCorrection:
    """clock.json; ValueError (or KeyError) when damaged, NewerFormat of a later format.
    Fields it does not know are ignored."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    check_format(data, CLOCK_FILE)
    boot, fleet = data.get("boot", ""), data["fleet"]
    if not isinstance(boot, str) or not isinstance(fleet, str):
        raise ValueError("boot or fleet is not text")
    correction, at, mono = (_number(data[k]) for k in ("correction", "at", "mono"))
    return SavedCorrection(correction, at, mono, boot, fleet)


def clock_json(saved: SavedCorrection) -> bytes:
    return json.dumps({"format": FORMATS[CLOCK_FILE], **saved.__dict__}, sort_keys=True).encode()
