"""The ``factory`` command line: thin Typer wrappers over importable functions, one module per kind of command
(:mod:`~factory.cli.building`: build, pretrain, validate, imagenet-weights; :mod:`~factory.cli.models`: info,
predict, bench, publish; :mod:`~factory.cli.students`), all on one app (:mod:`~factory.cli.common`)."""

from __future__ import annotations

import typer

from factory import __version__
from factory.cli import building, models, students  # noqa: F401 - each registers its commands on the app
from factory.cli.building import check_gate, check_licences
from factory.cli.common import app

CHANGES_NO_RESULT = True

__all__ = ["app", "check_gate", "check_licences", "main"]


@app.command()
def version() -> None:
    """Print the factory version."""
    typer.echo(__version__)


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C: finished stages cached, training resumable


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    app()
