"""Does the student search choose well? Every admitted candidate distilled in full, beside the search on the
same task.

    python benchmarks/selection.py [RECIPE] [--set key=value ...] [--proxy tinyimagenet200:12:60]

For each candidate the search admits (up to student.search.max_candidates, diverse by construction), the
recipe's distillation at every rung (E/9, E/3, E) from the shared teacher cache, exported and quantized as it
would ship; then the search itself (its runs are the same cached stages, so it costs nothing more here; its
cost is reported from their wall time). Prints, with the CPU model and flags: each candidate's validation NLL
per rung and test accuracy at E (FP32 and as shipped), the search's choice and its regret (points of test
accuracy below the best full-trained candidate, at the shipped precision), the Kendall tau of each rung's
ranking against the full one, and the search's cost in units of the winner's full distillation.

``--proxy CORPUS:CLASSES:PER_CLASS`` builds a proxy task instead (a seeded draw of classes of the shared
Tiny ImageNet copy, as symlinks; see :func:`proxy_task`) and points the recipe at it.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scipy.stats import kendalltau

from factory.cache import DEFAULT_CACHE, StageCache
from factory.context import Runtime
from factory.host import host_info
from factory.models import load_trained
from factory.distributed import resolve_device
from factory.pipeline import TaskPlans, choose_student
from factory.recipe import Recipe, load_recipe
from factory.sources import load_task_data
from factory.stages.distill import DistillPlan, distill_student
from factory.onnx_tools import onnx_logits, top1
from factory.stages.export import ExportPlan, export_model
from factory.decide.search import rung_epochs, search_run_plan, search_student, validation_scores
from factory.stages.teacher import adapt_teacher, cache_teacher_outputs
from factory.evaluate import predict
from factory.quant.qat import int8_conv_exact

ROOT = Path(__file__).resolve().parents[1]
FLOWERISH = ("flower", "daisy", "rose", "tulip", "sunflower", "dandelion", "lily", "orchid", "poppy", "iris")


def proxy_task(corpus: Path, classes: int, per_class: int, out: Path, seed: int = 0, unseen: bool = False) -> Path:
    """An ImageFolder of ``classes`` classes of ``corpus`` (train/ and test/ of class folders, e.g. the shared
    Tiny ImageNet), drawn with ``seed`` among those whose names are not flowers (``classes.tsv``), with
    ``per_class`` training images each (symlinks) and all their test images. ``unseen``: every image from the
    corpus's test split (``per_class`` of them for training, the rest for test), so that nothing pre-trained on
    the corpus's training split has seen any of them."""
    names = {}
    if (corpus / "classes.tsv").is_file():
        for line in (corpus / "classes.tsv").read_text().splitlines():
            wnid, _, words = line.partition("\t")
            names[wnid] = words
    pool = sorted(p.name for p in (corpus / "train").iterdir()
                  if not any(w in names.get(p.name, "").lower() for w in FLOWERISH))
    chosen = random.Random(seed).sample(pool, classes)
    for wnid in chosen:
        for split, images in _proxy_images(corpus, wnid, per_class, seed, unseen).items():
            folder = out / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for image in images:
                link = folder / image.name
                if not link.exists():
                    link.symlink_to(image.resolve())
    return out


def _proxy_images(corpus: Path, wnid: str, per_class: int, seed: int, unseen: bool) -> dict[str, list[Path]]:
    test = sorted((corpus / "test" / wnid).rglob("*.*"))
    if unseen:
        drawn = random.Random(f"{seed}:{wnid}").sample(test, len(test))
        if len(drawn) <= per_class:
            raise SystemExit(f"{corpus / 'test' / wnid}: {len(drawn)} images, need more than {per_class}")
        return {"train": drawn[:per_class], "test": drawn[per_class:]}
    train = sorted((corpus / "train" / wnid).rglob("*.*"))
    return {"train": random.Random(f"{seed}:{wnid}").sample(train, per_class), "test": test}


@dataclass
class Trained:
    architecture: str
    val_nll: dict[int, float] = field(default_factory=dict)
    fp32_test: float = 0.0
    shipped_test: float = 0.0
    int8_drop: float | None = None
    full_wall_s: float = 0.0


def distil_every_rung(rt: Runtime, recipe: Recipe, architecture: str, teacher, cache) -> Trained:
    """One candidate at every rung of the search, scored on validation; at E also on test, FP32 and as shipped."""
    out = Trained(architecture)
    epochs = rung_epochs(recipe.distill.epochs, recipe.student.search.rungs)
    base = DistillPlan.from_recipe(recipe, rt.data.num_classes)
    for e in epochs:
        done = distill_student(rt, search_run_plan(base, architecture, e, base.train.seed), teacher, cache)
        out.val_nll[e] = float(validation_scores(rt, done)[0].mean())
    model, preprocess = load_trained(done)
    logits, labels = predict(model, preprocess, rt.eval_images("test", preprocess), rt.device)
    out.fp32_test, out.full_wall_s = top1(logits.numpy(), labels.numpy()), done.wall_s
    exported = export_model(rt, ExportPlan.from_recipe(recipe, int8_conv_exact()), "distilled", done)
    quant = exported.result.quantization
    out.shipped_test = out.fp32_test
    if quant is not None and quant.file is not None:
        out.shipped_test = top1(*onnx_logits(exported.file(quant.file), preprocess, rt.eval_images("test", preprocess)))
        out.int8_drop = out.fp32_test - out.shipped_test
    return out


def run(recipe: Recipe, cache_dir: Path, device: str) -> tuple[list[Trained], object]:
    """Every admitted candidate at every rung, then the search on the same cached runs."""
    rt = Runtime(load_task_data(recipe.data, cache_dir), StageCache(cache_dir), resolve_device(device),
                 recipe.data.num_workers)
    plans = TaskPlans.from_recipe(recipe, rt.data, int8_conv_exact())
    listing = choose_student(rt, recipe, plans)
    teacher = adapt_teacher(rt, plans.teacher)
    cache = cache_teacher_outputs(rt, plans.teacher_cache, teacher) if plans.teacher_cache else None
    trained = []
    for architecture in listing.admitted:
        print(f"distilling {architecture} at every rung", flush=True)
        trained.append(distil_every_rung(rt, recipe, architecture, teacher, cache))
    search = search_student(rt, recipe, listing.rows, plans.search, teacher, cache, lambda label, done: done)
    return trained, search


def report(recipe: Recipe, trained: list[Trained], search) -> dict:
    """Print the table and the figures; return them."""
    host = host_info()
    print(f"\nhost: {host['cpu']}, {host['cores']} cores, ISA flags {' '.join(host['isa_flags'])}")
    epochs = rung_epochs(recipe.distill.epochs, recipe.student.search.rungs)
    print(f"{recipe.name}: {len(trained)} candidates, rungs {epochs} epochs, {recipe.data.root}")
    print(f"{'candidate':<24}" + "".join(f"{f'NLL@{e}':>9}" for e in epochs) + f"{'test fp32':>10}{'shipped':>9}"
          f"{'int8 drop':>10}{'full s':>8}")
    for t in sorted(trained, key=lambda t: -t.shipped_test):
        drop = "-" if t.int8_drop is None else f"{t.int8_drop * 100:+.1f}"
        print(f"{t.architecture:<24}" + "".join(f"{t.val_nll[e]:9.3f}" for e in epochs)
              + f"{t.fp32_test * 100:9.1f}%{t.shipped_test * 100:8.1f}%{drop:>10}{t.full_wall_s:8.0f}")
    best = max(trained, key=lambda t: t.shipped_test)
    chosen = next(t for t in trained if t.architecture == search.winner)
    regret = (best.shipped_test - chosen.shipped_test) * 100
    full = [-t.shipped_test for t in trained]
    taus = {e: kendalltau([t.val_nll[e] for t in trained], full).statistic for e in epochs}
    cost = search.wall_s / chosen.full_wall_s if chosen.full_wall_s else float("nan")
    print(f"search chose {search.winner} ({search.finalists}); best full-trained: {best.architecture}")
    print(f"regret: {regret:.1f} points of test accuracy (shipped precision)")
    print("kendall tau vs the full ranking (test, shipped): " + ", ".join(f"E={e}: {tau:.2f}" for e, tau in taus.items()))
    print(f"search cost: {search.wall_s:.0f} s = {cost:.2f} x the winner's full distillation "
          f"({search.epochs_spent:.2f} full distillations in epochs)")
    return {"regret_points": regret, "kendall_tau": taus, "cost": cost, "winner": search.winner,
            "best": best.architecture, "rows": trained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "flowers12_cpu.yaml"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--proxy", help="CORPUS:CLASSES:PER_CLASS, e.g. ../shared/datasets/tinyimagenet200:12:60")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    overrides = ["student.model=auto", *args.overrides]
    if args.proxy:
        corpus, classes, per_class = args.proxy.rsplit(":", 2)
        task = proxy_task(Path(corpus), int(classes), int(per_class), args.cache_dir / "proxy" /
                          f"{Path(corpus).name}-{classes}x{per_class}")
        overrides += [f"data.root={task}", f"name=proxy_{Path(corpus).name}_{classes}x{per_class}"]
    recipe = load_recipe(args.recipe, overrides)
    trained, search = run(recipe, args.cache_dir, args.device)
    report(recipe, trained, search)


if __name__ == "__main__":
    sys.exit(main())
