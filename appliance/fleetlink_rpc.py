"""The fleet link's gRPC plumbing: the channel (plaintext, or TLS with the fleet's CA and,
once enrolled, the client certificate it issued) and calls signed with the appliance's
Ed25519 key, every failure raised in one shape (CallFailed). appliance/fleetlink.py and its
parts (fleetlink_enrol.py, fleetlink_received.py) decide what to call and when; this module
only knows how.

A box whose clock is off (no RTC, no NTP) signs at its clock plus the correction it learned
from the fleet's refusal of a call for its time (as AWS SDKs do on RequestTimeTooSkewed):
the next call is taken. The link also checks URL tokens and key periods at that time
(`fleet_time`), as the fleet made them on its clock; a step of this box's clock (NTP) moves
the correction back by as much (`follow_step`). Each change goes to `on_change`, which keeps
it for the next start (fleetlink_clock.KeptCorrection).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from appliance.config import FleetLinkConfig
from appliance.fleetlink_clock import correction_after_step
from appliance.fleetlink_state import LinkState, LinkStateError
from edgeflix.configtypes import format_hostport, parse_hostport
from edgeflix.errors import EdgeflixError
from edgeflix.log import event
from edgeflix.proto import auth
from edgeflix.proto.codec import MAX_MESSAGE_BYTES
from edgeflix.proto.gen import fleet_pb2_grpc

log = logging.getLogger("appliance.fleet")
METHOD = "/edgeflix.fleet.v1.Fleet/"
CALL_TIMEOUT_S = 5.0
# gRPC's own reconnect backoff grows to minutes; a fleet manager back from a restart
# should see its appliances within a beat or two.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
# The fleet's answers to an enrolment that retrying cannot change.
FINAL_REFUSALS = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)


class CallFailed(EdgeflixError):
    """A call to the fleet did not complete; `final` when the fleet refused it outright."""

    def __init__(
        self,
        message: str,
        *,
        final: bool = False,
        code: grpc.StatusCode | None = None,
        details: str = "",
        trailers: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.final = final
        self.code = code
        self.details = details  # the fleet's own words, for edgeflix.proto.auth.refusal_of
        self.trailers = trailers  # its trailing metadata (its time, with a clock skew)


def grpc_target(address: str) -> str:
    """`[fleet] url` / `enrol_url` as gRPC takes it: `:PORT` gets its default host, and an
    IPv6 host its brackets (a raw `::1:PORT` is a target gRPC cannot resolve, for ever)."""
    return format_hostport(*parse_hostport(address))


def open_channel(fleet: FleetLinkConfig, state: LinkState) -> grpc.Channel:
    """Plaintext without `[fleet] ca`; else TLS: to `enrol_url` with the CA alone until the
    fleet has issued a client certificate, then mutual TLS to `url`."""
    assert fleet.url is not None
    if fleet.ca is None or fleet.enrol_url is None:
        return grpc.insecure_channel(grpc_target(fleet.url), options=CHANNEL_OPTIONS)
    try:
        ca = fleet.ca.read_bytes()
    except OSError as exc:
        raise LinkStateError(f"cannot read [fleet] ca {fleet.ca}: {exc.strerror}") from None
    cert = state.client_cert()
    if cert is None:
        creds = grpc.ssl_channel_credentials(ca)
        return grpc.secure_channel(grpc_target(fleet.enrol_url), creds, options=CHANNEL_OPTIONS)
    creds = grpc.ssl_channel_credentials(ca, state.tls_key(), cert)
    return grpc.secure_channel(grpc_target(fleet.url), creds, options=CHANNEL_OPTIONS)


class FleetRpc:
    """One channel to the fleet; `call` and `enrol` sign as `name`. Both raise CallFailed
    naming the call."""

    def __init__(
        self,
        fleet: FleetLinkConfig,
        state: LinkState,
        name: str,
        key: bytes,
        clock: Callable[[], float] = time.time,
        *,
        on_change: Callable[[float, bool], None] = lambda correction, stepped: None,
    ) -> None:
        self.fleet, self.state, self.name, self.key, self.clock = fleet, state, name, key, clock
        # Seconds added to `clock` for the time calls are signed at (see the module's doc).
        self.correction = 0.0
        self.on_change = on_change  # (the new correction, moved by a step of the clock)
        self.channel = open_channel(fleet, state)
        self.stub = fleet_pb2_grpc.FleetStub(self.channel)

    def reopen(self) -> None:
        """A new channel (after enrolment issued a client certificate)."""
        old, self.channel = self.channel, open_channel(self.fleet, self.state)
        self.stub = fleet_pb2_grpc.FleetStub(self.channel)
        old.close()

    def close(self) -> None:
        self.channel.close()

    def fleet_time(self) -> float:
        """The fleet manager's time as this box knows it: its clock plus the correction."""
        return self.clock() + self.correction

    def enrol(self, request: Any) -> Any:
        """The join token is what enrols a new name; the signature is what the fleet asks
        of a name it has enrolled with this key (a lost reply, a lost client certificate),
        as a spent token and the public key are no proof of being this appliance."""
        return self.call("Enrol", request)

    def call(self, method: str, request: Any) -> Any:
        body = request.SerializeToString(deterministic=True)
        sent, correction = self.clock(), self.correction
        metadata = auth.sign_call(self.name, self.key, METHOD + method, body, sent + correction)
        if correction:  # said, so that the fleet can show how far off this box's clock is
            metadata += ((auth.CORRECTION, f"{correction:.3f}"),)
        try:
            return self._invoke(method, request, metadata)
        except CallFailed as exc:
            skewed = auth.refusal_of(exc.details) == "clock_skew"
            if exc.code == grpc.StatusCode.UNAUTHENTICATED and skewed:
                self._relearn(auth.learned_correction(exc.trailers, sent, self.clock()))
            raise

    def _relearn(self, learned: float | None) -> None:
        """A call refused for its time: the correction the fleet's time says, or none (it
        sent no usable time: the one signed with is no better than none). Logged when it
        changes."""
        self._set(0.0 if learned is None else learned)

    def follow_step(self, step_s: float) -> None:
        """This box's clock was stepped by `step_s` (NTP set it): the fleet's time was not,
        so the correction moves back by as much, rather than the next call being refused
        for a clock just set right."""
        self._set(correction_after_step(self.correction, step_s), stepped_s=step_s)

    def _set(self, new: float, stepped_s: float | None = None) -> None:
        if new == self.correction:
            return
        self.correction = new
        fields = {} if stepped_s is None else {"stepped_s": round(stepped_s, 3)}
        action = (
            "calls to the fleet are signed, and URL tokens, key periods and fill windows "
            "judged, at this box's clock plus offset_s: set it right (NTP)"
        )
        if not new:
            action = (
                "calls to the fleet are signed, and URL tokens and fill windows judged, at its "
                "clock again"
            )
        event(
            log,
            "fleet.clock_offset",
            logging.WARNING,
            offset_s=round(new, 3),
            clock=self.clock(),
            action=action,
            **fields,
        )
        self.on_change(new, stepped_s is not None)

    def _invoke(self, method: str, request: Any, metadata: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            code = exc.code()
            raise CallFailed(
                f"{method.lower()}: {exc.details() or code}",
                final=code in FINAL_REFUSALS,
                code=code,
                details=exc.details() or "",
                trailers=tuple(exc.trailing_metadata() or ()),
            ) from None
