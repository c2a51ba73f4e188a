"""How an enrolled appliance proves who it is on every fleet call: an Ed25519 signature in
gRPC metadata over (name, method, time, SHA-256 of the serialised request).

Shared by the appliance (which creates its key pair on first start and signs) and the fleet
manager (which stored the public key at enrolment and verifies). Pure: the clock comes in.

A box without a real-time clock or NTP is often minutes off: the manager refuses its calls
(MAX_SKEW_S) and answers with its own time (trailing metadata TIME), from which the box
learns a correction (`learned_correction`) to sign at; it says so in CORRECTION.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, get_args

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
# Sent, unsigned, with calls signed at the box's clock plus this many seconds: shown to the
# operator only (how far off the box's own clock is), never trusted for anything else.
CORRECTION = "x-edgeflix-clock-correction"
MAX_SKEW_S = 120.0
# A correction further than this is no clock a box was left at: a garbled time, not learned.
MAX_CORRECTION_S = 30 * 86_400.0
# Under this, a learned correction is the round trip's noise: the box's clock reads right.
MIN_CORRECTION_S = 1.0

# Why a signed call was refused: a closed set (the manager's metric is labelled with it).
RefusalReason = Literal[
    "unsigned",  # a signing header missing or repeated
    "malformed",  # a time or signature that does not parse
    "unknown_appliance",
    "bad_signature",
    "clock_skew",
    "no_client_cert",  # TLS: the connection's certificate names another appliance, or none
    "other_appliance",  # an Enrol of one enrolled name signed by another
]
REFUSAL_REASONS: tuple[RefusalReason, ...] = get_args(RefusalReason)


@dataclass(frozen=True)
class SkewedCall:
    """A call signed by an enrolled appliance's key, refused for its time."""

    name: str
    signed_at: float
    correction: float  # what it says it added to its clock (CORRECTION), 0.0 when nothing


class AuthError(EdgeflixError):
    """A call without a valid signature of an enrolled appliance (gRPC UNAUTHENTICATED)."""

    def __init__(
        self, message: str, reason: RefusalReason, skewed: SkewedCall | None = None
    ) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason
        self.skewed = skewed


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
            raise AuthError(f"call carries the header {key} more than once", "unsigned")
        fields[key] = value if isinstance(value, str) else value.decode(errors="replace")
    if len(fields) != 3:
        raise AuthError("call is not signed", "unsigned")
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


def correction_of(metadata: Iterable[tuple[str, str | bytes]]) -> float:
    """The correction a call says its time was signed with (CORRECTION); 0.0 when none, or
    one that is no number within MAX_CORRECTION_S (it is only ever shown)."""
    for key, value in metadata:
        if key == CORRECTION:
            try:
                seconds = float(value)
            except ValueError:
                return 0.0
            return seconds if abs(seconds) <= MAX_CORRECTION_S else 0.0  # NaN too
    return 0.0


def fleet_time(now: float) -> tuple[tuple[str, str], ...]:
    """Trailing metadata of a clock-skew refusal: the manager's time, as calls sign it."""
    return ((TIME, f"{now:.3f}"),)


def learned_correction(
    trailing: Iterable[tuple[str, str | bytes]] | None, sent: float, received: float
) -> float | None:
    """What to add to this box's clock (`sent`, `received`: the refused call's start and end
    on it) to sign at the fleet manager's, from the time its refusal carries (`fleet_time`):
    0.0 when that is within MIN_CORRECTION_S of ours. None when the refusal carries none
    (an older manager), or one that is no time or more than MAX_CORRECTION_S away."""
    times = [v for k, v in trailing or () if k == TIME]
    if len(times) != 1:
        return None
    try:
        fleet = float(times[0])
    except ValueError:
        return None
    # Its clock was read somewhere between our two readings: the middle errs by half the
    # round trip at most, far inside the MAX_SKEW_S a call may be off.
    correction = fleet - (sent + received) / 2
    if not abs(correction) <= MAX_CORRECTION_S:  # NaN and infinities too
        return None
    return correction if abs(correction) >= MIN_CORRECTION_S else 0.0


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
    is looked up, the one the signature covers and the one returned.

    The signature is checked before the time: a refusal for the time (and what the manager
    makes of it: a log line, the offset it shows) is then always of the appliance's own
    call, never of one anybody made up in its name."""
    metadata = list(metadata)
    fields = _signed_fields(metadata)
    name = fields[NAME]
    public = key_of(name)
    if public is None:
        raise AuthError(f"appliance '{name[:80]}' {NOT_ENROLLED}", "unknown_appliance")
    try:
        at = float(fields[TIME])
        sig = base64.b64decode(fields[SIGNATURE], validate=True)
    except ValueError:
        raise AuthError("call signature is malformed", "malformed") from None
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            sig, _message(name, method, fields[TIME], body)
        )
    except (InvalidSignature, ValueError):
        raise AuthError("call signature does not match the enrolled key", "bad_signature") from None
    if not abs(now - at) <= max_skew_s:  # also refuses a NaN time
        skewed = SkewedCall(name, at, correction_of(metadata)) if math.isfinite(at) else None
        raise AuthError(CLOCK_SKEW, "clock_skew", skewed)
    return name
