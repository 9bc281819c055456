"""Quantization-aware distillation through a real tiny build: tried when post-training INT8 (plain and
equalized) loses too much, trained from the teacher's cache (a baseline with its own cross-entropy), written as
an INT8 QDQ file that matches its simulation, shipped, and counted in its method's compute."""

import filecmp
import json
from pathlib import Path

import numpy as np
import onnx
from typer.testing import CliRunner

import factory.quant.ladder as ladder
from factory.cli import app
from conftest import recording_plan_reads
from factory.quant.qat_distill import PARITY_STEPS, QatPlan
from factory.testing import CLASSES

runner = CliRunner()


def test_int8_that_loses_is_fine_tuned_quantization_aware_from_the_teacher_cache(tiny_recipe, tmp_path, monkeypatch):
    real = ladder.onnx_logits  # what the ladder's judge scores every file with (a whole build takes no fakes)

    def post_training_int8_is_wrong(path, preprocess, dataset, *args, **kwargs):
        logits, labels = real(path, preprocess, dataset, *args, **kwargs)
        qat = Path(path).with_name("model.qat.onnx")
        if Path(path).name != "model.onnx" and not (qat.exists() and filecmp.cmp(path, qat, shallow=False)):
            logits = np.eye(len(CLASSES), dtype=np.float32)[(labels + 1) % len(CLASSES)]
        return logits, labels

    monkeypatch.setattr(ladder, "onnx_logits", post_training_int8_is_wrong)
    args = ["build", str(tiny_recipe), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--no-gate", "--set", "ship=distilled", "--set", "export.max_accuracy_drop=0.05",
            "--set", "export.qat_epochs=2", "--set", "baseline.pretrained=false", "--set", "distill.epochs=6",
            "--set", "teacher.epochs=4"]
    with recording_plan_reads() as reads:
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {f for plan, f in reads if plan == "QatPlan"} == set(QatPlan.__dataclass_fields__)  # read when it runs
    report = json.loads((tmp_path / "out" / "report.json").read_text())

    quant = report["export"]["quantization"]
    remedies = [a["remedy"] for a in quant["attempts"]]
    assert remedies[:3] == ["ptq"] * 3 and "equalized" in remedies and remedies[-1] == "qat"
    assert quant["accepted"] and quant["attempts"][-1]["used"] and "float-layers" not in remedies
    qat = quant["qat"]
    assert qat["objective"] == "distillation" and qat["epochs"] == 2 and qat["flops"] > 0
    assert qat["parity"]["max_diff_steps"] <= PARITY_STEPS and qat["parity"]["top1_agreement"] >= 0.9

    # the kept INT8 file is the fine-tuned one: QDQ, with the FP32 file's metadata, benchmarked beside FP32
    export_key = next(s["key"] for s in report["compute"]["stages"] if s["stage"] == "export: distilled")
    folder = tmp_path / "cache" / "export" / export_key
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["model.int8.onnx", "model.onnx"]
    int8 = onnx.load(str(folder / "model.int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in int8.graph.node}
    meta = {p.key: p.value for p in int8.metadata_props}
    assert meta["precision"] == "int8" and set(json.loads(meta["classes"])) == set(CLASSES)
    assert "distilled-int8" in {r["name"] for r in report["results"]}

    methods = report["compute"]["methods"]
    assert "quantization-aware fine-tuning" in methods["distilled"]["includes"]
    assert "quantization-aware fine-tuning" in methods["scratch"]["includes"]  # the scratch baseline's, with CE
    distill_flops = next(s["flops"] for s in report["compute"]["stages"] if s["kind"] == "distill")
    assert np.isclose(methods["distilled"]["build_flops"], distill_flops + report["compute"]["methods"]["teacher"][
        "build_flops"] + _teacher_cache_flops(report) + qat["flops"], rtol=1e-6)
    assert "quantization-aware fine-tuning" in (tmp_path / "out" / "report.md").read_text()


def _teacher_cache_flops(report) -> float:
    return sum(s["flops"] for s in report["compute"]["stages"] if s["kind"] == "teacher_cache")
