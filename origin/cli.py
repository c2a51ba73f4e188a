"""`edgeflix origin …`: the origin's command line (I/O shell over the origin's cores).

`ingest` packages and publishes a title, `ls` lists the store; `serve` lives in server.py.
Each command imports what it uses when it runs: an ingest starts ffmpeg before it loads rich.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer

from origin.errors import IngestCancelled

if TYPE_CHECKING:  # rich.progress is imported only when a terminal shows the bars
    from rich.progress import Progress, TaskID

    from edgeflix.titlefiles import TitleFiles

app = typer.Typer(no_args_is_help=True)


class BarReporter:
    """One rich bar per rendition; all renditions advance together (one ffmpeg, one decode)."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: list[TaskID] = []

    def stage(self, name: str, total: float, labels: Sequence[str]) -> None:
        for task in self.tasks:
            self.bar.update(task, completed=self.bar.tasks[task].total)
        self.tasks = [
            self.bar.add_task(f"{name} {label}" if len(labels) > 1 else name, total=total)
            for label in labels
        ]

    def update(self, done: float) -> None:
        for task in self.tasks:
            self.bar.update(task, completed=done)


class Bars:
    """Bars on a terminal (stderr), nothing otherwise. Decided (and rich loaded) at the first stage:
    by then the encode's ffmpeg runs, so that import overlaps it instead of delaying it."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._bars: BarReporter | None = None
        self._decided = False

    def stage(self, name: str, total: float, labels: Sequence[str]) -> None:
        if not self._decided:
            self._decided = True
            from edgeflix import ui

            if ui.bars_shown():
                self._bars = BarReporter(self._stack.enter_context(ui.progress()))
        if self._bars is not None:
            self._bars.stage(name, total, labels)

    def update(self, done: float) -> None:
        if self._bars is not None:
            self._bars.update(done)


class _Cancel:
    """SIGINT/SIGTERM during an ingest cancel it, until it publishes. A signal that lands
    while the title is made live waits for the end of that step; once the title is live,
    only the summary is left and the command finishes. (Python runs handlers in the main
    thread between bytecodes, whichever thread the kernel picked: a flag, not a signal
    mask, is what holds here.)"""

    def __init__(self) -> None:
        self.published = False
        self._publishing = False
        self._deferred: int | None = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.published:
            return
        if self._publishing:
            self._deferred = signum
            return
        self._cancel(signum)

    @staticmethod
    def _cancel(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise IngestCancelled("ingest stopped by SIGTERM; nothing was published")

    @contextmanager
    def publishing(self) -> Iterator[None]:
        self._publishing = True
        try:
            yield
        finally:
            self._publishing = False
        self.published = True  # only when the step returned: the title is live


@contextmanager
def _cancellable() -> Iterator[_Cancel]:
    cancel = _Cancel()
    previous = {s: signal.signal(s, cancel.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield cancel
    except KeyboardInterrupt:
        raise IngestCancelled("ingest interrupted; nothing was published") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Ladder(StrEnum):
    """--ladder's choices (typer lists them in --help and refuses others as a usage error)."""

    default = "default"
    auto = "auto"


def _parse_ints(text: str | None, option: str) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        # A usage error like any other bad option value: exit 2, pointing at --help.
        raise typer.BadParameter(
            "takes comma-separated heights, e.g. 720,360", param_hint=option
        ) from None


def summary(model: TitleFiles, digest: str, path: Path | None = None) -> dict[str, Any]:
    return {
        "id": model.id,
        "title": model.title,
        "duration": model.duration,
        "segment_seconds": model.segment_seconds,
        "renditions": [r.model_dump(mode="json") for r in model.renditions],
        "total_bytes": model.total_bytes,
        "files": len(model.files),
        "digest": digest,
        **({"path": str(path)} if path else {}),
    }


@app.command("ingest")
def ingest_cmd(
    src: Path = typer.Argument(..., help="Source video file."),
    title_id: str = typer.Option(..., "--id", help="Title id: letters, digits, '.', '_', '-'."),
    title: str = typer.Option(..., "--title", help="Human-readable title."),
    store: Path = typer.Option(Path("var/origin"), "--store", help="Origin store folder."),
    ladder: Ladder = typer.Option(
        Ladder.default, "--ladder", help="default (fixed rungs) or auto (per title, from VMAF)."
    ),
    segment_seconds: float = typer.Option(4.0, "--segment-seconds", help="Segment length."),
    codecs: str = typer.Option("h264", "--codecs", help="Comma-separated: h264,hevc,av1."),
    heights: str | None = typer.Option(None, "--heights", help="Only these rungs, e.g. 720,360."),
    replace: bool = typer.Option(False, "--replace", help="Replace an existing title."),
    config_file: Path | None = typer.Option(None, "--config", help="Origin TOML config."),
    as_json: bool = typer.Option(False, "--json", help="Print the title summary as JSON."),
) -> None:
    """Encode SRC into an ABR ladder, package CMAF + HLS + DASH, publish atomically."""
    from origin import config
    from origin.ingest import IngestRequest, ingest

    cfg = config.load(config_file)
    req = IngestRequest(
        source=src,
        title_id=title_id,
        title=title,
        store=store,
        ladder="auto" if ladder is Ladder.auto else "default",
        segment_seconds=segment_seconds,
        codecs=tuple(c.strip() for c in codecs.split(",") if c.strip()),
        heights=_parse_ints(heights, "--heights"),
        replace=replace,
        replaced_keep_s=cfg.publish.replaced_keep_s,
    )
    with _cancellable() as cancel, ExitStack() as stack:
        model, digest = ingest(req, cfg.encode, Bars(stack), publishing=cancel.publishing)
    from edgeflix import ui

    path = store / "titles" / model.id
    if as_json:
        ui.print_json(summary(model, digest, path))
        return
    rows = [
        (r.id, f"{r.width}x{r.height}" if r.width else "-", r.codecs,
         f"{r.average_bandwidth / 1000:.0f}", f"{r.vmaf:.1f}" if r.vmaf is not None else "-")
        for r in model.renditions
    ]  # fmt: skip
    ui.print_table(["rendition", "size", "codecs", "kbit/s", "vmaf"], rows, title=str(path))


@app.command("ls")
def ls_cmd(
    store: Path = typer.Option(Path("var/origin"), "--store", help="Origin store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List the published titles of a store."""
    from edgeflix import ui
    from origin.store import list_titles

    titles = list_titles(store)
    if not store.exists():  # a typo, or nothing ingested yet: say so, the listing is empty
        ui.warn(f"store {store} does not exist (nothing ingested into it yet)")
    if as_json:
        ui.print_json(
            [
                {
                    "id": t.id,
                    "title": t.title,
                    "duration": t.duration,
                    "renditions": list(t.renditions),
                    "total_bytes": t.total_bytes,
                    "digest": t.digest,
                }
                for t in titles
            ]
        )
        return
    rows = [
        (t.id, t.title, f"{t.duration:.1f}", len(t.renditions), t.total_bytes, t.digest[:16])
        for t in titles
    ]
    ui.print_table(["id", "title", "seconds", "renditions", "bytes", "digest"], rows)


@app.command("rm")
def rm_cmd(
    title_id: str = typer.Option(..., "--id", help="Id of the title to remove."),
    store: Path = typer.Option(Path("var/origin"), "--store", help="Origin store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Remove a published title (and the segments kept for its earlier versions' players).
    The fleet then steers no player to it and plans it nowhere, so appliances drop it too
    (a store left empty stops steering to every title, but plans keep what appliances hold:
    an origin pointed at a wrong store does not wipe the fleet)."""
    from edgeflix import ui
    from origin.store import remove_title

    freed = remove_title(store, title_id)
    if as_json:
        ui.print_json({"id": title_id, "removed": True, "bytes": freed})
        return
    typer.echo(f"removed {title_id} ({freed} bytes)")


@app.command("serve")
def serve_cmd(
    store: Path = typer.Option(Path("var/origin"), "--store", help="Origin store folder."),
    listen: str = typer.Option("127.0.0.1:8080", "--listen", help="HOST:PORT (port 0: any)."),
    sendfile: bool = typer.Option(
        True, "--sendfile/--no-sendfile", help="Zero-copy bodies (off: copy via user space)."
    ),
    header_timeout: float = typer.Option(
        10.0, "--header-timeout", min=0.1, help="Seconds a client has to send its request head."
    ),
) -> None:
    """Serve STORE/titles over HTTP (Range, ETag) and list titles at GET /titles."""
    from edgeflix.configtypes import parse_hostport
    from edgeflix.http.server import ServerSettings
    from origin.server import serve

    host, port = parse_hostport(listen)
    settings = ServerSettings(header_timeout_s=header_timeout, use_sendfile=sendfile)
    if not store.exists():  # a typo in --store would otherwise serve an empty catalogue
        from edgeflix import ui

        ui.warn(f"store {store} does not exist yet: serving no titles until one is ingested")
    serve(store, host, port, settings)
