"""A manager that served HTTPS and is restarted with HTTP plain (`http_tls = false`, or tls
off altogether) removes the HTTPS key and certificate it wrote beside the database then, and
says so: a private key nothing uses is only something to leak. The CA stays (appliances
trust it; tls may come back), and what it did not make is left (tests/fleet/test_tls_retire.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.serve_support import start

PAIR = ("fleet-http.key", "fleet-http.pem")


def _run(top: Path, server: str, db: Path | None = None) -> str:
    """Start a manager with `server` lines in [server] (its database `db`, by default
    top/db/fleet.sqlite), stop it; its log."""
    config = top / "fleet.toml"
    config.write_text(f"""
[server]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{db or top / "db" / "fleet.sqlite"}"
{server}
[origin]
url = "http://127.0.0.1:9"
""")
    log = top / "fleet.log"
    with log.open("wb") as err:
        fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=err)
    assert fleet.stop() == 0
    return log.read_text()


@pytest.mark.parametrize(
    "plain",
    ['tls = true\nenrol_grpc = "127.0.0.1:0"\nhttp_tls = false', "tls = false"],
    ids=["http_tls_false", "tls_off"],
)
def test_the_https_pair_of_an_earlier_start_is_removed_when_http_turns_plain(
    tmp_path: Path, plain: str
) -> None:
    db = tmp_path / "db"
    log = _run(tmp_path, 'tls = true\nenrol_grpc = "127.0.0.1:0"')
    assert all((db / name).exists() for name in PAIR)
    assert "fleet.https_files" not in log
    log = _run(tmp_path, plain)
    assert not any((db / name).exists() for name in PAIR), sorted(p.name for p in db.iterdir())
    assert (db / "fleet-ca.pem").exists() and (db / "fleet-ca.key").exists()
    removed = [line for line in log.splitlines() if "fleet.https_files_removed" in line]
    assert len(removed) == 1 and "fleet-http.key" in removed[0], log
    assert "http_tls" in removed[0], removed[0]
    # Nothing more to say on the next start.
    assert "fleet.https_files" not in _run(tmp_path, plain)


def test_a_plain_manager_leaves_the_pair_of_an_https_one_running_in_the_folder(
    tmp_path: Path,
) -> None:
    """One lock per database, one pair per folder: a plain manager started beside a running
    HTTPS one (another database file in the same folder) deleted the key it serves with."""
    db = tmp_path / "db"
    https_top, plain_top = tmp_path / "https", tmp_path / "plain"
    https_top.mkdir()
    plain_top.mkdir()
    (https_top / "fleet.toml").write_text(f"""
[server]
grpc = "127.0.0.1:0"
enrol_grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{db}/a.sqlite"
tls = true
[origin]
url = "http://127.0.0.1:9"
""")
    with (https_top / "fleet.log").open("wb") as err:
        args = ["fleet", "serve", "--config", str(https_top / "fleet.toml")]
        https = start(args, ("grpc", "http"), stderr=err)
    try:
        assert all((db / name).exists() for name in PAIR)
        log = _run(plain_top, "tls = false", db / "b.sqlite")
        assert all((db / name).exists() for name in PAIR), sorted(p.name for p in db.iterdir())
        kept = [line for line in log.splitlines() if "fleet.https_files_kept" in line]
        assert len(kept) == 1 and "another fleet manager" in kept[0], log
        assert "fleet.https_files_removed" not in log
    finally:
        assert https.stop() == 0
    # Alone in the folder now: the next plain start retires the pair.
    _run(plain_top, "tls = false", db / "b.sqlite")
    assert not any((db / name).exists() for name in PAIR)
