"""``student.model: auto`` decided on the task: successive halving over short distillations.

The candidates that fit every budget limit (measured by :mod:`factory.stages.select`) are admitted up to
``student.search.max_candidates``, at most two per family and at least one plain residual network, in the
order of the regime prior (``priors_regime.csv``: candidates distilled by this factory's own recipe on proxy
tasks; timm's ImageNet top-1 only orders those it does not cover). Each rung distils every surviving
candidate from the teacher (cache) with the build's own loss, views, batch size, learning rate and seed, the
schedule compressed to the rung's epochs, scores it on the validation split by mean negative log-likelihood
(accuracy beside it) and keeps the best 1/eta. When the two finalists differ by less than the paired noise
on the same validation images, both get a second seed (if the search's epoch budget allows), then the lower
measured latency wins. The final rung is the build's own distillation plan, so the winner is never trained
twice. Every run is a cached ``distill`` stage: a rerun decides the same way without training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from factory.stage import Done
from factory.console import log
from factory.context import Runtime
from factory.errors import FactoryError, RecipeError
from factory.models import checkpoint_architecture, checkpoint_for, load_trained
from factory.recipe import SearchConfig
from factory.stages.distill import DistillPlan, distill_student
from factory.decide.listing import PER_FAMILY, admit, family, regime_priors
from factory.decide.noise import inside_noise, nll_margin
from factory.decide.types import Contender, RungScore
from factory.stats import Interval
from factory.evaluate import predict

if TYPE_CHECKING:
    from factory.recipe import Recipe
    from factory.decide.listing import CandidateRow

CHANGES_NO_RESULT = True


def rung_epochs(epochs: int, rungs: list[float]) -> list[int]:
    """Each rung's epochs (at least 1, distinct, increasing; the last is ``epochs``)."""
    out: list[int] = []
    for fraction in rungs:
        e = max(1, round(epochs * fraction))
        if not out or e > out[-1]:
            out.append(e)
    out[-1] = epochs
    return out


def first_rung(candidates: int, eta: int, rungs: int) -> int:
    """The rung to start at: as late as still leaves one candidate at the last rung (with 3 candidates and
    eta 3, start at the rung before the last)."""
    halvings = math.ceil(math.log(candidates, eta) - 1e-9) if candidates > 1 else 0
    return max(0, rungs - 1 - halvings)


@dataclass
class SearchResult:
    """What the search did and why it chose its winner (read by the report)."""

    winner: str
    rule: str
    rung_epochs: list[int]
    eta: int
    contenders: list[Contender]
    finalists: str
    """How the last decision was made: by NLL, by a second seed, or by latency, with the paired interval."""
    wall_s: float
    flops: float
    epochs_spent: float
    """Epochs of the search's own runs, in units of distill.epochs (the winner's final run excluded)."""
    regime_source: str
    runs: list[SearchRun] = field(default_factory=list, repr=False)
    """The search's own distill runs (the winner's full run is the build's distillation, not in here)."""


@dataclass(eq=False)
class _Scored:
    row: CandidateRow
    nll: np.ndarray
    correct: np.ndarray


def with_student(recipe: Recipe, model: str) -> Recipe:
    """``recipe`` with ``student.model`` set (every later stage reads it) and its baselines' checkpoint resolved
    (:func:`with_checkpoint_of`)."""
    student = recipe.student.model_copy(update={"model": model, "candidates": [], "exclude": [],
                                                "search": SearchConfig()})
    return with_checkpoint_of(recipe.model_copy(update={"student": student}), model)


def with_checkpoint_of(recipe: Recipe, model: str) -> Recipe:
    """``recipe`` with the pretrained baselines given ``model``'s checkpoint from a folder of them in
    ``baseline.weights`` (:func:`factory.models.checkpoint_for`), or turned off when it holds none of ``model``
    or its local weights are another architecture's."""
    b = recipe.baseline
    weights = b.weights if b.pretrained or b.distill_pretrained else None
    resolved = checkpoint_for(weights, model)
    if (weights and resolved is None) or checkpoint_architecture(resolved) not in (None, model):
        return recipe.model_copy(update={"baseline": b.model_copy(update={"pretrained": False,
                                                                         "distill_pretrained": False})})
    if resolved != weights:
        return recipe.model_copy(update={"baseline": b.model_copy(update={"weights": resolved})})
    return recipe


def student_recipe(asked: Recipe, model: str, searched: bool, notes: list[str]) -> Recipe:
    """``asked`` for the student ``model``, its pretrained baselines given ``model``'s checkpoint from
    ``baseline.weights`` (:func:`factory.decide.search.with_checkpoint_of`): one policy, however the student was
    chosen. When that folder holds none of ``model``'s, a named student is a RecipeError (before any training)
    and a ``searched`` one skips the pretrained baselines with a note appended to ``notes``."""
    recipe = with_student(asked, model) if searched else with_checkpoint_of(asked, model)
    pretrained = lambda r: (r.baseline.pretrained, r.baseline.distill_pretrained)  # noqa: E731
    if pretrained(recipe) == pretrained(asked):
        return recipe
    weights, held = asked.baseline.weights, checkpoint_architecture(asked.baseline.weights)
    holds = f"holds {held} weights" if held else f"holds no checkpoint of {model}"
    if not searched:
        raise RecipeError(f"baseline.weights {weights} {holds}, but student.model is {model}; pre-train {model} "
                          "with `factory pretrain` or name a checkpoint of it")
    notes.append(skipped := f"pretrain-then-finetune baseline"
                            f"{' and pretrained student distilled' * asked.baseline.distill_pretrained} skipped: "
                            f"baseline.weights {weights} {holds} and student.model: auto chose {model}; pre-train "
                            f"{model} with `factory pretrain` (or set baseline.weights: timm, online) to compare")
    log(f"  [yellow]skipped[/] {skipped}")
    return recipe


def validation_scores(rt: Runtime, trained: Done) -> tuple[np.ndarray, np.ndarray]:
    """Per validation image: the model's negative log-likelihood of the true class, and whether its top-1 is
    right. A diverged run scores infinite NLL, so it is dropped, never promoted."""
    model, preprocess = load_trained(trained)
    logits, labels = predict(model, preprocess, rt.eval_images("val", preprocess), rt.device)
    nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none").numpy()
    nll = np.where(np.isfinite(nll), nll, np.inf)
    return nll, (logits.argmax(1) == labels).numpy()


def rank(scored: list[_Scored]) -> list[_Scored]:
    """Best first by mean validation NLL; ties by accuracy, then by lower measured latency."""
    return sorted(scored, key=lambda s: (float(s.nll.mean()), -float(s.correct.mean()), _latency(s.row)))


def halve(scored: list[_Scored], eta: int) -> list[_Scored]:
    """The best ceil(n / eta) by :func:`rank`."""
    return rank(scored)[:math.ceil(len(scored) / eta)]


def _latency(row: CandidateRow) -> float:
    return row.latency.p50 if row.latency else math.inf


RunFn = Callable[[str, int, int], tuple[Done, np.ndarray, np.ndarray]]
"""(architecture, epochs, seed) -> (the distill run, per-image validation NLL, per-image correctness)."""


@dataclass
class SearchRun:
    """One short distillation of the search."""

    architecture: str
    epochs: int
    seed: int
    done: Done

    @property
    def label(self) -> str:
        return run_label(self.architecture, self.epochs, self.seed)


def run_label(architecture: str, epochs: int, seed: int) -> str:
    """How the build's log and the report's compute table name a search run."""
    return f"search: {architecture} ({epochs} epochs, seed {seed})"


def successive_halving(admitted: list[CandidateRow], epochs: list[int], cfg: SearchConfig, seed: int,
                       run: RunFn, contenders: dict[str, Contender]) -> tuple[CandidateRow, str, list[SearchRun]]:
    """Run the rungs (see module doc); return the winner, how the finalists were told apart, and the runs."""
    full, runs = epochs[-1], []

    def train(row: CandidateRow, rung: int, run_seed: int) -> _Scored:
        done, nll, correct = run(row.architecture, rung, run_seed)
        runs.append(SearchRun(row.architecture, rung, run_seed, done))
        contenders[row.architecture].scores.append(RungScore(rung, run_seed, float(nll.mean()),
                                                             float(np.mean(correct)), done.wall_s, done.cached))
        return _Scored(row, nll, correct)

    alive = list(admitted)
    for rung in epochs[first_rung(len(alive), cfg.eta, len(epochs)):]:
        scored = [train(row, rung, seed) for row in alive]
        for s in scored:
            if not np.isfinite(s.nll.mean()):
                contenders[s.row.architecture].left_at = rung
        scored = [s for s in scored if np.isfinite(s.nll.mean())]  # a diverged run is dropped, never promoted
        if not scored:
            raise FactoryError(f"student search: every candidate's distillation diverged at {rung} epochs (infinite "
                               "validation NLL); lower distill.lr or name a student")
        kept = halve(scored, cfg.eta)
        for s in scored:
            if s not in kept:
                contenders[s.row.architecture].left_at = rung
        if len(kept) == 1 or rung == full:
            spent = sum(r.epochs for r in runs) - (full if rung == full else 0)  # the winner's full run is the build's
            winner, how = _final(rank(scored)[:2], rung, seed, train,
                                 cfg.max_cost * full - spent, contenders)
            contenders[winner.architecture].left_at = None
            return winner, how, runs
        alive = [s.row for s in kept]
    raise AssertionError("the last rung always decides")


def _final(finalists: list[_Scored], rung: int, seed: int, train: Callable[[CandidateRow, int, int], _Scored],
           epochs_left: float, contenders: dict[str, Contender]) -> tuple[CandidateRow, str]:
    """The winner of the two best of the deciding rung: by NLL when their paired difference is outside the
    noise (:func:`factory.decide.noise.inside_noise`), else averaged over a second seed (when ``2 * rung`` epochs are
    left in the budget), else by the lower measured latency."""
    if len(finalists) == 1:
        return finalists[0].row, f"{finalists[0].row.architecture} was the only candidate"
    best, second = finalists
    diff = nll_margin(best.nll, second.nll)
    if not inside_noise(diff):
        _eliminate(second, rung, contenders)
        return best.row, _told("by validation NLL", best, second, diff)
    if epochs_left >= 2 * rung:
        for s in (best, second):
            again = train(s.row, rung, seed + 1)
            s.nll, s.correct = (s.nll + again.nll) / 2, (s.correct.astype(float) + again.correct) / 2
        best, second = sorted((best, second), key=lambda s: float(s.nll.mean()))
        diff = nll_margin(best.nll, second.nll)
        if not inside_noise(diff):
            _eliminate(second, rung, contenders)
            return best.row, _told("by validation NLL over two seeds", best, second, diff)
    fast, slow = sorted((best, second), key=lambda s: _latency(s.row))
    _eliminate(slow, rung, contenders)
    return fast.row, (f"{fast.row.architecture} over {slow.row.architecture} by lower measured latency "
                      f"({_latency(fast.row):.2f} vs {_latency(slow.row):.2f} ms p50): their validation NLL differs by "
                      f"{diff.value:+.3f} nats (90% interval {diff.low:+.3f} to {diff.high:+.3f}), inside the noise")


def _eliminate(loser: _Scored, rung: int, contenders: dict[str, Contender]) -> None:
    contenders[loser.row.architecture].left_at = rung


def _told(how: str, best: _Scored, second: _Scored, diff: Interval) -> str:
    return (f"{best.row.architecture} over {second.row.architecture} {how}: {second.row.architecture}'s mean NLL "
            f"is {diff.value:+.3f} nats higher (90% interval {diff.low:+.3f} to {diff.high:+.3f}, {diff.n} images)")


def search_run_plan(base: DistillPlan, architecture: str, epochs: int, seed: int) -> DistillPlan:
    """One search run's plan: the build's distillation ``base`` for ``architecture``, its whole schedule
    compressed to ``epochs`` (warmup included), seeded ``seed`` (another initialisation and order; the same
    teacher-cached views)."""
    t = base.train
    train = dataclasses.replace(t, seed=seed)
    if epochs != t.epochs:
        train = dataclasses.replace(train, epochs=epochs, warmup_epochs=t.warmup_epochs * epochs / t.epochs)
    return dataclasses.replace(base, student=architecture, train=train)


def search_student(rt: Runtime, recipe: Recipe, rows: list[CandidateRow], base: DistillPlan, teacher: Done,
                   teacher_cache: Done | None, done: Callable[[str, Done], Done]) -> SearchResult:
    """Rank the fitting candidates of ``rows`` by successive halving on the task (module doc), each run
    distilled as ``base`` says (:func:`search_run_plan`); ``done`` records each run as a stage of the build."""
    cfg = recipe.student.search
    regime, source = regime_priors()
    admitted = admit(rows, regime, cfg.max_candidates)
    epochs = rung_epochs(recipe.distill.epochs, cfg.rungs)
    contenders = {r.architecture: Contender(r.architecture, family(r.architecture),
                                            regime[r.architecture].relative_accuracy if r.architecture in regime
                                            else None, r.top1, _latency(r) if r.latency else None)
                  for r in admitted}
    log(f"  student search: {len(admitted)} candidates ({', '.join(contenders)}), rungs of {epochs} epochs, "
        f"keeping 1/{cfg.eta} each")

    def run(architecture: str, rung: int, seed: int):
        plan = search_run_plan(base, architecture, rung, seed)
        trained = done(run_label(architecture, rung, seed), distill_student(rt, plan, teacher, teacher_cache))
        return (trained, *validation_scores(rt, trained))

    winner, how, runs = successive_halving(admitted, epochs, cfg, recipe.distill.seed, run, contenders)
    own = [r for r in runs if (r.architecture, r.epochs, r.seed) !=
           (winner.architecture, recipe.distill.epochs, recipe.distill.seed)]
    log(f"  student: {winner.architecture} ({how})")
    return SearchResult(
        winner=winner.architecture, rule=search_rule(cfg, epochs), rung_epochs=epochs, eta=cfg.eta,
        contenders=list(contenders.values()), finalists=how, wall_s=sum(r.done.wall_s for r in own),
        flops=sum(r.done.flops for r in own), epochs_spent=sum(r.done.result.history[-1]["epoch"] for r in own) / epochs[-1],
        regime_source=source, runs=own)


def search_rule(cfg: SearchConfig, epochs: list[int]) -> str:
    return (f"among the candidates meeting every limit, up to {cfg.max_candidates} admitted (at most {PER_FAMILY} per "
            f"family, at least one plain residual network) in regime-prior order; successive halving over "
            f"distillations of {', '.join(map(str, epochs))} epochs from the teacher, keeping the best 1/{cfg.eta} by "
            "mean validation NLL at each rung; finalists inside the paired noise get a second seed, then the lower "
            "measured latency wins")
