"""``factory info``, ``predict``, ``bench`` and ``publish``: the commands that read, run, measure and upload exported
models (no torch)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from factory.cli.common import DebugOpt, app, run
from factory.console import console
from factory.errors import FactoryError

CHANGES_NO_RESULT = True


@app.command()
def info(
    model: Annotated[Path, typer.Argument(help="an .onnx file written by factory build")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    debug: DebugOpt = False,
) -> None:
    """Describe an exported model: classes, preprocessing, inputs, outputs, precision, size, provenance (no torch)."""
    import json

    from factory.runtime import ExportedModel

    described = run(lambda: ExportedModel.open(model).info(), debug)
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

    exported = run(lambda: ExportedModel.open(model, threads, size, triple(mean, "--mean"), triple(std, "--std")),
                    debug)
    files = run(lambda: image_files(path), debug)
    truths = dict(zip(map(str, files), run(lambda: folder_labels(path, files, exported.classes), debug)))
    skipped: list[str] = []
    per_class: dict[str, list[int]] = {}
    for p in run(lambda: list(exported.predict(files, top, skipped=skipped)), debug):
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

    opened = [run(lambda m=m: ExportedModel.open(m, threads, provider=provider), debug) for m in models]
    settings = LatencySettings(rounds, warmup, runs, min_time, threads, provider, batch, noise_band)
    labelled: dict[Path, list[tuple[Path, str]]] = {}
    if data is not None:  # the folder checked against every model's labels before anything is measured
        found = run(lambda: image_files(data), debug)
        for model, exported in zip(models, opened):
            truth = run(lambda e=exported: folder_labels(data, found, e.classes, need_labels=True), debug)
            labelled[model] = [(f, t) for f, t in zip(found, truth) if t is not None]
    measured = run(lambda: measure([(str(m), e.size) for m, e in zip(models, opened)], settings), debug)
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
                f"{rounds} rounds, {latency.runs} runs), peak {latency.memory.peak_rss_mb:.0f} MB")
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

    files = run(lambda: publish_to_hub(export_dir, repo, private, dry_run), debug)
    verb = "would upload" if dry_run else "uploaded"
    console.print(f"{verb} to {repo}: {', '.join(files)}", highlight=False, soft_wrap=True)
