"""fleet/tls.py `retire_https_pair`: with HTTP plain, the HTTPS key and certificate an
earlier HTTPS start made are removed (a private key nothing uses), and only those: a pair
another CA issued, a key that is not the certificate's, a link, or a lone key are left and
said."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgeflix import pidlock
from fleet.tls import (
    CA_CERT,
    HTTP_CERT,
    HTTP_KEY,
    CertAuthority,
    https_context,
    https_pair_not_ours,
    retire_https_pair,
)

DB = "fleet.sqlite"


def _made(folder: Path) -> CertAuthority:
    """A CA and the HTTPS pair an HTTPS start writes beside it."""
    ca = CertAuthority.load_or_create(folder)
    https_context(ca.server_identity(("127.0.0.1",)), folder)
    return ca


def _said(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


def test_the_pair_a_start_made_is_ours(tmp_path: Path) -> None:
    _made(tmp_path)
    key, cert = (tmp_path / HTTP_KEY).read_bytes(), (tmp_path / HTTP_CERT).read_bytes()
    ca = (tmp_path / CA_CERT).read_bytes()
    assert https_pair_not_ours(key, cert, ca) is None
    assert https_pair_not_ours(None, cert, ca) is None  # the key already gone
    other = tmp_path / "other"
    _made(other)
    assert "not issued by" in (https_pair_not_ours(key, cert, (other / CA_CERT).read_bytes()) or "")
    wrong_key = (other / HTTP_KEY).read_bytes()
    assert "not the key of" in (https_pair_not_ours(wrong_key, cert, ca) or "")
    assert "no PEM certificate" in (https_pair_not_ours(key, b"junk", ca) or "")
    assert "private key" in (https_pair_not_ours(b"junk", cert, ca) or "")


def test_our_pair_is_removed_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fleet")
    _made(tmp_path)
    retire_https_pair(tmp_path, tmp_path / DB)
    assert not (tmp_path / HTTP_KEY).exists() and not (tmp_path / HTTP_CERT).exists()
    assert (tmp_path / CA_CERT).exists() and (tmp_path / "fleet-ca.key").exists()
    assert len(_said(caplog, "fleet.https_files_removed")) == 1
    caplog.clear()
    retire_https_pair(tmp_path, tmp_path / DB)  # nothing left: nothing said
    assert not caplog.records


def test_a_lone_certificate_of_ours_is_removed(tmp_path: Path) -> None:
    _made(tmp_path)
    (tmp_path / HTTP_KEY).unlink()
    retire_https_pair(tmp_path, tmp_path / DB)
    assert not (tmp_path / HTTP_CERT).exists()


@pytest.mark.parametrize("case", ["other_ca", "lone_key", "key_link", "no_ca", "other_key"])
def test_what_we_cannot_tell_we_made_is_left_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.INFO, logger="fleet")
    _made(tmp_path)
    other = tmp_path / "other"
    _made(other)
    key, cert = tmp_path / HTTP_KEY, tmp_path / HTTP_CERT
    if case == "other_ca":  # an operator's own pair, from another CA
        cert.write_bytes((other / HTTP_CERT).read_bytes())
        key.write_bytes((other / HTTP_KEY).read_bytes())
    elif case == "lone_key":
        cert.unlink()
    elif case == "key_link":  # the key a link to a file elsewhere
        key.unlink()
        key.symlink_to(other / HTTP_KEY)
    elif case == "no_ca":
        (tmp_path / CA_CERT).unlink()
    else:
        key.write_bytes((other / HTTP_KEY).read_bytes())
    left = {p: p.read_bytes() for p in (key, cert) if p.exists()}
    retire_https_pair(tmp_path, tmp_path / DB)
    assert {p: p.read_bytes() for p in (key, cert) if p.exists()} == left
    assert (other / HTTP_KEY).exists()
    (kept,) = _said(caplog, "fleet.https_files_kept")
    assert kept.levelno == logging.WARNING
    assert not _said(caplog, "fleet.https_files_removed")


def test_the_pair_is_kept_while_another_manager_runs_in_the_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The pair is one per folder, a manager's lock one per database: a plain manager on
    a.sqlite removed the pair an HTTPS one on b.sqlite was serving with."""
    caplog.set_level(logging.INFO, logger="fleet")
    _made(tmp_path)
    (tmp_path / "b.sqlite").touch()
    with pidlock.take(tmp_path / "b.sqlite.lock"):  # the HTTPS manager, running
        own = pidlock.take(tmp_path / f"{DB}.lock")  # ours: not another's
        retire_https_pair(tmp_path, tmp_path / DB)
        own.release()
    assert (tmp_path / HTTP_KEY).exists() and (tmp_path / HTTP_CERT).exists()
    (kept,) = _said(caplog, "fleet.https_files_kept")
    reason = kept.__dict__["edgeflix_fields"]["reason"]
    assert "another fleet manager" in reason and "b.sqlite" in reason, reason
    # Gone (its lock file left behind, unheld): nothing keeps the pair any more.
    retire_https_pair(tmp_path, tmp_path / DB)
    assert not (tmp_path / HTTP_KEY).exists()
