"""The ``robustsig`` command line: one Typer app; each subcommand lives in its own module with a
``register(app)`` function, and defers heavy imports (torch models, open_clip) to when it runs."""

from __future__ import annotations

import importlib
import sys

import typer

from robustsig.errors import RobustsigError, os_error_message

app = typer.Typer(
    name="robustsig",
    help="Is an image model robust to natural distribution shift? Look inside it "
         "(effective robustness, outlier features, privileged directions, concepts, CKA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Subcommand modules, in the order `robustsig --help` lists them.
COMMAND_MODULES: list[str] = [
    "robustsig.cli.demo",
    "robustsig.cli.study",
    "robustsig.cli.extract",
    "robustsig.cli.analyze",
    "robustsig.cli.er",
    "robustsig.cli.predict_er",
    "robustsig.cli.cka",
    "robustsig.cli.report",
    "robustsig.cli.train",
    "robustsig.cli.wiseft",
    "robustsig.cli.lowrank",
]

for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; errors caused by bad input print one line naming it and exit with 2; an error of
    the system (a full disk, a file where a folder should be) prints one line naming the path and exits with 1."""
    try:
        app(args=argv, prog_name="robustsig")
    except RobustsigError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except OSError as error:
        typer.echo(f"error: {os_error_message(error)}", err=True)
        sys.exit(1)
