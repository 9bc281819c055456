"""Do the build's decisions hold on unseen images? Each decision rule's regret over split seeds.

    python benchmarks/decisions.py [--seeds 5] [--tasks flowers12,tinyimagenet12] [--set key=value ...]

For each task and each split seed (``data.split_seed``: which of the training images are held out for
validation; the test split stays the same), the default recipe is built at a reduced scale (``SCALE``: fewer
epochs, teacher views and benchmark rounds than the recipe; the student search runs as in a build). Every
model the build trained is then scored on validation (per-image correctness and negative log-likelihood of
the file it would ship) and on test (the benchmark's accuracy). Each decision rule is applied to the
validation figures only; its **regret** on a seed is the test accuracy of the model it ships minus the best
test accuracy among the models of that build that meet the budget (0 is the best possible, in points). The
test split is finite too: "in test noise" counts the seeds where the shipped model and the best one cannot be
told apart on test (their 90% paired interval holds 0), so a regret there is one the test cannot resolve.

Printed, with the CPU model and flags: per task, each rule's mean and worst regret over the seeds and its
cost (builds' worth of training it needs), each method's validation-minus-test gap (a method systematically
more optimistic than the others would mean validation images reach its training), and the student search's
regret against every admitted candidate distilled in full (``--search``).

The tasks: flowers12 (``../shared/datasets/flowers12``, 60 training images per class) and a 12-class Tiny
ImageNet proxy (:func:`benchmarks.selection.proxy_task`, ``PROXY_TRAIN`` labelled images per class and 15 test
images, all from Tiny ImageNet's test split, which nothing the recipe names was pre-trained on).
Each build is cached (stages in ``--cache-dir``, the scores in ``<cache-dir>/decisions/*.json``): a rerun
re-scores the rules without training.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selection import proxy_task  # noqa: E402

from factory.cache import StageCache  # noqa: E402
from factory.context import Runtime  # noqa: E402
from factory.distributed import resolve_device  # noqa: E402
from factory.host import host_info  # noqa: E402
from factory.onnx_tools import onnx_logits, top1  # noqa: E402
from factory.pipeline import BuildPlans, build  # noqa: E402
from factory.recipe import load_recipe  # noqa: E402
from factory.stages.distill import DistillPlan, distill_student  # noqa: E402
from factory.stages.export import ExportPlan, export_model  # noqa: E402
from factory.stages.refit import RefitExportPlan, export_refit, refit_trained  # noqa: E402
from factory.decide.search import with_student  # noqa: E402
from factory.decide.noise import Candidate, accuracy_margin, choose, inside_noise  # noqa: E402
from factory.quant.qat import int8_conv_exact  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
PROXY_TRAIN = 35
"""Labelled images per class of the proxy, all from Tiny ImageNet's test split (the rest of each class's 50 are
its test images): the teacher and the pretrained baselines were pre-trained on Tiny ImageNet's training split,
so a proxy drawn from it would have shown them its validation images."""
SCALE = ["teacher.epochs=3", "distill.epochs=3", "distill.teacher_views=2", "export.qat_epochs=1",
         "student.search.max_candidates=3", "bench.rounds=2", "bench.warmup=2", "bench.runs=10",
         "bench.min_time_s=0.05"]
"""The recipe's 30 epochs (teacher, students) cut to 3, its 32 teacher views to 2, QAT to 1 epoch, the search to
3 admitted candidates (9 in the recipe) and the benchmark to 2 short rounds (measured time: README, "How sure a
decision is")."""
PROXY_FLOOR = "budget.min_accuracy=0.25"
"""The proxy's accuracy floor (the recipe's is 0.5): at this scale most of its models land between 0.3 and 0.6,
and a floor that shuts out all but one or two would leave the rules nothing to decide."""


@dataclass
class ModelScores:
    """One trained model at the precision it would ship: what a rule may read (validation) and what judges it."""

    name: str
    precision: str
    eligible: bool
    """Meets every budget check on validation (an inconclusive latency counts as met, as for the gate)."""
    latency_ms: float
    val_correct: list[bool]
    val_nll: list[float]
    test_accuracy: float
    test_correct: list[bool]
    """Per test image: the judge's, never a rule's (a regret inside this noise is not one the test can see)."""

    @property
    def val_accuracy(self) -> float:
        return float(np.mean(self.val_correct))


@dataclass
class BuildScores:
    task: str
    seed: int
    wall_s: float
    shipped: str
    models: list[ModelScores]
    student: str
    admitted: list[str] = field(default_factory=list)
    search_test: dict[str, float] = field(default_factory=dict)
    """Shipped-precision test accuracy of every candidate the search admitted, distilled in full (``--search``)."""
    refit_test: float | None = None
    """Test accuracy of the shipped method refit on train + validation, at its shipped precision (``--refit``)."""

    def model(self, name: str) -> ModelScores:
        return next(m for m in self.models if m.name == name)

    @property
    def best(self) -> ModelScores:
        """The model meeting the budget that is best on test: what a regret is measured against."""
        return max((m for m in self.models if m.eligible), key=lambda m: m.test_accuracy)

    @property
    def best_test(self) -> float:
        return self.best.test_accuracy


def _model_scores(rt: Runtime, deployed, eligible: bool) -> ModelScores:
    """``deployed`` (a :class:`factory.decide.ship.Deployed`) scored on validation as the build scored it (each
    image's correctness and negative log-likelihood, as its export recorded them), and on test image by image."""
    test_logits, test_labels = _test_logits(rt, deployed.export, deployed.ships.file)
    return ModelScores(deployed.name, deployed.ships.precision, eligible, deployed.ships.latency.p50,
                       deployed.val_correct().tolist(), deployed.val_nll().tolist(), deployed.ships.accuracy,
                       (test_logits.argmax(1) == test_labels).tolist())


def _test_logits(rt: Runtime, exported, file: str) -> tuple[np.ndarray, np.ndarray]:
    preprocess = exported.result.preprocess
    return onnx_logits(exported.file(file), preprocess, rt.eval_images("test", preprocess))


def _test_accuracy(rt: Runtime, exported, file: str) -> float:
    return top1(*_test_logits(rt, exported, file))


def _full_candidate_accuracy(rt: Runtime, recipe, architecture: str, outcome) -> float:
    """Test accuracy of ``architecture`` distilled in full with the build's teacher (its quantized file when one
    is accepted), each candidate exported alike."""
    named = with_student(recipe, architecture)
    done = distill_student(rt, DistillPlan.from_recipe(named, rt.data.num_classes), outcome.teacher,
                           outcome.teacher_cache)
    exported = export_model(rt, ExportPlan.from_recipe(named, int8_conv_exact()), "distilled", done)
    quant = exported.result.quantization
    return _test_accuracy(rt, exported, quant.file if quant is not None and quant.file is not None else "model.onnx")


def _refit_accuracy(rt: Runtime, outcome) -> float:
    """Test accuracy of the shipped method refit on train + validation (:mod:`factory.stages.refit`), at the
    precision the build shipped it."""
    shipped = outcome.shipped.model
    plans = BuildPlans.from_recipe(outcome.recipe, rt.data, int8_conv_exact())
    trained = refit_trained(rt, shipped.name, plans.of_method(shipped.name), outcome.teacher,
                            plans.teacher_cache)[-1][1]
    exported = export_refit(rt, RefitExportPlan.decided(plans.export, shipped.export.result), shipped.name, trained,
                            shipped.export.result)
    return _test_accuracy(rt, exported, shipped.ships.file)


def scored_build(task: str, recipe_path: Path, overrides: list[str], seed: int, cache_dir: Path,
                 search: bool, refit: bool) -> BuildScores:
    """One build of the task at split seed ``seed``, scored (from ``<cache-dir>/decisions/`` when done before;
    the build is rerun, from its cached stages, when the record lacks per-image test scores or what ``search``
    or ``refit`` asks for; the wall time of the build that trained stays the record's)."""
    overrides = [*overrides, f"data.split_seed={seed}", f"name=decisions_{task}_{seed}"]
    tag = f"{task}-seed{seed}-{hashlib.sha256(repr(overrides).encode()).hexdigest()[:10]}"
    record = cache_dir / "decisions" / f"{tag}.json"
    scores, trained_wall_s = None, None
    if record.is_file():
        raw = json.loads(record.read_text())
        trained_wall_s = raw["wall_s"]
        if all("test_correct" in m for m in raw["models"]):
            scores = BuildScores(**{**raw, "models": [ModelScores(**m) for m in raw["models"]]})
            if not (search and not scores.search_test) and not (refit and scores.refit_test is None):
                return scores
    recipe = load_recipe(recipe_path, overrides)
    started = time.perf_counter()
    result = build(recipe, device="cpu", cache_dir=cache_dir, out_dir=cache_dir / "decisions" / "exports" / recipe.name)
    wall_s = time.perf_counter() - started
    outcome = result.outcome
    rt = Runtime(outcome.data, StageCache(cache_dir), resolve_device("cpu"))
    if scores is None:
        eligible = {o.name: not o.misses for o in outcome.shipped.options}
        scores = BuildScores(task, seed, trained_wall_s or wall_s, outcome.shipped.model.name,
                             [_model_scores(rt, m, eligible[m.name]) for m in outcome.models],
                             outcome.recipe.student.model,
                             [c.architecture for c in outcome.search.contenders] if outcome.search else [])
    if search and outcome.search and not scores.search_test:
        scores.admitted = [c.architecture for c in outcome.search.contenders]
        scores.search_test = {a: _full_candidate_accuracy(rt, recipe, a, outcome) for a in scores.admitted}
    if refit and scores.refit_test is None:
        scores.refit_test = _refit_accuracy(rt, outcome)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(asdict(scores)))
    return scores


Rule = Callable[[list[BuildScores], int], str]
"""(the task's builds, the index of the one deciding) -> the name of the model it ships."""


def _pool(models: list[ModelScores]) -> list[ModelScores]:
    return [m for m in models if m.eligible] or models


def best_accuracy(models: list[ModelScores]) -> ModelScores:
    """Today's rule: the best validation accuracy, the lower latency on a tie."""
    return min(_pool(models), key=lambda m: (-m.val_accuracy, m.latency_ms))


def best_nll(models: list[ModelScores]) -> ModelScores:
    """The lowest mean validation NLL."""
    return min(_pool(models), key=lambda m: (float(np.mean(m.val_nll)), m.latency_ms))


def accuracy_then_nll(models: list[ModelScores]) -> ModelScores:
    """The build's rule, :func:`factory.decide.noise.choose`: the best validation accuracy; the models inside its
    paired noise tie with it, and NLL decides among them."""
    pool = _pool(models)
    chosen = choose([Candidate(m.name, np.array(m.val_correct), np.array(m.val_nll), m.latency_ms) for m in pool])
    return next(m for m in pool if m.name == chosen.chosen)


def on_one_split(choose: Callable[[list[ModelScores]], ModelScores]) -> Rule:
    return lambda builds, i: choose(builds[i].models).name


def repeated(choose: Callable[[list[ModelScores]], ModelScores], repeats: int) -> Rule:
    """Each method's validation scores pooled over ``repeats`` builds on different splits (this one and the next
    ones, cyclically); the chosen method's model of this build ships."""

    def rule(builds: list[BuildScores], i: int) -> str:
        group = [builds[(i + j) % len(builds)] for j in range(repeats)]
        pooled = []
        for m in builds[i].models:
            same = [b.model(m.name) for b in group]
            pooled.append(dataclasses.replace(m, val_correct=sum((s.val_correct for s in same), []),
                                              val_nll=sum((s.val_nll for s in same), [])))
        return choose(pooled).name

    return rule


RULES: dict[str, tuple[Rule, float]] = {
    "best validation accuracy (today)": (on_one_split(best_accuracy), 1),
    "lowest validation NLL": (on_one_split(best_nll), 1),
    "accuracy, ties inside the noise by NLL (adopted)": (on_one_split(accuracy_then_nll), 1),
    "accuracy over 2 splits": (repeated(best_accuracy, 2), 2),
    "NLL over 2 splits": (repeated(best_nll, 2), 2),
    "accuracy over 3 splits": (repeated(best_accuracy, 3), 3),
    "NLL over 3 splits": (repeated(best_nll, 3), 3),
}
"""Each rule and its cost in builds' worth of training."""


def regrets(builds: list[BuildScores], rule: Rule) -> list[float]:
    """Per build, the test accuracy of what ``rule`` ships minus the best eligible model's, in points."""
    return [(b.model(rule(builds, i)).test_accuracy - b.best_test) * 100 for i, b in enumerate(builds)]


def within_test_noise(builds: list[BuildScores], rule: Rule) -> int:
    """Builds where what ``rule`` ships cannot be told from the best eligible model on test (the 90% paired
    interval of their test accuracies holds 0): a regret the test split itself cannot resolve."""
    return sum(inside_noise(accuracy_margin(np.array(b.model(rule(builds, i)).test_correct),
                                            np.array(b.best.test_correct))) for i, b in enumerate(builds))


def report_task(task: str, builds: list[BuildScores]) -> dict:
    """Print one task's tables; return its figures."""
    wall = statistics.mean(b.wall_s for b in builds)
    print(f"\n{task}: {len(builds)} split seeds, students {sorted({b.student for b in builds})}, "
          f"a build {wall / 60:.1f} min on average at this scale")
    print(f"{'rule':<50}{'mean regret':>12}{'worst':>8}{'best shipped':>14}{'in test noise':>15}{'cost':>10}")
    figures = {}
    for name, (rule, cost) in {"as the build shipped": (lambda bs, i: bs[i].shipped, 1), **RULES}.items():
        r, noise = regrets(builds, rule), within_test_noise(builds, rule)
        figures[name] = {"mean": statistics.mean(r), "worst": min(r), "cost_builds": cost, "per_seed": r,
                         "within_test_noise": noise}
        print(f"{name:<50}{statistics.mean(r):12.2f}{min(r):8.2f}{sum(x == 0 for x in r):>10}/{len(r)}"
              f"{noise:>13}/{len(r)}{cost * wall / 60:8.0f} min")
    print(f"{'method':<24}{'val - test (mean)':>18}{'sd':>6}   per seed (points)")
    gaps = {}
    for name in [m.name for m in builds[0].models]:
        g = [(b.model(name).val_accuracy - b.model(name).test_accuracy) * 100 for b in builds]
        gaps[name] = g
        print(f"{name:<24}{statistics.mean(g):18.1f}{statistics.pstdev(g):6.1f}   " + " ".join(f"{x:+.1f}" for x in g))
    return {"rules": figures, "gaps": gaps, "build_wall_s": wall,
            "search": search_regrets(builds), "refit": refit_gains(builds)}


def refit_gains(builds: list[BuildScores]) -> list[float]:
    """Per build with a refit: its test accuracy minus the shipped model's, in points."""
    out = [(b.refit_test - b.model(b.shipped).test_accuracy) * 100 for b in builds if b.refit_test is not None]
    if out:
        regret = [(b.refit_test - b.best_test) * 100 for b in builds if b.refit_test is not None]
        print(f"refit of the shipped method on train + validation: {statistics.mean(out):+.2f} points on test over the "
              f"model it replaces (mean; per seed " + " ".join(f"{x:+.1f}" for x in out) + f"); regret against the "
              f"build's best {statistics.mean(regret):+.2f} mean, {min(regret):+.2f} worst")
    return out


def search_regrets(builds: list[BuildScores]) -> list[float]:
    """Per build with full-trained candidates: the search's choice minus the best of them, in points."""
    out = [(b.search_test[b.student] - max(b.search_test.values())) * 100 for b in builds if b.search_test]
    if out:
        print(f"student search: regret {statistics.mean(out):.2f} mean, {min(out):.2f} worst over {len(out)} seeds "
              f"(each admitted candidate distilled in full: " + "; ".join(
                  f"{b.student} of {len(b.search_test)}" for b in builds if b.search_test) + ")")
    return out


def tasks(names: list[str], cache_dir: Path) -> dict[str, list[str]]:
    """Each task's recipe overrides (the proxy task built from the shared Tiny ImageNet copy)."""
    out = {}
    for name in names:
        if name == "flowers12":
            out[name] = [f"data.root={SHARED / 'flowers12'}"]
        elif name == "tinyimagenet12":
            folder = proxy_task(SHARED / "tinyimagenet200", 12, PROXY_TRAIN,
                                cache_dir / "proxy" / f"tinyimagenet200-12x{PROXY_TRAIN}-unseen", unseen=True)
            out[name] = [f"data.root={folder}", PROXY_FLOOR]
        else:
            raise SystemExit(f"--tasks: unknown task {name!r} (flowers12, tinyimagenet12)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "flowers12_cpu.yaml")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tasks", default="flowers12,tinyimagenet12")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".factory-cache")
    parser.add_argument("--search", action="store_true", help="also distil every candidate of the search in full")
    parser.add_argument("--refit", action="store_true", help="also refit the shipped method on train + validation")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    host = host_info()
    print(f"host: {host['cpu']}, {host['cores']} cores, ISA flags {' '.join(host['isa_flags'])}")
    print(f"scale: {' '.join(SCALE + args.overrides)}")
    started, figures = time.perf_counter(), {}
    for task, overrides in tasks(args.tasks.split(","), args.cache_dir).items():
        builds = [scored_build(task, args.recipe, [*SCALE, *overrides, *args.overrides], seed, args.cache_dir,
                               args.search, args.refit) for seed in range(args.seeds)]
        figures[task] = report_task(task, builds)
    print(f"\nbenchmark wall time {(time.perf_counter() - started) / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    sys.exit(main())
