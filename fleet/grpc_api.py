"""The gRPC shell for appliances (and services, for Steer): proto in, FleetService call,
proto out. Every call but Enrol and Steer must carry the appliance's signature
(edgeflix/proto/auth.py) made with the key it enrolled with; with `[server] tls` it must
also come over a TLS connection whose client certificate (fleet/tls.py) names that appliance.
Enrol needs that signature too once its name is enrolled with its key (see `_repeat_proven`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace

import grpc

from edgeflix.bucket import TokenBucket
from edgeflix.log import event
from edgeflix.proto import auth
from edgeflix.proto.codec import TITLES_NEEDED, CodecError, pack_plan, unpack_counts
from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from fleet.catalogue import CatalogueMisses
from fleet.enrolment import OpenEnrolmentFull
from fleet.errors import FleetError, FleetInputError, UnknownNameError
from fleet.model import HeldTitle, TierSpace, check_name, check_title
from fleet.publish import to_proto
from fleet.registry import Beat, FillFailure, Health, held_title, known_tier
from fleet.service import FleetService
from fleet.steering import MAX_RATE_BPS, UnlistedTitleError
from fleet.store import EnrolmentRefused, StoreError
from fleet.ticker import TickHealth, store_changes
from fleet.tls import CertAuthority

log = logging.getLogger("fleet")
_HEALTH: dict[int, Health] = {
    fleet_pb2.HEALTH_OK: "ok",
    fleet_pb2.HEALTH_DEGRADED: "degraded",
    fleet_pb2.HEALTH_FAILING: "failing",
}
_METHOD = "/edgeflix.fleet.v1.Fleet/"
# The most titles a beat may say its appliance holds: a 50,000-title catalogue, twice over
# (as edgeflix/proto/codec.py MAX_COUNT_ENTRIES). Each new one is checked and becomes an
# object the manager keeps; 320 k made-up ones a beat held the loop ~1 s each time.
MAX_HELD_TITLES = 100_000
# A failed title's reason as the manager keeps it (the fill's message, which names the title,
# the tier and the bytes it lacked, fits well within).
MAX_FAILURE_REASON = 300
# What an Enrol the database could not save is answered: the caller is not enrolled, so not
# told the store's error (it names the database's path on the manager); the log has it.
ENROL_UNSAVED = "the fleet manager cannot save enrolments now; retry later"


def _status(exc: FleetError) -> grpc.StatusCode:
    if isinstance(exc, EnrolmentRefused):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, UnknownNameError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, OpenEnrolmentFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, FleetInputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, StoreError):
        return grpc.StatusCode.UNAVAILABLE  # retryable: the appliance tries again later
    return grpc.StatusCode.INTERNAL


def valid_title(title_id: str) -> bool:
    try:
        check_title(title_id)
    except FleetInputError:
        return False
    return True


def beat_from_proto(
    req: fleet_pb2.HeartbeatRequest, now: float, previous: Beat | None = None
) -> Beat:
    """The beat as the registry keeps it; FleetInputError for figures no appliance sends:
    a NaN or infinite rate would pass every load comparison (NaN >= x is False) and, in a
    site's mean, switch off bounded loads for all its appliances; so would 1e308, which is
    why rates are clamped to MAX_RATE_BPS. More than MAX_HELD_TITLES titles is refused, and
    so is a held title's digest or tier, or a tier space, that no appliance sends. A title
    id no origin can have is left out (it would become a path in URLs and plans), not the
    whole beat."""
    for field in ("capacity_bps", "load_bps"):
        if not math.isfinite(getattr(req, field)):
            raise FleetInputError(f"heartbeat: {field} is not a finite number")
    if len(req.titles) > MAX_HELD_TITLES:
        raise FleetInputError(f"heartbeat: {len(req.titles)} titles held, over {MAX_HELD_TITLES}")
    titles, digest = beat_titles(req, previous)
    failures = fill_failures(req.fill, previous.fill_failures if previous else ())
    return Beat(
        at=now,
        sequence=req.sequence,
        health=_HEALTH.get(req.health, "failing"),
        health_detail=req.health_detail[:200],
        capacity_bps=min(max(req.capacity_bps, 0.0), MAX_RATE_BPS),
        load_bps=min(max(req.load_bps, 0.0), MAX_RATE_BPS),
        connections=req.connections,
        tiers=tier_spaces(req.tiers),
        titles=titles,
        titles_digest=digest,
        plan_version=req.plan_version,
        keys_version=req.keys_version,
        fill_done=req.fill.bytes_done,
        fill_total=req.fill.bytes_total,
        fill_failures=failures,
        boot=req.boot[:32],
        keys_digest=req.keys_digest[:64],
        plan_digest=req.plan_digest[:64],
    )


def tier_spaces(sent: Iterable[fleet_pb2.TierSpace]) -> tuple[TierSpace, ...]:
    """A beat's disk space per tier: each of registry.TIERS at most once, as appliances send
    it; FleetInputError otherwise (a list of any length was kept, an object per entry)."""
    out: dict[str, TierSpace] = {}
    for t in sent:
        tier = known_tier(t.tier, "tier space")
        if tier in out:
            raise FleetInputError(f"heartbeat: tier space {tier!r} is listed twice")
        # What it fills up to is no more than its capacity, whatever it says.
        fillable = min(t.fillable_bytes, t.capacity_bytes)
        out[tier] = TierSpace(tier, t.capacity_bytes, t.used_bytes, fillable)
    return tuple(out.values())


def fill_failures(
    fill: fleet_pb2.FillProgress, before: tuple[FillFailure, ...] = ()
) -> tuple[FillFailure, ...]:
    """The titles the appliance's last fill run failed: those of `failures` with why, the
    rest of `failed_titles` (all of them, from an older appliance) with no reason. The
    previous beat's tuple when nothing changed (beat after beat, the same run's report). At
    most MAX_HELD_TITLES of each (FleetInputError beyond: a plan never holds more); ids no
    origin can have are left out, and reasons cut to MAX_FAILURE_REASON characters."""
    count = max(len(fill.failures), len(fill.failed_titles))
    if count > MAX_HELD_TITLES:
        raise FleetInputError(f"heartbeat: {count} failed titles, over {MAX_HELD_TITLES}")
    sent = [(f.title_id, f.reason[:MAX_FAILURE_REASON], f.no_room) for f in fill.failures]
    sent += [(t, "", False) for t in fill.failed_titles]
    out: dict[str, FillFailure] = {}
    for title_id, reason, no_room in sent:
        if title_id not in out and valid_title(title_id):
            # One line of printable text: `fleet show` puts it on the operator's terminal.
            line = "".join(c for c in " ".join(reason.split()) if c.isprintable())
            out[title_id] = FillFailure(title_id, line, no_room)
    failures = tuple(out.values())
    return before if failures == before else failures


def beat_titles(
    req: fleet_pb2.HeartbeatRequest, previous: Beat | None
) -> tuple[Mapping[str, HeldTitle], bytes]:
    """The titles a beat says the appliance holds, and the digest they go by. The same
    digest as the previous beat's, or left out (`titles_omitted`, which the handler takes only
    under the digest we keep: TITLES_NEEDED): that list, not read again."""
    before, kept = (previous.titles, previous.titles_digest) if previous else ({}, b"")
    if req.titles_omitted or (req.titles_digest and req.titles_digest == kept):
        return before, kept  # left out only under ours: the handler refused the others
    return held_titles(req.titles, before), req.titles_digest[:64]


def read_beat(
    req: fleet_pb2.HeartbeatRequest, now: float, previous: Beat | None
) -> tuple[Beat, dict[str, int]]:
    """The beat and its bytes per title (ids no origin can have left out); CodecError or
    FleetInputError when it is beyond the protocol's limits. Touches no shared state."""
    counts = unpack_counts(req.counts_zstd)
    beat = beat_from_proto(req, now, previous)
    return beat, {t: c.bytes for t, c in counts.items() if valid_title(t)}


def held_titles(
    sent: Iterable[fleet_pb2.HeldTitle], before: Mapping[str, HeldTitle]
) -> dict[str, HeldTitle]:
    """The titles of a beat, reusing the previous beat's value for each title that has not
    changed (almost all, beat after beat): a new object per title per beat was the
    manager's main garbage, thousands of objects a second that lived just long enough for
    the collector to walk them, each walk a pause on the loop that also answers /steer.
    A title seen before was checked then; a new or changed one is checked now (its digest
    and tier: registry.held_title), and the first bad one refuses the beat."""
    out: dict[str, HeldTitle] = {}
    for t in sent:
        old = before.get(t.title_id)
        if (
            old is not None
            and old.digest == t.digest
            and old.complete == t.complete
            and old.size_bytes == t.size_bytes
            and old.tier == t.tier
        ):
            out[t.title_id] = old
        elif old is not None or valid_title(t.title_id):
            out[t.title_id] = held_title(t.title_id, t.digest, t.complete, t.size_bytes, t.tier)
    return out


def _timed_read(
    req: fleet_pb2.HeartbeatRequest, now: float, previous: Beat | None
) -> tuple[tuple[Beat, dict[str, int]] | CodecError | FleetError, float]:
    """read_beat (or what it raised), and the CPU seconds it took on its thread: what the
    beat is charged, refused or not. What it raised comes without its traceback, which held
    this frame, which holds the error: a cycle only the collector frees, holding the request
    (up to 24 MiB) in the frames below until it does (see Heartbeat)."""
    start = time.thread_time()
    try:
        out: tuple[Beat, dict[str, int]] | CodecError | FleetError = read_beat(req, now, previous)
    except (CodecError, FleetError) as exc:
        exc.__context__ = exc.__cause__ = None
        out = exc.with_traceback(None)
    return out, time.thread_time() - start


def _claimed_name(context: grpc.aio.ServicerContext) -> str:
    """The appliance name a call says it comes from (unverified: for the log only)."""
    for key, value in context.invocation_metadata() or ():
        if key == auth.NAME:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


async def _only_its_own(asked: str, caller: str, context: grpc.aio.ServicerContext) -> None:
    """A request naming an appliance (optional) must name the caller: one appliance's
    beats, plan and keys are never another's business."""
    if asked and asked != caller:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "a call for another appliance")


class _Refused(Exception):
    """A heartbeat refused with `code` (FleetServicer.Heartbeat answers it)."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(details)
        self.code = code
        self.trailers = trailers


# The manager's CPU time one appliance's beats may take: a share, saved up to a burst. A beat
# costs a few ms; a maximal one (100k held titles, 100k counts) up to ~0.4 s, on the loop
# that answers /steer or holding its GIL. What is limited is that time, not the number of
# beats: an appliance that beats often but cheaply costs nothing, while one sending maximal
# beats back to back (hostile or broken) is refused once its share is spent. CPU time of its
# own beat only (thread_time), not the wall time it waited behind others: after a restart
# every appliance sends its whole list at once, and none must be refused for the queue. The
# debt stops at one burst, so even a slow beat costs at most a few refused ones.
BEAT_WORK_SHARE = 0.1
BEAT_WORK_BURST_S = 2.0


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    def __init__(
        self,
        service: FleetService,
        authority: CertAuthority | None = None,
        misses: CatalogueMisses | None = None,
        health: TickHealth | None = None,
    ) -> None:
        self.service = service
        self.authority = authority
        self.misses = misses  # a fresh catalogue read for a title published since the last
        self.health = health  # told of enrolments the database refused, or took
        self._beat_work: dict[str, TokenBucket] = {}  # per enrolled name: its share left

    def _beat_work_left(self, name: str, now: float) -> float:
        bucket = self._beat_work.get(name)
        return bucket.refill(now).tokens if bucket else BEAT_WORK_BURST_S

    def _charge_beat(self, name: str, cpu_s: float, now: float) -> None:
        full = TokenBucket.full(BEAT_WORK_SHARE, BEAT_WORK_BURST_S, now)
        bucket, _ = self._beat_work.get(name, full).take(cpu_s, now)
        self._beat_work[name] = replace(bucket, tokens=max(bucket.tokens, -BEAT_WORK_BURST_S))

    def _public_key(self, name: str) -> bytes | None:
        record = self.service.records.get(name)
        return record.public_key if record is not None else None

    async def _caller(self, context: grpc.aio.ServicerContext, method: str, body: bytes) -> str:
        try:
            return self._verified(context, method, body)
        except auth.AuthError as exc:
            trailers = self._auth_refused(exc, context)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc), trailers)
            raise  # abort raises; this keeps type checkers satisfied

    def _auth_refused(
        self, exc: auth.AuthError, context: grpc.aio.ServicerContext
    ) -> tuple[tuple[str, str], ...]:
        """Counted (and noted, a clock off or a name not enrolled: FleetService.auth_refused);
        the trailing metadata to refuse it with: our time when the call's was too far from
        it, from which the appliance learns how to sign so we take its calls. The details
        stay what auth.refusal_of reads, for appliances that know no trailer."""
        self.service.auth_refused(exc, _claimed_name(context), context.peer() or "")
        return auth.fleet_time(self.service.clock()) if exc.reason == "clock_skew" else ()

    def _verified(self, context: grpc.aio.ServicerContext, method: str, body: bytes) -> str:
        """The enrolled appliance that signed the call; AuthError if none did."""
        metadata = [(k, v) for k, v in (context.invocation_metadata() or ())]
        verified = auth.verify_call(
            metadata, self._public_key, _METHOD + method, body, self.service.clock()
        )
        if self.authority is not None:
            # The mTLS listener verified the chain against our CA; the enrolment
            # listener asks for no certificate, so nothing but Enrol/Steer passes there.
            names = (context.auth_context() or {}).get("x509_common_name", [])
            if names != [verified.encode()]:
                raise auth.AuthError(
                    f"no client certificate for '{verified}' on this connection", "no_client_cert"
                )
        self.service.auth_accepted(verified, auth.correction_of(metadata))
        return verified

    def _repeat_proven(
        self, request: fleet_pb2.EnrolRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """An Enrol for a name enrolled with this very key (its reply was lost, its client
        certificate is gone) must be signed with that key, like every later call: the public
        key and a spent join token are no secret (both crossed the network; the token stays
        in appliance.toml), and an unsigned repeat passed for the appliance, moving its URL
        or getting a certificate in its name for another TLS key. AuthError if it is not.
        A name enrolled with another key is the store's to refuse; a new one needs only its
        join token."""
        enrolled = self._public_key(request.name)
        if enrolled is None or enrolled != request.public_key:
            return
        metadata = [(k, v) for k, v in (context.invocation_metadata() or ())]
        body = request.SerializeToString(deterministic=True)
        try:
            signer = auth.verify_call(
                metadata, self._public_key, _METHOD + "Enrol", body, self.service.clock()
            )
        except auth.AuthError as exc:
            raise auth.AuthError(
                f"appliance '{request.name}' is enrolled already: enrolling it again must be "
                f"signed with its key ({exc})",
                exc.reason,
                exc.skewed,
            ) from None
        if signer != request.name:
            raise auth.AuthError(
                f"appliance '{request.name}' is enrolled already: '{signer}' cannot enrol it",
                "other_appliance",
            )
        self.service.auth_accepted(signer, auth.correction_of(metadata))

    async def Enrol(
        self, request: fleet_pb2.EnrolRequest, context: grpc.aio.ServicerContext
    ) -> fleet_pb2.EnrolResponse:
        ca = self.authority
        # No await from the check of a repeat to the store's write: no other Enrol comes
        # between them on this loop.
        try:
            if ca is not None:
                if not request.tls_public_key:
                    raise FleetInputError(
                        "this fleet runs TLS: set [fleet] ca so the appliance sends a TLS key"
                    )
                # Checked before the join token is spent; the name becomes the
                # certificate's CN and SAN, which take no more than a safe name.
                check_name(request.name, "appliance")
            self._repeat_proven(request, context)  # before any certificate is issued
            if ca is not None:
                cert = ca.client_cert(request.name, request.tls_public_key)
            rec = self.service.enrol(
                request.join_token, request.name, request.url, request.public_key
            )
            if ca is not None and rec.name != request.name:
                cert = ca.client_cert(rec.name, request.tls_public_key)
        except auth.AuthError as exc:
            trailers = self._auth_refused(exc, context)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc), trailers)
            raise
        except FleetError as exc:
            if isinstance(exc, EnrolmentRefused | OpenEnrolmentFull):
                self.service.enrolment_refused(str(exc), request.name, context.peer() or "")
            if isinstance(exc, StoreError):
                self._enrol_unsaved(exc, request.name, context.peer() or "")
                await context.abort(grpc.StatusCode.UNAVAILABLE, ENROL_UNSAVED)
            await context.abort(_status(exc), str(exc))
            raise
        if self.health is not None:
            self.health.wrote(store_changes(self.service))
        return fleet_pb2.EnrolResponse(
            appliance=rec.name,
            site=rec.site,
            heartbeat_interval_ms=int(self.service.config.heartbeat.interval_s * 1000),
            client_cert_pem=cert if ca is not None else b"",
            ca_cert_pem=ca.ca_pem if ca is not None else b"",
        )

    def _enrol_unsaved(self, exc: StoreError, name: str, peer: str) -> None:
        """The store's error, with its path, to the log (and /healthz, through `health`,
        which says it once while the database refuses writes), never to the caller."""
        if self.health is not None:
            self.health.write_failed(str(exc), store_changes(self.service), "enrolment")
        else:
            event(log, "fleet.enrolment_unsaved", logging.ERROR, error=str(exc),
                  appliance=name, peer=peer)  # fmt: skip

    async def Heartbeat(
        self, request: fleet_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> fleet_pb2.HeartbeatResponse:
        """A beat's refusals are answered by status, not context.abort: grpc.aio keeps an
        abort's exception on the call, whose traceback holds the frames holding the request,
        a cycle only the collector frees. Refused beats of up to 24 MiB, from anyone before
        their signature is checked, piled up there (~50 MB each on an idle manager)."""
        try:
            return await self._beat(request, context)
        except _Refused as refused:
            context.set_code(refused.code)
            context.set_details(str(refused))
            if refused.trailers:
                context.set_trailing_metadata(refused.trailers)
        return fleet_pb2.HeartbeatResponse()

    async def _beat(
        self, request: fleet_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> fleet_pb2.HeartbeatResponse:
        if len(request.titles) > MAX_HELD_TITLES:  # refused before any work per title
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"heartbeat: {len(request.titles)} titles held, over {MAX_HELD_TITLES}",
            )
        svc = self.service
        start = time.thread_time()  # no await until the beat is read: all of it is this beat's
        body = request.SerializeToString(deterministic=True)
        try:
            name = self._verified(context, "Heartbeat", body)
        except auth.AuthError as exc:
            trailers = self._auth_refused(exc, context)
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, str(exc), trailers) from None
        if request.appliance and request.appliance != name:  # as _only_its_own
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED, "a call for another appliance")
        verdict = "taken"
        cpu: float | None = None  # CPU seconds of this beat, once it is read
        try:
            if self._beat_work_left(name, svc.monotonic()) <= 0:
                raise _Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"heartbeat: '{name}' beats too often for their size (over "
                    f"{BEAT_WORK_SHARE:.0%} of the manager's time); beat every "
                    f"{svc.config.heartbeat.interval_s:g} s",
                )
            kept = svc.beats.get(name)
            if request.titles_omitted and (
                kept is None or request.titles_digest != kept.titles_digest
            ):
                raise _Refused(grpc.StatusCode.FAILED_PRECONDITION, TITLES_NEEDED)
            checks = time.thread_time() - start
            # Tens of ms for a large catalogue's beat (more for its first): read off the
            # loop that answers /steer. The service's state is only touched back on it.
            read, read_cpu = await asyncio.to_thread(_timed_read, request, svc.clock(), kept)
            cpu = checks + read_cpu
            if isinstance(read, CodecError):
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(read))
            if isinstance(read, FleetError):
                raise _Refused(_status(read), str(read))
            on_loop = time.thread_time()
            verdict = svc.heartbeat(name, *read, request.url)
            cpu += time.thread_time() - on_loop
        except FleetError as exc:
            raise _Refused(_status(exc), str(exc)) from None
        finally:
            # A beat refused before it was read: what its checks cost (no await since start).
            spent = cpu if cpu is not None else time.thread_time() - start
            self._charge_beat(name, max(spent, 0.0), svc.monotonic())
        current = svc.current_plan
        return fleet_pb2.HeartbeatResponse(
            plan_version=current.version if current and name in current.appliances else 0,
            keys_version=svc.keys.version,
            drained=svc.records[name].drained,
            heartbeat_interval_ms=int(svc.config.heartbeat.interval_s * 1000),
            fill_now=svc.take_fill_now(name),
            stale=verdict == "stale",
            titles_digest=kept.titles_digest if (kept := svc.beats.get(name)) else b"",
        )

    async def GetPlan(
        self, request: fleet_pb2.GetPlanRequest, context: grpc.aio.ServicerContext
    ) -> fleet_pb2.PlanResponse:
        name = await self._caller(context, "GetPlan", request.SerializeToString(deterministic=True))
        await _only_its_own(request.appliance, name, context)
        svc = self.service
        current = svc.current_plan
        entry = current.for_appliance(name) if current else None
        if current is None or entry is None:
            return fleet_pb2.PlanResponse(version=0, unchanged=request.have_version == 0)
        if request.have_version == current.version:
            # No digest: the appliance keeps the one it has, which its beats compare.
            return fleet_pb2.PlanResponse(version=current.version, unchanged=True)
        snap = svc.snapshot()
        peers = {a.name: a.url for a in snap.appliances if a.site == entry.site}
        proto = to_proto(
            entry, current.version, snap.site(entry.site), peers, svc.config.origin.url
        )
        return fleet_pb2.PlanResponse(
            version=current.version, plan_zstd=pack_plan(proto), digest=svc.plan_digest()
        )

    async def GetKeys(
        self, request: fleet_pb2.GetKeysRequest, context: grpc.aio.ServicerContext
    ) -> fleet_pb2.KeysResponse:
        name = await self._caller(context, "GetKeys", request.SerializeToString(deterministic=True))
        await _only_its_own(request.appliance, name, context)
        svc = self.service
        if request.have_version == svc.keys.version:
            return fleet_pb2.KeysResponse(unchanged=True)
        policy = svc.config.key_policy()
        valid = svc.verification_keys()
        keys = [
            fleet_pb2.Key(
                id=k.id,
                secret=k.secret,
                activates=k.activates,
                retires=k.retires or 0.0,
                verify_until=k.verify_until(policy) or 0.0,
                # How long it verifies once retired: what `appliance sign --ttl` may promise.
                verify_for_s=k.ttl_s(policy) + policy.skew_s,
            )
            for k in svc.keys.keys
            if k.id in valid
        ]
        return fleet_pb2.KeysResponse(
            keys=fleet_pb2.KeySet(
                version=svc.keys.version,
                keys=keys,
                digest=svc.keys_digest(),
                rebased=svc.keys_rebased(),
            )
        )

    async def Steer(
        self, request: fleet_pb2.SteerRequest, context: grpc.aio.ServicerContext
    ) -> fleet_pb2.SteerResponse:
        try:
            try:
                decision, urls = self.service.steer(request.client_ip, request.title_id)
            except UnlistedTitleError:
                # Published since the last read? Once more after a fresh one (shared and
                # rate-limited as /steer's: ticker.CatalogueReads), else the NOT_FOUND stands.
                if self.misses is None or not await self.misses.after_miss():
                    raise
                decision, urls = self.service.steer(request.client_ip, request.title_id)
        except FleetError as exc:
            await context.abort(_status(exc), str(exc))
            raise
        return fleet_pb2.SteerResponse(
            urls=list(urls.urls),
            candidates=[
                fleet_pb2.SteerCandidate(
                    name=c.name, site=c.site, url=u, reason=c.reason, kind=c.kind
                )
                for c, u in zip(decision.candidates, urls.urls, strict=True)
            ],
            outcome=decision.outcome,
            client_site=decision.client_site or "",
            expires=urls.expires,
            # `excluded` stays empty: listing every appliance left out cost O(fleet) per
            # call and named them all; `edgeflix fleet steer` (HTTP, admin) shows it.
        )
