"""How an enrolled appliance proves who it is on every fleet call: an Ed25519 signature in
gRPC metadata over (name, method, time, SHA-256 of the serialised request).

Shared by the appliance (which creates its key pair on first start and signs) and the fleet
manager (which stored the public key at enrolment and verifies). Pure: the clock comes in.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgeflix.errors import EdgeflixError

NAME = "x-edgeflix-appliance"
TIME = "x-edgeflix-time"
SIGNATURE = "x-edgeflix-signature"
MAX_SKEW_S = 120.0


class AuthError(EdgeflixError):
    """A call without a valid signature of an enrolled appliance (gRPC UNAUTHENTICATED)."""


def new_private_key() -> bytes:
    """32 raw bytes; the appliance keeps them (mode 0600) and never sends them."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def public_key(private: bytes) -> bytes:
    return (
        Ed25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def _message(name: str, method: str, at: str, body: bytes) -> bytes:
    return f"edgeflix-call-v1\n{name}\n{method}\n{at}\n".encode() + hashlib.sha256(body).digest()


def sign_call(
    name: str, private: bytes, method: str, body: bytes, now: float
) -> tuple[tuple[str, str], ...]:
    """Metadata to send with a call; `body` is the request serialised deterministically."""
    at = f"{now:.3f}"
    sig = Ed25519PrivateKey.from_private_bytes(private).sign(_message(name, method, at, body))
    return ((NAME, name), (TIME, at), (SIGNATURE, base64.b64encode(sig).decode()))


def caller(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The appliance name a call claims to come from (not yet verified)."""
    for key, value in metadata:
        if key == NAME:
            return value if isinstance(value, str) else value.decode(errors="replace")
    raise AuthError("call carries no appliance name")


def verify_call(
    metadata: Iterable[tuple[str, str | bytes]],
    public: bytes,
    method: str,
    body: bytes,
    now: float,
    max_skew_s: float = MAX_SKEW_S,
) -> str:
    """The verified appliance name, or AuthError (bad signature, stale or future time)."""
    fields = {
        k: v if isinstance(v, str) else v.decode(errors="replace")
        for k, v in metadata
        if k in (NAME, TIME, SIGNATURE)
    }
    if len(fields) != 3:
        raise AuthError("call is not signed")
    try:
        at = float(fields[TIME])
        sig = base64.b64decode(fields[SIGNATURE], validate=True)
    except ValueError:
        raise AuthError("call signature is malformed") from None
    if abs(now - at) > max_skew_s:
        raise AuthError("call time is too far from the fleet manager's clock")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            sig, _message(fields[NAME], method, fields[TIME], body)
        )
    except (InvalidSignature, ValueError):
        raise AuthError("call signature does not match the enrolled key") from None
    return fields[NAME]
