"""Seconds per epoch: student-only training vs distillation with an online teacher vs from the teacher cache.

    python benchmarks/distill.py [RECIPE] [--epochs N] [--set key=value ...]

Runs the recipe's own stages (default recipes/flowers12_cpu.yaml) in a temporary cache, on its data,
student, teacher and batch size, all in one process, and prints the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from factory.cache import StageCache
from factory.context import Runtime
from factory.host import host_info
from factory.distributed import resolve_device
from factory.pipeline import BuildPlans
from factory.recipe import load_recipe
from factory.sources import load_task_data
from factory.stages.baselines import train_baseline
from factory.stages.distill import distill_student
from factory.stages.teacher import adapt_teacher, cache_teacher_outputs
from factory.quant.qat import int8_conv_exact

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "flowers12_cpu.yaml"))
    parser.add_argument("--epochs", type=int, default=4, help="epochs per method (the first is not timed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    base = load_recipe(args.recipe, args.overrides + [f"distill.epochs={args.epochs}", "teacher.epochs=1"])
    device = resolve_device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime(load_task_data(base.data), StageCache(tmp), device, base.data.num_workers)
        plans = BuildPlans.from_recipe(base, rt.data, int8_conv_exact())
        online_plans = BuildPlans.from_recipe(load_recipe(args.recipe, args.overrides + [
            f"distill.epochs={args.epochs}", "teacher.epochs=1", "distill.teacher_views=0"]), rt.data, int8_conv_exact())
        for sample in rt.data.train:  # decode every image once, so no method pays JPEG decoding in its timing
            rt.store.get(sample.path, plans.distill.views.size)
        teacher = adapt_teacher(rt, plans.teacher)  # one epoch: only its cost per forward pass matters here
        start = time.perf_counter()
        cache = cache_teacher_outputs(rt, plans.teacher_cache, teacher)
        cache_s = time.perf_counter() - start
        student_only = train_baseline(rt, plans.scratch)
        cached = distill_student(rt, plans.distill, teacher, cache)
        online = distill_student(rt, online_plans.distill, teacher, None)

    # median epoch time after the first (which also pays the one-off FLOP count and allocator warmup)
    per_epoch = {name: statistics.median(h["seconds"] for h in stage.result.history[1:]) for name, stage in
                 [("student-only", student_only), ("distill, online teacher", online), ("distill, teacher cache", cached)]}
    r = base
    host = host_info()
    print(f"\nhost: {host['cpu']}, {host['cores']} cores, ISA flags {' '.join(host['isa_flags'])}")
    print(f"{r.name}: student {r.student.model}, teacher {r.teacher.model}, {len(rt.data.train)} train images at "
          f"{r.data.image_size}px, batch {r.distill.batch_size}, median of epochs 2-{args.epochs}, device {device}, "
          f"{torch.get_num_threads()} threads")
    for name, seconds in per_epoch.items():
        print(f"  {name:<26} {seconds:7.2f} s/epoch")
    print(f"  teacher cache, one-off      {cache_s:7.2f} s ({r.distill.teacher_views} views per image)")
    ratio_online = per_epoch["distill, online teacher"] / per_epoch["student-only"]
    ratio_cached = per_epoch["distill, teacher cache"] / per_epoch["student-only"]
    print(f"online/student-only ratio: {ratio_online:.2f}")
    print(f"online/cached ratio: {per_epoch['distill, online teacher'] / per_epoch['distill, teacher cache']:.2f}")
    print(f"cached/student-only ratio: {ratio_cached:.2f}")


if __name__ == "__main__":
    main()
