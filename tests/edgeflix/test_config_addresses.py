"""HOST:PORT and base URLs as every daemon reads them: an IPv6 host only in brackets, only an
IPv6 address in brackets, a port of ASCII digits; a URL clients are sent to names no
wildcard address. What is refused is refused in one line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeflix.config import ConfigModel
from edgeflix.configtypes import (
    ReachableUrl,
    format_hostport,
    parse_base_url,
    parse_hostport,
    parse_reachable_url,
)
from edgeflix.errors import ConfigError
from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[::1]:31808", ("::1", 31808)),
        ("[0:0:0:0:0:0:0:0]:0", ("0:0:0:0:0:0:0:0", 0)),
        ("[::ffff:127.0.0.1]:80", ("::ffff:127.0.0.1", 80)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
        ("box.lan:08081", ("box.lan", 8081)),
        (":65535", ("127.0.0.1", 65535)),
    ],
)
def test_hostport_forms_read(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected
    assert parse_hostport(format_hostport(*expected)) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("::1", "in brackets"),  # was host ':' port 1
        ("::1:31811", "in brackets"),  # was silently [::1]:31811
        ("fe80::1%eth0:80", "in brackets"),
        ("[::1:31808", "IPv6 address only"),
        ("::1]:31809", "IPv6 address only"),
        ("[127.0.0.1]:31810", "IPv6 address only"),
        ("[box.lan]:80", "IPv6 address only"),
        ("[]:80", "IPv6 address only"),
        ("[::1]", "not HOST:PORT"),
        ("127.0.0.1:²", "not HOST:PORT"),  # isdigit() is true, int() raised
        ("127.0.0.1:٣١٨", "not HOST:PORT"),  # Arabic-Indic digits, read by int() as 318
        ("127.0.0.1:" + "9" * 5000, "not HOST:PORT"),  # past int()'s digit limit
        ("127.0.0.1: 31816", "not HOST:PORT"),
        ("127.0.0.1:65536", "not HOST:PORT"),
        ("127.0.0.1:-1", "not HOST:PORT"),
    ],
)
def test_loose_hostport_forms_are_refused(text: str, hint: str) -> None:
    with pytest.raises(ConfigError, match="not HOST:PORT") as err:
        parse_hostport(text)
    assert hint in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        "http://::1:33080",
        "[::1]:33080",  # no scheme
        "http://[v1.x]:80",  # an IPvFuture literal urlsplit takes and httpx refuses
        "http://[::1]x:80",
        "http://[127.0.0.1]:80",
        "http://a b:80",
        "http://a\tb:80",
        "http://a\x00b:80",
    ],
)
def test_base_urls_no_http_client_can_use_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="not http"):
        parse_base_url(text)


@pytest.mark.parametrize(
    "text", ["http://[::]:33080", "http://0.0.0.0:80", "http://0:80", "https://[0:0::0]"]
)
def test_a_reachable_url_is_no_wildcard(text: str) -> None:
    assert parse_base_url(text)  # a fine URL, but for a listener, not for a client
    with pytest.raises(ConfigError, match="wildcard address"):
        parse_reachable_url(text)


class Origin(ConfigModel):
    url: ReachableUrl = "http://127.0.0.1:8080"


def test_reachable_url_field() -> None:
    assert Origin(url="http://[::1]:33080/").url == "http://[::1]:33080"
    with pytest.raises(ValidationError, match="wildcard"):
        Origin(url="http://[::]:33080")


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("127.0.0.1:²", "'127.0.0.1:²' is not HOST:PORT"),
        ("::1", "in brackets"),
        ("[127.0.0.1]:31810", "IPv6 address only"),
    ],
)
def test_origin_serve_refuses_a_bad_listen_in_one_line(
    tmp_path: Path, listen: str, message: str
) -> None:
    proc = run_cli(["origin", "serve", "--store", str(tmp_path), "--listen", listen], timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
