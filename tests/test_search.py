"""The student search: admission, the halving rule and its ties, the final rung served from the cache, and
the search never reading the test split."""

from __future__ import annotations

import json
import zlib

import numpy as np
from typer.testing import CliRunner

from factory.stage import Done
from factory.cli import app
from factory.latency import Latency, latency_band
from factory.recipe import SearchConfig
from factory.decide.search import Contender, first_rung, rung_epochs, successive_halving
from factory.decide.listing import CandidateRow, Prior, RegimePrior, admit, family
from factory.train import TrainedModel

runner = CliRunner()


def _latency(p50: float) -> Latency:
    band = latency_band([p50] * 5, 0.1)
    return Latency(p50=p50, low=band.low, high=band.high, rounds_p50=[p50] * 5, p90=p50, p99=p50, mean=p50, std=0,
                   runs=50, batch_size=1, threads=2, provider="CPUExecutionProvider")


def _row(name: str, top1: float | None = 70.0, p50: float = 1.0) -> CandidateRow:
    return CandidateRow(name, Prior(top1, f"{name}.x", "") if top1 is not None else None, 1_000_000, 10_000_000, 1.0,
                        "int8", _latency(p50), "this host")


def test_families_and_admission_diversity():
    assert [family(n) for n in ("mobilenetv3_large_100", "mobilenetv3_small_050", "efficientnet_lite0",
                                "resnet10t", "regnetx_002", "test_resnet")] == \
        ["mobilenetv3", "mobilenetv3", "efficientnet", "resnet", "regnetx", "test_resnet"]
    rows = [_row("efficientnet_b0", 77.7), _row("efficientnet_b1", 77.5), _row("efficientnet_lite0", 75.5),
            _row("mobilenetv3_large_100", 75.8), _row("ghostnet_100", 74.0), _row("resnet18", 73.2),
            _row("resnet34", 74.0)]
    rows[-1].misses = ["params 21M > 12M"]
    admitted = [r.architecture for r in admit(rows, {}, 3)]
    # at most two per family, ImageNet order without a regime prior, and a plain residual network always in
    assert admitted == ["efficientnet_b0", "efficientnet_b1", "resnet18"]
    regime = {"ghostnet_100": RegimePrior(1.0, 0.0), "resnet18": RegimePrior(0.99, 0.0),
              "efficientnet_b0": RegimePrior(0.7, 0.04)}
    admitted = [r.architecture for r in admit(rows, regime, 4)]
    assert admitted == ["ghostnet_100", "resnet18", "efficientnet_b0", "efficientnet_b1"]  # the regime prior first


def test_rungs_and_where_the_search_starts():
    assert rung_epochs(30, [1 / 9, 1 / 3, 1.0]) == [3, 10, 30]
    assert rung_epochs(2, [1 / 9, 1 / 3, 1.0]) == [1, 2]  # equal rungs merge
    assert first_rung(9, 3, 3) == 0 and first_rung(4, 3, 3) == 0 and first_rung(3, 3, 3) == 1
    assert first_rung(2, 3, 3) == 1 and first_rung(1, 3, 3) == 2 and first_rung(30, 3, 3) == 0


class _FakeRuns:
    """Distill runs whose validation NLL per image is given per (architecture, epochs, seed)."""

    def __init__(self, nll: dict, n: int = 60):
        self.nll, self.n, self.calls = nll, n, []

    def __call__(self, architecture: str, epochs: int, seed: int):
        self.calls.append((architecture, epochs, seed))
        rng = np.random.default_rng(zlib.crc32(f"{architecture}|{epochs}|{seed}".encode()))
        per_image = self.nll(architecture, epochs, seed) + rng.normal(0, 0.05, self.n)
        result = TrainedModel(model=architecture, weights="random init", preprocess=None, params=1, feature_dim=1,
                              history=[{"epoch": epochs}])
        done = Done("distill", f"{architecture}{epochs}{seed}", None, result, wall_s=float(epochs))
        return done, per_image, per_image < 1.0


def _search(rows, nll, cfg=None):
    cfg = cfg or SearchConfig()
    runs = _FakeRuns(nll)
    contenders = {r.architecture: Contender(r.architecture, family(r.architecture), None, r.top1, r.latency.p50)
                  for r in rows}
    winner, how, done = successive_halving(rows, rung_epochs(27, cfg.rungs), cfg, 0, runs, contenders)
    return winner.architecture, how, runs.calls, contenders


def test_halving_keeps_the_best_third_by_nll_and_never_trains_the_winner_at_full_length():
    rows = [_row(f"net{i}") for i in range(9)]
    quality = {f"net{i}": 0.5 + 0.2 * i for i in range(9)}  # net0 best, by far
    winner, how, calls, contenders = _search(rows, lambda a, e, s: quality[a] * 3 / e ** 0.5)
    assert winner == "net0" and "by validation NLL" in how
    assert [c for c in calls if c[1] == 3] == [(f"net{i}", 3, 0) for i in range(9)]
    assert sorted(c[0] for c in calls if c[1] == 9) == ["net0", "net1", "net2"]
    assert not any(c[1] == 27 for c in calls)  # the winner's full run is the build's own distillation
    assert contenders["net0"].left_at is None and contenders["net1"].left_at == 9 and contenders["net5"].left_at == 3


def test_a_short_run_misranking_costs_nothing_when_the_next_rung_corrects_it():
    rows = [_row(f"net{i}") for i in range(9)]
    # net8 learns slowly: worst at 3 epochs (still in the best third), best at 9
    nll = {3: {"net8": 1.0, "net0": 0.8, "net1": 0.9}, 9: {"net8": 0.3, "net0": 0.6, "net1": 0.7}}
    winner, *_ = _search(rows, lambda a, e, s: nll[e].get(a, 2.0))
    assert winner == "net8"


def test_finalists_inside_the_noise_get_a_second_seed_then_the_lower_latency_wins():
    rows = [_row("slow", p50=3.0), _row("fast", p50=1.0), _row("bad", p50=0.5)]
    same = {"slow": 0.5, "fast": 0.5, "bad": 3.0}
    winner, how, calls, contenders = _search(rows, lambda a, e, s: same[a])
    assert winner == "fast" and "lower measured latency" in how
    assert {(a, s) for a, _, s in calls} >= {("slow", 1), ("fast", 1)}  # the second seed ran for both finalists
    assert contenders["slow"].left_at == 9 and contenders["fast"].left_at is None
    # without the budget for a second seed, latency decides at once
    winner, how, calls, _ = _search(rows, lambda a, e, s: same[a], SearchConfig(max_cost=0.4))
    assert winner == "fast" and not any(s == 1 for *_, s in calls)


def test_a_diverged_run_is_dropped_not_promoted():
    rows = [_row("diverged"), _row("ok"), _row("worse")]
    winner, *_ = _search(rows, lambda a, e, s: {"diverged": np.inf, "ok": 0.5, "worse": 0.9}[a])
    assert winner == "ok"


def test_build_with_auto_searches_on_validation_and_the_final_rung_is_cached(tiny_recipe, tiny_data, tmp_path,
                                                                             monkeypatch):
    from factory.decide import search

    evaluated = []
    real = search.validation_scores

    def spy(rt, trained):
        evaluated.append(rt.eval_images("val", trained.result.preprocess).samples)
        return real(rt, trained)

    monkeypatch.setattr(search, "validation_scores", spy)
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", str(tiny_recipe), "--set", "student.model=auto", "--set",
                                 "student.candidates=[test_efficientnet,test_mambaout,test_resnet]", "--set",
                                 "baseline.pretrained=false", "--cache-dir", str(tmp_path / "cache"), "--out",
                                 str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    s = report["selection"]["search"]
    assert report["student"]["model"] == s["winner"] == report["selection"]["choice"]
    assert report["student"]["chosen_by"].startswith("search")
    assert s["rung_epochs"] == [1, 4, 12] and {c["architecture"] for c in s["contenders"]} == \
        {"test_efficientnet", "test_mambaout", "test_resnet"}
    assert all(sc["epochs"] == 4 for c in s["contenders"] for sc in c["scores"])  # 3 candidates: start at E/3
    # the winner's full run is the build's distillation, trained once: no search stage at 12 epochs
    search_stages = [st for st in report["compute"]["stages"] if st["stage"].startswith("search:")]
    assert search_stages and not any("(12 epochs" in st["stage"] for st in search_stages)
    # the search scored on the validation split only, never on test
    test_paths = {str(p) for p in (tiny_data / "test").rglob("*.png")}
    assert len(test_paths) == 12
    assert evaluated and all(str(x.path) not in test_paths for samples in evaluated for x in samples)
    assert "## Student selection" in (out / "report.md").read_text()
