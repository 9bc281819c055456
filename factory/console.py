"""Shared rich console and progress bars (stderr, so stdout stays clean for tables and JSON)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from factory import distributed as dist

CHANGES_NO_RESULT = True

console = Console(stderr=True)
if not console.is_terminal:  # a log file: tables as wide as they need (rich would cut them to 80 columns)
    console.width = max(console.width, 200)


class _LogProgress(Progress):
    """A progress bar for a log: nothing live; when the block ends, one line per task it tracked."""

    def stop(self) -> None:
        super().stop()
        for task in self.tasks:
            total = f"/{task.total:g}" if task.total is not None else ""
            console.print(f"{task.description} {task.completed:g}{total} ({task.elapsed or 0:.0f}s)", highlight=False)


def progress_bar(transient: bool = False, disable: bool = False) -> Progress:
    """A progress bar on stderr; when stderr is not a terminal (a log file, CI), no live bar and no blank lines:
    a bar that stays (training) becomes one line when it ends, a transient one prints nothing."""
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    if console.is_terminal:
        return Progress(*columns, console=console, transient=transient, disable=disable)
    return (Progress if transient or disable else _LogProgress)(*columns, console=console, disable=True)


def log(message: str) -> None:
    """Print a status line (main process only under a multi-process launch)."""
    if dist.is_main():
        console.print(message, highlight=False, soft_wrap=True)  # one line per message, in a log too
