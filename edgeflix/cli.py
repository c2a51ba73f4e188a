"""The umbrella `edgeflix` command: mounts each component's own CLI as a sub-command.

Errors of the `EdgeflixError` family become one line on stderr and a non-zero exit here,
at the edge, so no user ever sees a traceback for a mistake they can fix; with JSON logs
(EDGEFLIX_LOG_JSON=1) that line is a JSON event too, `cli.error` (edgeflix/ui.py `fail`).
"""

from __future__ import annotations

import sys  # built in, loaded with the interpreter: importing it runs no code

try:  # Ctrl-C while the libraries load (a tenth of a second here, more on a Pi): one line
    import gc
    import importlib
    import signal
    from typing import TYPE_CHECKING

    if TYPE_CHECKING:
        from collections.abc import Callable
        from typing import Any

    def _resend_interrupts(hook: Callable[[Any], None]) -> Callable[[Any], None]:
        """A Ctrl-C that lands where Python cannot raise it (a weakref callback of the
        import machinery, a __del__) is printed as "Exception ignored" with a traceback,
        then dropped, and the command goes on. Send it again instead, from another thread
        10 ms later, so that it arrives once this hook has returned (sent from here, it
        lands in the hook)."""

        def on_unraisable(unraisable: Any) -> None:
            exc_type = unraisable.exc_type
            if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
                import _thread
                import threading

                resend = threading.Timer(0.01, _thread.interrupt_main)
                resend.daemon = True
                resend.start()
                return
            hook(unraisable)

        return on_unraisable

    sys.unraisablehook = _resend_interrupts(sys.unraisablehook)

    import typer

    from edgeflix import __version__
    from edgeflix.errors import EdgeflixError, OutputError
    from edgeflix.log import setup_logging
except KeyboardInterrupt:
    sys.stderr.write("error: interrupted\n")
    raise SystemExit(130) from None

app = typer.Typer(
    name="edgeflix",
    help="Self-hostable video delivery: origin, edge appliances, fleet.",  # what is mounted below
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


# name → (module, attribute, help). Only the component a command names is imported, so
# `edgeflix appliance …` does not pay for the origin's video libraries (seconds on a Pi).
COMPONENTS: dict[str, tuple[str, str, str]] = {
    "origin": ("origin.cli", "app", "Encode, package, publish and serve titles."),
    "appliance": ("appliance.cli", "app", "Edge appliance: store, serve, fill."),
    "fleet": ("fleet.cli", "app", "Fleet manager: registry, steering, fill plans."),
    "demo": ("edgeflix.demo", "demo", "Run the product on this machine from the sample clip."),
}


def wanted_components(argv: list[str]) -> list[str]:
    """The components to mount for `argv`: the one it names, or all (for help and errors)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return [first] if first in COMPONENTS else list(COMPONENTS)


def _mount(names: list[str]) -> None:
    for name in names:
        module_name, attribute, help_text = COMPONENTS[name]
        target = getattr(importlib.import_module(module_name), attribute)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name, help=help_text)
        else:
            app.command(name, help=help_text)(target)


@app.callback(invoke_without_command=True)
def root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


def main(argv: list[str] | None = None) -> None:
    try:
        _main_or_output_error(argv)
    except KeyboardInterrupt:  # before the command ran (its imports, ui's too) or reporting
        from edgeflix import ui  # imported again if the Ctrl-C cut its first import short

        ui.interrupted()
    except (SystemExit, BrokenPipeError) as exc:
        # Done, or stopped by a write to a pipe whose reader has gone (click turns that into
        # exit 1, our own writes raise): the latter ends quietly, as `cat` would. A command
        # that succeeded and got its output out exits 0, whoever reads it now.
        failed = isinstance(exc, BrokenPipeError) or exc.code not in (None, 0)
        try:
            _unless_stdout_gone(failed)
        except KeyboardInterrupt:
            from edgeflix import ui

            ui.interrupted()
        raise
    finally:
        # The command is over and has said so: a Ctrl-C now would land in the interpreter's
        # teardown (joining threads, exit hooks) as "Exception ignored" and a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _unless_stdout_gone(failed: bool) -> None:
    from edgeflix import ui

    try:  # what a table left buffered is written now, not in the interpreter's teardown
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        ui.stdout_gone()
    except OutputError as exc:  # a full disk: the command's output is not all there
        ui.fail(str(exc), exc.exit_code)
    if failed and ui.stdout_reader_gone():
        ui.stdout_gone()


def _main_or_output_error(argv: list[str] | None) -> None:
    """_main, where stdout failing (a full disk) is one line, also when it fails while help
    or a usage error is being told (inside _main's own handlers)."""
    try:
        _main(argv)
    except OutputError as exc:
        from edgeflix import ui

        ui.fail(str(exc), exc.exit_code)


def _main(argv: list[str] | None) -> None:
    from edgeflix import ui

    ui.standard_streams()
    try:  # a bad EDGEFLIX_LOG_LEVEL or EDGEFLIX_LOG_JSON: one line, exit 2, as a bad config
        setup_logging()
    except EdgeflixError as exc:
        ui.fail(str(exc), exc.exit_code)
    _mount(wanted_components(sys.argv[1:] if argv is None else argv))
    ui.plain_help_unless_terminal()
    click = ui.click_exceptions()
    command = typer.main.get_command(app)  # what app() runs, with its arguments checked
    ui.require_text(command)
    ui.tidy_help(command)
    try:
        # Not standalone: usage errors and Ctrl-C come back here, to be told the house way
        # (one line, exit 2 or 130) instead of typer's panels or a silent exit.
        code = command.main(args=argv, prog_name="edgeflix", standalone_mode=False)
    except click.UsageError as exc:
        ui.usage_error(exc)
    except click.ClickException as exc:
        ui.fail(exc.format_message(), exc.exit_code)
    except typer.Abort:  # Ctrl-C or end of input at a prompt
        ui.interrupted()
    except EdgeflixError as exc:
        ui.fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        ui.interrupted()
    finally:
        # The interpreter's collections at exit would walk every object still alive (tens of
        # ms for typer's and pydantic's schemas, ~0.1 s after an ingest): nothing left needs
        # them, and the standard streams are flushed regardless.
        gc.freeze()
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130, silently
        ui.interrupted()
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
