"""The fleet CLI's HTTP client: the manager's URL (--fleet, $EDGEFLIX_FLEET), the admin
token ($EDGEFLIX_FLEET_TOKEN), TLS against $EDGEFLIX_FLEET_CA, and one clear line for every
way a call can fail (unreachable, not the manager, a certificate that does not verify, the
token about to cross the network in clear).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import ssl
import urllib.parse
from typing import Any

import httpx

from edgeflix.configtypes import parse_base_url
from edgeflix.errors import ConfigError
from fleet.admin import ENV_TOKEN
from fleet.errors import FleetError, FleetInputError

DEFAULT_FLEET = "http://127.0.0.1:7080"
# The manager's CA (fleet-ca.pem beside its [server] db) for an https:// URL; without it,
# httpx's default trust store.
ENV_CA = "EDGEFLIX_FLEET_CA"
# A manager that accepts and never answers is reported after this long, not waited on.
CALL_TIMEOUT_S = 10.0
# The TLS handshake that tells an HTTPS listener given an http:// URL (`_speaks_https`).
PROBE_TIMEOUT_S = 3.0
# How the CLI reaches a manager on this machine (the default URL, `localhost`): a token sent
# there over http:// stays on it, so it goes without the check `call` makes first for any
# other host. Other 127/8 addresses are loopback too, but that check costs one request, and
# with it a manager at 127.0.0.2 can stand for one on another machine in the tests.
_THIS_MACHINE = frozenset({"127.0.0.1", "::1", "localhost"})


class FleetUnreachable(FleetError):
    """The fleet manager did not answer."""


def fleet_url(fleet: str | None) -> str:
    """The manager's base URL from --fleet, else $EDGEFLIX_FLEET, else the default."""
    raw = fleet if fleet is not None else os.environ.get("EDGEFLIX_FLEET") or DEFAULT_FLEET
    try:
        return parse_base_url(raw.strip())
    except ConfigError:
        raise FleetError(
            f"fleet manager URL '{redacted(raw)}' is not http(s)://HOST[:PORT] "
            "(--fleet or EDGEFLIX_FLEET)"
        ) from None


def redacted(url: str) -> str:
    """`url` fit for a message: a password given in it (user:pw@host) is not echoed."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}").geturl()


def call(fleet: str | None, method: str, path: str, want: type = dict, **kw: Any) -> Any:
    base = fleet_url(fleet)
    shown = redacted(base)
    parts = urllib.parse.urlsplit(base)
    https = parts.scheme == "https"
    verify = _verify() if https else True
    headers = _auth()
    try:
        with httpx.Client(timeout=CALL_TIMEOUT_S, verify=verify) as client:
            if headers and not https and not token_stays_local(parts.hostname):
                # Before the token goes out in clear, a request without it: an HTTPS
                # listener hangs up on it (said below, the token unsent); a plain one answers
                # and keeps the connection for the call. Not a TLS handshake first: a plain
                # manager would log each as an invalid request.
                client.get(base + "/healthz")
            resp = client.request(method, base + path, headers=headers, **kw)
    except httpx.ProtocolError as exc:  # something answered, not in HTTP/1.1 (a gRPC port)
        if not https and _speaks_https(base):  # it hung up on plain HTTP: HTTPS it takes
            raise FleetUnreachable(
                f"fleet manager at {shown} serves HTTPS ([server] tls = true): use "
                f"https://{shown.partition('://')[2]} and set ${ENV_CA} to its fleet-ca.pem"
            ) from None
        raise FleetUnreachable(
            f"fleet manager at {shown} did not answer in HTTP ({exc}): {_IS_IT_THE_FLEET}"
        ) from None
    except httpx.ConnectError as exc:
        raise FleetUnreachable(_connect_failure(shown, parts.hostname, exc)) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise FleetUnreachable(f"fleet manager at {shown} is unreachable: {exc}") from None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code == 404 and not _manager_error(body):
        # No route of the manager's: an origin's, an appliance's or another server's port.
        what = f"HTTP 404 for {method} {path}"
        raise FleetError(NOT_A_FLEET.format(base=shown, what=what))
    if resp.status_code >= 400:
        detail = body.get("error") or body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, str):
            # FastAPI's validation errors are a list; anything else is not ours.
            detail = json.dumps(detail) if detail else resp.text
        # One line, even for a proxy's HTML error page.
        detail = " ".join(detail.split())[:200] or resp.reason_phrase
        raise FleetError(f"fleet manager: {detail} (HTTP {resp.status_code})")
    if body is None:
        raise FleetError(NOT_A_FLEET.format(base=shown, what="an answer that is not JSON"))
    if not isinstance(body, want):
        raise FleetError(NOT_A_FLEET.format(base=shown, what=f"JSON that is not a {want.__name__}"))
    return body


def token_stays_local(host: str | None) -> bool:
    """Whether an admin token sent to `host` over http:// stays on this machine
    (`_THIS_MACHINE`); anywhere else it may cross a network in clear."""
    return (host or "").lower().rstrip(".") in _THIS_MACHINE


def _verify() -> ssl.SSLContext | bool:
    """What an https:// manager's certificate is checked against: $EDGEFLIX_FLEET_CA, else
    httpx's default trust store (a manager behind a proxy with a public certificate)."""
    path = os.environ.get(ENV_CA, "").strip()
    if not path:
        return True
    try:
        return ssl.create_default_context(cafile=path)
    except OSError as exc:  # ssl.SSLError too
        raise FleetInputError(ca_file_line(path, exc)) from None


def ca_file_line(path: str, exc: OSError) -> str:
    """One line for a $EDGEFLIX_FLEET_CA that cannot be used. Unreadable is what other users
    than the manager's meet at fleet-ca.pem beside its database (a 0700 folder)."""
    if isinstance(exc, ssl.SSLError):  # the file holds no certificate OpenSSL can read
        return f"${ENV_CA}: cannot use {path} as a CA file (no PEM certificate in it)"
    line = f"${ENV_CA}: cannot use {path} as a CA file ({exc.strerror or exc})"
    if exc.errno in (errno.EACCES, errno.EPERM):
        line += (
            ": copy the manager's fleet-ca.pem (it is public) where this user can read it, "
            f"e.g. /etc/edgeflix/fleet-ca.pem, and set ${ENV_CA} to the copy"
        )
    return line


def _connect_failure(shown: str, host: str | None, exc: httpx.ConnectError) -> str:
    """One line for a failed connection to `shown` (at `host`); a TLS failure says what to
    change (`tls_failure_line`)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, ssl.SSLError):
        return f"fleet manager at {shown} is unreachable: {exc}"
    code: int | None = None
    why = str(cause.reason or cause)
    if isinstance(cause, ssl.SSLCertVerificationError):
        code = cause.verify_code
        why = cause.verify_message or cause.reason or "certificate verify failed"
    token_in_clear = bool(os.environ.get(ENV_TOKEN, "").strip()) and not token_stays_local(host)
    return tls_failure_line(shown, code, why, os.environ.get(ENV_CA, "").strip(), token_in_clear)


# Advice by OpenSSL's X509_V_ERR_* code, where it is not "set $EDGEFLIX_FLEET_CA".
_VERIFY_ADVICE = {
    9: "its certificate is not valid yet ({why}): check this machine's clock",  # NOT_YET_VALID
    10: (  # CERT_HAS_EXPIRED
        "its certificate has expired ({why}): the manager issues a fresh one at each start: "
        "restart it, or check this machine's clock"
    ),
    62: (  # HOSTNAME_MISMATCH
        "its certificate does not name that host ({why}): use its [server] http host, or "
        "add this one to its [server] tls_names"
    ),
    64: (  # IP_ADDRESS_MISMATCH
        "its certificate does not name that address ({why}): use its [server] http host, "
        "or add this address to its [server] tls_names"
    ),
}


def tls_failure_line(
    shown: str, verify_code: int | None, why: str, ca: str, token_in_clear: bool
) -> str:
    """What to change when TLS to the manager at `shown` failed: its certificate did not
    verify (OpenSSL's `verify_code`, `why` in its words), or, with None, the handshake
    itself (a plain HTTP listener answered). `ca` is $EDGEFLIX_FLEET_CA ("" when unset);
    `token_in_clear`: an admin token is set and http:// to that host would carry it across
    a network, so http:// is not what to advise."""
    if verify_code is None:
        if token_in_clear:
            return (
                f"fleet manager at {shown} did not answer in TLS ({why}): it does not speak "
                "TLS there, and with http:// the admin token would cross the network in clear "
                "(a man in the middle can answer in plain text to provoke exactly that): turn "
                "on its [server] tls, or check the address"
            )
        plain = f"http://{shown.partition('://')[2]}"
        return (
            f"fleet manager at {shown} did not answer in TLS ({why}): if it serves plain "
            f"HTTP ([server] tls = false), use {plain}"
        )
    advice = _VERIFY_ADVICE.get(verify_code)
    if advice is not None:
        return f"fleet manager at {shown}: " + advice.format(why=why)
    against = f" against ${ENV_CA} ({ca})" if ca else ""
    return (
        f"fleet manager at {shown}: its certificate did not verify{against} ({why}): set "
        f"${ENV_CA} to that manager's fleet-ca.pem (beside its [server] db)"
    )


def _speaks_https(base: str) -> bool:
    """Whether `base`'s host and port complete a TLS handshake that picks HTTP/1.1 (the
    manager's HTTPS listener says so; its gRPC ones do not). Nothing is sent over it."""
    parts = urllib.parse.urlsplit(base)
    context = ssl.create_default_context()
    context.check_hostname = False  # only what it speaks, not who it is
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    address = (parts.hostname or "", parts.port or 80)
    try:
        with (
            socket.create_connection(address, PROBE_TIMEOUT_S) as sock,
            context.wrap_socket(sock) as tls,
        ):
            return tls.selected_alpn_protocol() == "http/1.1"
    except (OSError, ValueError):  # ssl.SSLError, timeouts, refusals
        return False


def _manager_error(body: Any) -> bool:
    """`body` is the manager's own error answer: {"error": "<what is wrong>"}."""
    return isinstance(body, dict) and isinstance(body.get("error"), str)


def _auth() -> dict[str, str]:
    """The admin token from the environment (fleet/admin.py), when there is one."""
    token = os.environ.get(ENV_TOKEN, "").strip()
    if not token:
        return {}
    if not token.isascii() or not token.isprintable() or " " in token:
        # It goes into an HTTP header: refuse it here, in one line, not as an encoding error.
        raise FleetInputError(f"${ENV_TOKEN} is not a token (printable ASCII, no spaces)")
    return {"authorization": f"Bearer {token}"}


_IS_IT_THE_FLEET = "is it the fleet manager's HTTP address?"
NOT_A_FLEET = "{base} sent {what}: " + _IS_IT_THE_FLEET
