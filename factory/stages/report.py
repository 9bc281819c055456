"""The build report: report.json (machine-readable), report.md and an accuracy-vs-latency plot."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from factory import __version__
from factory.cache import StageOutput, write_atomic, write_json
from factory.context import BuildContext
from factory.profiles import get_profile


@dataclass
class Measured:
    """One benchmarked model for the report."""

    name: str
    role: str
    bench: StageOutput
    params: int
    precision: str = "fp32"


def result_entry(m: Measured) -> dict:
    info = m.bench.info
    lat = info["latency_ms"]
    return {
        "name": m.name, "role": m.role, "precision": m.precision, "file": info["file"],
        "accuracy": info["accuracy"], "test_images": info["test_images"],
        "latency_ms": {k: lat[k] for k in ("p50", "p90", "p99", "mean", "std")},
        "latency_ms_batch": {"batch_size": info["latency_ms_batch"]["batch_size"],
                             "p50": info["latency_ms_batch"]["p50"]},
        "size_mb": info["size_mb"], "params": m.params, "threads": info["threads"], "provider": info["provider"],
        "peak_memory_mb": lat.get("peak_rss_mb"),
        "eager_latency_ms": ({k: info["eager_latency_ms"][k] for k in ("p50", "p90", "p99")}
                             if "eager_latency_ms" in info else None),
    }


def choose_shipped(fp32: dict, quantized: dict | None, accepted: bool) -> tuple[dict, str]:
    """Ship the precision that measures fastest within the accuracy limit."""
    if quantized is None:
        return fp32, "no quantized model was produced (export.quantize: none)"
    q = quantized["precision"].upper()
    if not accepted:
        return fp32, f"{q} lost more accuracy than export.max_accuracy_drop; shipping FP32"
    if quantized["latency_ms"]["p50"] < fp32["latency_ms"]["p50"]:
        return quantized, (f"{q} is {fp32['latency_ms']['p50'] / quantized['latency_ms']['p50']:.2f}x faster than "
                           f"FP32 at p50 within the accuracy limit")
    return fp32, (f"{q} measured slower than FP32 ({quantized['latency_ms']['p50']:.2f} vs "
                  f"{fp32['latency_ms']['p50']:.2f} ms p50); shipping FP32")


def budget_checks(ctx: BuildContext, shipped: dict, macs: int) -> dict:
    b = ctx.recipe.budget
    checks = []

    def check(name: str, limit, value, ok: bool, unit: str = "") -> None:
        checks.append({"name": name, "limit": limit, "value": value, "unit": unit, "met": ok})

    if b.latency_ms is not None:
        check("latency_ms (p50, batch 1)", b.latency_ms, shipped["latency_ms"]["p50"],
              shipped["latency_ms"]["p50"] <= b.latency_ms, "ms")
    if b.max_size_mb is not None:
        check("max_size_mb", b.max_size_mb, shipped["size_mb"], shipped["size_mb"] <= b.max_size_mb, "MB")
    if b.max_params is not None:
        check("max_params", b.max_params, shipped["params"], shipped["params"] <= b.max_params)
    if b.max_macs is not None:
        check("max_macs", b.max_macs, macs, macs <= b.max_macs)
    if b.min_accuracy is not None:
        check("min_accuracy", b.min_accuracy, shipped["accuracy"], shipped["accuracy"] >= b.min_accuracy)
    profile = get_profile(b.profile)
    return {"met": all(c["met"] for c in checks), "model": shipped["name"], "profile": profile.name,
            "profile_description": profile.description, "measured_on": platform.machine(),
            "host_matches_profile": profile.matches_host(), "checks": checks}


def compute_table(stages: list[StageOutput]) -> list[dict]:
    return [{"stage": s.stage, "wall_s": s.wall_s, "flops": s.flops, "cached": s.cached} for s in stages]


def write_report(ctx: BuildContext, out_dir: Path, results: list[dict], shipped: dict, why: str, budget: dict,
                 stages: list[StageOutput], method_compute: dict, extra: dict, notes: list[str]) -> dict:
    r = ctx.recipe
    report = {
        "name": r.name, "recipe_hash": r.fingerprint(), "factory_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(ctx.device),
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine()},
        "data": {"root": str(ctx.data.root), "classes": ctx.data.classes, "train": len(ctx.data.train),
                 "val": len(ctx.data.val), "test": len(ctx.data.test), "synthetic": len(ctx.data.synthetic)},
        "results": results,
        "shipped": {"name": shipped["name"], "file": shipped["file"], "why": why},
        "budget": budget,
        "compute": {"stages": compute_table(stages), "methods": method_compute},
        **extra,
        "notes": notes,
        "recipe": r.model_dump(mode="json"),
    }
    write_json(out_dir / "report.json", report)
    plot_accuracy_latency(results, budget, ctx, out_dir / "accuracy_latency.png")
    plot_training_curves(extra.get("training_curves", {}), out_dir / "training_curves.png")
    write_atomic(out_dir / "report.md", render_markdown(report))
    write_atomic(out_dir / "report.html", render_html(report, out_dir))
    return report


def plot_accuracy_latency(results: list[dict], budget: dict, ctx: BuildContext, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for res in results:
        ax.scatter(res["latency_ms"]["p50"], res["accuracy"] * 100, s=40)
        ax.annotate(res["name"], (res["latency_ms"]["p50"], res["accuracy"] * 100), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    b = ctx.recipe.budget
    if b.latency_ms is not None:
        ax.axvline(b.latency_ms, color="tab:red", linestyle="--", linewidth=1, label=f"latency budget {b.latency_ms:g} ms")
    if b.min_accuracy is not None:
        ax.axhline(b.min_accuracy * 100, color="tab:green", linestyle="--", linewidth=1,
                   label=f"accuracy floor {b.min_accuracy * 100:g}%")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency, batch 1, {results[0]['threads']} threads (ms, log scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{ctx.recipe.name}: accuracy vs latency")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_training_curves(curves: dict[str, list[dict]], path: Path) -> None:
    """Training cross-entropy (and validation accuracy when recorded) per epoch for every trained model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_val = any("val_accuracy" in h for hist in curves.values() for h in hist)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(9 if has_val else 5.5, 3.6), dpi=120, squeeze=False)
    for name, hist in curves.items():
        epochs = [h["epoch"] for h in hist]
        axes[0][0].plot(epochs, [h.get("ce", h["loss"]) for h in hist], label=name)
        if has_val and any("val_accuracy" in h for h in hist):
            axes[0][1].plot(epochs, [h.get("val_accuracy", float("nan")) * 100 for h in hist], label=name)
    axes[0][0].set(xlabel="epoch", ylabel="train cross-entropy", title="training loss")
    axes[0][0].set_yscale("log")
    if has_val:
        axes[0][1].set(xlabel="epoch", ylabel="val accuracy (%)", title="validation accuracy")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def _fmt_flops(flops: float) -> str:
    return "n/a" if not flops else f"{flops / 1e12:.2f} TFLOP" if flops >= 1e11 else f"{flops / 1e9:.2f} GFLOP"


def render_html(report: dict, folder: Path) -> str:
    """A self-contained HTML page (plots embedded) of the markdown report."""
    import base64
    import html

    body = []
    in_table = False
    for line in render_markdown(report).splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") + "<tr>" +
                        "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            name = line[line.index("(") + 1:-1]
            data = base64.b64encode((folder / name).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            text = html.escape(line).replace("**", "")
            body.append(f"<p>{text}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report['name'])} report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def render_markdown(report: dict) -> str:
    lines = [f"# {report['name']}", "",
             f"factory {report['factory_version']}, recipe {report['recipe_hash']}, built {report['created']} "
             f"on {report['host']['machine']} ({report['device']}).", "",
             f"Data: {report['data']['root']}: {len(report['data']['classes'])} classes, "
             f"{report['data']['train']} train / {report['data']['val']} val / {report['data']['test']} test images"
             + (f", {report['data']['synthetic']} synthetic" if report['data']['synthetic'] else "") + ".", "",
             "## Results", "",
             "| model | precision | test accuracy | p50 ms | p90 ms | p99 ms | batch p50 ms | eager p50 ms | peak MB | size MB | params |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lat, eager = r["latency_ms"], r.get("eager_latency_ms")
        eager_p50 = f"{eager['p50']:.2f}" if eager else "-"
        lines.append(f"| {r['name']} | {r['precision']} | {r['accuracy'] * 100:.1f}% | {lat['p50']:.2f} | "
                     f"{lat['p90']:.2f} | {lat['p99']:.2f} | {r['latency_ms_batch']['p50']:.2f} | "
                     f"{eager_p50} | "
                     f"{r['peak_memory_mb'] or 0:.0f} | {r['size_mb']:.2f} | {r['params'] / 1e6:.2f}M |")
    first = report["results"][0]
    parity = report.get("export", {}).get("parity")
    lines += ["", f"Latency: onnxruntime {first['provider']}, {first['threads']} threads, batch 1 (batch column: "
              f"batch {first['latency_ms_batch']['batch_size']}); eager: PyTorch on the same threads; peak: resident "
              "memory of the benchmark process.", ""]
    if parity:
        lines += [f"Parity (ONNX FP32 vs PyTorch, {parity['images']} test images): max |logit diff| "
                  f"{parity['max_abs_diff']:.2e}, top-1 agreement {parity['top1_agreement'] * 100:.1f}%.", ""]
    quant = report.get("export", {}).get("quantization")
    if quant:
        tried = "; ".join(f"{a['calibration'] or quant['method']}"
                          + (f" with {len(a['float_nodes'])} layers in float" if a["float_nodes"] else "")
                          + f": drop {a['drop'] * 100:+.1f} points" for a in quant["attempts"])
        lines += [f"Quantization ({quant['method']}, accuracy checked on {quant['split']}): {tried}.", ""]
    lines += ["![accuracy vs latency](accuracy_latency.png)", "", "![training curves](training_curves.png)", "",
              f"**Shipped:** `{report['shipped']['file']}` ({report['shipped']['name']}): {report['shipped']['why']}.", "",
              "## Budget", "",
              f"Profile `{report['budget']['profile']}`: {report['budget']['profile_description']}. "
              f"Verdict: **{'met' if report['budget']['met'] else 'NOT met'}** for {report['budget']['model']}.", ""]
    if not report["budget"]["host_matches_profile"]:
        lines += [f"Latency was measured on this {report['budget']['measured_on']} host, not on the profile's device; "
                  "treat it as a proxy and rerun the benchmark on the device.", ""]
    if report["budget"]["checks"]:
        lines += ["| check | limit | value | met |", "|---|---|---|---|"]
        for c in report["budget"]["checks"]:
            value = f"{c['value']:.4g}" if isinstance(c["value"], float) else f"{c['value']}"
            lines.append(f"| {c['name']} | {c['limit']}{c['unit'] and ' ' + c['unit']} | {value} | {'yes' if c['met'] else 'no'} |")
    else:
        lines.append("The recipe sets no budget limits.")
    lines += ["", "## Compute", "", "| stage | wall time s | FLOPs | cached this run |", "|---|---|---|---|"]
    for s in report["compute"]["stages"]:
        lines.append(f"| {s['stage']} | {s['wall_s']:.1f} | {_fmt_flops(s['flops'])} | {'yes' if s['cached'] else 'no'} |")
    lines += ["", "| method | this build: wall time s | this build: FLOPs | pre-training FLOPs | total FLOPs | includes |",
              "|---|---|---|---|---|---|"]
    for name, m in report["compute"]["methods"].items():
        pretrain = "unknown" if m["pretrain_flops"] is None else _fmt_flops(m["pretrain_flops"])
        lines.append(f"| {name} | {m['build_wall_s']:.1f} | {_fmt_flops(m['build_flops'])} | {pretrain} | "
                     f"{_fmt_flops(m['flops'])} | {m['includes']} |")
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"
