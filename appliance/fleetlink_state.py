"""What the fleet link keeps on disk under `[fleet] state_dir` (default: `fleet/` beside the
storage index): the appliance's Ed25519 key, its enrolment, the plan and key set it runs,
and when the fleet last answered. A restart while the fleet manager is down starts from
these, so the box serves and verifies tokens without it.

Every file is written whole (temporary name, fsync, rename, fsync of the directory) and the
secret ones are mode 0600. appliance/fleetlink.py is the only writer.

Versions of the appliance come and go over the same folder (an upgrade, a rollback), so a
reader ignores fields it does not know, and each file may say its `format` (absent: 1). A
file of a later format than this code knows is read as one it cannot read. Only the
enrolment (the box's identity with the fleet) refuses the start then; without a plan the box
serves what it holds and waits for the fleet's; without keys it refuses token URLs until the
fleet sends its set; without a contact the grace period counts from the enrolment.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.fleetlink_core import (
    FleetKey,
    KeyHistory,
    check_keys,
    check_plan,
    effective_keys,
)
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
PROBLEM_FILE = "problem.json"  # what the link last failed on, for `appliance status`
JOIN_FILE = "join.json"  # a digest of the join token the enrolment was made with

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
}

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
class SavedKeys:
    keys: Versioned[tuple[FleetKey, ...]]  # the fleet's set, as it sent it
    digest: bytes  # KeySet.digest (b"": saved without one)
    history: KeyHistory  # revoked and carried keys (fleetlink_core.next_key_history)


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


class NewerFormat(ValueError):
    """A file written by a later version of the appliance, in a format this one does not know."""


def _check_format(data: dict[str, Any], name: str) -> None:
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


def token_digest(token: str) -> str:
    """What join.json keeps of a join token: enough to tell a new one, nothing to enrol with."""
    return hashlib.sha256(token.encode()).hexdigest()


class LinkState:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise LinkStateError(f"cannot create {folder}: {exc.strerror}") from None
        # Set while the link enrols again with a new join token: client_cert() says none, so
        # the channel goes to the enrolment listener with the CA alone (fleetlink_rpc), and
        # the saved certificate stays until the new enrolment's replaces it.
        self.withhold_client_cert = False

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
        if self.withhold_client_cert:
            return None
        try:
            return (self.folder / TLS_CERT_FILE).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LinkStateError(f"cannot read {self.folder / TLS_CERT_FILE}: {exc}") from None

    def presents_client_cert(self) -> bool:
        """Whether a TLS channel opened now presents a client certificate."""
        return not self.withhold_client_cert and (self.folder / TLS_CERT_FILE).is_file()

    def save_client_cert(self, pem: bytes) -> None:
        write_atomic(self.folder / TLS_CERT_FILE, pem, 0o644)

    def enrolment(self) -> Enrolment | None:
        """The enrolment (None: not enrolled). Damaged, it refuses the start: it is this
        box's identity with the fleet, and guessing it would enrol again as another box.
        Fields it does not know are ignored, of a later format too (said with a warning)."""
        path = self.folder / ENROLMENT_FILE
        data = _read_json(path)
        if data is None:
            return None
        try:
            if not isinstance(data, dict):
                raise ValueError("not an object")
            try:
                _check_format(data, ENROLMENT_FILE)
            except NewerFormat as exc:
                event(
                    log,
                    "fleet.state_newer",
                    logging.WARNING,
                    file=str(path),
                    reason=str(exc),
                    action="reading the fields this version knows",
                )
            known = {f.name for f in dataclasses.fields(Enrolment)}
            e = Enrolment(**{k: v for k, v in data.items() if k in known})
            texts = (e.appliance, e.site, e.fleet, e.url)
            if not all(isinstance(t, str) for t in texts) or not e.appliance:
                raise ValueError("a name or address is not text")
            interval = e.heartbeat_interval_ms
            if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
                raise ValueError("heartbeat_interval_ms is not a whole number of ms")
            return Enrolment(e.appliance, e.site, e.fleet, e.url, interval, _number(e.enrolled_at))
        except (TypeError, ValueError):
            raise LinkStateError(f"{path} is damaged; remove it") from None

    def save_enrolment(self, e: Enrolment) -> None:
        # No "format" while it is 1: versions before this one refuse a field they do not
        # know in this file, and a rollback to one must still start.
        body = json.dumps(e.__dict__, indent=2, sort_keys=True).encode()
        write_atomic(self.folder / ENROLMENT_FILE, body, 0o644)

    def _unusable(self, name: str, reason: str, action: str) -> None:
        """A saved file that is read as absent: said, with what the link does instead."""
        event(
            log,
            "fleet.state_unusable",
            logging.WARNING,
            file=str(self.folder / name),
            reason=reason,
            action=action,
        )

    def plan(self) -> StoredPlan | None:
        """The plan last applied; None when there is none, or none this version can read
        (damaged, or of a later format): the box then serves what it holds and deletes
        nothing until the fleet's plan arrives, where refusing to start would serve nothing.
        Fields of the plan it does not know are ignored (fleetlink_core.to_fill_plan)."""
        try:
            return self._plan()
        except (LinkStateError, ValueError) as exc:
            self._unusable(
                PLAN_FILE,
                str(exc),
                "no plan until the fleet sends one: serving the titles held, deleting none",
            )
            return None

    def _plan(self) -> StoredPlan | None:
        data = _read_json(self.folder / PLAN_FILE)
        if data is None:
            return None
        try:
            if not isinstance(data, dict):
                raise ValueError("not an object")
            _check_format(data, PLAN_FILE)
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

    def save_plan(self, plan: StoredPlan) -> None:
        body = {
            "format": FORMATS[PLAN_FILE],
            "version": plan.version,
            "document": plan.document,
            "sizes": plan.sizes,
            "digest": plan.digest.hex(),
        }
        write_atomic(self.folder / PLAN_FILE, json.dumps(body, sort_keys=True).encode(), 0o644)

    def saved_keys(self) -> SavedKeys | None:
        """The key set last applied, with its history; None when there is none, or none this
        version can read (damaged, or of a later format): then no key verifies, so no token
        URL is served, until the fleet sends its set. Never keys guessed from a damaged file."""
        path = self.folder / KEYS_FILE
        try:
            data = _read_json(path)
            if data is None:
                return None
            if not isinstance(data, dict):
                raise ValueError("not an object")
            _check_format(data, KEYS_FILE)
            keys = tuple(_key(k) for k in data["keys"])
            check_keys(keys)  # what the fleet's key sets must pass, before the workers see it
            versioned = Versioned("keys", int(data["version"]), keys)
            return SavedKeys(versioned, _digest(data), _history(data))
        except (LinkStateError, KeyError, TypeError, ValueError, binascii.Error) as exc:
            self._unusable(
                KEYS_FILE,
                str(exc) or type(exc).__name__,
                "no keys until the fleet sends its set: token URLs are refused until then",
            )
            return None

    def keys(self) -> Versioned[tuple[FleetKey, ...]] | None:
        """The keys this box verifies with (its fleet's set but revoked keys, and carried
        ones), under the fleet's version: what `appliance sign` may sign with."""
        saved = self.saved_keys()
        if saved is None:
            return None
        held = effective_keys(saved.keys.payload, saved.history)
        return Versioned("keys", saved.keys.version, held)

    def save_keys(
        self,
        keys: Versioned[tuple[FleetKey, ...]],
        digest: bytes = b"",
        history: KeyHistory | None = None,
    ) -> None:
        history = history or KeyHistory()
        body = {
            "format": FORMATS[KEYS_FILE],
            "digest": digest.hex(),
            "version": keys.version,
            "keys": [_key_json(k) for k in keys.payload],
            "revoked": dict(history.revoked),
            "carried": [_key_json(k) for k in history.carried],
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
            _check_format(data, CONTACT_FILE)
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
        body = {"format": FORMATS[CONTACT_FILE], "at": at}
        write_atomic(self.folder / CONTACT_FILE, json.dumps(body).encode(), 0o644)

    def _small(self, name: str) -> dict[str, Any] | None:
        """A small file only shown or compared (problem.json, join.json): None when absent,
        unreadable or of a later format; nothing depends on it for safety."""
        try:
            data = _read_json(self.folder / name)
            if not isinstance(data, dict):
                return None
            _check_format(data, name)
            return data
        except (LinkStateError, ValueError):
            return None

    def saved_problem(self) -> str | None:
        """What the link last failed on (a refusal, an error), as the daemon's /status said
        it, until a call succeeded; None when nothing failed or nothing is saved."""
        data = self._small(PROBLEM_FILE)
        problem = data.get("problem") if data else None
        return problem if isinstance(problem, str) and problem else None

    def save_problem(self, problem: str | None) -> None:
        body = {"format": FORMATS[PROBLEM_FILE], "problem": problem}
        write_atomic(self.folder / PROBLEM_FILE, json.dumps(body).encode(), 0o644)

    def used_token(self) -> str | None:
        """token_digest of the join token the enrolment was made with (None: unknown)."""
        data = self._small(JOIN_FILE)
        used = data.get("token_sha256") if data else None
        return used if isinstance(used, str) else None

    def save_used_token(self, token: str) -> None:
        body = {"format": FORMATS[JOIN_FILE], "token_sha256": token_digest(token)}
        write_atomic(self.folder / JOIN_FILE, json.dumps(body).encode())
