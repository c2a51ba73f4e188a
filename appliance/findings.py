"""What a storage check found (repair.py's reconcile and verify, the scrub, the tier mover)
and how it is logged: summarised per title and disk, never a line per file, so a disk lost
with thousands of files says so in a few lines.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edgeflix.log import event

log = logging.getLogger("appliance.repair")


@dataclass(frozen=True)
class Finding:
    title: str  # "" for a finding about a disk (then `disk` names it)
    path: str  # file path inside the title, or "" for the whole title
    problem: str
    # True when a stored file was lost (missing, damaged, replaced); False for crash leftovers
    # cleaned up (partial files, interrupted loads, strays), which cost no stored data.
    damage: bool = False
    disk: str = ""  # the disk it is about, when it is about one (the log groups by it)

    def __str__(self) -> str:
        where = f"{self.title}/{self.path}" if self.path else self.title
        return f"{where}: {self.problem}" if where else self.problem


@dataclass
class Report:
    """What a check found. Findings are not logged one by one (a disk lost with thousands of
    files would flood the log): `log_findings` summarises them per title and disk."""

    findings: list[Finding] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # titles another process was working on
    checked_files: int = 0
    checked_bytes: int = 0
    unchecked: dict[str, int] = field(default_factory=dict)  # disk out of service → its files
    # Disk no longer configured → title → its files there, set aside (diskconfig.set_aside).
    off_config: dict[str, dict[str, int]] = field(default_factory=dict)
    # (old tier, new tier) → titles relabelled to the tier of the disks holding them.
    relabelled: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    stopped: bool = False  # asked to stop (the daemon was): titles after that went unchecked

    def add(
        self, title: str, path: str, problem: str, damage: bool = False, disk: str = ""
    ) -> None:
        self.findings.append(Finding(title, path, problem, damage, disk))


# Paths (or titles) named in one line; the rest are counted.
SHOWN = 3


def named(items: Iterable[str]) -> str:
    """The first few of `items`, and how many more."""
    listed = list(items)
    more = len(listed) - SHOWN
    shown = ", ".join(listed[:SHOWN])
    return f"{shown} and {more} more" if more > 0 else shown


def titles(count: int) -> str:
    return f"{count} title" if count == 1 else f"{count} titles"


@dataclass(frozen=True)
class Group:
    """Findings of one title, disk and kind of problem."""

    title: str
    disk: str
    problem: str  # the first one's wording
    paths: list[str]


def grouped(findings: Sequence[Finding]) -> list[Group]:
    """Findings grouped per title, disk and kind of problem, in the order first found."""
    groups: dict[tuple[str, str, bool, str], list[Finding]] = {}
    for f in findings:
        kind = re.sub(r"\d+", "N", f.problem)  # "size 3 != 9" and "size 5 != 7" are one kind
        groups.setdefault((f.title, f.disk, f.damage, kind), []).append(f)
    return [
        Group(title, disk, group[0].problem, [f.path for f in group if f.path])
        for (title, disk, _damage, _kind), group in groups.items()
    ]


def summary_line(group: Group) -> str:
    """One line for a person (the CLI's stderr): where, what, and how many files."""
    # A finding about a disk names it in its problem.
    text = f"{group.title}: {group.problem}" if group.title else group.problem
    if len(group.paths) > 1:
        text += f" ({len(group.paths)} files: {named(group.paths)})"
    elif group.paths:
        text = f"{group.title}/{group.paths[0]}: {group.problem}"
    return text


def log_findings(findings: Sequence[Finding]) -> None:
    """One warning per title, disk and kind of problem, with its count and first few paths:
    the log says what happened once, however many files it happened to."""
    for group in grouped(findings):
        fields: dict[str, object] = {"title": group.title} if group.title else {}
        if group.disk:
            fields["disk"] = group.disk
        if group.paths:
            fields["files"] = len(group.paths)
            fields["paths"] = named(group.paths)
        event(log, "storage.findings", logging.WARNING, problem=group.problem, **fields)
