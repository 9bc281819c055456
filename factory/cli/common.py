"""What every ``factory`` command shares: the Typer app, the common options, and one way to turn an error into
one line and an exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from factory.console import console
from factory.errors import FactoryError

CHANGES_NO_RESULT = True

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn a recipe into small, fast, deployable image classifiers.")

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file, e.g. recipes/flowers12_cpu.yaml")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a recipe field: --set distill.epochs=5 (repeatable)")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show the full traceback on errors")]


ForceOpt = Annotated[bool, typer.Option("--force", help="recompute, ignoring the cache and any partial work")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or auto")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="stage cache (default $FACTORY_CACHE or .factory-cache)")]


def fail(err: Exception, debug: bool) -> None:
    """Print ``err`` as one line (the traceback too with ``debug``) and exit with its code."""
    if debug:
        console.print_exception()
    console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(getattr(err, "exit_code", 1))


def needs_build_extra() -> None:
    """One line, instead of an ImportError, when a command that builds runs on the light install."""
    import importlib.util

    missing = sorted(m for m in ("torch", "timm", "onnx", "pydantic", "yaml") if importlib.util.find_spec(m) is None)
    if missing:
        raise FactoryError(f"this command needs the build extra ({', '.join(missing)} not installed): "
                           f"pip install 'factory[build]' (in a checkout: pip install -e '.[build]')")


def run(action, debug: bool):
    """Run ``action()``; errors become one line and an exit code, Ctrl-C says how to resume."""
    try:
        return action()
    except FactoryError as err:
        fail(err, debug)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished stages are cached and a training stage resumes from its "
                      "last epoch; run the same command again to continue")
        raise typer.Exit(130)
    except Exception as err:  # a full disk, a bug or an environment problem: still one line, traceback on --debug
        from factory.files import disk_full_message
        from factory.errors import OutputError

        if message := disk_full_message(err):
            fail(OutputError(message), debug)
        fail(RuntimeError(f"unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback; "
                           f"finished stages are cached)"), debug)
