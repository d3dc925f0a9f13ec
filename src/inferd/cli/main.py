"""The `inferd` command line: a thin shell over the daemon and the public client.

Like upstream's inferdctl (upstream ADR 0014) the client-side commands use only
`inferd.client`; `serve`/`reload` and `pull`/`import` come from their own modules.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from inferd import __version__

from . import admin_cmds, doctor, gen_cmds, model_cmds
from . import serve, models, service
from .common import EXIT_ERROR, describe

app = typer.Typer(
    name="inferd",
    help="Local LLM inference daemon: one warm GGUF model for every app of one user.",
    no_args_is_help=True,
    add_completion=False,
    # Our own `error: ...` line is the contract; tracebacks are for developers.
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"inferd {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Local LLM inference daemon: one warm GGUF model for every app of one user."""


serve.register(app)
models.register(app)
admin_cmds.register(app)
model_cmds.register(app)
gen_cmds.register(app)
doctor.register(app)
service.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - anything a command did not handle
        print(f"error: {describe(exc)}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
