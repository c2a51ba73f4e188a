"""Terminal output shared by every CLI: tables and colour on a terminal, plain text in a pipe,
JSON on request, progress bars only when someone is watching.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: a command in a pipe never pays for them
    from rich.console import Console
    from rich.progress import Progress


@functools.cache
def console(stderr: bool = False) -> Console:
    """rich's console for stdout (or stderr), made on first use: loading rich costs a short
    command (an ingest whose ffmpeg is already running) tens of milliseconds."""
    from rich.console import Console

    return Console(stderr=stderr)


def interactive() -> bool:
    """True when a person is watching stdout (progress bars and colours make sense)."""
    return sys.stdout.isatty() and console().is_terminal


def warn(message: str) -> None:
    """A warning line on stderr that does not stop the command."""
    console(stderr=True).print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def print_json(value: Any) -> None:
    """Machine output: compact-enough, stable key order, always to stdout."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
) -> None:
    """A rich table on a terminal; tab-separated lines with a header in a pipe."""
    if interactive():
        from rich.table import Table

        table = Table(*columns, title=title)
        for row in rows:
            table.add_row(*(str(c) for c in row))
        console().print(table)
        return
    sys.stdout.write("\t".join(columns) + "\n")
    for row in rows:
        sys.stdout.write("\t".join(str(c) for c in row) + "\n")


def fail(message: str, code: int = 1) -> None:
    """One line on stderr, then exit: the CLI's only way to report a user-facing error."""
    from rich.markup import escape

    # Escaped: a message quoting `[storage]` or a path with brackets is text, not markup.
    console(stderr=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
    raise SystemExit(code)


@contextmanager
def progress(transfer: bool = False) -> Iterator[Progress]:
    """A rich Progress that draws only on a terminal (disabled, but still usable, in a pipe)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
    if transfer:
        columns += [DownloadColumn(), TransferSpeedColumn()]
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=console(), disable=not interactive(), transient=False) as bar:
        yield bar
