"""Prometheus text exposition (format 0.0.4) for every daemon's `/metrics`.

Daemons gather their numbers however suits them and hand families of samples here; this module
only renders them, escaping label values so a hostile title id (or a path that is not UTF-8)
cannot break the format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edgeflix.text import escaped_bytes

Family = tuple[str, str, str, list["Sample"]]  # name, type, help, samples


@dataclass(frozen=True, slots=True)
class Sample:
    labels: Mapping[str, str]
    value: float


def _escape(value: str) -> str:
    # One label that is not UTF-8 (a disk path) must not make every scrape fail to encode.
    value = escaped_bytes(value)
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for sample in samples:
            if sample.labels:
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
                lines.append(f"{name}{{{inner}}} {_number(sample.value)}")
            else:
                lines.append(f"{name} {_number(sample.value)}")
    return "\n".join(lines) + "\n"
