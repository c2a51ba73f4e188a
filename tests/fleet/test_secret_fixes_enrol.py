"""Secrets review, pure parts: enrolling again with the same key changes nothing in the
store (the URL moves only with signed beats); whether the manager's gRPC listener takes
connections from other machines without TLS (`fleet serve` then warns); the advice
`fleet rm` gives about the URL-signing keys the removed box still holds."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from edgeflix.proto import auth
from fleet.cli_appliances import removed_advice
from fleet.config import ServerConfig
from fleet.server import _addresses, grpc_in_clear
from fleet.store import EnrolmentRefused, Store
from tests import fake_names
from tests.fake_names import NOWHERE, V6_ONLY


def test_enrolling_again_with_the_same_key_keeps_the_url(tmp_path: Path) -> None:
    """A repeat with the spent token used to set the URL it named: a replay of a captured
    Enrol (the public key and the token are no secret) moved where players were sent."""
    store = Store(tmp_path / "fleet.sqlite")
    key = auth.public_key(auth.new_private_key())
    store.add_join_token("t1", "home", 0.0, 3600.0)
    store.enrol("t1", "b1", "http://10.0.0.1:8081", key, "", 10.0)
    again = store.enrol("t1", "b1", "http://10.6.6.6:8081", key, "", 20.0)
    assert again.url == "http://10.0.0.1:8081"
    assert store.appliances()["b1"].url == "http://10.0.0.1:8081"
    # Open enrolment (no token) the same.
    assert store.enrol(None, "b1", "http://10.6.6.6:8081", key, "x", 30.0).site == "home"
    assert store.appliances()["b1"].url == "http://10.0.0.1:8081"
    # Another key under the name is refused, as before: `fleet rm` first.
    with pytest.raises(EnrolmentRefused, match="another key"):
        store.enrol("t1", "b1", "http://10.0.0.1:8081", auth.public_key(auth.new_private_key()),
                    "", 40.0)  # fmt: skip
    store.close()


def _resolver(table: dict[str, list[str]]) -> Callable[[str], Iterable[str]]:
    def resolve(host: str) -> Iterable[str]:
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("grpc", "addresses", "in_clear"),
    [
        ("127.0.0.1:7070", ["127.0.0.1"], False),
        (":7070", ["127.0.0.1"], False),  # the default host
        ("[::1]:7070", ["::1"], False),
        ("localhost:7070", ["127.0.0.1", "::1"], False),
        ("127.1:7070", ["127.0.0.1"], False),
        ("0.0.0.0:7070", ["0.0.0.0"], True),
        ("[::]:7070", ["::"], True),
        ("192.168.1.5:7070", ["192.168.1.5"], True),
        ("[::ffff:127.0.0.1]:7070", ["::ffff:127.0.0.1"], False),
        ("fleet.lan:7070", ["127.0.0.1", "192.168.1.5"], True),  # one address beyond is enough
        ("fleet.lan:7070", [], True),
        ("gone.invalid:7070", None, True),  # does not resolve: said rather than not
    ],
)
def test_a_grpc_listener_beyond_loopback_without_tls_is_in_clear(
    grpc: str, addresses: list[str] | None, in_clear: bool
) -> None:
    host = grpc.rpartition(":")[0].strip("[]") or "127.0.0.1"
    table = {} if addresses is None else {host: addresses}
    resolve = _resolver(table)
    assert grpc_in_clear(ServerConfig(grpc=grpc), resolve) is in_clear
    # With TLS nothing crosses in clear, wherever it listens.
    tls = ServerConfig(grpc=grpc, tls=True, enrol_grpc="127.0.0.1:0")
    assert grpc_in_clear(tls, resolve) is False


def test_the_listener_host_is_resolved_as_it_is_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_names.install(monkeypatch)
    assert _addresses(V6_ONLY) == ["::1"]
    assert grpc_in_clear(ServerConfig(grpc=f"{V6_ONLY}:0")) is False
    assert grpc_in_clear(ServerConfig(grpc=f"{NOWHERE}:0")) is True


def test_rm_advice_names_the_commands_that_retire_the_keys() -> None:
    text = removed_advice("edge-a")
    assert text.startswith("edge-a still holds the fleet's URL-signing keys")
    assert "`edgeflix fleet keys rotate`" in text
    assert "`edgeflix fleet keys revoke KEY_ID`" in text
