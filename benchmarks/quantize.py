"""INT8 remedies per student: FP32 vs each remedy's static INT8 (onnxruntime), accuracy on test, speed, size.

    python benchmarks/quantize.py [RECIPE] [--students efficientnet_b0,resnet18,...] [--set key=value ...]

Each student is distilled with the recipe (the teacher and its cache shared; cached stages reused, like
`factory build`), exported to FP32 ONNX, then quantized to static INT8 by each remedy with no layer kept in
float: plain post-training quantization (the recipe's calibration), the same with the calibration the
validation split prefers, then cross-layer equalization and bias correction (exact; and through ReLU6 made
ReLU where the student has ReLU6 between convolutions), calibration again chosen on validation, then
quantization-aware distillation (``export.qat_epochs`` from the teacher cache, from the plain calibration
validation prefers), all with the weights the recipe's device profile asks for (7-bit for x86-avx2:
``reduce_range``, which x86 kernels without VNNI cannot saturate), and last plain PTQ with the other weight
range. Decisions are made on validation; the table shows test accuracy as this host's onnxruntime kernels
compute it and as the QDQ definition does (the graph run unoptimized: what hosts with VNNI and arm64
compute), so the loss to 16-bit saturation of full-range weights on x86 without VNNI shows. The FP32 file and every INT8 file of a
student are measured together, rounds interleaved, batch 1 at the recipe's thread count; the speed ratio is
round by round. Finally the export stage's own accuracy-aware choice (which may keep layers in float) is
shown.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path


from factory.cache import DEFAULT_CACHE, StageCache
from factory.context import Runtime
from factory.distributed import resolve_device
from factory.quant.equalize import has_relu6_pairs
from factory.host import host_info
from factory.latency import measure, ratio
from factory.pipeline import BuildPlans
from factory.recipe import load_recipe
from factory.report.compute import flops_text
from factory.sources import load_task_data
from factory.onnx_tools import calibration_batches, onnx_logits, read_metadata, spread_images, top1
from factory.quant.quantizers import CALIBRATION, quantize_static_int8
from factory.stages.distill import distill_student
from factory.quant.qat import int8_conv_exact
from factory.quant.ladder import preprocessed_model
from factory.stages.export import ExportPlan, export_model
from factory.quant.qat_distill import QatSource, qat_distill
from factory.quant.results import QatRun
from factory.decide.search import with_student
from factory.stages.teacher import adapt_teacher, cache_teacher_outputs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STUDENTS = "efficientnet_b0,mobilenetv3_large_100,mobilenetv2_100,efficientnet_lite0,ghostnet_100,resnet18"


@dataclass
class Row:
    remedy: str
    calibration: str
    val: float
    test: float
    path: Path
    test_reference: float = 0.0
    """Test accuracy of the QDQ definition (the graph run unoptimized), what exact INT8 kernels compute."""


def remedy_rows(rt: Runtime, fp32: Path, preprocess, calibration, plan: ExportPlan, out: Path) -> list[Row]:
    """Each remedy's INT8 file, its calibration chosen on validation (the plan's first for plain PTQ); last,
    plain PTQ with the other weight range than the plan's."""
    val = rt.eval_images("check", preprocess)
    variants = [("ptq", None), ("equalized", "exact")]
    if has_relu6_pairs(preprocessed_model(fp32)):
        variants.append(("equalized-relu6", "relu6"))
    rows = []
    for remedy, equalization in variants:
        tried = []
        for method in [plan.calibration] + [m for m in CALIBRATION if m != plan.calibration]:
            path = out / f"{remedy}-{method}.onnx"
            quantize_static_int8(fp32, path, calibration, method, [], equalization, plan.reduce_range)
            tried.append(Row(remedy, method, top1(*onnx_logits(path, preprocess, val)), 0.0, path))
        if remedy == "ptq":
            rows.append(tried[0])
        best = max(tried, key=lambda r: r.val)  # ties: the earlier calibration
        rows.append(Row("ptq-calibrated" if remedy == "ptq" else remedy, best.calibration, best.val, 0.0, best.path))
    plain = rows[1]
    other = Row(f"ptq-{8 if plan.reduce_range else 7}bit-weights", plain.calibration, 0.0, 0.0, out / "other.onnx")
    quantize_static_int8(fp32, other.path, calibration, plain.calibration, [], None, not plan.reduce_range)
    other.val = top1(*onnx_logits(other.path, preprocess, val))
    return rows + [other]


def qat_row(rt: Runtime, plans, distilled, source: QatSource, fp32: Path, preprocess, calibration,
            method: str, out: Path) -> tuple[Row, QatRun]:
    """Quantization-aware distillation from the plain calibration validation prefers."""
    path = out / "qat.onnx"
    images, _ = spread_images(rt.eval_images("check", preprocess), preprocess, 32)
    run = qat_distill(rt, plans.export.qat, source, distilled, read_metadata(fp32), calibration, method, path, images)
    return Row("qat", method, top1(*onnx_logits(path, preprocess, rt.eval_images("check", preprocess))), 0.0,
               path), run


def benchmark_student(rt: Runtime, recipe, architecture: str, teacher, cache, out: Path) -> dict:
    """Distil ``architecture``, export it, quantize it by every remedy, measure; the figures."""
    plans = BuildPlans.from_recipe(with_student(recipe, architecture), rt.data, int8_conv_exact())
    distilled = distill_student(rt, plans.distill, teacher, cache)
    source = QatSource(teacher, cache)
    exported = export_model(rt, plans.export, "distilled", distilled, source)
    fp32, preprocess = exported.file("model.onnx"), exported.result.preprocess
    calibration = calibration_batches(rt, preprocess, plans.export.calibration_images)
    rows = remedy_rows(rt, fp32, preprocess, calibration, plans.export, out)
    qat, qat_run = qat_row(rt, plans, distilled, source, fp32, preprocess, calibration, rows[1].calibration, out)
    rows.insert(-1, qat)
    test = rt.eval_images("test", preprocess)
    for row in rows:
        row.test = top1(*onnx_logits(row.path, preprocess, test))
        row.test_reference = top1(*onnx_logits(row.path, preprocess, test, reference=True))
    measured = measure([(str(fp32), preprocess.size)] + [(str(r.path), preprocess.size) for r in rows],
                       plans.bench.settings(), memory=False)
    fp32_test = top1(*onnx_logits(fp32, preprocess, rt.eval_images("test", preprocess)))
    quant = exported.result.quantization
    used = next((a for a in quant.attempts if a.used), None) if quant else None
    return {"architecture": architecture, "size": preprocess.size, "fp32_test": fp32_test,
            "fp32_mb": fp32.stat().st_size / 2**20, "fp32_latency": measured.latencies[0],
            "rows": [(r, lat, ratio(measured.latencies[0], lat)) for r, lat in zip(rows, measured.latencies[1:])],
            "factory": used, "factory_file": quant.file if quant else None, "qat": qat_run,
            "distill_flops": distilled.flops, "distill_wall_s": distilled.wall_s + distilled.result.resumed_wall_s}


def print_student(result: dict) -> None:
    print(f"\n{result['architecture']} at {result['size']}px: FP32 test {result['fp32_test'] * 100:.1f}%, "
          f"{result['fp32_mb']:.2f} MB, p50 {result['fp32_latency'].band_text()}")
    print(f"  {'remedy':<16} {'calib':<10} {'val':>6} {'test':>6} {'drop':>6} {'exact':>6} {'drop':>6} "
          f"{'fp32/int8 speed (band)':>24} {'MB':>6}")
    for row, latency, r in result["rows"]:
        drop, exact_drop = (result["fp32_test"] - row.test) * 100, (result["fp32_test"] - row.test_reference) * 100
        speed = f"{1 / r.median:.2f}x ({1 / r.high:.2f}-{1 / r.low:.2f})"
        print(f"  {row.remedy:<16} {row.calibration:<10} {row.val * 100:5.1f}% {row.test * 100:5.1f}% {drop:+6.1f} "
              f"{row.test_reference * 100:5.1f}% {exact_drop:+6.1f} {speed:>24} {row.path.stat().st_size / 2**20:6.2f}")
    q = result["qat"]
    print(f"  qat: {q.epochs} epochs of {q.objective}, {flops_text(q.flops)}, {q.wall_s:.0f} s (the distillation: "
          f"{flops_text(result['distill_flops'])}, {result['distill_wall_s']:.0f} s); parity with its simulation: "
          f"{q.parity['max_diff_steps']:.1f} steps, top-1 agreement {q.parity['top1_agreement'] * 100:.0f}% "
          f"(QDQ reference: {q.parity['reference_max_diff_steps']:.1f} steps, "
          f"{q.parity['reference_top1_agreement'] * 100:.0f}%)")
    used = result["factory"]
    if used is None:
        print("  export stage: no INT8 file kept (every attempt rejected on validation)")
    else:
        print(f"  export stage chose: {used.remedy}, {used.calibration}, {len(used.float_nodes)} layer(s) in float, "
              f"validation drop {used.drop * 100:+.1f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "flowers12_cpu.yaml"))
    parser.add_argument("--students", default=DEFAULT_STUDENTS, help="comma-separated timm architectures")
    parser.add_argument("--device", default="cpu", help="device for any training still to do")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.overrides + ["export.quantize=static_int8"])
    rt = Runtime(load_task_data(recipe.data), StageCache(args.cache_dir), resolve_device(args.device),
                 recipe.data.num_workers)
    students = args.students.split(",")
    plans = BuildPlans.from_recipe(with_student(recipe, students[0]), rt.data, int8_conv_exact())
    teacher = adapt_teacher(rt, plans.teacher)
    cache = cache_teacher_outputs(rt, plans.teacher_cache, teacher) if plans.teacher_cache else None
    host = host_info()
    print(f"host: {host['cpu']}, {host['cores']} cores, ISA flags {' '.join(host['isa_flags'])}, "
          f"onnxruntime {host['onnxruntime']}; INT8 kernels exact for full-range weights: {int8_conv_exact()}; "
          f"{recipe.name}, profile {recipe.budget.device().name}: {8 - plans.export.reduce_range}-bit weights; batch 1, "
          f"{plans.bench.threads} threads, {len(rt.data.test)} test images, decisions on {len(rt.data.val)} "
          f"validation images")
    with tempfile.TemporaryDirectory() as tmp:
        for architecture in students:
            out = Path(tmp) / architecture
            out.mkdir()
            print_student(benchmark_student(rt, recipe, architecture, teacher, cache, out))


if __name__ == "__main__":
    main()
