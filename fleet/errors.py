"""The fleet manager's errors: one family rooted at EdgeflixError.

Cores raise these with a message an operator can act on; the CLI prints one line, the
HTTP shell maps them to a status code (`http_status`).
"""

from __future__ import annotations

from edgeflix.errors import EdgeflixError


class FleetError(EdgeflixError):
    """Anything the fleet manager refuses or cannot do."""

    http_status: int = 500


class FleetInputError(FleetError):
    """A request or snapshot value is malformed (bad IP, bad prefix, bad window)."""

    http_status = 400


class UnknownNameError(FleetError):
    """A site, appliance or title name the fleet does not know."""

    http_status = 404


class UnavailableError(FleetError):
    """The manager cannot do it now but will (it is stopping, or its planner is down)."""

    http_status = 503
