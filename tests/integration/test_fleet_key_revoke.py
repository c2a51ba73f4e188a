"""A leaked URL-token key revoked on a real fleet manager (`edgeflix fleet keys revoke`):
an enrolled appliance, once it has synced, refuses a URL signed with it that has not
expired, while URLs signed afterwards serve. The database holding the keys is the
owner's alone.

One origin, one fleet manager and one appliance on loopback, through the CLI; the tests
run in file order.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_cli
from tests.integration.test_fleet_appliances import (
    HOME_IP,
    Cluster,
    one_box_fleet,
    wait_for,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with one_box_fleet(tmp_path_factory.mktemp("fleet-revoke")) as c:
        yield c


def appliance_url(cluster: Cluster) -> str:
    """A player's URL on a1 (signed, token in the path)."""

    def found() -> str | None:
        out = cluster.steer(HOME_IP)
        urls = [u for c, u in zip(out["candidates"], out["urls"], strict=True) if c["name"] == "a1"]
        return urls[0] if urls else None

    url: str = wait_for(found, 30, "a1 steered")
    return url


def key_of(url: str) -> str:
    return url.split("/t/", 1)[1].split(".", 1)[0]


def test_a_revoked_key_is_refused_once_the_appliance_synced(cluster: Cluster) -> None:
    leaked = appliance_url(cluster)
    assert httpx.get(leaked, timeout=10).status_code == 200
    proc = run_cli(
        ["fleet", "keys", "revoke", key_of(leaked), "--fleet", cluster.http, "--json"],
        check=True,
    )
    out = json.loads(proc.stdout)
    assert out["revoked"] == key_of(leaked) and key_of(leaked) not in out["keys"]
    box = cluster.boxes["a1"]
    wait_for(lambda: box.status()["keys_version"] == out["version"], 15, "a1 synced the keys")
    # Unexpired (hours left), and refused: the key is gone, not retired.
    assert httpx.get(leaked, timeout=10).status_code == 403
    fresh = wait_for(
        lambda: (u := appliance_url(cluster)) and key_of(u) != key_of(leaked) and u,
        15,
        "a1 steered with the new key",
    )
    assert httpx.get(fresh, timeout=10).status_code == 200
    # Revoked already: one line and a failure, the manager's 404 in it.
    again = run_cli(["fleet", "keys", "revoke", key_of(leaked), "--fleet", cluster.http])
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.strip().count("\n") == 0 and "HTTP 404" in again.stderr
    assert f"no key '{key_of(leaked)}'" in again.stderr


def test_the_key_database_is_the_owners_alone(cluster: Cluster) -> None:
    db = Path(f"{cluster.fleet_config.parent}/fleet.sqlite")
    files = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
    assert db in files
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}
