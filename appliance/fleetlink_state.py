"""What the fleet link keeps on disk under `[fleet] state_dir` (default: `fleet/` beside the
storage index): the appliance's Ed25519 key, its enrolment, the plan and key set it runs,
when the fleet last answered, and how far this box's clock is off the fleet's. A restart
while the fleet manager is down starts from these, so the box serves and verifies tokens
without it (on the fleet's time, when the clock was off).

Every file is written whole (temporary name, fsync, rename, fsync of the directory) and the
secret ones are mode 0600. appliance/fleetlink.py is the only writer. What each file holds,
and how its JSON is checked, is fleetlink_files.py's; here is what a file that does not read
means for the box (refuse the start, or read it as absent, said with a warning).
"""

from __future__ import annotations

import binascii
import json
import logging
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.fleetlink_files import (
    CLOCK_FILE,
    CONTACT_FILE,
    ENROLMENT_FILE,
    FORMATS,
    JOIN_FILE,
    KEY_FILE,
    KEYS_FILE,
    PLAN_FILE,
    PROBLEM_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    Enrolment,
    NewerFormat,
    SavedCorrection,
    SavedKeys,
    StoredPlan,
    check_format,
    clock_json,
    enrolment_json,
    keys_json,
    parse_clock,
    parse_contact,
    parse_enrolment,
    parse_keys,
    parse_plan,
    plan_json,
    token_digest,
)
from appliance.fleetlink_keys import FleetKey, KeyHistory, effective_keys
from edgeflix import atomicfile, wallclock
from edgeflix.errors import EdgeflixError
from edgeflix.log import event
from edgeflix.proto import auth
from edgeflix.versioning import Versioned

log = logging.getLogger("appliance.fleet")


class LinkStateError(EdgeflixError):
    """The fleet link's state folder cannot be read or written."""


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    try:
        atomicfile.write_atomic(path, data, mode)
    except OSError as exc:
        raise LinkStateError(f"cannot write {path}: {exc.strerror}") from None


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
                check_format(data, ENROLMENT_FILE)
            except NewerFormat as exc:
                event(
                    log,
                    "fleet.state_newer",
                    logging.WARNING,
                    file=str(path),
                    reason=str(exc),
                    action="reading the fields this version knows",
                )
            return parse_enrolment(data)
        except (TypeError, ValueError):
            raise LinkStateError(f"{path} is damaged; remove it") from None

    def save_enrolment(self, e: Enrolment) -> None:
        write_atomic(self.folder / ENROLMENT_FILE, enrolment_json(e), 0o644)

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
        Fields of the plan it does not know are ignored (fleetlink_files.parse_plan)."""
        try:
            data = _read_json(self.folder / PLAN_FILE)
            return None if data is None else parse_plan(data)
        except (LinkStateError, ValueError) as exc:
            self._unusable(
                PLAN_FILE,
                str(exc),
                "no plan until the fleet sends one: serving the titles held, deleting none",
            )
            return None

    def save_plan(self, plan: StoredPlan) -> None:
        write_atomic(self.folder / PLAN_FILE, plan_json(plan), 0o644)

    def saved_keys(self) -> SavedKeys | None:
        """The key set last applied, with its history; None when there is none, or none this
        version can read (damaged, or of a later format): then no key verifies, so no token
        URL is served, until the fleet sends its set. Never keys guessed from a damaged file."""
        path = self.folder / KEYS_FILE
        try:
            data = _read_json(path)
            return None if data is None else parse_keys(data)
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
        body = keys_json(keys, digest, history or KeyHistory())
        write_atomic(self.folder / KEYS_FILE, body)

    def saved_contact(self) -> float | None:
        """contact.json as saved; None when absent. A damaged one counts as absent (with a
        warning): it only feeds the grace clock, which then starts from the enrolment,
        earlier than any real contact, so the grace period can only end sooner, never later
        than configured; the first answered beat writes it anew. Refusing to start would
        instead stop a box serving over a file that guards nothing."""
        path = self.folder / CONTACT_FILE
        try:
            data = _read_json(path)
            return None if data is None else parse_contact(data)
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

    def saved_correction(self) -> SavedCorrection | None:
        """clock.json as saved; None when absent, or damaged or of a later format (said with
        a warning): without it the first call refused for this box's clock learns the
        correction again, where a guessed one would sign calls and check tokens off."""
        try:
            data = _read_json(self.folder / CLOCK_FILE)
            return None if data is None else parse_clock(data)
        except (LinkStateError, KeyError, ValueError) as exc:
            self._unusable(
                CLOCK_FILE,
                str(exc) or type(exc).__name__,
                "no clock correction until the fleet refuses a call for this box's clock",
            )
            return None

    def save_correction(self, saved: SavedCorrection) -> None:
        write_atomic(self.folder / CLOCK_FILE, clock_json(saved), 0o644)

    def _small(self, name: str) -> dict[str, Any] | None:
        """A small file only shown or compared (problem.json, join.json): None when absent,
        unreadable or of a later format; nothing depends on it for safety."""
        try:
            data = _read_json(self.folder / name)
            if not isinstance(data, dict):
                return None
            check_format(data, name)
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
