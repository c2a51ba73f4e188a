"""The rules an enrolment is checked by before the store takes it (FleetService.enrol in
fleet/service.py, called from fleet/grpc_api.py): what a request must carry, how many
appliances open enrolment takes, and the site it puts one in. Join tokens, made by an
operator, are checked by the store (fleet/store.py). Pure: the registry comes in.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Collection
from urllib.parse import urlsplit

from fleet.errors import FleetError, FleetInputError
from fleet.model import FleetSnapshot, Site, check_appliance_url, check_name, parse_address

JOIN_TOKEN_TTL_S = 7 * 86_400.0


class OpenEnrolmentFull(FleetError):
    """Open enrolment has enrolled `[server] open_enrolment_limit` appliances."""

    http_status = 429


def new_join_token(entropy: Callable[[int], bytes]) -> str:
    return base64.urlsafe_b64encode(entropy(24)).decode().rstrip("=")


def check_enrolment(name: str, url: str, public_key: bytes) -> str:
    """The URL an enrolment asks for, as checked (FleetInputError: not one to take)."""
    if not name or not url or len(public_key) != 32:
        raise FleetInputError("enrolment needs a name, a URL and a 32-byte Ed25519 key")
    check_name(name, "appliance")
    return check_appliance_url(url)


def check_open_room(enrolled: Collection[str], name: str, limit: int) -> None:
    """Open enrolment takes anyone who reaches the port, so it stops at a limit (each
    appliance is a row, a log line, a planner entry): one client enrolled 2,777 made-up
    ones in 50 s. A name `enrolled` already may enrol again (a lost reply); join tokens,
    each made by an operator, have no limit."""
    if name not in enrolled and len(enrolled) >= limit:
        raise OpenEnrolmentFull(
            f"open enrolment is full: {len(enrolled)} appliances enrolled, "
            f"[server] open_enrolment_limit is {limit}; open enrolment is for loopback "
            'demos: a real fleet uses enrolment = "token" and `edgeflix fleet join-token`'
        )


def site_for_url(sites: tuple[Site, ...], url: str) -> str:
    """Open enrolment: the site whose prefixes hold the appliance's address, else the first."""
    host = urlsplit(url).hostname or ""
    try:
        # Sites only: the fleet's snapshot (every appliance) is not rebuilt for this.
        site = FleetSnapshot(sites, ()).site_of(parse_address(host))
    except FleetInputError:
        site = None
    if site is None and not sites:
        raise FleetInputError("open enrolment needs at least one [[sites]] entry")
    return (site or sites[0]).name
