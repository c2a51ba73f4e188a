"""What the fleet link keeps on disk under `[fleet] state_dir` (default: `fleet/` beside the
storage index): the appliance's Ed25519 key, its enrolment, the plan and key set it runs,
and when the fleet last answered. A restart while the fleet manager is down starts from
these, so the box serves and verifies tokens without it.

Every file is written whole (temporary name, fsync, rename, fsync of the directory) and the
secret ones are mode 0600. appliance/fleetlink.py is the only user.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.fleetlink_core import FleetKey
from edgeflix import atomicfile
from edgeflix.errors import EdgeflixError
from edgeflix.proto import auth
from edgeflix.versioning import Versioned

KEY_FILE = "appliance.key"
ENROLMENT_FILE = "enrolment.json"
PLAN_FILE = "plan.json"
KEYS_FILE = "keys.json"
CONTACT_FILE = "contact.json"
TLS_KEY_FILE = "tls.key"  # P-256: grpc's BoringSSL takes no Ed25519 client certificate
TLS_CERT_FILE = "tls.crt"  # issued by the fleet's CA at enrolment


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
            return Enrolment(**data)
        except TypeError:
            raise LinkStateError(f"{self.folder / ENROLMENT_FILE} is damaged; remove it") from None

    def save_enrolment(self, e: Enrolment) -> None:
        body = json.dumps(e.__dict__, indent=2, sort_keys=True).encode()
        write_atomic(self.folder / ENROLMENT_FILE, body, 0o644)

    def plan(self) -> StoredPlan | None:
        data = _read_json(self.folder / PLAN_FILE)
        if not isinstance(data, dict):
            return None
        try:
            return StoredPlan(int(data["version"]), dict(data["document"]), dict(data["sizes"]))
        except (KeyError, TypeError, ValueError):
            raise LinkStateError(f"{self.folder / PLAN_FILE} is damaged; remove it") from None

    def save_plan(self, plan: StoredPlan) -> None:
        body = {"version": plan.version, "document": plan.document, "sizes": plan.sizes}
        write_atomic(self.folder / PLAN_FILE, json.dumps(body, sort_keys=True).encode(), 0o644)

    def keys(self) -> Versioned[tuple[FleetKey, ...]] | None:
        data = _read_json(self.folder / KEYS_FILE)
        if not isinstance(data, dict):
            return None
        try:
            keys = tuple(
                FleetKey(
                    str(k["id"]),
                    base64.b64decode(k["secret"]),
                    float(k["activates"]),
                    float(k["retires"]),
                    float(k["verify_until"]),
                )
                for k in data["keys"]
            )
            return Versioned("keys", int(data["version"]), keys)
        except (KeyError, TypeError, ValueError):
            raise LinkStateError(f"{self.folder / KEYS_FILE} is damaged; remove it") from None

    def save_keys(self, keys: Versioned[tuple[FleetKey, ...]]) -> None:
        body = {
            "version": keys.version,
            "keys": [
                {**k.__dict__, "secret": base64.b64encode(k.secret).decode()} for k in keys.payload
            ],
        }
        write_atomic(self.folder / KEYS_FILE, json.dumps(body, sort_keys=True).encode())

    def last_contact(self) -> float | None:
        data = _read_json(self.folder / CONTACT_FILE)
        return float(data["at"]) if isinstance(data, dict) else None

    def save_contact(self, at: float) -> None:
        write_atomic(self.folder / CONTACT_FILE, json.dumps({"at": at}).encode(), 0o644)
