"""The build report, written from one typed :class:`~factory.pipeline.BuildOutcome`: report.json
(machine-readable), report.md, a self-contained report.html, and the accuracy-vs-latency and
training-curve plots; and the publication of ``exports/<name>/`` (atomically, as a folder swap)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from factory import __version__
from factory.cache import (
    Done,
    exclusive,
    library_versions,
    replace_dir,
    write_atomic,
    write_json,
)
from factory.host import host_info
from factory.latency import Latency
from factory.stages.augment import MANIFEST
from factory.stages.export import stamp_metadata
from factory.stages.select import listing_summary
from factory.stages.ship import Shipped, budget_checks

if TYPE_CHECKING:
    from factory.pipeline import BuildOutcome

STAGE_NAMES = {"augment": "augmentation", "augment_filter": "teacher filter", "teacher": "teacher adaptation", "teacher_cache": "teacher cache",
               "distill": "distillation", "baseline_scratch": "training from scratch", "baseline_finetune": "finetuning"}


def publish(outcome: BuildOutcome, out_dir: Path) -> dict:
    """Write exports/<name>/ into a temporary folder, then swap it in, so a failure leaves the last good one.

    Published: the shipped model (:mod:`factory.stages.ship`; the distilled student unless a comparison beat it)
    in FP32 (``student.onnx``) and at its accepted quantized precision (``student.<label>.onnx``), stamped with
    the recipe hash, teacher, method and factory version; never a quantized file that was rejected. The other
    models stay in the stage cache. Two builds publishing to one folder take turns."""
    with exclusive(out_dir.with_name(f".{out_dir.name}.lock"), f"publishing {out_dir}"):
        return _publish(outcome, out_dir)


def _publish(outcome: BuildOutcome, out_dir: Path) -> dict:
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    student = outcome.shipped.model
    teacher = outcome.model("teacher").trained.result
    stamp = {"recipe_hash": outcome.recipe.fingerprint(), "factory_version": __version__,
             "teacher": f"{teacher.weights}, adapted by {teacher.adapt}", "method": student.name}
    published = {"model.onnx": "student.onnx"}
    quant = student.export.result.quantization
    if quant is not None and quant.file is not None:
        published[quant.file] = f"student.{quant.label}.onnx"
    for source, target in published.items():
        stamp_metadata(student.export.file(source), tmp / target, stamp)
    write_json(tmp / "labels.json", outcome.data.classes)
    manifest = _stage(outcome, "augment_filter") or _stage(outcome, "augment")
    if manifest is not None:
        shutil.copyfile(manifest.file(MANIFEST), tmp / SYNTHETIC_MANIFEST)
    report = write_report(outcome, tmp, published)
    replace_dir(tmp, out_dir)
    return report


SYNTHETIC_MANIFEST = "synthetic_manifest.jsonl"
REPORTED_LIBRARIES = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "numpy", "pillow", "diffusers",
                      "transformers", "datasets", "pydantic")


def git_revision() -> dict | None:
    """The factory checkout's commit and whether it had uncommitted changes (None outside a git checkout)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def _stage(outcome: BuildOutcome, name: str) -> Done | None:
    return next((output for _, output in outcome.stages if output.stage == name), None)


def augmentation(outcome: BuildOutcome) -> dict | None:
    """The synthetic images: how made, and per class the real images, those generated, kept and dropped."""
    made, verdicts = _stage(outcome, "augment"), _stage(outcome, "augment_filter")
    if made is None:
        return None
    a, data = outcome.recipe.augment, outcome.data
    real, used = data.per_class(data.train), data.per_class(data.synthetic)
    per_class = {name: {"real": real[i], "generated": made.result.per_class[i], "used": used[i],
                        "dropped": verdicts.result.per_class[name][1] if verdicts else 0}
                 for i, name in enumerate(data.classes)}
    return {"mode": made.result.mode, "pipeline": made.result.pipeline, "pipeline_revision": made.result.pipeline_revision,
            "generated": made.result.images, "used": len(data.synthetic), "flagged_nsfw": made.result.flagged_nsfw,
            "filter": {"min_confidence": a.filter.min_confidence, "kept": verdicts.result.kept,
                       "dropped": verdicts.result.dropped} if verdicts else None,
            "for_baselines": a.for_baselines, "per_class": per_class, "manifest": SYNTHETIC_MANIFEST}


def _augmentation_markdown(aug: dict | None) -> list[str]:
    if aug is None:
        return []
    f = aug["filter"]
    lines = ["", "## Synthetic data", "",
             f"{aug['generated']} images generated ({aug['mode']}, {aug['pipeline']}, {aug['pipeline_revision']}); "
             + (f"the teacher, adapted on the real images, kept {f['kept']} and dropped {f['dropped']} (top-1 not the "
                f"image's class, or class probability under {f['min_confidence']:g}); " if f else "no teacher filter; ")
             + f"{aug['used']} used in distillation, the teacher cache and calibration"
             + ("; the baselines trained on them too (augment.for_baselines)." if aug["for_baselines"] else
                "; the baselines trained on the real images only (augment.for_baselines: false).")
             + f" Every image's prompt, seed, settings and verdict: {aug['manifest']}.", "",
             "| class | real | generated | dropped | used |", "|---|---|---|---|---|"]
    for name, c in aug["per_class"].items():
        lines.append(f"| {name} | {c['real']} | {c['generated']} | {c['dropped']} | {c['used']} |")
    return lines


def _latency(lat: Latency) -> dict:
    return {"p50": lat.p50, "low": lat.low, "high": lat.high, "p90": lat.p90, "p99": lat.p99, "mean": lat.mean,
            "std": lat.std, "rounds_p50": lat.rounds_p50, "runs": lat.runs}


def result_rows(outcome: BuildOutcome, published: dict[str, str]) -> list[dict]:
    """One row per model and precision measured; ``ships`` marks the precision each model would ship at;
    ``vs_student`` is the row's latency over the shipped model's, round by round (measured together)."""
    shipped = outcome.shipped.model
    student = shipped.ships
    rows = []
    for m in outcome.models:
        for b in (m.fp32, m.quantized):
            if b is None:
                continue
            speed = outcome.bench.ratio(student, b)
            rows.append({
                "name": m.name if b.precision == "fp32" else f"{m.name}-{b.precision}", "method": m.name,
                "role": m.role, "precision": b.precision, "ships": b is m.ships,
                "file": published.get(b.file) if m is shipped else None,
                "val_accuracy": float(m.val_correct(b.file).mean()),
                "accuracy": b.accuracy, "test_images": b.test_images,
                "latency_ms": _latency(b.latency),
                "latency_ms_batch": {"batch_size": b.latency_batch.batch_size, "p50": b.latency_batch.p50},
                "vs_student": {"median": speed.median, "low": speed.low, "high": speed.high},
                "size_mb": b.size_mb, "params": m.trained.result.params, "threads": b.latency.threads,
                "provider": b.latency.provider, "peak_memory_mb": b.latency.peak_rss_mb,
                "eager_latency_ms": {k: getattr(b.eager, k) for k in ("p50", "low", "high")} if b.eager else None,
            })
    return rows


def budget_report(outcome: BuildOutcome, shipped: dict) -> dict:
    """Each budget limit checked on the shipped model (accuracy on test: measured, not decided). The budget's
    verdict is the worst of its checks (``failed`` names the checks not met, ``inconclusive`` the ones that
    could not be told)."""
    b = outcome.recipe.budget
    checks = budget_checks(b, outcome.shipped.model, shipped["accuracy"])
    failed = [c["name"] for c in checks if c["verdict"] == "not met"]
    inconclusive = [c["name"] for c in checks if c["verdict"] == "inconclusive"]
    profile = b.device()
    stands_in, why = profile.stand_in()
    return {"verdict": "not met" if failed else "inconclusive" if inconclusive else "met",
            "met": not failed and not inconclusive, "failed": failed, "inconclusive": inconclusive,
            "model": shipped["name"], "profile": profile.name, "profile_description": profile.description,
            "measured_on": host_info()["machine"], "host_matches_profile": stands_in, "stand_in": why,
            "checks": checks}


def documented_pretraining(weights: str | None, stated_flops: float | None) -> tuple[float | None, float | None]:
    """(FLOPs, wall s) of the pre-training behind ``weights``: ``stated_flops`` (the recipe's
    ``*.pretrain_flops``) or the ``pretrain_report.json`` of a factory checkpoint folder; zero without
    weights; FLOPs None when weights are named but their cost is unknown."""
    if weights is None:
        return 0.0, 0.0
    report_file = Path(weights) / "pretrain_report.json"
    if stated_flops is None and report_file.is_file():
        documented = json.loads(report_file.read_text())
        return documented.get("flops"), documented.get("wall_s")
    return stated_flops, None


def _sum(parts: list[Done | None]) -> dict:
    parts = [p for p in parts if p is not None]
    return {"wall_s": sum(p.wall_s for p in parts), "flops": sum(p.flops for p in parts),
            "includes": " + ".join(dict.fromkeys(STAGE_NAMES.get(p.stage, p.stage) for p in parts))}


def _with_pretraining(method: dict, pretraining: tuple[float | None, float | None], whose: str, field: str) -> dict:
    """A method's compute with its pre-training added: ``flops`` becomes the total, this build's own cost stays
    in ``build_flops``/``build_wall_s``; ``field`` is the recipe field that states an unknown cost."""
    pretrain_flops, pretrain_wall_s = pretraining
    total = {**method, "build_flops": method["flops"], "build_wall_s": method["wall_s"],
             "pretrain_flops": pretrain_flops, "pretrain_wall_s": pretrain_wall_s}
    if pretrain_flops:
        total["flops"] += pretrain_flops
        total["includes"] += f" + the {whose}'s pre-training"
    elif pretrain_flops is None:
        total["includes"] += f" (the {whose}'s pre-training cost is unknown: set {field})"
    return total


def _add(a: tuple[float | None, float | None], b: tuple[float | None, float | None]) -> tuple[float | None, float | None]:
    return tuple(None if x is None or y is None else x + y for x, y in zip(a, b))


def method_compute(outcome: BuildOutcome) -> dict:
    """Training compute per method, each including the documented pre-training behind its starting weights."""
    r = outcome.recipe
    by_stage = {output.stage: output for _, output in outcome.stages}
    teacher_pretraining = documented_pretraining(r.teacher.weights, r.teacher.pretrain_flops)
    search = outcome.search.runs if outcome.search else []
    teacher_side = [by_stage.get("augment"), by_stage.get("augment_filter"), by_stage["teacher"],
                    by_stage.get("teacher_cache")]
    methods = {"distilled": _with_pretraining(_sum([*teacher_side, *search, outcome.model("distilled").trained]),
                                              teacher_pretraining, "teacher", "teacher.pretrain_flops")}
    if search:
        methods["distilled"]["includes"] += f" (with the student search's {len(search)} distillations)"
    if (pretrained := outcome.model("distilled-pretrained")) is not None:
        methods["distilled-pretrained"] = _with_pretraining(
            _sum([*teacher_side, pretrained.trained]),
            _add(teacher_pretraining, documented_pretraining(r.baseline.weights, r.baseline.pretrain_flops)),
            "teacher's and the student", "teacher.pretrain_flops and baseline.pretrain_flops")
    # baselines given the synthetic images pay for making them (and for the teacher that filtered them)
    synthetic = [by_stage.get("augment"), by_stage.get("augment_filter"),
                 by_stage["teacher"] if "augment_filter" in by_stage else None] \
        if r.augment.enabled and r.augment.for_baselines else []
    if "baseline_scratch" in by_stage:
        methods["scratch"] = _with_pretraining(_sum([*synthetic, by_stage["baseline_scratch"]]), (0.0, 0.0), "student", "")
    if "baseline_finetune" in by_stage:
        methods["pretrained-finetuned"] = _with_pretraining(
            _sum([*synthetic, by_stage["baseline_finetune"]]),
            documented_pretraining(r.baseline.weights, r.baseline.pretrain_flops),
            "student", "baseline.pretrain_flops")
    methods["teacher"] = _with_pretraining(_sum([by_stage["teacher"]]), teacher_pretraining, "teacher",
                                           "teacher.pretrain_flops")
    return methods


def _compare_compute(methods: dict, notes: list[str]) -> None:
    distilled, baseline = methods.get("distilled"), methods.get("pretrained-finetuned")
    if not (distilled and baseline and distilled["flops"]):
        return
    if distilled["pretrain_flops"] is not None and baseline["pretrain_flops"] is not None:
        ratio = baseline["flops"] / distilled["flops"]
        notes.append(f"compute with pre-training included: distilled {distilled['flops']:.3g} FLOPs, pretrain-then-"
                     f"finetune baseline {baseline['flops']:.3g} (baseline / distilled = {ratio:.3g})")
    ratio = baseline["build_flops"] / distilled["build_flops"]
    notes.append(f"compute in this build only (pre-trained weights taken as given): distilled "
                 f"{distilled['build_flops']:.3g} FLOPs, baseline {baseline['build_flops']:.3g} "
                 f"(baseline / distilled = {ratio:.3g})")


def comparison(outcome: BuildOutcome) -> dict:
    """How the methods were made comparable, checked from what each training run recorded."""
    students = [m for m in outcome.models if m.role in ("student", "baseline")]
    digests = {m.name: m.trained.result.views_seen for m in students}
    same_views = len(set(digests.values())) == 1
    d = outcome.recipe.distill
    views = f"{d.teacher_views} seeded views per image, one chosen per epoch" if d.teacher_views else \
        "a fresh seeded view per epoch"
    precisions = ", ".join(f"{m.name} {m.ships.precision}" for m in outcome.models)
    a = outcome.recipe.augment
    real_only = a.enabled and not a.for_baselines and len(students) > 1
    line = (f"Comparison: {' and '.join(digests)} trained on "
            + (f"the same images and views in the same order ({views}, {d.epochs} epochs; data digest "
               f"{next(iter(digests.values()))}), differing only in loss and initialisation"
               if same_views else
               f"the same seeded views of the real images ({views}, {d.epochs} epochs), the distilled student also on "
               f"{len(outcome.data.synthetic)} synthetic images (augment.for_baselines: false; data digests "
               + ", ".join(f"{k} {v}" for k, v in digests.items()) + ")" if real_only else
               "DIFFERENT data (" + ", ".join(f"{k} {v}" for k, v in digests.items()) + ")")
            + f"; every model was exported and quantized the same way and is compared at the precision it would "
              f"ship ({precisions}).")
    return {"same_views": same_views, "baselines_real_only": real_only, "views_seen": digests, "line": line}


def write_report(outcome: BuildOutcome, out_dir: Path, published: dict[str, str]) -> dict:
    r = outcome.recipe
    rows = result_rows(outcome, published)
    student = outcome.shipped.model
    shipped = next(row for row in rows if row["method"] == student.name and row["ships"])
    budget = budget_report(outcome, shipped)
    notes = list(outcome.notes)
    quant = student.export.result.quantization
    if quant is not None and not quant.accepted:
        notes.append(f"{quant.label} rejected: {quant.reason}")
    wanted = r.budget.device().execution_provider
    if shipped["provider"] != wanted:
        notes.append(f"latency measured with {shipped['provider']}: this onnxruntime build has no {wanted} for the "
                     f"{r.budget.device().name} profile (install onnxruntime-gpu on the device)")
    methods = method_compute(outcome)
    _compare_compute(methods, notes)
    teacher = outcome.model("teacher").trained.result
    report = {
        "name": r.name, "recipe_hash": r.fingerprint(), "factory_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": outcome.device,
        "host": host_info(),
        "libraries": library_versions(REPORTED_LIBRARIES), "git": git_revision(),
        "data": {"source": outcome.data.source, "root": str(outcome.data.root), "classes": outcome.data.classes,
                 "train": len(outcome.data.train), "skipped": [list(item) for item in outcome.data.skipped],
                 "val": len(outcome.data.val), "test": len(outcome.data.test),
                 "synthetic": len(outcome.data.synthetic), "decisions_on": outcome.data.check_split()[0]},
        "augmentation": augmentation(outcome),
        "results": rows,
        "shipped": shipped_summary(outcome.shipped, shipped),
        "budget": budget,
        "latency": {"rounds": len(student.ships.latency.rounds_p50), "noise_band": outcome.bench.noise_band,
                    "session_options": outcome.bench.session_options, "load": _plain(outcome.bench.load),
                    "warning": outcome.bench.warning()},
        "comparison": comparison(outcome),
        "compute": {"stages": [{"stage": label, "kind": out.stage, "key": out.key, "wall_s": out.wall_s,
                                "flops": out.flops, "cached": out.cached}
                               for label, out in outcome.stages], "methods": methods},
        "student": {"model": outcome.student.model, "params": outcome.student.params, "macs": outcome.student.macs,
                    "image_size": outcome.student.image_size,
                    "chosen_by": "search on the task (student.model: auto)" if outcome.search else "the recipe"},
        "selection": selection_summary(outcome),
        "teacher": {"model": teacher.model, "weights": teacher.weights, "adapt": teacher.adapt,
                    "test_accuracy": teacher.test_accuracy, "params": teacher.params},
        "export": {"parity": student.export.result.parity,
                   "preprocess": student.export.result.preprocess.metadata(),
                   "quantization": _plain(quant)},
        "training_curves": {m.name: m.trained.result.history for m in outcome.models},
        "notes": notes,
        "recipe": r.model_dump(mode="json"),
    }
    write_json(out_dir / "report.json", report)
    plot_accuracy_latency(rows, r, out_dir / "accuracy_latency.png")
    plot_training_curves(report["training_curves"], out_dir / "training_curves.png")
    if report["selection"]:
        plot_students(report["selection"], r.budget.latency_ms, out_dir / "students.png")
    write_atomic(out_dir / "report.md", render_markdown(report))
    write_atomic(out_dir / "report.html", render_html(report, out_dir))
    return report


def shipped_summary(shipped: Shipped, row: dict) -> dict:
    """Which model ships and why: the rule, its margin over the runner-up on validation, every option."""
    m = shipped.margin
    return {"name": row["name"], "method": shipped.model.name, "file": row["file"], "rule": shipped.rule,
            "decision": shipped.why, "why": shipped.model.why, "runner_up": shipped.runner_up,
            "margin": None if m is None else {"value": m.value, "low": m.low, "high": m.high,
                                              "confidence": m.confidence, "images": m.n},
            "options": [_plain(o) for o in shipped.options]}


def selection_summary(outcome: BuildOutcome) -> dict | None:
    """The measured candidates and, when the build searched, each contender's scores per rung."""
    if outcome.selection is None:
        return None
    summary = listing_summary(outcome.selection, outcome.search.winner if outcome.search else None)
    if outcome.search is not None:
        s = outcome.search
        summary["search"] = {"winner": s.winner, "rule": s.rule, "rung_epochs": s.rung_epochs, "eta": s.eta,
                             "finalists": s.finalists, "wall_s": s.wall_s, "flops": s.flops,
                             "epochs_spent": s.epochs_spent, "regime_prior": s.regime_source,
                             "winner_distill_wall_s": outcome.model("distilled").trained.wall_s,
                             "contenders": [_plain(c) for c in s.contenders]}
    return summary


def _plain(value):
    import dataclasses

    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def plot_accuracy_latency(rows: list[dict], recipe, path: Path) -> None:
    """Test accuracy against p50 latency with its band: each model at the precision it would ship (filled),
    other precisions hollow and joined to it, with the budget's lines."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    colors = {}
    for row in rows:
        color = colors.setdefault(row["method"], f"C{len(colors)}")
        lat, y = row["latency_ms"], row["accuracy"] * 100
        x = lat["p50"]
        ax.errorbar(x, y, xerr=[[x - lat["low"]], [lat["high"] - x]], color=color, linewidth=0.8, alpha=0.6,
                    capsize=2, zorder=2)
        ax.scatter(x, y, s=46 if row["ships"] else 30, color=color if row["ships"] else "none", edgecolors=color,
                   zorder=3)
        if row["ships"]:
            ax.annotate(f"{row['method']} ({row['precision']})", (x, y), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
    for method in colors:
        own = [row for row in rows if row["method"] == method]
        if len(own) > 1:
            ax.plot([o["latency_ms"]["p50"] for o in own], [o["accuracy"] * 100 for o in own], color=colors[method],
                    linewidth=0.8, alpha=0.5)
    b = recipe.budget
    if b.latency_ms is not None:
        ax.axvline(b.latency_ms, color="tab:red", linestyle="--", linewidth=1, label=f"latency budget {b.latency_ms:g} ms")
    if b.min_accuracy is not None:
        ax.axhline(b.min_accuracy * 100, color="tab:green", linestyle="--", linewidth=1,
                   label=f"accuracy floor {b.min_accuracy * 100:g}%")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel(f"p50 latency, batch 1, {rows[0]['threads']} threads (ms, log scale); filled: shipped precision")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{recipe.name}: accuracy vs latency")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_students(selection: dict, latency_limit: float | None, path: Path) -> None:
    """Prior ImageNet top-1 against measured p50 latency (with its band) of every candidate student: the Pareto
    front joined, the choice ringed, misses hollow, the budget's latency line."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in selection["candidates"] if r["latency_ms"] and r["prior_top1"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=120)
    for r in rows:
        lat, y = r["latency_ms"], r["prior_top1"]
        color = "tab:blue" if r["fits"] else "tab:gray"
        ax.errorbar(lat["p50"], y, xerr=[[lat["p50"] - lat["low"]], [lat["high"] - lat["p50"]]], color=color,
                    linewidth=0.7, alpha=0.5, capsize=2)
        ax.scatter(lat["p50"], y, s=28, color=color if r["fits"] else "none", edgecolors=color, zorder=3)
        ax.annotate(r["architecture"], (lat["p50"], y), textcoords="offset points", xytext=(4, 3), fontsize=6.5)
        if r["chosen"]:
            ax.scatter(lat["p50"], y, s=160, facecolors="none", edgecolors="tab:green", linewidths=1.6, zorder=4,
                       label=f"choice: {r['architecture']}")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["latency_ms"]["p50"])
    if front:
        ax.plot([r["latency_ms"]["p50"] for r in front], [r["prior_top1"] for r in front], color="tab:orange",
                linewidth=1, label="Pareto front")
    if latency_limit is not None:
        ax.axvline(latency_limit, color="tab:red", linestyle="--", linewidth=1, label=f"latency budget {latency_limit:g} ms")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    proxy = "" if selection["host_stands_in"] else " (proxy host)"
    ax.set_xlabel(f"p50 latency{proxy}, batch 1, {selection['threads']} threads (ms, log); filled: fits every limit")
    ax.set_ylabel("ImageNet top-1 of default weights (%)")
    ax.set_title(f"candidate students for {selection['profile']}")
    ax.legend(fontsize=7, loc="lower right")
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


def _selection_markdown(selection: dict | None) -> list[str]:
    if not selection:
        return []
    lines = ["", "## Student selection", "",
             f"`student.model: auto`: every candidate was exported and quantized as it would ship for "
             f"`{selection['profile']}` ({selection['threads']} threads) and measured in {selection['rounds']} "
             "interleaved rounds" + ("" if selection["host_stands_in"] else f"; this host cannot stand in for the "
                                     f"profile ({selection['stand_in']}), so latencies not measured on the device are "
                                     "proxies") + f". Regime prior: {selection['regime_prior']}. ImageNet priors: "
             f"{selection['priors_source']}; * marks the Pareto front.", ""]
    lines += _search_markdown(selection.get("search"))
    lines += ["| candidate | ImageNet top-1 | params M | MMACs | size MB | p50 ms (band) | latency from | fits | admitted |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in selection["candidates"]:
        lat = r["latency_ms"]
        prior = "unknown" if r["prior_top1"] is None else f"{r['prior_top1']:.1f}%"
        size = "-" if r["size_mb"] is None else f"{r['size_mb']:.2f}"
        latency = "-" if lat is None else f"{lat['p50']:.2f} ({lat['low']:.2f}-{lat['high']:.2f})"
        fits = "yes" if r["fits"] else r["error"] or "; ".join(r["misses"])
        lines.append(f"| {r['architecture']}{' (chosen)' if r['chosen'] else ''}{' *' if r['pareto'] else ''} | "
                     f"{prior} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e6:.1f} | {size} | {latency} | "
                     f"{r['latency_source']} | {fits} | {'yes' if r['admitted'] else ''} |")
    return lines + ["", "![candidate students](students.png)"]


def _search_markdown(search: dict | None) -> list[str]:
    """The search's rule, decision, cost and every contender's validation figures per rung."""
    if not search:
        return []
    ratio = search["wall_s"] / search["winner_distill_wall_s"] if search["winner_distill_wall_s"] else float("nan")
    lines = [f"Chose **{search['winner']}**: {search['rule']}. Decision: {search['finalists']}. Cost: "
             f"{search['epochs_spent']:.2f} full distillations in epochs, {search['wall_s']:.0f} s wall "
             f"({ratio:.2f}x the winner's own distillation, {search['winner_distill_wall_s']:.0f} s; its full run is "
             "the build's distillation).", "",
             "| contender | family | regime prior | " + " | ".join(f"{e} ep: NLL / val acc" for e in
                                                              search["rung_epochs"]) + " | left after |",
             "|---|---|---|" + "---|" * len(search["rung_epochs"]) + "---|"]
    for c in search["contenders"]:
        cells = []
        for e in search["rung_epochs"]:
            got = [sc for sc in c["scores"] if sc["epochs"] == e]
            cells.append(" ; ".join(f"{sc['nll']:.3f} / {sc['accuracy'] * 100:.1f}%"
                                    + (f" (seed {sc['seed']})" if sc["seed"] != got[0]["seed"] else "")
                                    for sc in got) or "-")
        prior = "-" if c["regime_prior"] is None else f"{c['regime_prior']:.3f}"
        left = "winner" if c["left_at"] is None else f"{c['left_at']} epochs"
        lines.append(f"| {c['architecture']} | {c['family']} | {prior} | " + " | ".join(cells) + f" | {left} |")
    return lines + [""]


def _shipped_markdown(shipped: dict) -> list[str]:
    """The report's opening: which model shipped, by which rule, and by how much."""
    lines = [f"**Shipped:** `{shipped['file']}` ({shipped['name']}): {shipped['decision']}. Precision: "
             f"{shipped['why']}.", "", "| model (shipped precision) | validation accuracy | budget |", "|---|---|---|"]
    for o in shipped["options"]:
        lines.append(f"| {o['name']} ({o['precision']}){' (shipped)' if o['name'] == shipped['method'] else ''} | "
                     f"{o['val_accuracy'] * 100:.1f}% | {'met' if not o['misses'] else 'misses ' + ', '.join(o['misses'])} |")
    return lines + ["", f"Rule (`ship: {shipped['rule']}`): "
                    + ("the distilled student ships whatever the comparison says." if shipped["rule"] == "distilled" else
                       "every trained model at the precision it would ship is a candidate; of those meeting every "
                       "budget check, the best validation accuracy ships (ties: lower latency). The test split only "
                       "measures."), ""]


def render_markdown(report: dict) -> str:
    lines = [f"# {report['name']}", "",
             f"factory {report['factory_version']}"
             + (f" (git {report['git']['commit'][:10]}{', uncommitted changes' if report['git']['dirty'] else ''})"
                if report.get("git") else "")
             + f", recipe {report['recipe_hash']}, built {report['created']} "
             f"on {report['host']['cpu']} ({report['host']['machine']}, {report['device']}; ISA flags "
             f"{' '.join(report['host']['isa_flags']) or 'none listed'}); "
             + ", ".join(f"{k} {v}" for k, v in report.get("libraries", {}).items()) + ".", "",
             f"Data: {report['data']['source']}: {len(report['data']['classes'])} classes, "
             f"{report['data']['train']} train / {report['data']['val']} val / {report['data']['test']} test images"
             + (f", {report['data']['synthetic']} synthetic" if report['data']['synthetic'] else "")
             + (f"; {len(report['data']['skipped'])} image(s) skipped because they cannot be decoded (listed in "
                "report.json, data.skipped)" if report['data']['skipped'] else "") + ". "
             f"Every decision (student search, calibration, accepting a quantized model, which model ships) was made "
             f"on {report['data']['decisions_on']}; the test split was used only to measure.", "",
             *_shipped_markdown(report["shipped"]),
             "## Results", "",
             report["comparison"]["line"], "",
             "| model | precision | ships | val accuracy | test accuracy | p50 ms (band) | vs shipped | p90 ms | p99 ms | batch p50 ms "
             "| eager p50 ms | peak MB | size MB | params |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lat, eager, vs = r["latency_ms"], r.get("eager_latency_ms"), r["vs_student"]
        eager_p50 = f"{eager['p50']:.2f}" if eager else "-"
        val = "-" if r["val_accuracy"] is None else f"{r['val_accuracy'] * 100:.1f}%"
        lines.append(f"| {r['name']} | {r['precision']} | {'yes' if r['ships'] else ''} | {val} | {r['accuracy'] * 100:.1f}% | "
                     f"{lat['p50']:.2f} ({lat['low']:.2f}-{lat['high']:.2f}) | {vs['median']:.2f}x "
                     f"({vs['low']:.2f}-{vs['high']:.2f}) | {lat['p90']:.2f} | {lat['p99']:.2f} | "
                     f"{r['latency_ms_batch']['p50']:.2f} | {eager_p50} | "
                     f"{r['peak_memory_mb'] or 0:.0f} | {r['size_mb']:.2f} | {r['params'] / 1e6:.2f}M |")
    first = report["results"][0]
    parity = report.get("export", {}).get("parity")
    latency = report["latency"]
    options = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in latency["session_options"].items())
    load = latency["load"]
    busy = ("" if load["others_cpu"] is None else
            f"; meanwhile other processes used {load['others_cpu']:.0%} of the CPU and steal was {load['steal']:.0%}")
    lines += ["", f"Latency: onnxruntime {first['provider']} ({options}), {first['threads']} threads on "
              f"{load['cores']} cores, batch 1, every file measured together in {latency['rounds']} interleaved "
              f"rounds; p50 is the median over rounds, the band its 95% interval widened to at least "
              f"±{latency['noise_band']:.0%} (bench.noise_band, the drift between measurements on a shared host); "
              f"vs shipped: latency over the shipped model's, round by round. Load average "
              f"{load['load_before']:.2f} before, {load['load_after']:.2f} after{busy}. Batch column: batch "
              f"{first['latency_ms_batch']['batch_size']}; eager: PyTorch on the same threads; peak: resident memory "
              "of a process running the model alone.", ""]
    if latency["warning"]:
        lines += [f"**Warning:** {latency['warning']}.", ""]
    if parity:
        lines += [f"Parity (ONNX FP32 vs PyTorch, {parity['images']} check images): max |logit diff| "
                  f"{parity['max_abs_diff']:.2e}, top-1 agreement {parity['top1_agreement'] * 100:.1f}%.", ""]
    quant = report.get("export", {}).get("quantization")
    if quant:
        tried = "; ".join(f"{a['calibration'] or quant['method']}"
                          + (f" with {len(a['float_nodes'])} layer(s) in float" if a["float_nodes"] else "")
                          + f": drop {a['drop'] * 100:+.1f} points ({a['confidence']:.0%} interval "
                          f"{a['drop_low'] * 100:+.1f} to {a['drop_high'] * 100:+.1f})"
                          + (" (kept)" if a.get("used") else "") for a in quant["attempts"])
        verdict = "accepted" if quant["accepted"] else f"rejected, not published: {quant['reason']}"
        lines += [f"Quantization ({quant['method']}, accuracy checked on {quant['checked_on']}): {tried}; {verdict}.", ""]
    lines += ["![accuracy vs latency](accuracy_latency.png)", "", "![training curves](training_curves.png)", "",
              "## Budget", "",
              f"Profile `{report['budget']['profile']}`: {report['budget']['profile_description']}. "
              f"Verdict: **{report['budget']['verdict'].replace('not met', 'NOT met')}** for {report['budget']['model']}"
              + (f" (failed: {', '.join(report['budget']['failed'])})" if report['budget']['failed'] else "")
              + (f" (inconclusive: {', '.join(report['budget']['inconclusive'])}: the band straddles the limit)"
                 if report['budget']['inconclusive'] else "") + ".", ""]
    if not report["budget"]["host_matches_profile"]:
        lines += [f"Latency was measured on this {report['budget']['measured_on']} host, which cannot stand in for the "
                  f"profile's device ({report['budget']['stand_in']}): the latency figures are proxies; run "
                  "`factory bench` on the device.", ""]
    if report["budget"]["checks"]:
        lines += ["| check | limit | value | verdict |", "|---|---|---|---|"]
        for c in report["budget"]["checks"]:
            value = f"{c['value']:.4g}" if isinstance(c["value"], float) else f"{c['value']}"
            if "low" in c:
                value += f" ({c['low']:.3g}-{c['high']:.3g})"
            lines.append(f"| {c['name']} | {c['limit']}{c['unit'] and ' ' + c['unit']} | {value} | {c['verdict']} |")
    else:
        lines.append("The recipe sets no budget limits.")
    lines += _selection_markdown(report.get("selection"))
    lines += _augmentation_markdown(report.get("augmentation"))
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
