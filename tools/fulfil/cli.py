"""``fulfil``: the project's command-line tool for operators (topics, stock, traces, dead letters, replay).

Every command has ``--help``; failures exit non-zero with a one-line reason. Each command group is a module of its
own with its own Typer app; this root only registers them, in the order ``fulfil --help`` lists them.

To list the commands the root imports every module, so a module imports at its top only what the help needs
(typer, rich, the common options in ``term``); the libraries a command works with (Kafka, the store, HTTP, the
settings) are imported inside the command, each import saying what it would cost every start-up at the top.
"""

from __future__ import annotations

import typer

from tools.fulfil import (
    backup,
    bench,
    chaos,
    dlq,
    forget,
    history,
    keys,
    kpi,
    orders,
    reconcile,
    replay,
    stock,
    topics,
    trace,
    verify,
)

app = typer.Typer(help="Operate the fulfilment platform.", no_args_is_help=True, pretty_exceptions_enable=False)

# Commands first, then the groups: the order `fulfil --help` has always listed them in.
for module in (
    reconcile,
    trace,
    replay,
    orders,
    bench,
    kpi,
    forget,
    verify,
    chaos,
    backup,
    history,
    topics,
    stock,
    dlq,
    keys,
):
    app.add_typer(module.app)

if __name__ == "__main__":
    app()
