"""fleet.toml: the names the acceptance tests use, defaults, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeflix.errors import ConfigError
from fleet.config import load
from tests.conftest import run_cli

FLEET_TOML = """
[server]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "var/test/fleet.sqlite"
enrolment = "open"

[[sites]]
name = "home"
prefixes = ["192.168.1.0/24", "2001:db8::/48"]
fill_window = "02:00-06:00"
timezone = "Europe/Berlin"

[[sites]]
name = "lab"
prefixes = ["10.1.0.0/16"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_issue_example_loads(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, FLEET_TOML))
    assert cfg.server.enrolment == "open" and cfg.server.db == Path("var/test/fleet.sqlite")
    sites = cfg.site_list()
    assert [s.name for s in sites] == ["home", "lab"]
    assert str(sites[0].prefixes[1]) == "2001:db8::/48"
    assert str(sites[0].fill_window) == "02:00-06:00" and sites[0].timezone == "Europe/Berlin"
    assert sites[1].timezone == "UTC"
    assert cfg.steering_policy().min_urls == 2
    assert cfg.key_policy().max_token_ttl_s == cfg.steering.token_ttl_s


def test_defaults_work_without_a_file() -> None:
    cfg = load(None)
    assert cfg.server.enrolment == "token" and cfg.sites == ()


def test_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLIX_FLEET__SERVER__HTTP", "127.0.0.1:9999")
    assert load(write(tmp_path, FLEET_TOML)).server.http == "127.0.0.1:9999"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nhttps = 'x'\n", "unknown key 'server.https'"),
        ("[server]\nenrolment = 'maybe'\n", "server.enrolment"),
        ("[server]\ngrpc = 'nohost'\n", "server.grpc"),
        ("[[sites]]\nname = 'a'\nprefixes = ['300.1.1.0/24']\n", "not an IP prefix"),
        ("[[sites]]\nname = 'a'\nfill_window = '6-2'\n", "HH:MM-HH:MM"),
        ("[[sites]]\nname = 'a'\ntimezone = 'Nowhere/Land'\n", "unknown time zone"),
        ("[[sites]]\nname = 'a'\n[[sites]]\nname = 'a'\n", "listed twice"),
        ("[steering]\nmin_urls = 4\n", "min_urls"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://::1:33080", "not http"),  # httpx: InvalidURL on every poll
        ("[::1]:33080", "not http"),  # no scheme
        ("http://[::]:33080", "wildcard address"),  # handed to players as the origin
        ("http://0.0.0.0:33080", "wildcard address"),
        ("http://[::1]:33080/base", "not http"),  # /titles/… is appended to it
    ],
)
def test_origin_url_is_one_players_and_the_poller_can_use(
    tmp_path: Path, url: str, message: str
) -> None:
    path = write(tmp_path, f'[origin]\nurl = "{url}"\n')
    with pytest.raises(ConfigError, match=rf"fleet\.toml: key 'origin\.url': .*{message}"):
        load(path)


def test_origin_url_forms_that_work(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, '[origin]\nurl = "http://[::1]:33080/"\n'))
    assert cfg.origin.url == "http://[::1]:33080"
    assert load(None).origin.url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("grpc", ["::1:7070", "[127.0.0.1]:7070", "[::1:7070"])
def test_listeners_take_no_loose_ipv6_form(tmp_path: Path, grpc: str) -> None:
    with pytest.raises(ConfigError, match=r"key 'server\.grpc': .*not HOST:PORT"):
        load(write(tmp_path, f'[server]\ngrpc = "{grpc}"\n'))


def test_fleet_serve_refuses_a_wildcard_origin_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[origin]\nurl = "http://[::]:33080"\n')
    proc = run_cli(["fleet", "serve", "--config", str(path)], timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert str(path) in last and "origin.url" in last and "wildcard" in last
