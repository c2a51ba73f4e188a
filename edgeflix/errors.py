"""Root of every component's error hierarchy.

An `EdgeflixError` carries a message a user can act on; the CLI prints it as one line and
exits non-zero, servers map it to a status code. Anything else escaping is a bug.
"""


class EdgeflixError(Exception):
    """An error with a message fit for the user, raised by any component."""

    exit_code: int = 1


class ConfigError(EdgeflixError):
    """A configuration file or override is missing, unparsable or invalid."""

    exit_code = 2


class OutputError(EdgeflixError):
    """Standard output refused what the command printed (a full disk, a failing device). A
    reader that has gone (EPIPE) is no error: the command ends as `cat` would."""
