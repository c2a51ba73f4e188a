"""The fleet link's saved state across versions of the appliance (an upgrade, a rollback):
a plan or an enrolment with fields this version does not know is read (the fleet built the
plan; a later version added the fields), a plan or key set of a later `format` reads as none
and an enrolment of one for what this version knows, and `appliance run` serves what it
holds either way. `appliance status` shows what the running link last failed on (its
problem.json), as the daemon's /status does."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.config import ApplianceConfig
from appliance.fill.plan import PlanError, load_plan
from appliance.fleetlink_core import to_fill_plan
from appliance.fleetlink_files import Enrolment, StoredPlan
from appliance.fleetlink_state import LinkState
from appliance.status import saved_link
from tests.conftest import run_cli
from tests.integration.serve_support import Server, make_title, start
from tests.integration.test_fleet import FLEET_TOML
from tests.integration.test_fleet_appliances import free_port, launch, wait_for

SHA = "c" * 64
ORIGIN = "http://127.0.0.1:8080"


def plan_doc(**title_extra: Any) -> dict[str, Any]:
    return {
        "titles": [{"id": "film", "digest": SHA, "sources": [ORIGIN], **title_extra}],
        "window": None,
        "timezone": "UTC",
        "cap_bps": None,
        "prune": True,
    }


ENROLMENT = Enrolment("a1", "home", "127.0.0.1:9", "http://127.0.0.1:1", 500, 10.0)


def test_a_saved_plan_with_fields_unknown_here_is_read_but_an_operator_plan_refuses_them(
    tmp_path: Path,
) -> None:
    state = LinkState(tmp_path / "fleet")
    document = {**plan_doc(tier="ssd"), "priority": "high"}  # as a later version saves it
    state.save_plan(StoredPlan(3, document, {"film": 10}))
    saved = state.plan()
    assert saved is not None and saved.version == 3
    plan = to_fill_plan(saved.document)
    assert [t.id for t in plan.titles] == ["film"] and plan.prune
    # `[fill] plan` / `appliance fill --plan`: written by hand, a misspelt key must not pass.
    by_hand = tmp_path / "plan.json"
    by_hand.write_text(json.dumps(plan_doc(tier="ssd")))
    with pytest.raises(PlanError, match=r"titles\.0\.tier"):
        load_plan(by_hand)
    by_hand.write_text(json.dumps({**plan_doc(), "prnue": False}))
    with pytest.raises(PlanError, match="prnue"):
        load_plan(by_hand)


@pytest.mark.parametrize("extra", [{"tier": "ssd"}, {"format": 2, "region": "eu"}])
def test_an_enrolment_with_fields_unknown_here_is_read(
    tmp_path: Path, extra: dict[str, Any]
) -> None:
    state = LinkState(tmp_path)
    (tmp_path / "enrolment.json").write_text(json.dumps({**ENROLMENT.__dict__, **extra}))
    assert state.enrolment() == ENROLMENT


def test_files_say_their_format_and_the_enrolment_stays_readable_by_earlier_versions(
    tmp_path: Path,
) -> None:
    """Versions before formats refuse an unknown field in enrolment.json (Enrolment(**data)):
    it has none while its format is 1. They read only the fields they know of the others."""
    state = LinkState(tmp_path)
    state.save_enrolment(ENROLMENT)
    state.save_plan(StoredPlan(3, plan_doc(), {"film": 10}))
    state.save_contact(20.0)
    assert "format" not in json.loads((tmp_path / "enrolment.json").read_text())
    assert json.loads((tmp_path / "plan.json").read_text())["format"] == 1
    assert json.loads((tmp_path / "contact.json").read_text()) == {"format": 1, "at": 20.0}
    later = json.loads((tmp_path / "contact.json").read_text()) | {"format": 2}
    (tmp_path / "contact.json").write_text(json.dumps(later))
    assert state.saved_contact() is None  # a later format: unknown, the grace clock is safe


# -- `appliance run` over a state folder a later version wrote -------------------------------


def box_config(root: Path, fleet: str = "127.0.0.1:9") -> Path:
    (root / "d0").mkdir(parents=True, exist_ok=True)
    config = root / "appliance.toml"
    config.write_text(f"""
name = "a1"
[storage]
disks = [{{ path = "{root}/d0", max_bytes = 1000000000 }}]
index = "{root}/index.sqlite"
[serve]
listen = "127.0.0.1:{free_port()}"
shutdown_timeout_s = 0.5
[admin]
listen = "127.0.0.1:0"
[fill]
staging = "{root}/staging"
[fleet]
url = "{fleet}"
heartbeat_s = 0.5
state_dir = "{root}/fleet"
""")
    return config


@pytest.fixture
def loaded_box(tmp_path: Path) -> Path:
    """An appliance holding `film`, enrolled (with a fleet manager that is not there)."""
    config = box_config(tmp_path)
    make_title(tmp_path / "film", "film")
    run_cli(
        ["appliance", "load", "--title", "film", "--from", str(tmp_path / "film"),
         "--config", str(config)],
        check=True,
    )  # fmt: skip
    LinkState(tmp_path / "fleet").save_enrolment(ENROLMENT)
    return config


def status(box: Server) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(box.urls["admin"] + "/status", timeout=10).json()
    return doc


SAVED_BY_LATER_VERSIONS: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    # Fields a later version added (then rolled back from): read, the rest as it was.
    "unknown field in the plan's titles": ({"tier": "ssd"}, {}, 3),
    "unknown field in the enrolment": ({}, {"tier": "ssd"}, 3),
    # A format this version does not know: no plan until the fleet sends one.
    "later plan format": ({}, {}, 0),
}


@pytest.mark.parametrize("case", sorted(SAVED_BY_LATER_VERSIONS))
def test_appliance_run_serves_over_state_a_later_version_saved(
    tmp_path: Path, loaded_box: Path, case: str
) -> None:
    title_extra, enrolment_extra, running = SAVED_BY_LATER_VERSIONS[case]
    folder = tmp_path / "fleet"
    doc = plan_doc(**title_extra)
    doc["titles"].append({"id": "show", "digest": SHA, "sources": [ORIGIN], **title_extra})
    plan_extra = {"format": 1 if running else 7}
    plan = {"version": 3, "sizes": {"film": 10}, "document": doc, **plan_extra}
    (folder / "plan.json").write_text(json.dumps(plan))
    enrolment = json.loads((folder / "enrolment.json").read_text())
    (folder / "enrolment.json").write_text(json.dumps({**enrolment, **enrolment_extra}))
    log = tmp_path / "log.jsonl"
    box = launch(["appliance", "run", "--config", str(loaded_box)], log)
    try:
        base = box.url.rstrip("/")
        assert httpx.get(f"{base}/titles/film/master.m3u8", timeout=10).status_code == 200
        fleet = status(box)["daemon"]["fleet"]
        assert fleet["appliance"] == "a1" and fleet["plan_version"] == running, fleet
        said = "fleet.state_unusable" in log.read_text()
        assert said == (running == 0), log.read_text()
    finally:
        box.stop()
    held = run_cli(["appliance", "ls", "--config", str(loaded_box), "--json"], check=True)
    assert [t["id"] for t in json.loads(held.stdout)] == ["film"]  # nothing deleted


# -- `appliance status`: the link's last problem --------------------------------------------


def test_appliance_status_reads_the_links_last_problem(tmp_path: Path) -> None:
    """The link saves its contact exactly when a problem begins: a status taken after a few
    beats is the grace period, not "connected" for the minute a beating link's saved
    contact may lag; with no problem, that minute is still allowed for."""
    config = ApplianceConfig.model_validate(
        {
            "name": "a1",
            "storage": {"disks": [{"path": str(tmp_path / "d0")}], "index": str(tmp_path / "i")},
            "fleet": {"url": "127.0.0.1:9", "state_dir": str(tmp_path / "fleet")},
        }
    )
    state = LinkState(tmp_path / "fleet")
    state.save_enrolment(ENROLMENT)
    state.save_contact(1000.0)
    view = saved_link(config, 1030.0)
    assert view is not None and view.phase == "connected" and view.problem is None
    state.save_problem("enrol: unknown join token")
    view = saved_link(config, 1030.0)
    assert view is not None and view.phase == "grace"
    assert view.problem == "enrol: unknown join token"
    state.save_problem(None)
    view = saved_link(config, 1030.0)
    assert view is not None and view.phase == "connected" and view.problem is None


@pytest.fixture
def fleet_at_fixed_ports(tmp_path: Path) -> Iterator[tuple[Path, Server]]:
    config = tmp_path / "fleet.toml"
    config.write_text(
        FLEET_TOML.format(db=tmp_path / "fleet-db" / "fleet.sqlite")
        .replace('grpc = "127.0.0.1:0"', f'grpc = "127.0.0.1:{free_port()}"')
        .replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{free_port()}"')
    )
    (tmp_path / "fleet-db").mkdir()
    server = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    try:
        yield config, server
    finally:
        server.stop()


def test_appliance_status_says_why_a_restored_manager_refuses_the_box(
    tmp_path: Path, fleet_at_fixed_ports: tuple[Path, Server]
) -> None:
    """The manager's database restored from a backup older than the box's enrolment: it
    refuses the box's beats and its spent join token. The daemon's /status says so, and
    `appliance status` (which reads the files) says the same, not "connected", then
    "unreachable" with no reason."""
    fleet_config, fleet = fleet_at_fixed_ports
    out = run_cli(
        ["fleet", "join-token", "--site", "home", "--fleet", fleet.urls["http"], "--json"],
        check=True,
        timeout=60,
    )
    root = tmp_path / "box"
    config = box_config(root, fleet.urls["grpc"])
    with config.open("a") as f:
        f.write(f'join_token = "{json.loads(out.stdout)["token"]}"\n')
    box = launch(["appliance", "run", "--config", str(config)], root / "log.jsonl")
    try:
        wait_for(lambda: status(box)["daemon"]["fleet"]["beats"] >= 2, 30, "a1 enrolled")
        fleet.stop()
        shutil.rmtree(tmp_path / "fleet-db")  # a backup from before a1 enrolled
        (tmp_path / "fleet-db").mkdir()
        restored = start(["fleet", "serve", "--config", str(fleet_config)], ("grpc", "http"))
        try:
            wait_for(
                lambda: "join token" in (status(box)["daemon"]["fleet"]["refused"] or ""),
                30,
                "the restored manager refuses a1's token",
            )
            problem = status(box)["fleet"]["problem"]

            def said() -> dict[str, Any] | None:
                proc = run_cli(["appliance", "status", "--json", "--config", str(config)])
                doc: dict[str, Any] = json.loads(proc.stdout)
                return doc if doc["fleet"]["phase"] == "grace" else None

            doc = wait_for(said, 30, "appliance status past the last answered beats")
            assert doc["fleet"]["problem"] == problem and "join token" in problem
            assert any(problem in w for w in doc["health"]["warnings"]), doc["health"]
        finally:
            restored.stop()
    finally:
        box.stop()
