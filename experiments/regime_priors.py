"""The regime prior: every curated candidate distilled by the factory's own recipe on proxy tasks, written as
``factory/priors_regime.csv`` with its provenance.

    python experiments/regime_priors.py [RECIPE] --proxy ../shared/datasets/tinyimagenet200:12:60 [--set ...]

For each proxy task (a seeded draw of non-flower Tiny ImageNet classes, :func:`benchmarks.selection.proxy_task`),
every candidate that fits the recipe's budget is distilled from the recipe's teacher at E/9, E/3 and E epochs
(the search's rungs) and exported as it would ship. Per candidate the CSV holds its test accuracy at E relative
to the best candidate's (averaged over tasks), its INT8 drop, timm's ImageNet top-1 (labelled as the prior of
another regime) and, in the header, the Kendall tau between the rungs' rankings and the full one. The search
admits candidates in this order (:func:`factory.decide.listing.admission_order`); it never decides alone when
the task can be measured.
"""

from __future__ import annotations

import argparse
import csv
import io
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from selection import distil_every_rung, proxy_task  # noqa: E402

from factory.cache import DEFAULT_CACHE, StageCache  # noqa: E402
from factory.files import write_atomic  # noqa: E402
from factory.context import Runtime  # noqa: E402
from factory.host import host_info  # noqa: E402
from factory.distributed import resolve_device  # noqa: E402
from factory.pipeline import TaskPlans, choose_student  # noqa: E402
from factory.recipe import load_recipe  # noqa: E402
from factory.sources import load_task_data  # noqa: E402
from factory.decide.search import rung_epochs  # noqa: E402
from factory.decide.listing import REGIME_PRIORS, accuracy_priors  # noqa: E402
from factory.stages.teacher import adapt_teacher, cache_teacher_outputs  # noqa: E402
from factory.quant.qat import int8_conv_exact  # noqa: E402


def one_task(recipe, cache_dir: Path, device: str) -> list:
    """Every fitting candidate of ``recipe`` at every rung."""
    rt = Runtime(load_task_data(recipe.data, cache_dir), StageCache(cache_dir), resolve_device(device),
                 recipe.data.num_workers)
    plans = TaskPlans.from_recipe(recipe, rt.data, int8_conv_exact())
    fitting = [r.architecture for r in choose_student(rt, recipe, plans).rows if r.fits]
    teacher = adapt_teacher(rt, plans.teacher)
    cache = cache_teacher_outputs(rt, plans.teacher_cache, teacher) if plans.teacher_cache else None
    return [distil_every_rung(rt, recipe, a, teacher, cache) for a in fitting]


def write_priors(tasks: dict[str, list], epochs: list[int], out: Path) -> None:
    """The CSV: per architecture, relative accuracy and INT8 drop averaged over the tasks it ran on."""
    imagenet, _ = accuracy_priors()
    per_arch: dict[str, list] = {}
    taus = []
    for rows in tasks.values():
        best = max(r.shipped_test for r in rows)
        for r in rows:
            per_arch.setdefault(r.architecture, []).append((r.shipped_test / best, r.int8_drop, r.shipped_test))
        full = [-r.shipped_test for r in rows]
        taus.append({e: kendalltau([r.val_nll[e] for r in rows], full).statistic for e in epochs})
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    host = host_info()
    buffer = io.StringIO()
    buffer.write(f"# source: experiments/regime_priors.py, command: {shlex.join(sys.argv)}; commit {commit}; "
                 f"{datetime.now(timezone.utc).date()}; host {host['cpu']} ({' '.join(host['isa_flags'])})\n")
    buffer.write(f"# tasks: {', '.join(tasks)}; rungs {epochs} epochs; kendall tau of each rung's validation NLL "
                 "ranking against the full test ranking: "
                 + "; ".join(", ".join(f"E={e}: {t:.2f}" for e, t in task.items()) for task in taus) + "\n")
    buffer.write("# imagenet_top1: timm's ImageNet top-1 of the default pretrained weights, a prior of another regime\n")
    writer = csv.writer(buffer)
    writer.writerow(["architecture", "relative_accuracy", "accuracy", "int8_drop", "imagenet_top1", "tasks"])
    for arch, runs in sorted(per_arch.items(), key=lambda kv: -sum(r[0] for r in kv[1]) / len(kv[1])):
        drops = [d for _, d, _ in runs if d is not None]
        prior = imagenet.get(arch)
        writer.writerow([arch, f"{sum(r[0] for r in runs) / len(runs):.4f}", f"{sum(r[2] for r in runs) / len(runs):.4f}",
                         f"{sum(drops) / len(drops):.4f}" if drops else "", prior.top1 if prior and prior.top1 else "",
                         len(runs)])
    write_atomic(out, buffer.getvalue())
    print(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "flowers12_cpu.yaml"))
    parser.add_argument("--proxy", action="append", required=True, help="CORPUS:CLASSES:PER_CLASS[:SEED], repeatable")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=ROOT / "factory" / REGIME_PRIORS)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    tasks = {}
    for spec in args.proxy:
        corpus, classes, per_class, *seed = spec.split(":")
        name = f"{Path(corpus).name}-{classes}x{per_class}-seed{seed[0] if seed else 0}"
        root = proxy_task(Path(corpus), int(classes), int(per_class), args.cache_dir / "proxy" / name,
                          int(seed[0]) if seed else 0)
        recipe = load_recipe(args.recipe, ["student.model=auto", f"data.root={root}", f"name=proxy_{name}",
                                           *args.overrides])
        tasks[name] = one_task(recipe, args.cache_dir, args.device)
    write_priors(tasks, rung_epochs(recipe.distill.epochs, recipe.student.search.rungs), args.out)


if __name__ == "__main__":
    sys.exit(main())
