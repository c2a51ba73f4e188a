"""Text that came from bytes (paths, arguments, environment): shown as typed, even where it is
not UTF-8."""

from __future__ import annotations


def escaped_bytes(value: str) -> str:
    """`value` as text UTF-8 can encode: a path's undecodable bytes (os.fsdecode's surrogate
    escapes) as `\\xNN`, any other lone surrogate as `\\uNNNN`, the rest unchanged."""
    if value.isascii():
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoding produced: spell it out
        raw = value.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def shown_bytes(value: str) -> str:
    """`value` quoted for a message, as the user typed it: 'caf\\xe9'."""
    return f"'{escaped_bytes(value)}'"
