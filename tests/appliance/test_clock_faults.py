"""The faults of a wall clock not yet set (a Raspberry Pi without an RTC runs at 1970 until
NTP syncs), or off from the fleet's, as they showed: a last contact saved at a 1970 reading
read, after a power cut, as 56 years without the fleet (keys dropped under after_grace =
"stop"), by the link's start and by `appliance status`; nothing said the clock was wrong; a
TLS refusal of the fleet's certificate for its dates came out as a raw handshake error; a
replaced version's deadline set at 1970 went at the first reconcile after NTP, one set years
ahead kept its files for years. The link runs in this process on injected clocks; the
certificate check is a real TLS handshake on loopback. The rules: test_wallclock.py."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance import status
from appliance.diskwatch import DiskWatch
from appliance.fleetlink_files import Enrolment
from appliance.fleetlink_state import LinkState
from appliance.health import HealthInputs, HealthSampler, link_grade, summarise, with_link
from appliance.index import IndexReader
from appliance.repair import reconcile
from tests.appliance.test_fleetlink import Clock, Sinks, config, keyset, link
from tests.appliance.test_store_replaced import make_store, segments, served, version

# A second after the epoch's first day, as contact.json held it in the field report.
AT_1970 = 86_401.59
NOW = 1_790_000_000.0  # 2026-09-21: a clock set right
GRACE_S = 3600.0


def saved_at(tmp: Path) -> float:
    """The last contact as contact.json holds it, for the next start and `appliance status`."""
    return float(json.loads((tmp / "fleet" / "contact.json").read_text())["at"])


# -- fault 1: a contact saved at 1970 --------------------------------------------------------


def saved_1970(tmp: Path) -> LinkState:
    """The fleet state of a box that ran at a 1970 clock: enrolled and last heard then."""
    state = LinkState(tmp / "fleet")
    state.save_enrolment(Enrolment("appliance", "home", "127.0.0.1:9", "http://x:1", 500, 60.0))
    state.save_keys(keyset(1, "k1"))
    state.save_contact(AT_1970)
    return state


def test_a_contact_saved_at_1970_starts_the_grace_period_now(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Restarted at the true time with the fleet away, under after_grace = "stop": in its
    grace period with the cached keys, not expired with them dropped; the grace period
    counts from this start (saved), and still ends."""
    saved_1970(tmp_path)
    clock, sinks = Clock(NOW), Sinks()
    caplog.set_level(logging.WARNING, logger="appliance.fleet")
    lk = link(tmp_path, sinks, clock, after_grace="stop", grace_period_s=GRACE_S)
    lk.restore()
    assert lk.state()["phase"] != "expired" and lk.state()["last_contact"] == NOW
    assert sinks.keys[-1] == {"k1": b"k1" * 16}
    assert saved_at(tmp_path) == NOW  # a restart counts from here, not from its own start
    (said,) = [r for r in caplog.records if r.getMessage() == "fleet.contact_implausible"]
    assert "1970-01-02T00:00:01Z" in str(said.__dict__)
    clock.now += 60.0
    lk.check_grace()
    assert lk.state()["phase"] == "grace" and sinks.keys[-1] == {"k1": b"k1" * 16}
    clock.now += GRACE_S
    lk.check_grace()
    assert lk.state()["phase"] == "expired" and sinks.keys[-1] == {}
    lk.rpc.close()


def test_without_a_contact_an_enrolment_at_1970_starts_the_grace_period_now(
    tmp_path: Path,
) -> None:
    saved_1970(tmp_path)
    (tmp_path / "fleet" / "contact.json").unlink()
    lk = link(tmp_path, Sinks(), Clock(NOW), after_grace="stop", grace_period_s=GRACE_S)
    lk.restore()
    assert lk.state()["phase"] != "expired" and lk.state()["last_contact"] == NOW
    lk.rpc.close()


def test_the_running_link_saves_the_contact_again_when_ntp_steps_the_clock(
    tmp_path: Path,
) -> None:
    """Started at 1970, heard, then lost: the contact it saves is a 1970 reading. NTP steps
    the clock: the link saves it again on the new clock, so a power cut then restarts in
    the grace period, counted from the real last contact."""
    state = LinkState(tmp_path / "fleet")
    state.save_enrolment(Enrolment("appliance", "home", "127.0.0.1:9", "http://x:1", 500, 60.0))
    wall, steady = Clock(AT_1970), Clock(500.0)
    lk = link(tmp_path, Sinks(), wall, steady, after_grace="stop", grace_period_s=GRACE_S)
    lk.restore()
    lk._contact()  # an answered beat
    wall.now += 60.0
    steady.now += 60.0
    lk.check_grace()
    assert lk.state()["phase"] == "grace" and saved_at(tmp_path) == AT_1970
    wall.now = NOW  # NTP
    steady.now += 1.0
    lk.check_grace()
    assert saved_at(tmp_path) == NOW - 61.0
    assert lk.state()["last_contact"] == NOW - 61.0 and lk.state()["phase"] == "grace"
    lk.rpc.close()  # kill -9: no stop()
    again = link(tmp_path, Sinks(), Clock(NOW + 10.0), after_grace="stop")
    again.restore()
    assert again.state()["phase"] == "grace" and again.state()["last_contact"] == NOW - 61.0
    again.rpc.close()


def test_appliance_status_never_says_expired_off_a_1970_contact(tmp_path: Path) -> None:
    saved_1970(tmp_path)
    cfg = config(tmp_path, after_grace="stop", grace_period_s=GRACE_S)
    assert cfg.fleet_state_dir() == tmp_path / "fleet"
    view = status.saved_link(cfg, time.time())
    assert view is not None and view.phase == "grace", view
    assert view.problem is not None and "1970-01-02T00:00:01Z" in view.problem
    level, why = link_grade(view)
    assert level == 0 and why is not None and "last contact unknown" in why
    assert with_link(summarise(inputs(time.time())), view).state == "ok"
    # Once the daemon has started since (it saves its grace start), as it reads then.
    lk = link(tmp_path, Sinks(), Clock(time.time()))
    lk.restore()
    lk.rpc.close()
    view = status.saved_link(cfg, time.time())
    assert view is not None and view.phase == "connected" and view.problem is None


# -- fault 2: the health says the clock is wrong ---------------------------------------------


def inputs(wall: float | None) -> HealthInputs:
    return HealthInputs(cpu_percent=1.0, memory_percent=1.0, load_per_core=0.1, wall_clock=wall)


def test_a_clock_below_the_floor_degrades_the_box_and_says_so() -> None:
    health = summarise(inputs(AT_1970))
    assert health.state == "degraded"
    assert health.reasons == (
        "wall clock implausible (reads 1970-01-02T00:00:01Z): set it right (NTP)",
    )
    assert summarise(inputs(time.time())).state == "ok"
    assert summarise(inputs(None)).state == "ok"  # not read (older callers)


def test_the_sampler_reads_the_wall_clock() -> None:
    sampler = HealthSampler(disks=DiskWatch([]), wall=lambda: AT_1970)
    assert sampler.sample().wall_clock == AT_1970


# -- fault 3: a certificate not yet valid on this box's clock ---------------------------------


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def tls_fleet_ahead(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A TLS listener on loopback whose certificate (from the fleet's CA) is valid from
    tomorrow: as a box a day behind the fleet sees the fleet's. Yields the CA file and the
    address; the handshake fails before any service is asked."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=365))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now + dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pem_cert = cert.public_bytes(serialization.Encoding.PEM)
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(_pem(key), pem_cert)])
    )
    server.start()
    ca_file = tmp_path / "fleet-ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    try:
        yield ca_file, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_a_certificate_not_yet_valid_is_said_as_clock_skew(
    tmp_path: Path, tls_fleet_ahead: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    ca, address = tls_fleet_ahead
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    fleet: dict[str, Any] = {"url": address, "enrol_url": address, "ca": str(ca)}
    lk = link(tmp_path, Sinks(), Clock(time.time()), join_token="t", **fleet)
    try:
        for _ in range(3):
            lk.step()
    finally:
        lk.rpc.close()
    names = [r.getMessage() for r in caplog.records]
    assert names.count("fleet.clock_skew") == 1 and "fleet.call_failed" not in names
    (skew,) = [r for r in caplog.records if r.getMessage() == "fleet.clock_skew"]
    fields = json.dumps(skew.__dict__, default=str)
    assert "certificate is not yet valid" in fields and "set this box's clock right" in fields
    problem = lk.health_view(tokens_required=True).problem
    assert problem is not None and "\n" not in problem
    assert problem.startswith("the fleet's TLS certificate is not yet valid on this box's clock")
    assert lk.state()["last_error"] == problem


# -- fault 4: a replaced version's deadline ----------------------------------------------------


def test_a_replacement_made_at_1970_is_kept_after_ntp_one_made_years_ahead_not_for_years(
    tmp_path: Path,
) -> None:
    v1, v2 = version(tmp_path, 1), version(tmp_path, 2)
    store = make_store(tmp_path, keep_s=3600)
    store.load("film", v1)
    store.load("film", v2, replace=True)
    kept = store.conn.execute("SELECT COUNT(*) FROM superseded").fetchone()[0]
    assert kept > 0
    store.conn.execute("UPDATE superseded SET until = ?", (AT_1970 + 3600,))
    reconcile(store)  # the first reconcile after NTP set the clock
    untils = [u for (u,) in store.conn.execute("SELECT until FROM superseded")]
    assert len(untils) == kept and all(time.time() < u <= time.time() + 3600 for u in untils)
    rel = sorted(segments(v1))[0]  # a player mid-session on v1 still gets its segments
    assert served(IndexReader(store.index_path), "film", rel) == segments(v1)[rel]
    store.conn.execute("UPDATE superseded SET until = ?", (time.time() + 5 * 365 * 86_400,))
    reconcile(store)
    untils = [u for (u,) in store.conn.execute("SELECT until FROM superseded")]
    assert len(untils) == kept and all(u <= time.time() + 3600 for u in untils)
    store.close()
