"""`Range: bytes=…` (RFC 9110 §14.1.2) into byte spans of a representation of known size.

Result: `None` (no usable Range: send the whole file), `Unsatisfiable` (416), or a tuple of
`Span`s. Overlapping or adjacent spans are coalesced; more than MAX_SPANS distinct spans is
treated as no Range at all (as nginx's max_ranges does) so a client cannot amplify a response.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_SPANS = 16
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    length: int

    @property
    def end(self) -> int:
        """Last byte position, inclusive, as written in Content-Range."""
        return self.start + self.length - 1


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    size: int


def parse_range(value: str, size: int) -> tuple[Span, ...] | Unsatisfiable | None:
    """Spans for `value` against a representation of `size` bytes.

    Malformed headers and other units are ignored (None), as RFC 9110 allows; a zero-length
    file ignores ranges too, since no Content-Range can describe a part of it.
    """
    unit, eq, specs = value.partition("=")
    if not eq or unit.strip().lower() != "bytes" or size <= 0:
        return None
    wanted: list[tuple[int, int]] = []
    for raw in specs.split(","):
        spec = raw.strip(" \t")
        if not spec:
            continue  # empty list elements are allowed (RFC 9110 §5.6.1)
        parsed = _spec(spec, size)
        if parsed is None:
            return None
        if parsed[1] > parsed[0]:
            wanted.append(parsed)
        if len(wanted) > 4 * MAX_SPANS:
            return None
    if not specs.strip(" \t,"):
        return None
    if not wanted:
        return Unsatisfiable(size)
    spans = _coalesce(wanted)
    if len(spans) > MAX_SPANS:
        return None
    return tuple(Span(a, b - a) for a, b in spans)


def _spec(spec: str, size: int) -> tuple[int, int] | None:
    """One range-spec as a half-open [start, stop) clipped to the file; (0, 0) if unsatisfiable."""
    first, dash, last = spec.partition("-")
    first, last = first.strip(" \t"), last.strip(" \t")
    if not dash or (not _number(first) and not _number(last)):
        return None
    if not first:  # suffix-range: the last N bytes
        if not _number(last):
            return None
        n = int(last)
        return (max(size - n, 0), size) if n > 0 else (0, 0)
    if not _number(first) or (last and not _number(last)):
        return None
    start = int(first)
    if last and int(last) < start:
        return None  # invalid range-spec: RFC says ignore the whole header
    if start >= size:
        return (0, 0)
    stop = min(int(last) + 1, size) if last else size
    return (start, stop)


def _number(text: str) -> bool:
    # Bounded so a 10 kB digit string cannot cost a big-int conversion.
    return bool(text) and len(text) <= 30 and all(c in _DIGITS for c in text)


def _coalesce(wanted: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping/adjacent spans; keep the request's order when nothing merges
    (RFC 9110 §14.6: parts SHOULD follow the order asked for)."""
    ordered = sorted(wanted)
    merged: list[tuple[int, int]] = [ordered[0]]
    for start, stop in ordered[1:]:
        last_start, last_stop = merged[-1]
        if start <= last_stop:
            merged[-1] = (last_start, max(last_stop, stop))
        else:
            merged.append((start, stop))
    if len(merged) == len(wanted):
        return wanted
    return merged
