"""The umbrella `edgeflix` command: mounts each component's own CLI as a sub-command.

Errors of the `EdgeflixError` family become one line on stderr and a non-zero exit here,
at the edge, so no user ever sees a traceback for a mistake they can fix.
"""

from __future__ import annotations

import sys

import typer

from edgeflix import __version__
from edgeflix.errors import EdgeflixError
from edgeflix.log import setup_logging

app = typer.Typer(
    name="edgeflix",
    help="Self-hostable video delivery: origin, edge appliances, fleet, services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _mount() -> None:
    # Imported here so `edgeflix --version` stays fast and one broken component
    # cannot hide the others' help.
    from appliance.cli import app as appliance_app
    from origin.cli import app as origin_app

    app.add_typer(origin_app, name="origin", help="Encode, package, publish and serve titles.")
    app.add_typer(appliance_app, name="appliance", help="Edge appliance: store, serve, fill.")

    from fleet.cli import app as fleet_app

    app.add_typer(fleet_app, name="fleet", help="Fleet manager: registry, steering, fill plans.")

    from edgeflix.demo import demo

    app.command("demo", help="Run the product on this machine from the sample clip.")(demo)


@app.callback(invoke_without_command=True)
def root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    _mount()
    try:
        app(args=argv, prog_name="edgeflix", standalone_mode=True)
    except EdgeflixError as exc:
        from edgeflix.ui import fail

        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
