"""The torch-free runtime: the build's evaluation preprocessing redone with Pillow and NumPy, `factory info`
and `factory predict`, and no torch import on those paths."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from factory.cli import app
from factory.data import EvalImages, ImageStore, Preprocess
from factory.errors import ModelError
from factory.models import create_model
from factory.recipe import DataConfig
from factory.runtime import ExportedModel
from factory.sources import load_task_data
from factory.onnx_tools import export_onnx, onnx_logits

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_data):
    torch.manual_seed(0)
    pre = Preprocess(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), crop_pct=0.9, interpolation="bicubic")
    path = tmp_path_factory.mktemp("rt") / "model.onnx"
    data = load_task_data(DataConfig(root=tiny_data))
    export_onnx(create_model("test_resnet", None, 3).eval(), pre, path,
                {"classes": json.dumps(data.classes), **pre.metadata(), "precision": "fp32"}, opset=18)
    return path, pre, data


def test_runtime_preprocessing_is_the_builds_bit_for_bit(exported):
    from PIL import Image

    path, pre, data = exported
    model = ExportedModel.open(path)
    build_images = EvalImages(data.test, ImageStore(), pre)
    for i, sample in enumerate(data.test):
        with Image.open(sample.path) as raw:
            ours = model.preprocess(raw)
        theirs = pre(build_images[i][0].unsqueeze(0))[0].numpy()
        assert np.array_equal(ours, theirs), sample.path


def test_predict_folder_reproduces_the_builds_predictions(exported):
    path, pre, data = exported
    logits, labels = onnx_logits(path, pre, EvalImages(data.test, ImageStore(), pre))
    result = runner.invoke(app, ["predict", str(path), str(data.root / "test"), "--json", "--top", "2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    by_file = {r["file"]: r["label"] for r in rows}
    expected = {str(s.path): data.classes[k] for s, k in zip(data.test, logits.argmax(1))}
    assert by_file == expected  # image by image
    assert summary["correct"] == int((logits.argmax(1) == labels).sum()) and summary["labelled"] == len(data.test)
    assert len(rows[0]["top"]) == 2 and rows[0]["top"][0]["label"] == rows[0]["label"]


def test_info_and_errors(exported, tmp_path):
    path, _, data = exported
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    described = json.loads(result.output)
    assert described["classes"] == data.classes and described["preprocess"]["resize_shorter_side"] == 35
    assert described["preprocess"]["interpolation"] == "bicubic" and described["inputs"][0]["name"] == "input"
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("hello")
    result = runner.invoke(app, ["info", str(not_onnx)])
    assert result.exit_code == ModelError.exit_code and "not a loadable ONNX model" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["predict", str(path), str(empty)])
    assert result.exit_code == ModelError.exit_code and "no images" in result.output
    broken = tmp_path / "imgs"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not an image")
    (broken / "good.png").write_bytes(next((data.root / "test" / "red").iterdir()).read_bytes())
    result = runner.invoke(app, ["predict", str(path), str(broken), "--json"])
    assert result.exit_code == 0 and json.loads(result.output.splitlines()[-1])["summary"]["skipped"] == [
        str(broken / "bad.png")]


def test_help_and_info_do_not_import_torch(exported):
    path, _, _ = exported
    code = ("import sys\nfrom factory.cli import app\nfor args in (['--help'], ['info', sys.argv[1]]):\n"
            "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_onnx_without_factory_metadata_asks_for_preprocessing(tmp_path, tiny_data):
    torch.manual_seed(0)
    path = tmp_path / "plain.onnx"
    export_onnx(create_model("test_resnet", None, 3).eval(), Preprocess(32, (0.5,) * 3, (0.5,) * 3), path, {}, opset=18)
    image = next((tiny_data / "test" / "red").iterdir())
    result = runner.invoke(app, ["predict", str(path), str(image)])
    assert result.exit_code == ModelError.exit_code
    assert "input_size, mean, std" in result.output and "--size N --mean R,G,B --std R,G,B" in result.output
    result = runner.invoke(app, ["predict", str(path), str(image), "--size", "32", "--mean", "0.5,0.5,0.5",
                                 "--std", "0.5,0.5,0.5", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0])["label"] in {"0", "1", "2"}
    result = runner.invoke(app, ["predict", str(path), str(image), "--size", "32", "--mean", "0.5,0.5", "--std", "1,1,1"])
    assert result.exit_code != 0 and "--mean" in result.output and "three" in result.output


def test_bench_provider_names_what_this_onnxruntime_has(exported):
    path, _, _ = exported
    missing = runner.invoke(app, ["bench", str(path), "--provider", "CUDAExecutionProvider", "--rounds", "1"])
    assert missing.exit_code == ModelError.exit_code
    text = " ".join(missing.output.split())
    assert "--provider CUDAExecutionProvider: this onnxruntime" in text and "CPUExecutionProvider" in text
    assert "install onnxruntime-gpu" in text
    cpu = runner.invoke(app, ["bench", str(path), "--provider", "CPUExecutionProvider", "--rounds", "1", "--runs", "2",
                              "--warmup", "0", "--min-time", "0", "--threads", "1"])
    assert cpu.exit_code == 0, cpu.output


def test_bench_with_data_gives_accuracy_and_the_end_to_end_latency(exported, tmp_path):
    path, _, data = exported
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", str(path), "--data", str(data.root / "test"), "--rounds", "2", "--runs", "3",
                                 "--warmup", "0", "--min-time", "0", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "end-to-end (decode + preprocess + model) p50" in " ".join(result.output.split())
    figures = json.loads(out.read_text())["results"][0]
    assert figures["images"] == len(data.test) and 0 < figures["end_to_end_ms"]["p50"]
    assert figures["end_to_end_ms"]["runs"] >= 6 and figures["end_to_end_ms"]["batch_size"] == 1


def test_a_folder_whose_classes_are_not_the_models_is_refused_and_unlabelled_images_are_predicted(exported, tmp_path):
    path, _, data = exported
    image = next((data.root / "test" / "red").iterdir()).read_bytes()
    wrong = tmp_path / "wrong"
    for name in ("a", "b"):
        (wrong / name).mkdir(parents=True)
        (wrong / name / "x.png").write_bytes(image)
    for command in (["predict", str(path), str(wrong)], ["bench", str(path), "--data", str(wrong), "--rounds", "1"]):
        refused = runner.invoke(app, command)
        text = " ".join(refused.output.split())
        assert refused.exit_code == ModelError.exit_code, refused.output
        assert "class folder(s) a, b are not among the model's labels" in text and "blue" in text
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "one.png").write_bytes(image)
    (loose / "two.png").write_bytes(image)
    predicted = runner.invoke(app, ["predict", str(path), str(loose), "--json"])
    assert predicted.exit_code == 0, predicted.output
    summary = json.loads(predicted.output.splitlines()[-1])["summary"]
    assert summary["images"] == 2 and "accuracy" not in summary
    unlabelled = runner.invoke(app, ["bench", str(path), "--data", str(loose), "--rounds", "1"])
    assert unlabelled.exit_code == ModelError.exit_code and "no class subfolders" in unlabelled.output
