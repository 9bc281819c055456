"""Student selection by measurement, on timm's tiny test models."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from factory.cli import app
from factory.latency import Latency, latency_band
from factory.stages.select import CANDIDATES, candidate_names
from factory.decide.listing import CandidateRow, Prior, accuracy_priors, admit, check_limits, mark_pareto_front

runner = CliRunner()
TINY = "student.candidates=[test_resnet,test_efficientnet,test_mambaout]"


def _latency(p50: float) -> Latency:
    band = latency_band([p50] * 5, 0.1)
    return Latency(p50=p50, low=band.low, high=band.high, rounds_p50=[p50] * 5, p90=p50, p99=p50, mean=p50, std=0,
                   runs=50, batch_size=1, threads=2, provider="CPUExecutionProvider")


def _row(name: str, top1: float | None, p50: float, params: int = 1_000_000) -> CandidateRow:
    return CandidateRow(name, Prior(top1, f"{name}.x", "") if top1 is not None else None, params, 10_000_000, 1.0,
                        "int8", _latency(p50), "this host")


def _recipe(tiny_recipe, *overrides):
    from factory.recipe import load_recipe

    return load_recipe(tiny_recipe, ["student.model=auto", *overrides])


def test_candidates_that_fit_are_admitted_in_prior_order(tiny_recipe):
    recipe = _recipe(tiny_recipe, "budget.latency_ms=2.0", "budget.max_params=5000000")
    rows = [_row("accurate-but-slow", 80.0, 3.0), _row("too-big", 79.0, 0.5, params=9_000_000),
            _row("fits-best", 75.0, 1.0), _row("fits-worse", 70.0, 0.4), _row("tie-slower", 75.0, 1.2),
            _row("unknown-prior", None, 0.1), _row("borderline", 78.0, 1.9)]
    for r in rows:
        check_limits(r, recipe.budget)
    assert [r.architecture for r in rows if r.fits] == ["fits-best", "fits-worse", "tie-slower", "unknown-prior"]
    assert "latency" in rows[0].misses[0] and "not met" in rows[0].misses[0]
    assert rows[1].misses == ["params 9M > 5M"]
    assert "inconclusive" in rows[6].misses[0]  # its band straddles the limit: not counted as fitting
    # without a regime prior: ImageNet top-1, ties by lower latency (fits-best over tie-slower)
    assert [r.architecture for r in admit(rows, {}, 9)] == ["fits-best", "tie-slower", "fits-worse", "unknown-prior"]
    mark_pareto_front(rows)
    assert {r.architecture for r in rows if r.pareto} == {"accurate-but-slow", "too-big", "fits-worse"}
    assert [r.architecture for r in admit([_row("a", None, 1.0), _row("b", None, 0.5)], {}, 1)] == ["b"]


def test_curated_candidates_exist_and_have_priors():
    import timm

    assert len(CANDIDATES) >= 15 and set(CANDIDATES) <= set(timm.list_models())
    priors, source = accuracy_priors()
    assert "results-imagenet.csv" in source
    known = [c for c in CANDIDATES if priors.get(c) and priors[c].top1 is not None]
    assert len(known) >= 15 and all(40 < priors[c].top1 < 90 for c in known)
    assert candidate_names(["mobilenetv3_*"], ["*_050"]) == ["mobilenetv3_small_100", "mobilenetv3_large_100"]
    assert candidate_names(["test_resnet"], []) == ["test_resnet"]  # any timm architecture by exact name
    from factory.errors import RecipeError

    with pytest.raises(RecipeError, match="student.candidates.*'nosuchnet'"):
        candidate_names(["nosuchnet"], [])


def test_students_lists_measures_caches_and_chooses(tiny_recipe, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    args = ["students", str(tiny_recipe), "--set", TINY, "--cache-dir", cache, "--json", str(tmp_path / "l.json"),
            "--plot", str(tmp_path / "front.png"), "--export", str(tmp_path / "onnx")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    listing = json.loads((tmp_path / "l.json").read_text())
    rows = {r["architecture"]: r for r in listing["candidates"]}
    assert set(rows) == {"test_resnet", "test_efficientnet", "test_mambaout"}
    for r in rows.values():
        assert r["prior_top1"] is None  # unknown priors stay unknown
        assert r["error"] is None and r["params"] > 0 and r["macs"] > 0 and r["size_mb"] > 0
        assert r["precision"] == "int8" and r["latency_ms"]["low"] <= r["latency_ms"]["p50"] <= r["latency_ms"]["high"]
    fastest = min(rows.values(), key=lambda r: r["latency_ms"]["p50"])
    assert listing["admitted"][0] == fastest["architecture"]  # unknown priors: ordered by latency
    assert listing["choice"] is None and "ranks the candidates" in listing["rule"]  # the build decides by search
    assert (tmp_path / "front.png").stat().st_size > 0
    exported = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert exported == ["test_efficientnet.int8.onnx", "test_mambaout.int8.onnx", "test_resnet.int8.onnx"]

    # a second listing is served from the cache: nothing exported, nothing measured
    def fail(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr("factory.stages.select.measure", fail)
    monkeypatch.setattr("factory.onnx_tools.export_onnx", fail)
    again = runner.invoke(app, args[:-4])
    assert again.exit_code == 0, again.output
    assert f"admitted to the build's search, in this order: {', '.join(listing['admitted'])}" in \
        again.output.replace("\n", " ")

    # figures measured on the device replace this host's: make the slowest candidate the fastest there
    slowest = max(rows.values(), key=lambda r: r["latency_ms"]["p50"])["architecture"]
    bench = runner.invoke(app, ["bench", str(tmp_path / "onnx" / f"{slowest}.int8.onnx"), "--threads", "1",
                                "--rounds", "2", "--runs", "3", "--min-time", "0", "--json", str(tmp_path / "dev.json")])
    assert bench.exit_code == 0, bench.output
    device = json.loads((tmp_path / "dev.json").read_text())
    device["host"]["cpu"] = "Phone SoC"
    device["results"][0]["latency_ms"] |= {"p50": 1e-4, "low": 1e-4, "high": 1e-4}
    (tmp_path / "dev.json").write_text(json.dumps(device))
    measured = runner.invoke(app, args[:4] + ["--cache-dir", cache, "--measured", str(tmp_path / "dev.json"),
                                              "--json", str(tmp_path / "m.json")])
    assert measured.exit_code == 0, measured.output
    listing = json.loads((tmp_path / "m.json").read_text())
    assert listing["admitted"][0] == slowest
    row = next(r for r in listing["candidates"] if r["architecture"] == slowest)
    assert row["latency_source"].startswith("measured on Phone SoC")
    # a figure recorded for another file than the candidate (its sha256) is refused, naming both
    device["results"][0]["sha256"] = "0" * 64
    (tmp_path / "dev.json").write_text(json.dumps(device))
    other = runner.invoke(app, args[:4] + ["--cache-dir", cache, "--measured", str(tmp_path / "dev.json")])
    text = " ".join(other.output.split())
    assert other.exit_code == 2 and f"its {slowest} figure was measured on" in text and "not on the candidate" in text


def test_a_malformed_measured_file_is_refused_when_the_recipe_loads(tiny_recipe, tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"model": "x", "p50": "fast"}))
    result = runner.invoke(app, ["validate", str(tiny_recipe), "--set", f"budget.measured=[{bad}]"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "budget.measured" in text and "not a `factory bench --json` file: host" in text
    latency = {"p50": "fast", "low": 1, "high": 1, "rounds_p50": [1], "p90": 1, "p99": 1, "mean": 1, "std": 0,
               "runs": 1, "batch_size": 1, "threads": 1, "provider": "CPUExecutionProvider"}
    bad.write_text(json.dumps({"host": {"cpu": "x"}, "results": [{"model": "m.onnx", "image_size": 32,
                                                                  "latency_ms": latency}]}))
    result = runner.invoke(app, ["validate", str(tiny_recipe), "--set", f"budget.measured=[{bad}]"])
    assert result.exit_code == 2 and "results.0.latency_ms.p50" in " ".join(result.output.split())


def test_no_candidate_fits_exits_with_the_nearest_misses(tiny_recipe, tmp_path):
    result = runner.invoke(app, ["students", str(tiny_recipe), "--set", TINY, "--set", "budget.latency_ms=0.00001",
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 8, result.output
    assert "no candidate student fits" in result.output and "nearest misses" in result.output
    assert "latency" in result.output and "Traceback" not in result.output


def test_build_with_auto_uses_the_choice_and_reports_the_candidates(tiny_recipe, tmp_path):
    from factory.data import preprocess_for
    from factory.models import create_model, save_trained

    # local pretrain-then-finetune weights of another architecture than the one auto will choose
    weights = tmp_path / "resnet_weights"
    model = create_model("test_resnet", None, 3)
    save_trained(model, preprocess_for(model, 32), ["a", "b", "c"], weights)
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", str(tiny_recipe), "--set", "student.model=auto", "--set",
                                 "student.candidates=[test_efficientnet,test_mambaout]", "--set",
                                 f"baseline.weights={weights}", "--cache-dir", str(tmp_path / "cache"), "--out",
                                 str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    selection = report["selection"]
    assert report["student"]["model"] == selection["choice"] and report["student"]["chosen_by"].startswith("search")
    assert {r["architecture"] for r in selection["candidates"]} == {"test_efficientnet", "test_mambaout"}
    assert (out / "students.png").stat().st_size > 0 and "## Student selection" in (out / "report.md").read_text()
    assert any("pretrain-then-finetune baseline skipped" in n and "test_resnet weights" in n for n in report["notes"])
    assert "pretrained-finetuned" not in {r["method"] for r in report["results"]}


def test_size_limits_are_checked_before_anything_is_exported(tiny_recipe, tmp_path, monkeypatch):
    exported = []
    real = __import__("factory.decide.listing", fromlist=["build_candidate"]).build_candidate

    def spy(rt, plan):
        exported.append(plan.architecture)
        return real(rt, plan)

    monkeypatch.setattr("factory.decide.listing.build_candidate", spy)
    result = runner.invoke(app, ["students", str(tiny_recipe), "--set", TINY, "--set", "budget.max_params=1",
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 8, result.output  # nothing fits
    assert exported == [] and "params" in result.output


def test_search_settings_apply_only_to_auto(tiny_recipe):
    from factory.errors import RecipeError
    from factory.recipe import load_recipe

    with pytest.raises(RecipeError, match="apply only with student.model: auto"):
        load_recipe(tiny_recipe, ["student.search.eta=2"])
    with pytest.raises(RecipeError, match="rungs must increase"):
        load_recipe(tiny_recipe, ["student.model=auto", "student.search.rungs=[0.5, 0.2, 1.0]"])
    assert load_recipe(tiny_recipe, ["student.model=auto", "student.search.eta=2"]).student.search.eta == 2
