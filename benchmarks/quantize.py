"""FP32 vs static INT8 vs dynamic INT8 (onnxruntime) vs PyTorch eager, on the recipe's distilled student.

    python benchmarks/quantize.py [RECIPE] [--device cpu] [--set key=value ...]

Uses the recipe's cached stages (it builds what is missing, like `factory build`), then, in one run:
test accuracy of each precision, batch-1 latency at the recipe's thread count (all files measured together,
rounds interleaved), and the ratios round by round.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from factory.cache import DEFAULT_CACHE, StageCache
from factory.context import Runtime
from factory.host import host_info
from factory.latency import eager_latency, measure, ratio
from factory.models import load_trained
from factory.distributed import resolve_device
from factory.pipeline import BuildPlans
from factory.recipe import load_recipe
from factory.sources import load_task_data
from factory.stages.distill import distill_student
from factory.stages.export import export_model, onnx_logits, quantize_dynamic_int8, top1
from factory.stages.teacher import adapt_teacher, cache_teacher_outputs
from factory.train import predict

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "flowers12_cpu.yaml"))
    parser.add_argument("--device", default="cpu", help="device for any training still to do")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    # keep the INT8 file whatever its accuracy: this benchmark measures the accuracy itself
    recipe = load_recipe(args.recipe, args.overrides + ["export.quantize=static_int8", "export.max_accuracy_drop=1"])
    rt = Runtime(load_task_data(recipe.data), StageCache(args.cache_dir), resolve_device(args.device),
                 recipe.data.num_workers)
    plans = BuildPlans.from_recipe(recipe, rt.data)
    teacher = adapt_teacher(rt, plans.teacher)
    cache = cache_teacher_outputs(rt, plans.teacher_cache, teacher) if plans.teacher_cache else None
    distilled = distill_student(rt, plans.distill, teacher, cache)
    exported = export_model(rt, plans.export, "distilled", distilled)
    threads = plans.bench.threads
    preprocess = exported.result.preprocess
    test = rt.eval_images("test", preprocess)

    with tempfile.TemporaryDirectory() as tmp:
        dynamic = Path(tmp) / "model.int8-dynamic.onnx"
        quantize_dynamic_int8(exported.file("model.onnx"), dynamic, [])
        files = {"fp32": exported.file("model.onnx"), "static int8": exported.file("model.int8.onnx"),
                 "dynamic int8": dynamic}
        settings = plans.bench.settings()
        measured = measure([(str(path), preprocess.size) for path in files.values()], settings)
        rows = {}
        for (name, path), latency in zip(files.items(), measured.latencies):
            acc = top1(*onnx_logits(path, preprocess, test, threads))
            rows[name] = {"accuracy": acc, "latency": latency, "size_mb": path.stat().st_size / 2**20}
    model, _ = load_trained(distilled)
    eager = eager_latency(model, preprocess.size, settings).p50
    logits, labels = predict(model, preprocess, test, rt.device)
    eager_acc = top1(logits.numpy(), labels.numpy())

    host = host_info()
    print(f"\nhost: {host['cpu']}, {host['cores']} cores, ISA flags {' '.join(host['isa_flags'])}, "
          f"onnxruntime {host['onnxruntime']}")
    print(f"{recipe.name}: {recipe.student.model} at {preprocess.size}px, {len(test)} test images, batch 1, "
          f"{threads} threads, onnxruntime CPUExecutionProvider, calibration {recipe.export.calibration}")
    print(f"{'model':<16} {'accuracy':>9} {'p50 ms (band)':>22} {'size MB':>8}")
    for name, r in rows.items():
        print(f"{name:<16} {r['accuracy'] * 100:8.1f}% {r['latency'].band_text():>22} {r['size_mb']:8.2f}")
    print(f"{'pytorch eager':<16} {eager_acc * 100:8.1f}% {eager:15.3f}")
    fp32 = rows["fp32"]["latency"]
    print(f"onnxruntime fp32 speedup over eager: {eager / fp32.p50:.2f}")
    print(f"dynamic int8: {ratio(fp32, rows['dynamic int8']['latency']).text('fp32', 'dynamic int8')}")
    print(f"static int8: {ratio(fp32, rows['static int8']['latency']).text('fp32', 'static int8')}")
    print(f"int8 accuracy drop (points): {(rows['fp32']['accuracy'] - rows['static int8']['accuracy']) * 100:.1f}")


if __name__ == "__main__":
    main()
