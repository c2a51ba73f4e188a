"""A fleet manager restored from a backup, or moved with a new CA, as the appliance's fleet
link lives through it.

Keys: a key the fleet dropped before its end was revoked, and stays refused when a manager
restored from an older backup hands it out again; the keys that manager lacks (made after
the backup) keep verifying until they expire, so URLs issued before the restore still play.
TLS: a CA changed under the box is said as what to do, and a new join token enrols it again.

The pure rules (fleetlink_keys.next_key_history) on their own, then the link in this
process against a real `edgeflix fleet serve` on loopback, as tests/integration's recovery
tests run it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import ApplianceConfig
from appliance.fleetlink import FleetLink, LinkSinks
from appliance.fleetlink_diagnosis import tls_refusal
from appliance.fleetlink_figures import BoxHealth, Traffic
from appliance.fleetlink_keys import (
    DEFAULT_VERIFY_FOR_S,
    MAX_REVOKED,
    REVOKED_KEPT_S,
    FleetKey,
    KeyHistory,
    effective_keys,
    next_key_history,
)
from appliance.fleetlink_state import LinkState
from appliance.index import connect_writer
from edgeflix import tokens
from edgeflix.versioning import Versioned
from tests.conftest import run_cli
from tests.integration.serve_support import start
from tests.integration.test_fleet import FLEET_TOML
from tests.integration.test_fleet_appliances import free_port
from tests.integration.test_fleet_tls import write_tls_fleet_config

NOW = 100_000.0
HOUR = 3600.0


def key(key_id: str, retires: float = 0.0, verify_until: float = 0.0) -> FleetKey:
    return FleetKey(key_id, key_id.encode().ljust(16, b"-"), 0.0, retires, verify_until, HOUR)


# -- the rules ---------------------------------------------------------------------------------


def test_a_key_dropped_before_its_end_is_revoked_one_dropped_at_its_end_retired() -> None:
    running = (key("k0", NOW - 2 * HOUR, NOW - 1), key("k1", NOW - 60, NOW + HOUR), key("k2"))
    update = next_key_history(running, KeyHistory(), (key("k2"), key("k3")), NOW)
    assert update.revoked == ("k1",) and update.returned == () and update.carried == ()
    assert update.history.revoked == {"k1": NOW + REVOKED_KEPT_S}
    # Its end within the margin for clocks: retired, not revoked.
    almost = (key("k2", NOW - HOUR, NOW + 60), key("k3"))
    assert next_key_history(almost, KeyHistory(), (key("k3"),), NOW).revoked == ()


def test_a_revoked_key_handed_out_again_stays_refused_and_the_newer_keys_are_carried() -> None:
    """The review's case: backup at {k1}; rotate (k2); revoke k1; rotate (k4); restore."""
    history = KeyHistory(revoked={"k1": NOW + REVOKED_KEPT_S})
    running = (key("k2", NOW - HOUR, NOW + 5 * HOUR), key("k4"))
    update = next_key_history(running, history, (key("k1"),), NOW)
    assert update.returned == ("k1",) and update.carried == ("k2", "k4")
    held = effective_keys((key("k1"),), update.history)
    assert {k.id: (k.retires, k.verify_until) for k in held} == {
        "k2": (NOW - HOUR, NOW + 5 * HOUR),  # until its own end
        "k4": (NOW, NOW + HOUR),  # retired now: verifies as long as a retired key does
    }
    # The manager rotates (k5); the operator revokes k1 there again: k1 gone for good, the
    # carried keys still verify until their end, k5 is the fleet's.
    later = next_key_history((key("k1"),), update.history, (key("k1"), key("k5")), NOW + 10)
    assert later.returned == ("k1",)
    after = next_key_history((key("k1"), key("k5")), later.history, (key("k5"),), NOW + 20)
    assert after.returned == () and after.revoked == ("k1",)
    ids = [k.id for k in effective_keys((key("k5"),), after.history)]
    assert ids == ["k5", "k2", "k4"]
    expired = next_key_history((key("k5"),), after.history, (key("k5"),), NOW + 6 * HOUR)
    assert [k.id for k in effective_keys((key("k5"),), expired.history)] == ["k5"]


def test_another_lineage_is_carried_not_revoked() -> None:
    """Enrolling again with a manager whose versions are not above ours (a fresh or restored
    database): what its set lacks is not its to revoke."""
    running = (key("k1"),)
    update = next_key_history(running, KeyHistory(), (key("x1"),), NOW, other_lineage=True)
    assert update.revoked == () and update.carried == ("k1",)
    (carried,) = update.history.carried
    assert carried.retires == NOW and carried.verify_until == NOW + HOUR
    bare = FleetKey("k1", b"s" * 16, 0.0, 0.0, 0.0)  # a fleet from before verify_for_s
    update = next_key_history((bare,), KeyHistory(), (key("x1"),), NOW, other_lineage=True)
    (carried,) = update.history.carried
    assert carried.verify_until == NOW + DEFAULT_VERIFY_FOR_S


def test_revoked_keys_are_bounded_in_time_and_number() -> None:
    history = KeyHistory(revoked={"old": NOW - 1, "back": NOW - 1})
    update = next_key_history((), history, (key("back"),), NOW)
    assert update.history.revoked == {"back": NOW - 1}  # kept while a set carries it
    many = tuple(key(f"k{i}") for i in range(MAX_REVOKED + 10))
    update = next_key_history(many, KeyHistory(), (key("new"),), NOW)
    assert len(update.history.revoked) == MAX_REVOKED


# -- the link, on its own ----------------------------------------------------------------------


class Sinks:
    def __init__(self) -> None:
        self.keys: list[dict[str, bytes]] = []

    def build(self) -> LinkSinks:
        return LinkSinks(
            health=lambda: BoxHealth("ok", (), 1e9),
            traffic=lambda: Traffic({}, 0, 0),
            submit_plan=lambda plan: None,
            set_keys=self.keys.append,
        )


def config(tmp: Path, grpc: str = "127.0.0.1:9", **fleet: Any) -> ApplianceConfig:
    connect_writer(tmp / "index.sqlite").close()  # an empty store: beats report no titles
    return ApplianceConfig.model_validate(
        {
            "name": "a1",
            "storage": {"disks": [{"path": str(tmp / "d0")}], "index": str(tmp / "index.sqlite")},
            "fill": {"staging": str(tmp / "staging")},
            "fleet": {"url": grpc, "heartbeat_s": 0.5, **fleet},
        }
    )


def link(tmp: Path, sinks: Sinks, clock: Callable[[], float] = time.time, **kw: Any) -> FleetLink:
    lk = FleetLink(config(tmp, **kw), "http://192.168.1.20:8081", sinks.build(), clock=clock)
    lk.restore()
    return lk


def plays(token_key: FleetKey, published: dict[str, bytes], now: float) -> bool:
    token = tokens.sign("film", tokens.SigningKey(token_key.id, token_key.secret), int(now + 60))
    try:
        tokens.verify(token, title_id="film", client_ip=None, keys=published, now=now)
    except tokens.TokenError:
        return False
    return True


def said(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [getattr(r, "edgeflix_fields", {}) for r in caplog.records if r.getMessage() == name]


def test_the_link_refuses_a_returned_revoked_key_across_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    sinks, now = Sinks(), NOW
    lk = link(tmp_path, sinks, lambda: now)
    k1, k2, k4 = key("k1"), key("k2"), key("k4")
    k1_retiring = key("k1", NOW + 60, NOW + 7 * HOUR)
    k2_retired = key("k2", NOW, NOW + 6 * HOUR)
    for version, keys in enumerate([(k1,), (k1_retiring, k2), (k2,), (k2_retired, k4)], 1):
        assert lk.apply_keys(Versioned("keys", version, keys)) == "applied"
    assert set(sinks.keys[-1]) == {"k2", "k4"}
    # The restored manager caught its version up above ours: v5 is its backup's {k1}.
    assert lk.apply_keys(Versioned("keys", 5, (k1,))) == "applied"
    assert not plays(k1, sinks.keys[-1], now)
    assert plays(k2, sinks.keys[-1], now) and plays(k4, sinks.keys[-1], now)
    (returned,) = said(caplog, "fleet.revoked_key_returned")
    assert returned["key"] == "k1"
    assert returned["action"] == (
        "the fleet manager was restored from a backup older than the revocation: revoke it "
        "again there (edgeflix fleet keys revoke k1)"
    )
    assert said(caplog, "fleet.keys_carried")[0]["keys"] == "k2 k4"
    assert lk.state()["keys_version"] == 5  # the fleet's version: it pushes no more
    lk.stop()

    # A restart reads the same: still refused, said again.
    again = Sinks()
    later = link(tmp_path, again, lambda: now)
    assert set(again.keys[-1]) == {"k2", "k4"}
    assert len(said(caplog, "fleet.revoked_key_returned")) == 2
    later.rpc.close()
    # `appliance sign` signs with what the box verifies: never the revoked key.
    held = LinkState(tmp_path / "fleet").keys()
    assert held is not None and {k.id for k in held.payload} == {"k2", "k4"}


# -- against a real fleet manager: its database restored from a backup ------------------------


@pytest.fixture
def fleet_config(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    (tmp_path / "db").mkdir()
    path.write_text(
        FLEET_TOML.format(db=tmp_path / "db" / "fleet.sqlite")
        .replace('grpc = "127.0.0.1:0"', f'grpc = "127.0.0.1:{free_port()}"')
        .replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{free_port()}"')
    )
    return path


class Fleet:
    """A fleet manager at fixed addresses, restarted by the test."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.server = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))

    def restart(self) -> None:
        self.server = start(["fleet", "serve", "--config", str(self.config)], ("grpc", "http"))

    def cli(self, *args: str) -> Any:
        http = self.server.urls["http"]
        out = run_cli(["fleet", *args, "--fleet", http, "--json"], check=True, timeout=60)
        return json.loads(out.stdout)


@pytest.fixture
def fleet(fleet_config: Path) -> Iterator[Fleet]:
    f = Fleet(fleet_config)
    try:
        yield f
    finally:
        f.server.stop()


def sync(lk: FleetLink, done: Callable[[], bool], what: str, rounds: int = 40) -> None:
    """Rounds of the link until `done` (a restarted manager takes a reconnect or two)."""
    for _ in range(rounds):
        lk.step()
        if done():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what}: not after {rounds} rounds: {lk.state()}")


def fleet_keys(lk: FleetLink) -> dict[str, FleetKey]:
    return {k.id: k for k in lk.keys.payload} if lk.keys else {}


def test_a_manager_restored_from_an_old_backup_brings_back_no_revoked_key(
    tmp_path: Path, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    sinks = Sinks()
    token = fleet.cli("join-token", "--site", "home")["token"]
    lk = link(tmp_path / "a1", sinks, grpc=fleet.server.urls["grpc"], join_token=token)
    try:
        sync(lk, lambda: lk.state()["beats"] >= 2 and lk.keys is not None, "enrolled")
        (k1,) = fleet_keys(lk).values()
        fleet.server.stop()
        db = fleet.config.parent / "db"
        shutil.copytree(db, tmp_path / "backup")  # the manager stopped: a consistent copy
        fleet.restart()
        fleet.cli("keys", "rotate", "--immediate")
        sync(lk, lambda: len(fleet_keys(lk)) == 2, "k2 synced")
        (k2,) = (k for i, k in fleet_keys(lk).items() if i != k1.id)
        fleet.cli("keys", "revoke", k1.id)
        sync(lk, lambda: k1.id not in fleet_keys(lk), "k1 revoked")
        fleet.cli("keys", "rotate", "--immediate")
        sync(lk, lambda: len(fleet_keys(lk)) == 2, "k4 synced")
        (k4,) = (k for i, k in fleet_keys(lk).items() if i != k2.id)
        before = lk.state()["keys_version"]
        now = time.time()
        assert not plays(k1, sinks.keys[-1], now) and plays(k2, sinks.keys[-1], now)

        fleet.server.stop()
        shutil.rmtree(db)
        shutil.copytree(tmp_path / "backup", db)  # the disaster: the old backup restored
        fleet.restart()
        sync(lk, lambda: lk.state()["keys_version"] > before, "the restored manager's keys")
        now = time.time()
        assert k1.id in fleet_keys(lk)  # the restored manager hands it out again ...
        assert not plays(k1, sinks.keys[-1], now)  # ... and the box refuses it
        # URLs issued before the restore play on, until they expire.
        assert plays(k2, sinks.keys[-1], now) and plays(k4, sinks.keys[-1], now)
        (returned,) = said(caplog, "fleet.revoked_key_returned")
        assert returned["key"] == k1.id and f"fleet keys revoke {k1.id}" in returned["action"]
    finally:
        lk.stop()


# -- against a real fleet manager over TLS: its CA made anew ----------------------------------

# What grpc said in each case (captured from this test's set-up), for the pure recogniser.
OLD_CA = (
    "heartbeat: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:4567: "
    "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1a000064:ECDSA "
    "routines:OPENSSL_internal:BAD_SIGNATURE: certificate signature failure: OK"
)
OLD_CLIENT_CERT = (
    "heartbeat: failed to connect to all addresses; last error: UNAVAILABLE: "
    "ipv4:127.0.0.1:4567: Socket closed"
)


def test_tls_refusals_are_told_apart() -> None:
    assert tls_refusal(OLD_CA, client_cert=True) == "untrusted"
    assert tls_refusal(OLD_CLIENT_CERT, client_cert=True) == "closed"
    assert tls_refusal(OLD_CLIENT_CERT, client_cert=False) is None  # not ours to blame
    refused = "heartbeat: failed to connect to all addresses; Connection refused"
    assert tls_refusal(refused, client_cert=True) is None


class TlsFleet(Fleet):
    def __init__(self, config: Path) -> None:
        self.config = config
        self.restart()

    def restart(self) -> None:
        want = ("grpc", "http", "grpc-enrol")
        self.server = start(["fleet", "serve", "--config", str(self.config)], want)


@pytest.fixture
def tls_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TlsFleet]:
    top = tmp_path / "fleet"
    top.mkdir()
    config = write_tls_fleet_config(top)
    text = config.read_text()
    text = text.replace('enrol_grpc = "127.0.0.1:0"', f'enrol_grpc = "127.0.0.1:{free_port()}"')
    text = text.replace('\ngrpc = "127.0.0.1:0"', f'\ngrpc = "127.0.0.1:{free_port()}"')
    config.write_text(text.replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{free_port()}"'))
    monkeypatch.setenv("EDGEFLIX_FLEET_CA", str(top / "db" / "fleet-ca.pem"))
    f = TlsFleet(config)
    try:
        yield f
    finally:
        f.server.stop()


def test_a_new_fleet_ca_is_said_and_a_new_join_token_enrols_again(
    tmp_path: Path, tls_fleet: TlsFleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    fleet_ca = tls_fleet.config.parent / "db" / "fleet-ca.pem"
    box, ca = tmp_path / "a1", tmp_path / "ca.pem"
    shutil.copy(fleet_ca, ca)  # the operator's copy on the box
    urls = tls_fleet.server.urls
    tls = {"ca": str(ca), "enrol_url": urls["grpc-enrol"]}
    token = tls_fleet.cli("join-token", "--site", "home")["token"]
    lk = link(box, Sinks(), grpc=urls["grpc"], join_token=token, **tls)
    sync(lk, lambda: lk.state()["beats"] >= 2, "enrolled over TLS")
    lk.stop()
    old_cert = (box / "fleet" / "tls.crt").read_bytes()

    # The manager moved; its CA files did not: it makes a new CA at its start.
    tls_fleet.server.stop()
    for name in ("fleet-ca.pem", "fleet-ca.key"):
        (fleet_ca.parent / name).unlink()
    tls_fleet.restart()
    lk = link(box, Sinks(), grpc=urls["grpc"], join_token=token, **tls)
    try:
        for _ in range(4):
            lk.step()
        problem = lk.health_view(False).problem
        assert problem == (
            f"the fleet's certificate does not verify against [fleet] ca ({ca}): if the "
            "manager's CA changed, copy its fleet-ca.pem there"
        )
        assert len(said(caplog, "fleet.tls_untrusted")) == 1  # once, not at every beat

        # The operator copies the new CA there and sends SIGHUP: the client certificate is
        # the old CA's, and the fleet hangs up on it.
        shutil.copy(fleet_ca, ca)
        lk.reconfigure(lk.fleet)
        for _ in range(4):
            lk.step()
        assert lk.state()["last_error"] == (
            "the fleet closed the TLS connection: if its CA changed, this box's client "
            "certificate is from the old one: give it a new join token (it then enrols again)"
        )
        assert len(said(caplog, "fleet.tls_closed")) == 1

        # A token the fleet does not know: refused, and the old certificate stays.
        lk.reconfigure(lk.fleet.model_copy(update={"join_token": "not-a-token"}))
        for _ in range(3):
            lk.step()
        assert said(caplog, "fleet.reenrolment_refused")
        assert (box / "fleet" / "tls.crt").read_bytes() == old_cert
        assert not said(caplog, "fleet.join_token_unused")

        # A new token (SIGHUP): enrols again over the enrolment listener, and beats.
        fresh = tls_fleet.cli("join-token", "--site", "home")["token"]
        lk.reconfigure(lk.fleet.model_copy(update={"join_token": fresh}))
        sync(lk, lambda: lk.state()["beats"] >= 1, "enrolled again with the new token")
        assert lk.state()["phase"] == "connected" and lk.state()["last_error"] is None
        assert (box / "fleet" / "tls.crt").read_bytes() != old_cert
    finally:
        lk.stop()


def test_a_new_join_token_in_the_config_at_start_enrols_again(
    tmp_path: Path, tls_fleet: TlsFleet
) -> None:
    """The same, the operator putting the token in the config and restarting the box."""
    fleet_ca = tls_fleet.config.parent / "db" / "fleet-ca.pem"
    box, ca = tmp_path / "a1", tmp_path / "ca.pem"
    shutil.copy(fleet_ca, ca)
    urls = tls_fleet.server.urls
    tls = {"ca": str(ca), "enrol_url": urls["grpc-enrol"]}
    token = tls_fleet.cli("join-token", "--site", "home")["token"]
    lk = link(box, Sinks(), grpc=urls["grpc"], join_token=token, **tls)
    sync(lk, lambda: lk.state()["beats"] >= 2, "enrolled over TLS")
    lk.stop()
    tls_fleet.server.stop()
    for name in ("fleet-ca.pem", "fleet-ca.key"):
        (fleet_ca.parent / name).unlink()
    tls_fleet.restart()
    shutil.copy(fleet_ca, ca)
    # The spent token, still in the config: beats fail on, nothing else to do.
    lk = link(box, Sinks(), grpc=urls["grpc"], join_token=token, **tls)
    for _ in range(3):
        lk.step()
    assert lk.state()["beats"] == 0 and "closed the TLS connection" in lk.state()["last_error"]
    lk.stop()
    fresh = tls_fleet.cli("join-token", "--site", "home")["token"]
    lk = link(box, Sinks(), grpc=urls["grpc"], join_token=fresh, **tls)
    try:
        sync(lk, lambda: lk.state()["beats"] >= 1, "enrolled again at start")
        assert lk.state()["last_error"] is None
    finally:
        lk.stop()
