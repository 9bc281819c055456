"""End-to-end: the tiny recipe through the real CLI, then the cache on a second run."""

import json
from pathlib import Path

import onnxruntime as ort
from typer.testing import CliRunner

from factory.cli import app

runner = CliRunner()


def _build(recipe, tmp_path, *extra):
    args = ["build", str(recipe), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--device", "cpu", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "out" / "report.json").read_text())


def test_tiny_build_end_to_end_then_cached(tiny_recipe, tmp_path):
    report = _build(tiny_recipe, tmp_path)
    out = tmp_path / "out"
    for name in ("student.onnx", "student.int8.onnx", "labels.json", "report.md", "report.json", "report.html",
                 "accuracy_latency.png", "training_curves.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "labels.json").read_text()) == ["blue", "green", "red"]

    results = {r["name"]: r for r in report["results"]}
    assert set(results) == {"distilled", "distilled-int8", "scratch", "teacher"}
    for r in results.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["size_mb"] > 0
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
    assert results["distilled-int8"]["size_mb"] < results["distilled"]["size_mb"]
    assert report["shipped"]["file"] in ("student.onnx", "student.int8.onnx")
    assert isinstance(report["budget"]["met"], bool)
    assert {c["name"] for c in report["budget"]["checks"]} >= {"latency_ms (p50, batch 1)", "max_size_mb", "min_accuracy"}
    assert any("pretrain-then-finetune baseline skipped" in n for n in report["notes"])
    assert report["export"]["parity"]["top1_agreement"] == 1.0
    stages = {s["stage"]: s for s in report["compute"]["stages"]}
    assert stages["distill"]["flops"] > 0 and stages["teacher_cache"]["flops"] > 0
    assert not any(s["cached"] for s in stages.values())
    assert "| distilled |" in (out / "report.md").read_text()

    meta = ort.InferenceSession(str(out / "student.int8.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == ["blue", "green", "red"] and meta["precision"] == "int8"

    again = _build(tiny_recipe, tmp_path)
    assert all(s["cached"] for s in again["compute"]["stages"])
    assert again["results"] == report["results"]

    changed = _build(tiny_recipe, tmp_path, "--set", "distill.epochs=1")
    cached = {s["stage"]: s["cached"] for s in changed["compute"]["stages"]}
    assert cached["select"] and cached["teacher"] and cached["teacher_cache"]
    assert not cached["distill"] and not cached["export_distilled"]

    reseeded = _build(tiny_recipe, tmp_path, "--set", "distill.seed=1")  # another student seed: same teacher
    cached = {s["stage"]: s["cached"] for s in reseeded["compute"]["stages"]}
    assert cached["teacher"] and not cached["teacher_cache"] and not cached["distill"]


def test_bad_recipe_is_one_clear_line(tiny_recipe):
    result = runner.invoke(app, ["build", str(tiny_recipe), "--set", "distill.epochs=zero"])
    assert result.exit_code == 2
    assert "distill.epochs" in result.output and "zero" in result.output
    assert "Traceback" not in result.output


def test_missing_data_exit_code(tiny_recipe, tmp_path):
    result = runner.invoke(app, ["validate", str(tiny_recipe), "--set", f"data.root={tmp_path / 'nowhere'}"])
    assert result.exit_code == 3 and "nowhere" in result.output and "Traceback" not in result.output


def test_validate_ok(tiny_recipe):
    result = runner.invoke(app, ["validate", str(tiny_recipe)])
    assert result.exit_code == 0 and "3 classes" in result.output


def test_default_recipe_validates_on_real_flowers12():
    import pytest

    from conftest import FLOWERS12

    if not FLOWERS12.is_dir():
        pytest.skip(f"flowers12 not at {FLOWERS12}")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "flowers12_cpu.yaml"
    result = runner.invoke(app, ["validate", str(recipe), "--set", f"data.root={FLOWERS12}"])
    assert result.exit_code == 0, result.output
    assert "12 classes, 720 train / 0 val / 240 test images" in result.output


def test_pretrain_then_finetune_baseline_from_local_checkpoint(tiny_recipe, tmp_path):
    import torch
    from safetensors.torch import save_file

    from factory.models import create_model

    torch.manual_seed(1)
    ckpt = tmp_path / "pretrained.safetensors"
    save_file(create_model("test_efficientnet", None, 10).state_dict(), str(ckpt))  # another task's head
    report = _build(tiny_recipe, tmp_path, "--set", f"baseline.weights={ckpt}", "--set", "baseline.pretrain_flops=1e15",
                    "--set", "baseline.scratch=false", "--set", "export.quantize=none")
    results = {r["name"]: r for r in report["results"]}
    assert set(results) == {"distilled", "pretrained-finetuned", "teacher"}
    methods = report["compute"]["methods"]
    baseline = methods["pretrained-finetuned"]
    assert baseline["pretrain_flops"] == 1e15 and baseline["flops"] > 1e15
    assert "the student's pre-training" in baseline["includes"] and baseline["build_flops"] == baseline["flops"] - 1e15
    assert methods["distilled"]["pretrain_flops"] == 0.0  # the tiny recipe's teacher is trained from scratch
    assert any("compute with pre-training included" in n for n in report["notes"])
    assert report["shipped"]["file"] == "student.onnx"
