"""How an enrolled appliance proves who it is on every fleet call: an Ed25519 signature in
gRPC metadata over (name, method, time, SHA-256 of the serialised request).

Shared by the appliance (which creates its key pair on first start and signs) and the fleet
manager (which stored the public key at enrolment and verifies). Pure: the clock comes in.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from typing import Literal

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


def _signed_fields(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The three signing headers, each exactly once. A repeated one is refused outright:
    a proxy or library may keep the first of two values and another part the last, and
    then the key is looked up for one name while the signature is checked over the other
    (an enrolled appliance could act as any other)."""
    fields: dict[str, str] = {}
    for key, value in metadata:
        if key not in (NAME, TIME, SIGNATURE):
            continue
        if key in fields:
            raise AuthError(f"call carries the header {key} more than once")
        fields[key] = value if isinstance(value, str) else value.decode(errors="replace")
    if len(fields) != 3:
        raise AuthError("call is not signed")
    return fields


# The two refusals an appliance acts on, told apart by the status details (the appliance
# reads them with `refusal_of`, so wording lives in one place): its clock is off (beat on),
# or the fleet does not know it (enrol again). Any other refusal is neither.
CLOCK_SKEW = "call time is too far from the fleet manager's clock"
NOT_ENROLLED = "is not enrolled"


def refusal_of(details: str) -> Literal["clock_skew", "unknown", "other"]:
    """Which refusal the details of an UNAUTHENTICATED answer from `verify_call` name."""
    if CLOCK_SKEW in details:
        return "clock_skew"
    if NOT_ENROLLED in details:
        return "unknown"
    return "other"


def verify_call(
    metadata: Iterable[tuple[str, str | bytes]],
    key_of: Callable[[str], bytes | None],
    method: str,
    body: bytes,
    now: float,
    max_skew_s: float = MAX_SKEW_S,
) -> str:
    """The verified appliance name, or AuthError (repeated or missing header, unknown
    name, bad signature, stale or future time). `key_of` gives the enrolled public key of
    a name (None: not enrolled). The one name read from the headers is the one whose key
    is looked up, the one the signature covers and the one returned."""
    fields = _signed_fields(metadata)
    name = fields[NAME]
    public = key_of(name)
    if public is None:
        raise AuthError(f"appliance '{name[:80]}' {NOT_ENROLLED}")
    try:
        at = float(fields[TIME])
        sig = base64.b64decode(fields[SIGNATURE], validate=True)
    except ValueError:
        raise AuthError("call signature is malformed") from None
    if not abs(now - at) <= max_skew_s:  # also refuses a NaN time
        raise AuthError(CLOCK_SKEW)
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            sig, _message(name, method, fields[TIME], body)
        )
    except (InvalidSignature, ValueError):
        raise AuthError("call signature does not match the enrolled key") from None
    return name
