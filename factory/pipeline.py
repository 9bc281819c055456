"""``build()``: the factory's stages in order, each cached under the hash of what it depends on."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from factory import distributed as dist
from factory.cache import StageCache, StageOutput, replace_dir, write_json
from factory.console import log
from factory.context import BuildContext
from factory.data import load_task_data
from factory.errors import FactoryError
from factory.recipe import Recipe, hash_config
from factory.stages.augment import synthesize, synthetic_samples
from factory.stages.baselines import train_student_baseline, try_finetune_baseline
from factory.stages.bench import benchmark
from factory.stages.distill import distill_student
from factory.stages.export import PRECISION_LABEL, export_model
from factory.stages.report import Measured, budget_checks, choose_shipped, result_entry, write_report
from factory.stages.select import select_student
from factory.stages.teacher import adapt_teacher, cache_teacher_outputs

DEFAULT_CACHE = Path(os.environ.get("FACTORY_CACHE", ".factory-cache"))


@dataclass
class BuildResult:
    out_dir: Path
    report: dict


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FactoryError("--device cuda: no CUDA device is visible to torch; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise FactoryError(f"--device {name!r}: expected cpu, cuda or auto")
    return torch.device(name)


def build(recipe: Recipe, device: str = "auto", force: bool = False, cache_dir: Path | None = None,
          out_dir: Path | None = None) -> BuildResult:
    """Run every stage of ``recipe`` and write ``exports/<name>/``; unchanged stages come from the cache."""
    torch_device = dist.process_device(resolve_device(device))
    data = load_task_data(recipe.data)
    ctx = BuildContext(recipe, data, StageCache(cache_dir or DEFAULT_CACHE, force), torch_device)
    out_dir = Path(out_dir or Path("exports") / recipe.name)
    log(f"[bold]factory build[/] {recipe.name}: {data.num_classes} classes, {len(data.train)} train / "
        f"{len(data.val)} val / {len(data.test)} test images from {data.root}, device {torch_device}")
    notes: list[str] = []
    stages: list[StageOutput] = []

    def done(stage: StageOutput | None, label: str) -> StageOutput | None:
        if stage is not None:
            stages.append(stage)
            log(f"  {'[dim]cached[/]' if stage.cached else '[green]done[/]  '} {label} ({stage.wall_s:.1f}s)")
        return stage

    student = done(select_student(ctx), f"select: {recipe.student.model}")
    synthetic = done(synthesize(ctx), f"augment: {recipe.augment.pipeline}")
    if synthetic is not None:
        data.synthetic = synthetic_samples(synthetic, data.classes)
        data.fingerprint = hash_config([data.fingerprint, synthetic.key])[:20]
    teacher = done(adapt_teacher(ctx), f"teacher: {recipe.teacher.model} ({recipe.teacher.adapt})")
    teacher_cache = done(cache_teacher_outputs(ctx, teacher), "teacher cache")
    distilled = done(distill_student(ctx, teacher, teacher_cache), "distill")
    scratch = done(train_student_baseline(ctx, "scratch"), "baseline: scratch") if recipe.baseline.scratch else None
    finetuned, skipped_reason = try_finetune_baseline(ctx)
    done(finetuned, "baseline: pretrain-then-finetune")
    if skipped_reason:
        notes.append(skipped_reason)
        log(f"  [yellow]skipped[/] {skipped_reason}")

    ship_export = done(export_model(ctx, distilled, "distilled", True, teacher), "export + quantize")
    quant = ship_export.info.get("quantization")
    published = {"distilled": ("model.onnx", "student.onnx")}
    measured = [Measured("distilled", "student", done(benchmark(ctx, ship_export, "model.onnx", "distilled", distilled),
                                                       "bench: distilled fp32"), distilled.info["params"])]
    if quant:
        label = PRECISION_LABEL[quant["method"]]
        published[f"distilled-{label}"] = (quant["file"], f"student.{label}.onnx")
        measured.append(Measured(f"distilled-{label}", "student", done(
            benchmark(ctx, ship_export, quant["file"], f"distilled-{label}"), f"bench: distilled {label}"),
            distilled.info["params"], label))
    for name, role, stage in [("scratch", "baseline", scratch), ("pretrained-finetuned", "baseline", finetuned),
                              ("teacher", "teacher", teacher)]:
        if stage is None:
            continue
        exported = done(export_model(ctx, stage, name, False), f"export: {name}")
        measured.append(Measured(name, role, done(benchmark(ctx, exported, "model.onnx", name, stage),
                                                  f"bench: {name}"), stage.info["params"]))

    results = [result_entry(m) for m in measured]
    wanted = measured[0].bench.info["profile_provider"]
    if measured[0].bench.info["provider"] != wanted:
        notes.append(f"latency measured with {measured[0].bench.info['provider']}: this onnxruntime build has no "
                     f"{wanted} for the {recipe.budget.profile} profile (install onnxruntime-gpu on the device)")
    by_name = {r["name"]: r for r in results}
    quantized = by_name[measured[1].name] if quant else None
    shipped, why = choose_shipped(by_name["distilled"], quantized, bool(quant and quant["accepted"]))
    if quant and not quant["accepted"]:
        notes.append(quant["reason"])
    budget = budget_checks(ctx, shipped, student.info["macs"])
    teacher_pretraining = _documented_pretraining(recipe.teacher.weights, recipe.teacher.pretrain_flops)
    method_compute = {"distilled": _with_pretraining(_sum([synthetic, teacher, teacher_cache, distilled]),
                                                      teacher_pretraining, "teacher", "teacher.pretrain_flops")}
    if scratch is not None:
        method_compute["scratch"] = _with_pretraining(_sum([scratch]), (0.0, 0.0), "student", "")
    if finetuned is not None:
        method_compute["pretrained-finetuned"] = _with_pretraining(
            _sum([finetuned]), _documented_pretraining(recipe.baseline.weights, recipe.baseline.pretrain_flops),
            "student", "baseline.pretrain_flops")
    method_compute["teacher"] = _with_pretraining(_sum([teacher]), teacher_pretraining, "teacher",
                                                  "teacher.pretrain_flops")
    _compare_compute(method_compute, notes)
    extra = {
        "student": {"model": recipe.student.model, "params": student.info["params"], "macs": student.info["macs"],
                    "image_size": ctx.view_size},
        "teacher": {k: teacher.info[k] for k in ("model", "weights", "adapt", "test_accuracy", "params")},
        "export": {"parity": ship_export.info["parity"], "quantization": quant},
        "training_curves": {"distilled": distilled.info["history"], "teacher": teacher.info["history"],
                            **({"scratch": scratch.info["history"]} if scratch else {}),
                            **({"pretrained-finetuned": finetuned.info["history"]} if finetuned else {})},
    }
    if not dist.is_main():
        return BuildResult(out_dir, {})
    report = _publish(ctx, out_dir, ship_export, published, shipped, why, budget, results, stages, method_compute,
                      extra, notes)
    return BuildResult(out_dir, report)


STAGE_NAMES = {"augment": "augmentation", "teacher": "teacher adaptation", "teacher_cache": "teacher cache",
               "distill": "distillation", "baseline_scratch": "training from scratch", "baseline_finetune": "finetuning"}


def _sum(parts: list[StageOutput | None]) -> dict:
    parts = [p for p in parts if p is not None]
    return {"wall_s": sum(p.wall_s for p in parts), "flops": sum(p.flops for p in parts),
            "includes": " + ".join(STAGE_NAMES.get(p.stage, p.stage) for p in parts)}


def _documented_pretraining(weights: str | None, stated_flops: float | None) -> tuple[float | None, float | None]:
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


def _publish(ctx: BuildContext, out_dir: Path, ship_export: StageOutput, published: dict[str, tuple[str, str]],
             shipped: dict, why: str, budget: dict,
             results: list[dict], stages: list[StageOutput], method_compute: dict, extra: dict,
             notes: list[str]) -> dict:
    """Write exports/<name>/ into a temporary folder, then swap it in, so a failure leaves the last good one."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for source, target in published.values():
        shutil.copy2(ship_export.file(source), tmp / target)
    for r in results:  # comparisons (scratch, baseline, teacher) stay in the stage cache, not in exports/
        r["file"] = published[r["name"]][1] if r["name"] in published else None
    write_json(tmp / "labels.json", ctx.data.classes)
    report = write_report(ctx, tmp, results, shipped, why, budget, stages, method_compute, extra, notes)
    replace_dir(tmp, out_dir)
    return report
