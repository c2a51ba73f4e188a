"""The string types configs check at load: `HOST:PORT` (listeners, dialled addresses), base
URLs (no path, no query), the fleet's gRPC address and names (sites, appliances). Each is a
pure parse that raises ConfigError with the value in its message, and a pydantic type over
it for the models in edgeflix/config.py and the components' configs.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator

from edgeflix.errors import ConfigError

# ASCII digits only: str.isdigit also takes '²' (int() then fails) and '٣' (int() reads 3).
_PORT_RE = re.compile(r"[0-9]{1,5}")
# `http://`, `grpc://`: a URL given where HOST:PORT is wanted (the manager's HTTP URL for
# the appliance's [fleet] url is the usual one); RFC 3986's scheme syntax.
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_hostport(value: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `[v6]:PORT` → (host, port); port 0 asks the kernel for one.
    A host with a ':' must be bracketed, and only an IPv6 address may be: `::1:8080` is
    both [::1]:8080 and the address ::1:8080, and a misread address binds or dials elsewhere."""
    if _SCHEME_RE.match(value):
        raise ConfigError(f"'{value}' is a URL; give HOST:PORT")
    host, sep, port_text = value.rpartition(":")
    if not sep or not _PORT_RE.fullmatch(port_text) or int(port_text) > 65535:
        raise ConfigError(f"'{value}' is not HOST:PORT")
    if host.startswith("[") or host.endswith("]"):
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
        if not _is_ipv6(inner):
            raise ConfigError(f"'{value}' is not HOST:PORT (brackets are for an IPv6 address only)")
        return inner, int(port_text)
    if ":" in host or "[" in host or "]" in host:
        raise ConfigError(
            f"'{value}' is not HOST:PORT (an IPv6 address goes in brackets: [::1]:8080)"
        )
    return host or default_host, int(port_text)


def format_hostport(host: str, port: int) -> str:
    """(host, port) → `HOST:PORT`, an IPv6 host bracketed: what parse_hostport reads back,
    and the target form gRPC and URLs take."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _checked(parse: Callable[[str], object], keep: bool = False) -> AfterValidator:
    """A pydantic check by `parse`, its ConfigError turned into a ValueError so pydantic
    names the file and key. The field holds what `parse` returns, or with `keep` the string
    the user wrote."""

    def check(value: str) -> Any:
        try:
            parsed = parse(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value if keep else parsed

    return AfterValidator(check)


# A config field holding `HOST:PORT` (checked at load, kept as the string the user wrote).
HostPort = Annotated[str, _checked(parse_hostport, keep=True)]


def parse_fleet_grpc(value: str) -> tuple[str, int]:
    """parse_hostport for an appliance's address of its fleet manager, which is its gRPC
    listener: the manager's HTTP URL (what `edgeflix fleet --fleet` takes) is the usual slip."""
    if _SCHEME_RE.match(value):
        raise ConfigError(
            f"'{value}' is a URL; give the fleet manager's gRPC HOST:PORT ([server] grpc, "
            "or enrol_grpc for enrol_url), not its HTTP URL"
        )
    return parse_hostport(value)


FleetGrpcAddress = Annotated[str, _checked(parse_fleet_grpc, keep=True)]


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def is_wildcard_host(host: str) -> bool:
    """0.0.0.0 (and all of 0.0.0.0/8, "this network", no destination), ::, ::ffff:0.0.0.0,
    and the short forms a client's resolver reads as them (http://0:8081)."""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the forms inet_aton takes: "0", "0.0", "0x0"...; a name raises
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_unspecified:
            return True
        if address.ipv4_mapped is None:
            return False
        address = address.ipv4_mapped
    return address in _THIS_NETWORK


def parse_base_url(value: str) -> str:
    """`http(s)://HOST[:PORT]` (a trailing slash is dropped): where players and peers reach
    a server, to which paths such as /titles/... are appended."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if (
        parts is None
        or not value.isprintable()  # a tab, a NUL, a zero-width space: HTTP clients refuse them
        or " " in value
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or not _brackets_hold_ipv6(parts.netloc.rpartition("@")[2])
    ):
        raise ConfigError(f"'{value}' is not http(s)://HOST[:PORT]")
    return value.rstrip("/")


def _brackets_hold_ipv6(hostport: str) -> bool:
    """urlsplit lets `[v1.x]` and `[::1]x:80` through; HTTP clients refuse them (httpx's
    InvalidURL) on every request."""
    if not hostport.startswith("["):
        return "[" not in hostport and "]" not in hostport
    inner, _, rest = hostport[1:].partition("]")
    return _is_ipv6(inner) and (rest == "" or rest.startswith(":"))


# A config field holding a base URL, checked at load (see parse_base_url).
BaseUrl = Annotated[str, _checked(parse_base_url)]


def parse_reachable_url(value: str) -> str:
    """A base URL (parse_base_url) a client can be sent to: its host is no wildcard address
    (0.0.0.0, [::]), which means "all interfaces" to a listener and nowhere to a client."""
    base = parse_base_url(value)
    host = urlsplit(base).hostname or ""
    if is_wildcard_host(host):
        raise ConfigError(
            f"'{value}' is a wildcard address (all interfaces), which no client can reach: "
            "give the address or name the server is reached at"
        )
    return base


# A config field holding a base URL clients are sent to (see parse_reachable_url).
ReachableUrl = Annotated[str, _checked(parse_reachable_url)]

# Names of appliances and sites: one safe token for URLs, logs, certificates and the registry.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def _valid_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{value[:80]!r} is not 1-64 letters, digits, '.', '_' or '-'")
    return value


# A config field holding such a name.
Name = Annotated[str, AfterValidator(_valid_name)]
