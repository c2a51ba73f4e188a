"""Terminal output shared by every CLI: tables and colour on a terminal, plain text in a pipe,
JSON on request, progress bars only when someone is watching.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from edgeflix.errors import OutputError
from edgeflix.text import shown_bytes

if TYPE_CHECKING:  # imported where used: a command in a pipe never pays for them
    from types import ModuleType

    from _typeshed import ReadableBuffer
    from rich.console import Console
    from rich.progress import Progress


@functools.cache
def console(stderr: bool = False) -> Console:
    """rich's console for stdout (or stderr), made on first use: loading rich costs a short
    command (an ingest whose ffmpeg is already running) tens of milliseconds."""
    from rich.console import Console

    return Console(stderr=stderr)


def interactive() -> bool:
    """True when a person is watching stdout (tables and colours make sense)."""
    return sys.stdout.isatty() and console().is_terminal


def bars_shown() -> bool:
    """True when a person is watching stderr, where progress bars draw: never on stdout,
    so `--json` output stays clean on a terminal too (`ssh -t host edgeflix ... --json`)."""
    return sys.stderr.isatty() and console(stderr=True).is_terminal


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
    """A rich table on a terminal (one record per block when the table is wider than the
    terminal); tab-separated lines with a header in a pipe. Cells, headers and the title
    are text, never markup: a cell quoting `[storage]` (or `:smile:`) shows as written."""
    if not interactive():
        sys.stdout.write("\t".join(columns) + "\n")
        for row in rows:
            sys.stdout.write("\t".join(str(c) for c in row) + "\n")
        return
    from rich.table import Table
    from rich.text import Text

    out = console()
    table = Table(title=Text(title, style="table.title") if title else None)
    for column in columns:
        table.add_column(Text(column))
    for row in rows:
        table.add_row(*(Text(str(c)) for c in row))
    natural = out.measure(table, options=out.options.update_width(100_000)).maximum
    if natural <= out.width:
        out.print(table)
        return
    # Too wide: folded cells would split the URL, path or digest a user copies out of the
    # table, and '…' would hide it. One block per record instead, each value on its line.
    if title:
        out.print(Text(title, style="italic"))
    width = max(len(c) for c in columns)
    for i, row in enumerate(rows):
        if i:
            out.print()
        for column, cell in zip(columns, row, strict=True):
            out.print(
                Text.assemble((column.rjust(width), "bold"), "  ", str(cell)),
                highlight=False,
                soft_wrap=True,
            )


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit: the CLI's only way to report a user-facing error. With
    JSON logs (EDGEFLIX_LOG_JSON=1) the line is a `cli.error` event, so a reader parsing each
    line as JSON also reads why the command ended."""
    from edgeflix.log import fatal_event

    if fatal_event(message, code):
        raise SystemExit(code)
    from rich.markup import escape

    # Escaped: a message quoting `[storage]` or a path with brackets is text, not markup.
    console(stderr=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
    raise SystemExit(code)


@contextmanager
def progress(transfer: bool = False) -> Iterator[Progress]:
    """A rich Progress that draws on stderr when it is a terminal (disabled, but still
    usable, otherwise)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    # A narrow terminal keeps the bar on one line: bytes and rate go first, then the ETA.
    width = console(stderr=True).width
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
    if transfer and width >= 80:
        columns += [DownloadColumn(), TransferSpeedColumn()]
    if width >= 50:
        columns.append(TimeRemainingColumn())
    shown = bars_shown()
    # Log lines written while the bars draw go above them, not through them: rich swaps
    # sys.stderr for a proxy, which the log handler looks up per line (edgeflix/log.py).
    with Progress(
        *columns,
        console=console(stderr=True),
        disable=not shown,
        transient=False,
        redirect_stderr=shown,
        redirect_stdout=False,
    ) as bar:
        yield bar


# -- the command line's edges: closed streams, help, usage errors, Ctrl-C ---------------------


def standard_streams() -> None:
    """A command started with stdin, stdout or stderr closed (`edgeflix … >&-`, a careless
    service manager) gets /dev/null there: Python leaves sys.stdout None, which every
    print and isatty would trip over, and the next file or socket opened would take the
    free descriptor, where a child's output (ffmpeg's) would land. What it writes is
    dropped; the command still does its work (a daemon or an ingest hardly needs stdout)."""
    for fd, name, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY),
                            (2, "stderr", os.O_WRONLY)):  # fmt: skip
        if getattr(sys, name) is not None:
            continue
        null = os.open(os.devnull, flags)
        try:
            os.fstat(fd)
        except OSError:  # still closed: fill the gap itself (the usual case)
            os.dup2(null, fd)
            os.close(null)
            null = fd
        mode = "r" if fd == 0 else "w"
        # A standard descriptor is never closed by its stream (Python's own are made so).
        stream = open(null, mode, encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                      closefd=null != fd)  # fmt: skip
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    _whole_writes_to_stdout()


class _Stdout(io.FileIO):
    """Descriptor 1 under sys.stdout: each write is written whole, or raises.

    Python's unbuffered stdout (PYTHONUNBUFFERED, as containers and services often set)
    makes one write(2) per write and drops what a short one left: a pipe whose reader left
    mid-way, a signal. `--json | head -1` then exited 0 with the listing cut at 64 KiB,
    where the table, written line by line, got EPIPE and the SIGPIPE exit. Any other
    failure (a full disk) becomes an OutputError, told in one line at the CLI's edge; the
    rest of the output then goes nowhere, so the interpreter's last flush stays quiet."""

    failed = False

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view) and not self.failed:
            try:
                written: int | None = super().write(view[done:])
            except BrokenPipeError:
                raise
            except OSError as exc:
                self.failed = True
                raise OutputError(f"cannot write output: {exc.strerror or exc}") from None
            if written is None:  # a non-blocking descriptor, full for now
                import select

                select.select([], [self], [])
            elif written == 0:  # no progress, and none to come
                self.failed = True
                raise OutputError("cannot write output: nothing was written")
            else:
                done += written
        return len(view)


def _whole_writes_to_stdout() -> None:
    """sys.stdout again, with the same encoding and buffering, over a _Stdout."""
    old = sys.stdout
    if not isinstance(old, io.TextIOWrapper) or isinstance(_raw(old), _Stdout):
        return
    try:
        if old.fileno() != 1:
            return
        old.flush()
    except (OSError, ValueError):  # not a descriptor, or already failing: left as it is
        return
    raw = _Stdout(1, "w", closefd=False)
    raw.name = "<stdout>"
    buffered = not isinstance(old.buffer, io.RawIOBase)
    stream = io.TextIOWrapper(
        io.BufferedWriter(raw) if buffered else raw,
        encoding=old.encoding,
        errors=old.errors,
        newline="\n",  # as Python's own on POSIX: no translation
        line_buffering=old.line_buffering,
        write_through=old.write_through,
    )
    if sys.__stdout__ is old:
        setattr(sys, "__stdout__", stream)  # noqa: B010 - typeshed has it Final
    sys.stdout = stream


def _raw(stream: io.TextIOWrapper) -> object:
    buffer = stream.buffer
    return getattr(buffer, "raw", buffer)


def stdout_reader_gone() -> bool:
    """True when stdout is a pipe (or socket) nobody reads any more: `edgeflix … | head -1`
    once head has its line. Asked of the descriptor, not guessed from an EPIPE, which a
    socket or stderr could have raised as well."""
    import select

    try:
        poll = select.poll()
        poll.register(1, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no fd 1, or no poll on this system
        return False


def stdout_gone() -> NoReturn:
    """End the command as `cat` or `ls` end when their reader has gone: killed by SIGPIPE,
    without a word (closing the pipe was the reader's choice, not a mistake). The shell
    reports 128 + 13 = 141, so `set -o pipefail` judges `edgeflix … | head -1` as it would
    `cat … | head -1`, and systemd counts a SIGPIPE death as a clean exit. An exit status
    of 1 (click's choice) would read as a failure of the command itself."""
    import signal

    try:
        sys.stderr.flush()
        # Whatever is still buffered for stdout goes nowhere: no "Exception ignored" line.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    raise SystemExit(128 + signal.SIGPIPE)  # not reached where SIGPIPE stops a process


def require_text(command: Any) -> None:
    """Every text parameter of `command` and its sub-commands must be text. Python hands
    argv bytes that are not UTF-8 over as lone surrogates, which pass every check and then
    fail as a traceback where they are encoded: a URL, a JSON body, a header, a log line.
    Refused here, once for every command, as a usage error naming the option. Paths are
    left alone: a file name is bytes, and may be any."""
    click = click_exceptions()
    for sub in getattr(command, "commands", {}).values():
        require_text(sub)
    invoke = command.invoke

    def checked(ctx: Any) -> Any:
        for param in ctx.command.params:
            value = ctx.params.get(param.name)
            for text in value if isinstance(value, list | tuple) else (value,):
                if isinstance(text, str) and not _is_text(text):
                    shown = shown_bytes(text)
                    raise click.BadParameter(f"{shown} is not UTF-8 text", ctx=ctx, param=param)
        return invoke(ctx)

    command.invoke = checked


def tidy_help(command: Any) -> None:
    """typer 0.29's help writes `--json <bool>` on a terminal (as if a flag took a value),
    `{src}` for a required argument and `--title <list[str]>` for a repeatable option. Say
    `--json`, `SRC` and `--title <str>` instead, as click does, for every command and
    sub-command of `command`, through click's own metavar and usage pieces."""
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
    for param in command.params:
        _tidy_param(param)
    help_option = command.get_help_option  # made on first use, for the context asking

    def tidied_help_option(ctx: Any) -> Any:
        option = help_option(ctx)
        if option is not None:
            _tidy_param(option)
        return option

    command.get_help_option = tidied_help_option


def _tidy_param(param: Any) -> None:
    if param.param_type_name == "argument":
        param.metavar = param.metavar or param.name.upper()
        piece = param.metavar if param.required else f"[{param.metavar}]"
        piece += "..." if param.nargs != 1 else ""
        param.get_usage_pieces = lambda ctx: [piece]
    elif getattr(param, "is_flag", False) or getattr(param, "count", False):
        param.metavar = ""  # the type column of a flag stays empty
    elif getattr(param, "multiple", False) and param.metavar is None:
        try:
            shown = str(param.display_type(None))  # typer 0.2x: '<list[str]>'
        except (AttributeError, TypeError, ValueError):  # another typer: its own words
            return
        listed = re.fullmatch(r"<list\[(.+)\]>", shown)
        if listed:
            param.metavar = f"<{listed[1]}>"


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- help, usage errors, Ctrl-C -------------------------------------------------------------


def plain_help_unless_terminal() -> None:
    """typer draws help and usage errors in rich panels; in a pipe (or a file) they must be
    plain text, so turn its rich formatting off for this process when nobody is watching."""
    if not interactive():
        import typer.core

        typer.core.HAS_RICH = False  # read per call by typer's help and error formatting


def click_exceptions() -> ModuleType:
    """The click exceptions typer raises: its own copy of click since typer 0.2x, click itself
    before."""
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def usage_error(exc: Any) -> NoReturn:
    """A mistake on the command line (unknown option, bad value, missing argument): one line
    naming the command's --help, exit 2. `edgeflix fleet` alone prints its help instead."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        # Rich help has printed itself while the error was made; plain help is the message.
        if not interactive():
            sys.stdout.write(exc.format_message() + "\n")
        raise SystemExit(2)
    # (typer passes pydantic's "Value error, " prefix through for Enum choices)
    message = " ".join(exc.format_message().replace("Value error, ", "").split())
    if exc.ctx is not None:
        message += f" (see '{exc.ctx.command_path} --help')"
    fail(message, 2)


def interrupted(message: str = "interrupted") -> NoReturn:
    """Ctrl-C: one line and the shell's 128 + SIGINT, whatever was running."""
    logging.disable(logging.CRITICAL)  # threads still winding down must not add lines
    fail(message, 130)
