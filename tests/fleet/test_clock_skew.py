"""An appliance whose clock is off (no RTC, no NTP: a Raspberry Pi) is not silently dropped
from the fleet. The manager says why it refuses its calls (a rate-limited log line, a
counter at /metrics, the offset in `fleet ls`/`fleet show`), answers with its own time, and
the appliance signs at its clock corrected by that (appliance/fleetlink_rpc.py), so its next
call is taken. Certificates are valid from a day back, for boxes behind the manager.

Pure cores first (edgeflix/proto/auth.py, fleet/clocks.py, fleet/tls.py); then a real
`edgeflix fleet serve` on loopback with the appliance's gRPC client (and its whole fleet
link) in this process, its clock shifted.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.config import FleetLinkConfig
from appliance.fleetlink_rpc import CallFailed, FleetRpc
from appliance.fleetlink_state import LinkState
from edgeflix.proto import auth
from edgeflix.proto.gen import fleet_pb2
from fleet.cli_appliances import clock_line
from fleet.clocks import ApplianceClocks
from fleet.tls import SERVER_DAYS, CertAuthority
from tests.conftest import run_cli
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet import FLEET_TOML
from tests.integration.test_fleet_link_recovery import Clock, enrolled, events, link, steps

NOW = 1_800_000_000.0
DAY = 86_400.0


# -- edgeflix/proto/auth.py ----------------------------------------------------------------


def test_the_correction_is_the_fleet_time_less_the_middle_of_the_call() -> None:
    trailer = auth.fleet_time(NOW)
    assert auth.learned_correction(trailer, NOW - 601.0, NOW - 599.0) == pytest.approx(600.0)
    assert auth.learned_correction(trailer, NOW + 600.0, NOW + 600.2) == pytest.approx(-600.1)
    # As grpc hands it, bytes or str; within MIN_CORRECTION_S: the clock reads right.
    assert auth.learned_correction(((auth.TIME, b"%.3f" % NOW),), NOW, NOW + 0.5) == 0.0
    assert auth.learned_correction(trailer, NOW - 29 * DAY, NOW - 29 * DAY) == 29 * DAY


@pytest.mark.parametrize(
    "trailing",
    [
        None,
        (),
        (("other", "1"),),
        ((auth.TIME, "soon"),),
        ((auth.TIME, "nan"),),
        ((auth.TIME, "inf"),),
        ((auth.TIME, f"{NOW + 31 * DAY:.3f}"),),  # more than 30 days: a garbled time
        ((auth.TIME, f"{NOW:.3f}"), (auth.TIME, f"{NOW:.3f}")),  # said twice: which?
    ],
)
def test_no_correction_is_learned_from_what_is_no_fleet_time(
    trailing: tuple[tuple[str, str], ...] | None,
) -> None:
    assert auth.learned_correction(trailing, NOW, NOW) is None


@pytest.mark.parametrize(
    ("sent", "correction"),
    [(None, 0.0), ("-600.250", -600.25), ("x", 0.0), ("nan", 0.0), (f"{31 * DAY}", 0.0)],
)
def test_the_correction_a_call_says_it_signs_with(sent: str | None, correction: float) -> None:
    md = list(auth.sign_call("h1", auth.new_private_key(), "/x/K", b"", NOW))
    if sent is not None:
        md.append((auth.CORRECTION, sent))
    assert auth.correction_of(md) == correction


def _refusal(md: list[tuple[str, str]], keys: dict[str, bytes], now: float) -> auth.AuthError:
    with pytest.raises(auth.AuthError) as caught:
        auth.verify_call(md, keys.get, "/x/Heartbeat", b"body", now)
    return caught.value


def test_every_refusal_names_its_reason_from_a_closed_set() -> None:
    key = auth.new_private_key()
    keys = {"h1": auth.public_key(key)}
    md = list(auth.sign_call("h1", key, "/x/Heartbeat", b"body", NOW))
    forged = [*md[:2], (auth.SIGNATURE, dict(md)[auth.SIGNATURE][:-4] + "AAA=")]
    malformed = [*md[:1], (auth.TIME, "soon"), md[2]]
    cases = {
        "unsigned": (md[:2], NOW),
        "malformed": (malformed, NOW),
        "unknown_appliance": ([(auth.NAME, "h2"), *md[1:]], NOW),
        "bad_signature": (forged, NOW),
        "clock_skew": ([*md, (auth.CORRECTION, "-30")], NOW - 600),
    }
    for reason, (metadata, now) in cases.items():
        assert _refusal(metadata, keys, now).reason == reason
    assert set(auth.REFUSAL_REASONS) >= set(cases) | {"no_client_cert", "other_appliance"}
    skewed = _refusal([*md, (auth.CORRECTION, "-30")], keys, NOW - 600).skewed
    assert skewed == auth.SkewedCall("h1", NOW, -30.0)
    # The details stay what appliances that know no trailer read.
    assert auth.refusal_of(str(_refusal(md, keys, NOW + 600))) == "clock_skew"


def test_a_forged_call_in_an_appliance_name_is_never_taken_for_its_clock() -> None:
    """The signature is checked before the time: nobody can make the manager log, count or
    show a clock skew of an appliance with a made-up call in its name."""
    key = auth.new_private_key()
    keys = {"h1": auth.public_key(key)}
    md = auth.sign_call("h1", auth.new_private_key(), "/x/Heartbeat", b"body", NOW)
    refused = _refusal(list(md), keys, NOW + 3600)
    assert refused.reason == "bad_signature" and refused.skewed is None


# -- fleet/clocks.py -----------------------------------------------------------------------


def test_a_refused_clock_is_logged_once_in_a_while_and_shown_until_it_is_right() -> None:
    clocks = ApplianceClocks(log_every_s=300.0)
    first = clocks.refused("h1", NOW + 600, 0.0, NOW, mono=10.0)
    assert first is not None and first.offset_s == 600.0 and first.refused
    assert clocks.refused("h1", NOW + 601, 0.0, NOW + 1, mono=11.0) is None  # not one a beat
    seen = clocks.get("h1")
    assert seen is not None and seen.at == NOW + 1 and seen.offset_s == 600.0
    # Signing at its clock less 600 s since: taken, and still shown (its clock is off).
    clocks.accepted("h1", -600.0, NOW + 2)
    seen = clocks.get("h1")
    assert seen is not None and seen.offset_s == 600.0 and not seen.refused
    # Refused again within the interval (its correction went stale): not logged again.
    assert clocks.refused("h1", NOW - 600, -600.0, NOW + 3, mono=13.0) is None
    assert clocks.refused("h1", NOW + 600, 0.0, NOW + 400, mono=310.0) is not None
    # Its calls taken with no correction: its clock reads right, nothing to show.
    clocks.accepted("h1", 0.0, NOW + 500)
    assert clocks.get("h1") is None
    # A time that is no instant is not kept (nor shown as NaN in JSON).
    assert clocks.refused("h2", float("nan"), 0.0, NOW, 1.0) is None and len(clocks) == 0


def test_the_clocks_kept_are_bounded_and_forgotten_with_their_appliance() -> None:
    clocks = ApplianceClocks(limit=3)
    for i in range(5):
        clocks.refused(f"h{i}", NOW + 600, 0.0, NOW, mono=float(i))
    assert len(clocks) == 3 and clocks.get("h0") is None and clocks.get("h4") is not None
    clocks.refused("h2", NOW + 600, 0.0, NOW, mono=9.0)  # seen again: the newest
    clocks.refused("h5", NOW + 600, 0.0, NOW, mono=9.0)
    assert clocks.get("h2") is not None and clocks.get("h3") is None
    clocks.forget("h2")
    assert clocks.get("h2") is None
    with pytest.raises(ValueError):
        ApplianceClocks(limit=0)


def test_show_says_what_to_do_about_a_clock_seen_off() -> None:
    assert clock_line({"clock_offset_s": None}) is None
    assert clock_line({}) is None  # a manager from before
    refused = clock_line({"clock_offset_s": 600.4, "clock_refused": True})
    assert refused == "clock off by +600 s: its calls are refused; set its clock right (NTP)"
    corrected = clock_line({"clock_offset_s": -600.0, "clock_refused": False}) or ""
    assert corrected.startswith("clock off by -600 s: it uses the fleet manager's time")
    assert "URL-token expiry" in corrected and "fill windows" in corrected
    assert "NTP" in corrected


# -- fleet/tls.py --------------------------------------------------------------------------


def _p256_der() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_every_certificate_is_valid_from_a_day_back(tmp_path: Path) -> None:
    ca = CertAuthority.load_or_create(tmp_path)
    server = x509.load_pem_x509_certificate(ca.server_identity(("127.0.0.1",)).cert_pem)
    client = x509.load_pem_x509_certificate(ca.client_cert("h1", _p256_der()))
    now = datetime.datetime.now(datetime.UTC)
    for cert in (ca.cert, server, client):
        assert cert.not_valid_before_utc <= now - datetime.timedelta(hours=23)
    # The server certificate still lives SERVER_DAYS (what clients accept) in all.
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert lifetime == datetime.timedelta(days=SERVER_DAYS)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_box_hours_behind_verifies_a_server_certificate_made_just_now(tmp_path: Path) -> None:
    """OpenSSL verifies the chain as a box whose clock is behind would (`-attime`): the
    server certificate is made anew at each manager start, so a box more than 5 minutes
    behind failed TLS after every restart."""
    ca = CertAuthority.load_or_create(tmp_path / "ca")
    (tmp_path / "server.pem").write_bytes(ca.server_identity(("127.0.0.1",)).cert_pem)
    (tmp_path / "client.pem").write_bytes(ca.client_cert("h1", _p256_der()))

    def verifies(cert: str, behind_s: float) -> bool:
        at = str(int(time.time() - behind_s))
        ca_file = str(tmp_path / "ca" / "fleet-ca.pem")
        argv = ["openssl", "verify", "-attime", at, "-CAfile", ca_file, str(tmp_path / cert)]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

    for cert in ("server.pem", "client.pem"):
        assert verifies(cert, 0)
        assert verifies(cert, 600)  # ten minutes behind
        assert verifies(cert, 20 * 3600)
        assert not verifies(cert, 2 * DAY)  # the backdating has a limit


# -- a real `fleet serve`, the appliance's client in this process ---------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """The manager, and the file its log goes to."""
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    log = tmp_path / "fleet.log"
    with log.open("wb") as err:
        server = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=err)
    try:
        yield server, log
    finally:
        server.stop()


def _token(fleet: Server) -> str:
    resp = httpx.post(fleet.urls["http"] + "/join-tokens", json={"site": "home"}, timeout=10)
    return str(resp.raise_for_status().json()["token"])


def _refusals(fleet: Server, reason: str) -> float:
    text = httpx.get(fleet.urls["http"] + "/metrics", timeout=10).raise_for_status().text
    found = re.search(rf'^edgeflix_fleet_auth_refusals_total{{reason="{reason}"}} (\S+)$',
                      text, re.M)  # fmt: skip
    assert found, text
    return float(found.group(1))


def _listed(fleet: Server, name: str) -> dict[str, object]:
    out = run_cli(["fleet", "ls", "--json", "--fleet", fleet.urls["http"]], check=True, timeout=60)
    return next(r for r in json.loads(out.stdout) if r["name"] == name)


def _show(fleet: Server, name: str) -> str:
    argv = ["fleet", "show", name, "--fleet", fleet.urls["http"]]
    return run_cli(argv, check=True, timeout=60).stdout


def test_a_box_ten_minutes_ahead_is_refused_once_then_signs_at_the_fleets_time(
    tmp_path: Path, fleet: tuple[Server, Path], caplog: pytest.LogCaptureFixture
) -> None:
    server, log = fleet
    clock = Clock()
    clock.skew = 600.0
    state = LinkState(tmp_path / "box")
    key = state.private_key()
    rpc = FleetRpc(FleetLinkConfig(url=server.urls["grpc"]), state, "b1", key, clock)
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    try:
        # A new name enrols with its join token alone: its clock does not matter yet.
        enrol = fleet_pb2.EnrolRequest(
            name="b1",
            join_token=_token(server),
            public_key=auth.public_key(key),
            url="http://127.0.0.1:1",
        )
        rpc.enrol(enrol)
        keys = fleet_pb2.GetKeysRequest(appliance="b1")
        before = _refusals(server, "clock_skew")
        with pytest.raises(CallFailed) as refused:
            rpc.call("GetKeys", keys)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert auth.refusal_of(refused.value.details) == "clock_skew"
        assert rpc.correction == pytest.approx(-600.0, abs=5)
        assert len(events(caplog, "fleet.clock_offset")) == 1
        # The manager says why: a counter, the offset in `fleet ls --json` and `show`, a log.
        assert _refusals(server, "clock_skew") == before + 1
        row = _listed(server, "b1")
        assert row["clock_refused"] is True
        assert row["clock_offset_s"] == pytest.approx(600.0, abs=5)
        assert row["state"] == "unreachable"  # no beat yet: the state is as it was
        assert "clock off by +600 s: its calls are refused; set its clock right (NTP)" in _show(
            server, "b1"
        )
        logged = [ln for ln in log.read_text().splitlines() if "event=fleet.clock_skew" in ln]
        assert len(logged) == 1 and "appliance=b1" in logged[0] and "signed=" in logged[0]

        # The next call is taken, and the ones after; the box's clock is still shown off.
        assert rpc.call("GetKeys", keys).keys.version >= 1
        rpc.call("GetPlan", fleet_pb2.GetPlanRequest(appliance="b1"))
        assert _refusals(server, "clock_skew") == before + 1
        row = _listed(server, "b1")
        assert row["clock_refused"] is False
        assert row["clock_offset_s"] == pytest.approx(600.0, abs=5)
        assert "it uses the fleet manager's time" in _show(server, "b1")

        # NTP sets the box's clock right: the learned correction is now wrong, refused
        # once more, and relearned (to none) from that refusal.
        clock.skew = 0.0
        with pytest.raises(CallFailed):
            rpc.call("GetKeys", keys)
        assert rpc.correction == 0.0
        assert rpc.call("GetKeys", keys).keys.version >= 1
        assert _listed(server, "b1")["clock_offset_s"] is None
        assert len(events(caplog, "fleet.clock_offset")) == 2

        # Enrolling again (a lost reply) must be signed too: refused for the time, then
        # taken, the same way.
        clock.skew = -900.0
        with pytest.raises(CallFailed) as refused:
            rpc.enrol(enrol)
        assert auth.refusal_of(refused.value.details) == "clock_skew"
        assert rpc.correction == pytest.approx(900.0, abs=5)
        assert rpc.enrol(enrol).appliance == "b1"
        assert _refusals(server, "clock_skew") == before + 3
    finally:
        rpc.close()


def test_the_next_beat_after_a_refusal_for_the_clock_is_taken(
    tmp_path: Path, fleet: tuple[Server, Path]
) -> None:
    """The whole fleet link (appliance/fleetlink.py) of a box that restarts 10 minutes
    behind the manager: it does not drop out of the fleet."""
    server, _ = fleet
    clock = Clock()
    enrolled(tmp_path, server, clock)
    clock.skew = -600.0
    lk = link(tmp_path, server.urls["grpc"], clock)
    try:
        waits = steps(lk, 3)
        st = lk.state()
        assert st["beats"] >= 2 and st["phase"] == "connected", st
        assert max(waits) <= 1.0  # no long backoff on the way
        seen = httpx.get(server.urls["http"] + "/appliances/a1", timeout=10).json()
        assert seen["state"] == "ok", seen  # heard (it beats every 0.5 s: asked at once)
        assert _listed(server, "a1")["clock_offset_s"] == pytest.approx(-600.0, abs=5)
    finally:
        lk.stop()
