"""End-to-end: the tiny recipe through the real CLI, then the cache, fairness and gates on later runs."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from factory.stage import Plan
from factory.cli import app
from factory.models import create_model
from factory.pipeline import BuildPlans
from factory.recipe import load_recipe
from factory.sources import load_task_data
from factory.quant.qat import int8_conv_exact
from conftest import cli_build

runner = CliRunner()


NO_BASELINES = ("--set", "baseline.scratch=false", "--set", "baseline.pretrained=false")

APPS = "apps: the shipped model's forms"
"""The stage that makes the published model's forms for apps. They carry the recipe hash in their metadata, as the
published ONNX files do, so any recipe edit (a report-only one too) or another shipped file makes them again."""


def _plans(plan, path=""):
    """(dotted path, plan) of a plan and of every plan nested in it."""
    import dataclasses

    yield path, plan
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        if isinstance(value, Plan):
            yield from _plans(value, f"{path}.{f.name}")


def _results(report) -> dict:
    return {r.name: r for r in report.results}


def test_the_build_publishes_the_model_its_labels_and_its_report(tiny_build):
    for name in ("student.onnx", "student.int8.onnx", "labels.json", "report.md", "report.json", "report.html",
                 "accuracy_latency.png", "training_curves.png"):
        assert (tiny_build.out / name).is_file(), name
    assert json.loads((tiny_build.out / "labels.json").read_text()) == ["blue", "green", "red"]
    assert "**Shipped:**" in (tiny_build.out / "report.md").read_text().split("## Results")[0]


def test_every_plan_field_in_a_key_is_read_by_its_stage(tiny_build, tiny_checkpoint):
    """Nothing in a key goes unused (the quantization-aware remedy's plan is read when that remedy runs:
    tests/test_qat_distill.py)."""
    recipe = load_recipe(tiny_build.recipe, [f"baseline.weights={tiny_checkpoint}"])
    plans = BuildPlans.from_recipe(recipe, load_task_data(recipe.data), int8_conv_exact())
    unread = [f"{name}{path}.{f}" for name in ("select", "teacher", "teacher_cache", "distill", "scratch", "finetune",
                                               "export", "bench")
              for path, plan in _plans(getattr(plans, name)) if not path.startswith(".qat")
              for f in plan.__dataclass_fields__ if getattr(plan, f) is not None
              and (type(plan).__name__, f) not in tiny_build.plan_reads]
    assert not unread, f"plan fields in cache keys that no stage read: {unread}"


def test_every_method_beats_chance_and_ships_at_one_precision(tiny_build):
    report = tiny_build.report
    results = _results(report)
    assert set(results) == {f"{m}{p}" for m in ("distilled", "scratch", "pretrained-finetuned", "teacher")
                            for p in ("", "-int8")}
    for r in results.values():
        assert 0.0 <= r.accuracy <= 1.0 and r.size_mb > 0
        assert 0 < r.latency_ms.p50 <= r.latency_ms.p90 <= r.latency_ms.p99
    assert results["distilled"].accuracy >= 0.75  # chance is 1/3 on the three learnable colour classes
    assert results["distilled-int8"].size_mb < results["distilled"].size_mb
    assert sum(r.ships for r in results.values()) == 4  # one shipped precision per model
    assert report.shipped.file in ("student.onnx", "student.int8.onnx")
    assert report.export.parity.top1_agreement == 1.0


def test_the_best_model_on_validation_ships_with_its_own_preprocessing(tiny_build):
    report = tiny_build.report
    best = max((o for o in report.shipped.options if not o.misses), key=lambda o: o.val_accuracy)
    chosen = next(o for o in report.shipped.options if o.name == report.shipped.method)
    assert chosen.val_accuracy == best.val_accuracy  # tied models ship by latency: any of them may ship
    assert "validation split" in report.data.decisions_on  # the default holds one out: never the test split
    assert report.export.quantization.checked_on == report.data.decisions_on
    # timm's data config of the shipped architecture, not a constant
    recipe = load_recipe(tiny_build.recipe)
    architecture = recipe.teacher.model if report.shipped.method == "teacher" else recipe.student.model
    interpolation = create_model(architecture, None, 3).pretrained_cfg["interpolation"]
    assert report.export.preprocess["interpolation"] == interpolation
    meta = ort.InferenceSession(str(tiny_build.out / "student.int8.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == ["blue", "green", "red"] and meta["precision"] == "int8"
    assert meta["recipe_hash"] == report.recipe_hash and meta["interpolation"] == interpolation
    assert json.loads(meta["resize_shorter_side"]) == 33 and json.loads(meta["input_size"]) == [3, 32, 32]
    assert meta["opset"] == "18"


def test_the_baselines_saw_the_students_views_and_the_report_says_so(tiny_build):
    comparison = tiny_build.report.comparison
    assert comparison.same_views and set(comparison.views_seen) == {"distilled", "scratch", "pretrained-finetuned"}
    assert "same images and views in the same order" in (tiny_build.out / "report.md").read_text()


def test_the_report_records_what_reproduces_the_build(tiny_build):
    report = tiny_build.report
    assert report.libraries["torch"] != "absent" and report.libraries["onnxruntime"] != "absent"
    assert report.git is None or len(report.git.commit) == 40  # the checkout's commit (the tests run in one)
    assert report.host.cpu and len(report.recipe_hash) == 16


def test_a_rebuild_reruns_nothing_and_reports_the_same(tiny_build, tmp_path):
    again = tiny_build.again(tmp_path)
    assert not again.reran()
    assert again.report.results == tiny_build.report.results


def test_ship_distilled_publishes_the_distilled_student_with_nothing_retrained(tiny_build, tmp_path):
    distilled = tiny_build.again(tmp_path, "--set", "ship=distilled")
    assert distilled.reran() <= {APPS} and distilled.report.shipped.method == "distilled"
    assert "ship: distilled" in distilled.report.shipped.decision


def test_a_refit_trains_the_chosen_method_on_train_and_validation_after_the_decision(tiny_build, tmp_path):
    report, refit = tiny_build.report, tiny_build.again(tmp_path, "--set", "refit=true")
    method, name = report.shipped.method, f"{report.shipped.method} (refit)"
    assert {f"refit: {method}", f"export: {name}", f"bench: {name}", APPS} <= refit.reran() <= {
        f"refit: {method}", "refit: teacher cache", f"export: {name}", f"bench: {name}", APPS}
    for key in ("method", "runner_up", "margin", "options", "tie", "tied", "why"):
        assert getattr(refit.report.shipped, key) == getattr(report.shipped, key), key  # decided as without it
    assert refit.report.shipped.refit and "refit on train + validation" in refit.report.shipped.decision
    refit_rows = [r for r in refit.report.results if r.method == name]
    assert refit_rows and all(r.val_accuracy is None for r in refit_rows)  # it trained on those images
    assert [r.precision for r in refit_rows if r.ships] == [r.precision for r in report.results
                                                            if r.method == method and r.ships]
    apps = {"image_input", "mobile", "openvino", "formats"}  # the refit model's own files, checked and timed anew
    assert refit.report.export.model_dump(exclude=apps) == report.export.model_dump(exclude=apps)  # replayed
    published = ort.InferenceSession(str(refit.out / refit.report.shipped.file)).get_modelmeta()
    assert published.custom_metadata_map["method"] == name and name in refit.report.compute.methods


def test_bench_settings_rerun_the_benchmarks_only(tiny_build, tmp_path):
    rebench = tiny_build.again(tmp_path, "--set", "bench.runs=6")
    assert rebench.reran() and all(s.startswith("bench:") or s == APPS for s in rebench.reran())


def test_the_students_weight_decay_does_not_touch_the_teacher(tiny_build, tmp_path):
    students_wd = tiny_build.again(tmp_path, "--set", "distill.weight_decay=0.01")
    assert {"distill", "baseline: scratch", "baseline: pretrained-finetuned"} <= students_wd.reran()
    assert not {"teacher: test_resnet (scratch)", "teacher cache"} & students_wd.reran()


def test_a_budget_miss_is_reported_naming_the_failing_check(tiny_build, tmp_path):
    """Every stage cached; the gate's exit code is tested on its own."""
    missed = tiny_build.again(tmp_path, "--set", "budget.latency_ms=0.0001", "--no-gate")
    assert missed.reran() <= {APPS}
    assert missed.report.budget.met is False and missed.report.budget.failed == ["latency_ms (p50, batch 1)"]
    assert "NOT met" in missed.output and "latency_ms (p50, batch 1)" in missed.output


def test_a_quantized_model_that_loses_accuracy_is_rejected_explained_and_not_published(tiny_build, tmp_path,
                                                                                        monkeypatch):
    import factory.quant.ladder as ladder

    real_logits = ladder.onnx_logits  # what the ladder's judge scores every file with

    def int8_predicts_class_0(path, preprocess, dataset, *args, **kwargs):
        logits, labels = real_logits(path, preprocess, dataset, *args, **kwargs)
        if Path(path).name.startswith("model.int8"):
            logits = np.zeros_like(logits)
            logits[:, 0] = 1.0
        return logits, labels

    monkeypatch.setattr(ladder, "onnx_logits", int8_predicts_class_0)
    rejected = tiny_build.again(tmp_path, "--set", "export.max_accuracy_drop=0.05")
    assert not (rejected.out / "student.int8.onnx").exists()
    assert rejected.report.shipped.file == "student.onnx"
    quant = rejected.report.export.quantization
    assert not quant.accepted and quant.file is None and "not published" in quant.reason
    assert any("int8 rejected" in n for n in rejected.report.notes)
    assert "rejected, not published" in (rejected.out / "report.md").read_text()
    assert not any(r.name.endswith("-int8") for r in rejected.report.results)


def test_offline_hub_baseline_is_skipped_with_a_note(tiny_recipe, tmp_path):
    from factory.cache import StageCache
    from factory.context import Runtime
    from factory.stages.baselines import BaselinePlan, try_baseline

    recipe = load_recipe(tiny_recipe)  # baseline.weights: timm, and the hub is unreachable
    data = load_task_data(recipe.data)
    baseline, note = try_baseline(Runtime(data, StageCache(tmp_path), torch.device("cpu")),
                                  BaselinePlan.from_recipe(recipe, "finetune", data.num_classes))
    assert baseline is None and note.startswith("pretrain-then-finetune baseline skipped") and "hub" in note


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
    from conftest import FLOWERS12

    if not FLOWERS12.is_dir():
        pytest.skip(f"flowers12 not at {FLOWERS12}")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "flowers12_cpu.yaml"
    result = runner.invoke(app, ["validate", str(recipe), "--set", f"data.root={FLOWERS12}"])
    assert result.exit_code == 0, result.output
    assert "12 classes, 576 train / 144 val / 240 test images" in result.output


def test_compute_counts_the_pretraining_behind_the_baseline(tiny_recipe, tmp_path, tiny_checkpoint):
    report = cli_build(tiny_recipe, tmp_path / "cache", tmp_path / "out", "--set", f"baseline.weights={tiny_checkpoint}",
                       "--set", "baseline.pretrain_flops=1e15", "--set", "baseline.scratch=false",
                       "--set", "export.quantize=none", "--set", "teacher.epochs=1", "--set", "distill.epochs=1",
                       "--set", "baseline.distill_pretrained=true").report
    assert set(_results(report)) == {"distilled", "distilled-pretrained", "pretrained-finetuned", "teacher"}
    # the fourth method starts from the student's pretrained weights: its compute counts that pre-training
    methods = report.compute.methods
    fourth = methods["distilled-pretrained"]
    assert fourth.pretrain_flops == 1e15 and "distillation" in fourth.includes
    baseline = methods["pretrained-finetuned"]
    assert baseline.pretrain_flops == 1e15 and baseline.flops > 1e15
    assert "the student's pre-training" in baseline.includes and baseline.build_flops == baseline.flops - 1e15
    assert methods["distilled"].pretrain_flops == 0.0  # the tiny recipe's teacher is trained from scratch
    assert any("compute with pre-training included" in n for n in report.notes)
    assert report.shipped.file == "student.onnx"


def test_gate_exits_9_naming_the_missed_check_and_keeps_the_outputs(tiny_build, tmp_path):
    base = (*NO_BASELINES, "--set", "budget.max_size_mb=0.001", "--set", "budget.max_memory_mb=1")
    missed = tiny_build.again(tmp_path, *base, exit_code=9)
    assert "misses its budget: max_size_mb" in missed.output and "limit 0.001" in missed.output
    assert "max_memory_mb" in missed.output and "MB (not met, limit 1)" in missed.output  # a process's peak memory
    assert missed.report.budget.failed == ["max_size_mb", "max_memory_mb"]
    tiny_build.again(tmp_path, *base, "--no-gate")


def test_strict_latency_fails_an_inconclusive_latency():
    from factory.cli import check_gate
    from factory.errors import BudgetMissed
    from factory.budget import BudgetCheck
    from factory.fields import Band
    from factory.report.budget import Budget

    check = BudgetCheck(name="latency_ms (p50, batch 1)", limit=2.0, value=1.9, unit="ms", verdict="inconclusive",
                        met=False, band=Band(p50=1.9, low=1.5, high=2.3))
    budget = Budget(verdict="inconclusive", met=False, failed=[], inconclusive=[check.name], model="distilled-int8",
                    profile="x86-avx2", profile_description="", measured_on="x86_64", host_matches_profile=True,
                    stand_in="", checks=[check])
    check_gate(budget, Path("out"))
    with pytest.raises(BudgetMissed, match="latency_ms .*inconclusive, limit 2"):
        check_gate(budget, Path("out"), strict_latency=True)


def test_a_noncommercial_input_warns_in_the_summary_and_the_card_and_fails_when_asked(tiny_build, tmp_path):
    base = (*NO_BASELINES, "--set", "export.quantize=none", "--set", "data.license=cc-by-nc-4.0",
            "--set", "teacher.epochs=1")  # a teacher trained anew: its progress bar's line in the log
    warned = tiny_build.again(tmp_path, *base)
    # a log, not a terminal: a line per finished step, no blank lines, tables wider than 80 columns uncut
    assert "\n\n" not in warned.output.strip() and "…" not in warned.output
    assert any(line.startswith("teacher") and "(" in line for line in warned.output.splitlines())
    assert "non-commercial input reaches the shipped model" in " ".join(warned.output.split())
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\n") and "**Non-commercial input:** data: cc-by-nc-4.0" in card
    licensing = warned.report.licensing
    assert licensing.inputs[0].license == "cc-by-nc-4.0" and licensing.policy == "warn"
    failed = tiny_build.again(tmp_path, *base, "--set", "noncommercial=fail", exit_code=11)
    assert "noncommercial: fail" in " ".join(failed.output.split())
    assert "**Non-commercial input:**" in (tmp_path / "out" / "README.md").read_text()  # the outputs are kept


def test_the_python_api_builds_and_the_runtime_predicts(tiny_build, tmp_path, tiny_data):
    """README's example: factory.build, then the shipped file through factory.runtime.ExportedModel."""
    import factory
    from factory.runtime import ExportedModel

    overrides = [a for a in (*tiny_build.args, *NO_BASELINES) if a != "--set"] + ["refit=false"]
    result = factory.build(tiny_build.recipe, overrides, device="cpu", cache_dir=tiny_build.cache_copy(tmp_path),
                           out_dir=tmp_path / "out")
    assert result.out_dir == tmp_path / "out" and result.report.shipped.file
    image_input = result.report.export.image_input  # the shipped file with its preprocessing in the graph
    assert (result.out_dir / image_input.file).is_file() and image_input.agreement >= 0.995
    mobile = result.report.export.mobile  # onnxruntime's mobile format, checked like the ONNX file
    assert (result.out_dir / mobile.file).is_file() and mobile.agreement >= 0.995
    assert (result.out_dir / mobile.operators_config).is_file() and (result.out_dir / mobile.usability_file).is_file()
    ir = result.report.export.openvino  # OpenVINO IR, checked on test like the .ort file
    assert (result.out_dir / ir.file).is_file() and ir.agreement >= 0.9
    _every_form_names_the_fp32_files_class(result, tiny_data)
    forms = result.report.export.formats  # every form judged on validation against the ONNX file, timed beside it
    assert [f.format for f in forms] == ["onnx", "image", "ort", "openvino"] and all(f.accepted for f in forms)
    assert all(f.latency.p50 > 0 and f.vs_onnx.median > 0 for f in forms)
    markdown = (result.out_dir / "report.md").read_text()
    assert all(f"| {f.format} | `{f.file}` |" in markdown for f in forms)  # a row per format
    shipped = next(r for r in result.report.results if r.file == result.report.shipped.file)
    assert shipped.end_to_end_ms is not None and shipped.end_to_end_ms.p50 > 0  # what a user waits for, too
    model = ExportedModel.open(result.out_dir / result.report.shipped.file)
    images = sorted((tiny_data / "test").rglob("*.png"))
    predictions = list(model.predict(images))
    assert len(predictions) == len(images)
    right = sum(p.label == Path(p.file).parent.name for p in predictions)
    assert right / len(images) > 1 / 3  # better than chance over three classes


def test_a_rebuild_keeps_the_users_files_and_drops_its_own_stale_ones(tiny_build, tmp_path):
    out = tiny_build.again(tmp_path, *NO_BASELINES).out
    ort_files = list(out.glob("student*.ort"))
    assert ort_files and list(out.glob("student*.image.onnx")) and list(out.glob("student*.xml"))
    (out / "my_notes.txt").write_text("mine")
    (out / "app").mkdir()
    (out / "app" / "icon.png").write_bytes(b"png")
    tiny_build.again(tmp_path, *NO_BASELINES, "--set", "export.formats=[onnx]")  # cached: only the folder is written
    assert (out / "my_notes.txt").read_text() == "mine" and (out / "app" / "icon.png").read_bytes() == b"png"
    assert not list(out.glob("student*.ort")) and not list(out.glob("student*.image.onnx"))  # the factory's, stale
    assert not list(out.glob("student*.xml")) and not list(out.glob("student*.bin"))
    assert (out / "report.json").is_file()


def test_a_class_too_small_to_split_well_is_named_in_the_summary_and_the_report(tmp_path):
    from factory.testing import TINY_RECIPE, make_image_folder

    data = make_image_folder(tmp_path / "data", {"train": 18, "test": 4})
    for extra in sorted((data / "train" / "red").iterdir())[3:]:
        extra.unlink()  # red keeps 3 training images: 1 held out for validation
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(root=data))
    built = cli_build(recipe, tmp_path / "cache", tmp_path / "out", *NO_BASELINES, "--set", "teacher.epochs=1",
                      "--set", "distill.epochs=1", "--set", "refit=false", "--set", "export.quantize=none")
    text = " ".join(built.output.split())
    assert "class 'red' is small: 3 labelled images, 1 held out for validation and 2 to train on" in text
    assert any("class 'red' is small" in note for note in built.report.notes)
    assert not any("'green' is small" in note for note in built.report.notes)


def _every_form_names_the_fp32_files_class(result, tiny_data) -> None:
    """The image-input, .ort and IR files agree with the shipped model's ONNX FP32 file on 99% of the test images."""
    from factory.formats import form_logits
    from factory.runtime import ExportedModel

    fp32 = result.out_dir / "student.onnx"  # the shipped model at FP32, published beside its INT8 file
    reference = ExportedModel.open(fp32, 1)
    images = [Image.open(p).convert("RGB") for p in sorted((tiny_data / "test").rglob("*.png"))]
    expected = form_logits("onnx", fp32, images, reference, 1).argmax(1)
    export = result.report.export
    for form, check in (("image", export.image_input), ("ort", export.mobile), ("openvino", export.openvino)):
        got = form_logits(form, result.out_dir / check.file, images, reference, 1).argmax(1)
        assert (got == expected).mean() >= 0.99, (form, check.file, (got == expected).mean())
