"""Shared rich console and progress bars (stderr, so stdout stays clean for tables and JSON)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from factory import distributed as dist

CHANGES_NO_RESULT = True  # no stage result depends on this module (factory.identity)

console = Console(stderr=True)


def progress_bar(transient: bool = False, disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )


def log(message: str) -> None:
    """Print a status line (main process only under a multi-process launch)."""
    if dist.is_main():
        console.print(message, highlight=False)
