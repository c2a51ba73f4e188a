"""Who may use the manager's admin API: every HTTP route but the player-facing `/steer` and
the probes (`/healthz`, `/metrics`). Drain, rm, join tokens and key rotation share a listener
with `/steer`, which players and services reach from the network, so reaching the port
must not be enough.

`[server] admin = "loopback"` (default): callers on the manager's own machine need nothing,
any other caller a bearer token. `"token"`: every caller needs it. The token is made at
first start beside the database (`admin-token`, mode 0600); the CLI sends it from
`$EDGEFLIX_FLEET_TOKEN`. http.py asks `AdminAccess.check` before passing a request on.
Behind a reverse proxy on the same machine every caller looks local: use "token" there.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgeflix.atomicfile import write_atomic

OPEN_PATHS = frozenset({"/steer", "/healthz", "/metrics"})
TOKEN_FILE = "admin-token"
ENV_TOKEN = "EDGEFLIX_FLEET_TOKEN"
AdminMode = Literal["loopback", "token"]


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped spelling; False for names or None."""
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


@dataclass(frozen=True)
class AdminAccess:
    mode: AdminMode
    token: bytes
    token_path: str = TOKEN_FILE  # named in the refusal, so the operator knows where to look

    def check(self, path: str, peer: str | None, authorization: bytes | None) -> Refusal | None:
        """None when the request may go on; else why not. A token that is sent is always
        checked (constant time), even from loopback: a wrong one is a mistake to report."""
        if path in OPEN_PATHS:
            return None
        if authorization is not None:
            scheme, _, given = authorization.strip().partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
                return None
            return Refusal(
                401, f"admin token refused (check ${ENV_TOKEN} against {self.token_path})"
            )
        if self.mode == "loopback" and is_loopback(peer):
            return None
        where = "" if self.mode == "token" else " from another machine"
        return Refusal(
            401,
            f"the admin API{where} needs a token: set ${ENV_TOKEN} to the content of "
            f"{self.token_path} on the manager",
        )


def load_or_create_token(folder: Path) -> tuple[bytes, Path]:
    """The admin token kept at `folder/admin-token`, made on first use."""
    path = folder / TOKEN_FILE
    try:
        token = path.read_bytes().strip()
    except FileNotFoundError:
        token = b""
    if not token:
        token = secrets.token_urlsafe(32).encode()
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, token + b"\n")
    return token, path
