"""What the fleet link keeps on disk under `[fleet] state_dir` (default: `fleet/` beside the
storage index): the appliance's Ed25519 key, its enrolment, the plan and key set it runs,
and when the fleet last answered. A restart while the fleet manager is down starts from
these, so the box serves and verifies tokens without it.

Every file is written whole (temporary name, fsync, rename, fsync of the directory) and the
secret ones are mode 0600. appliance/fleetlink.py is the only user.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.fleetlink_core import FleetKey, check_keys, check_plan
from edgeflix import atomicfile, wallclock
from edgeflix.errors import EdgeflixError
from edgeflix.log import event
from edgeflix.proto import auth
from edgeflix.versioning import Versioned

KEY_FILE = "appliance.key"
ENROLMENT_FILE = "enrolment.json"
PLAN_FILE = "plan.json"
KEYS_FILE = "keys.json"
CONTACT_FILE = "contact.json"
TLS_KEY_FILE = "tls.key"  # P-256: grpc's BoringSSL takes no Ed25519 client certificate
TLS_CERT_FILE = "tls.crt"  # issued by the fleet's CA at enrolment

log = logging.getLogger("appliance.fleet")


class LinkStateError(EdgeflixError):
    """The fleet link's state folder cannot be read or written."""


@dataclass(frozen=True)
class Enrolment:
    appliance: str
    site: str
    fleet: str  # the gRPC address enrolled with
    url: str  # the URL the fleet steers players to
    heartbeat_interval_ms: int
    enrolled_at: float


@dataclass(frozen=True)
class StoredPlan:
    version: int
    document: dict[str, Any]  # the fill-plan JSON (appliance/fill/plan.py)
    sizes: dict[str, int]  # title → bytes, for fill progress
    digest: bytes = b""  # PlanResponse.digest: reported in beats (b"": unknown)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    try:
        atomicfile.write_atomic(path, data, mode)
    except OSError as exc:
        raise LinkStateError(f"cannot write {path}: {exc.strerror}") from None


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LinkStateError(f"{path} is unreadable ({exc}); remove it to start afresh") from None


class LinkState:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise LinkStateError(f"cannot create {folder}: {exc.strerror}") from None

    def private_key(self) -> bytes:
        """The appliance's key, created (0600) on first use and never sent anywhere."""
        path = self.folder / KEY_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = auth.new_private_key()
            write_atomic(path, raw)
            return raw
        except OSError as exc:
            raise LinkStateError(f"cannot read {path}: {exc.strerror}") from None
        if len(raw) != 32:
            raise LinkStateError(f"{path} is not a 32-byte Ed25519 key; remove it to re-enrol")
        return raw

    def tls_key(self) -> bytes:
        """The TLS client key (PEM), created (0600) on first use and never sent anywhere."""
        path = self.folder / TLS_KEY_FILE
        try:
            return path.read_bytes()
        except FileNotFoundError:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_atomic(path, pem)
            return pem
        except OSError as exc:
            raise LinkStateError(f"cannot read {path}: {exc.strerror}") from None

    def tls_public_key(self) -> bytes:
        """DER SubjectPublicKeyInfo of the TLS key, for the EnrolRequest."""
        try:
            key = serialization.load_pem_private_key(self.tls_key(), None)
        except ValueError:
            raise LinkStateError(f"{self.folder / TLS_KEY_FILE} is damaged; remove it") from None
        return key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def client_cert(self) -> bytes | None:
        try:
            return (self.folder / TLS_CERT_FILE).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LinkStateError(f"cannot read {self.folder / TLS_CERT_FILE}: {exc}") from None

    def save_client_cert(self, pem: bytes) -> None:
        write_atomic(self.folder / TLS_CERT_FILE, pem, 0o644)

    def enrolment(self) -> Enrolment | None:
        data = _read_json(self.folder / ENROLMENT_FILE)
        if not isinstance(data, dict):
            return None
        try:
            e = Enrolment(**data)
            texts = (e.appliance, e.site, e.fleet, e.url)
            if not all(isinstance(t, str) for t in texts) or not e.appliance:
                raise ValueError("a name or address is not text")
            interval = e.heartbeat_interval_ms
            if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
                raise ValueError("heartbeat_interval_ms is not a whole number of ms")
            return Enrolment(e.appliance, e.site, e.fleet, e.url, interval, _number(e.enrolled_at))
        except (TypeError, ValueError):
            raise LinkStateError(f"{self.folder / ENROLMENT_FILE} is damaged; remove it") from None

    def save_enrolment(self, e: Enrolment) -> None:
        body = json.dumps(e.__dict__, indent=2, sort_keys=True).encode()
        write_atomic(self.folder / ENROLMENT_FILE, body, 0o644)

    def plan(self) -> StoredPlan | None:
        data = _read_json(self.folder / PLAN_FILE)
        if not isinstance(data, dict):
            return None
        try:
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
        except (KeyError, TypeError, ValueError):
            raise LinkStateError(f"{self.folder / PLAN_FILE} is damaged; remove it") from None

    def save_plan(self, plan: StoredPlan) -> None:
        body = {
            "version": plan.version,
            "document": plan.document,
            "sizes": plan.sizes,
            "digest": plan.digest.hex(),
        }
        write_atomic(self.folder / PLAN_FILE, json.dumps(body, sort_keys=True).encode(), 0o644)

    def keys(self) -> Versioned[tuple[FleetKey, ...]] | None:
        data = _read_json(self.folder / KEYS_FILE)
        if not isinstance(data, dict):
            return None
        try:
            keys = tuple(
                FleetKey(
                    str(k["id"]),
                    base64.b64decode(k["secret"], validate=True),
                    _number(k["activates"]),
                    _number(k["retires"]),
                    _number(k["verify_until"]),
                    _number(k.get("verify_for_s", 0)),  # files from before it: not said
                )
                for k in data["keys"]
            )
            check_keys(keys)  # what the fleet's key sets must pass, before the workers see it
            return Versioned("keys", int(data["version"]), keys)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise LinkStateError(f"{self.folder / KEYS_FILE} is damaged; remove it") from None

    def keys_digest(self) -> bytes:
        """KeySet.digest of the saved key set (b"": none saved, or saved without one)."""
        data = _read_json(self.folder / KEYS_FILE)
        try:
            return _digest(data) if isinstance(data, dict) else b""
        except ValueError:
            return b""

    def save_keys(self, keys: Versioned[tuple[FleetKey, ...]], digest: bytes = b"") -> None:
        body = {
            "digest": digest.hex(),
            "version": keys.version,
            "keys": [
                {**k.__dict__, "secret": base64.b64encode(k.secret).decode()} for k in keys.payload
            ],
        }
        write_atomic(self.folder / KEYS_FILE, json.dumps(body, sort_keys=True).encode())

    def saved_contact(self) -> float | None:
        """contact.json as saved; None when absent. A damaged one counts as absent (with a
        warning): it only feeds the grace clock, which then starts from the enrolment,
        earlier than any real contact, so the grace period can only end sooner, never later
        than configured; the first answered beat writes it anew. Refusing to start would
        instead stop a box serving over a file that guards nothing."""
        path = self.folder / CONTACT_FILE
        try:
            data = _read_json(path)
            if data is None:
                return None
            if not isinstance(data, dict):
                raise ValueError("not an object")
            return _number(data["at"])
        except (LinkStateError, KeyError, ValueError):
            event(
                log,
                "fleet.state_damaged",
                logging.WARNING,
                file=str(path),
                action="ignored: the grace period counts from the enrolment until the fleet "
                "answers",
            )
            return None

    def last_contact(self, now: float | None = None, *, settle: bool = False) -> float | None:
        """When the fleet last answered, as the grace period counts it at `now`
        (wallclock.counted_since); None when unknown. Said with a warning when not as saved:

        - after `now`: saved while the clock was ahead (a box without an RTC, set right by
          NTP since). Taken as it is, the box would read as connected while the fleet is
          away, and the grace period would last as much longer as the clock was ahead.
        - below wallclock.FLOOR while `now` is not: saved at a 1970 reading, before NTP
          set the clock. Taken as it is, the fleet would count as gone for 56 years.

        Both count as `now`. `settle` (the daemon's start) saves that, so a restart, and
        `appliance status`, count from the same time, not from each new start."""
        at = self.saved_contact()
        if at is None or now is None:
            return at
        counted, why = wallclock.counted_since(at, now)
        if why == "as_saved":
            return at
        said = {
            "ahead": "later than the clock reads now (ahead then, or behind now)",
            "implausible": f"while the clock read {wallclock.iso(at)}, not yet set (NTP)",
        }[why]
        event(
            log,
            f"fleet.contact_{why}",
            logging.WARNING,
            file=str(self.folder / CONTACT_FILE),
            at=at,
            saved_at=wallclock.iso(at),
            now=now,
            action=f"saved {said}: when the fleet last answered is unknown; the grace "
            "period counts from now",
        )
        if settle:
            try:
                self.save_contact(counted)
            except LinkStateError as exc:
                event(log, "fleet.state_unwritable", logging.ERROR, reason=str(exc))
        return counted

    def save_contact(self, at: float) -> None:
        write_atomic(self.folder / CONTACT_FILE, json.dumps({"at": at}).encode(), 0o644)
