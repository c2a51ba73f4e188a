"""Resource-exhaustion review, on a real `edgeflix fleet serve` on loopback with open
enrolment (the reviewer's /tmp/rev_exhaust beat.py and enrol.py): a signed beat whose held
titles carry digests or tiers no appliance sends is refused, naming the first, and costs the
manager nothing it keeps; open enrolment stops at `[server] open_enrolment_limit`, while a
name enrolled already and a join token still get in."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from edgeflix.proto import auth
from edgeflix.proto.gen import fleet_pb2
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet import METHOD, ApplianceClient

FLEET_TOML = """
[server]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{db}"
enrolment = "open"
open_enrolment_limit = {limit}
[heartbeat]
interval_s = 5.0
[origin]
url = "http://127.0.0.1:9"
[[sites]]
name = "home"
prefixes = ["127.0.0.0/8"]
"""


def serve(folder: Path, limit: int) -> Server:
    config = folder / "fleet.toml"
    config.write_text(FLEET_TOML.format(db=folder / "fleet.sqlite", limit=limit))
    return start(["fleet", "serve", "--config", str(config)], want=("grpc", "http"))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Server]:
    server = serve(tmp_path, 3)
    yield server
    server.stop()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def send(box: ApplianceClient, **fields: object) -> fleet_pb2.HeartbeatResponse:
    box.sequence += 1
    req = fleet_pb2.HeartbeatRequest(
        appliance=box.name, sequence=box.sequence, health=1, capacity_bps=1e9, **fields
    )
    resp: fleet_pb2.HeartbeatResponse = box.stub.Heartbeat(
        req, metadata=box._md("Heartbeat", req), timeout=60
    )
    return resp


def held(fleet: Server, name: str) -> dict[str, dict[str, object]]:
    shown = httpx.get(f"{fleet.urls['http']}/appliances/{name}").raise_for_status().json()
    return dict(shown["held"])


def test_a_beat_with_digests_or_tiers_no_appliance_sends_is_refused(fleet: Server) -> None:
    """beat.py: 100 k held titles, each with a 60-character digest and tier, took the
    manager from 97 to 194 MB per appliance. Refused now at the first such title (the
    manager keeps nothing of it), and the list the fleet keeps is the last good one."""
    box = ApplianceClient(fleet.urls["grpc"], "b1", "http://127.0.0.9:30000")
    box.enrol("")
    good = [
        fleet_pb2.HeldTitle(title_id=t, digest=sha(t), complete=True, size_bytes=10**9, tier="hdd")
        for t in ("film", "show")
    ]
    send(box, titles=good, tiers=[fleet_pb2.TierSpace(tier="hdd", capacity_bytes=10**12)])
    assert held(fleet, "b1")["film"] == {
        "digest": sha("film"),
        "complete": True,
        "size_bytes": 10**9,
        "tier": "hdd",
    }
    hostile = [
        fleet_pb2.HeldTitle(
            title_id=f"0-0-{i}-" + "x" * 40,
            digest="digest" * 10,
            complete=True,
            size_bytes=10**12,
            tier="ssd" * 20,
        )
        for i in range(100_000)
    ]
    refusals = [
        ({"titles": hostile}, "title '0-0-0-xxxx"),
        ({"titles": [*good, hostile[0]]}, "digest 'digestdigest"),
        (
            {
                "titles": [
                    *good[:1],
                    fleet_pb2.HeldTitle(title_id="new", digest=sha("new"), tier="tape"),
                ]
            },
            "title 'new': tier 'tape' is not ssd or hdd",
        ),
        ({"tiers": [fleet_pb2.TierSpace(tier="ssd")] * 3}, "tier space 'ssd' is listed twice"),
    ]
    for fields, said in refusals:
        with pytest.raises(grpc.RpcError) as err:
            send(box, **fields)  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert said in (err.value.details() or "")
    assert set(held(fleet, "b1")) == {"film", "show"}
    send(box, titles=good[:1])
    assert set(held(fleet, "b1")) == {"film"}


def test_open_enrolment_stops_at_its_limit(fleet: Server) -> None:
    """enrol.py: one client enrolled 2,777 made-up appliances in 50 s, each costing more
    than the one before. At the limit (3 here) the next is refused as RESOURCE_EXHAUSTED;
    one enrolled already may enrol again, `fleet rm` makes room, a join token enrols."""
    boxes = [
        ApplianceClient(fleet.urls["grpc"], f"c{i}", f"http://127.0.0.{i + 1}:{20000 + i}")
        for i in range(5)
    ]
    for box in boxes[:3]:
        assert box.enrol("").site == "home"
    with pytest.raises(grpc.RpcError) as err:
        boxes[3].enrol("")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = err.value.details() or ""
    assert "open_enrolment_limit is 3" in details and "loopback demos" in details, details
    names = [a["name"] for a in httpx.get(fleet.urls["http"] + "/appliances").json()]
    assert names == ["c0", "c1", "c2"]
    # c1 again (its reply was lost): signed with its key, as every repeat must be.
    again = fleet_pb2.EnrolRequest(
        name="c1", public_key=auth.public_key(boxes[1].key), url=boxes[1].url
    )
    body = again.SerializeToString(deterministic=True)
    signed = auth.sign_call("c1", boxes[1].key, METHOD + "Enrol", body, time.time())
    assert boxes[1].stub.Enrol(again, metadata=signed, timeout=10).appliance == "c1"
    httpx.delete(fleet.urls["http"] + "/appliances/c0").raise_for_status()
    assert boxes[3].enrol("").appliance == "c3"
    token = httpx.post(fleet.urls["http"] + "/join-tokens", json={"site": "home"})
    assert boxes[4].enrol(token.raise_for_status().json()["token"]).appliance == "c4"
