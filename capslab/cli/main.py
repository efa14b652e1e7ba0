"""The ``capslab`` command line (Typer + rich).

One module per command; each defines ``register(app)``. To add a command, write
``capslab/cli/<name>.py`` with a ``register`` function and add the module to ``COMMANDS``.
"""

from __future__ import annotations

import sys

import typer

from capslab.cli import compare, eval, figures, inspect_cmd, plugins_cmd, train, validate
from capslab.cli.common import DEBUG_ENV, USER_ERRORS, debug, one_line_warnings, report

COMMANDS = (train, eval, validate, compare, plugins_cmd, inspect_cmd, figures)

app = typer.Typer(
    name="capslab",
    help="Capsule-network routing experiments: train and evaluate recipes, list plugins, inspect checkpoints. "
    f"Errors print one line; set {DEBUG_ENV}=1 for the traceback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for _command in COMMANDS:
    _command.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    one_line_warnings()
    try:
        app(args=argv, prog_name="capslab")
    except USER_ERRORS as exc:  # raised outside a command (e.g. a plugin that fails to import)
        if debug():
            raise
        report(exc)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
