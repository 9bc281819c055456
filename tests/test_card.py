"""The model card and the licences of a build's inputs: generated from the typed report, valid Hugging Face front
matter, the most restrictive licence first, a warning (or, with noncommercial: fail, an error) when a
non-commercial input reaches the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from factory.licenses import InputLicense, input_licenses, is_noncommercial, warning_line, weights_license
from factory.recipe import load_recipe
from factory.report.card import model_card
from factory.report.schema import Licensing, Report

FIXTURE = Path(__file__).parent / "fixtures" / "report.json"


@pytest.fixture
def report() -> Report:
    return Report.load(FIXTURE)


def test_the_card_is_valid_front_matter_with_the_measured_accuracy(report):
    card = ModelCard(str(model_card(report)))  # parsed back as the hub parses it
    data = card.data.to_dict()
    assert data["library_name"] == "onnx" and data["pipeline_tag"] == "image-classification"
    assert data["license"] == "other" and "int8" in data["tags"]
    results = data["model-index"][0]["results"][0]
    accuracy = {m["name"]: m["value"] for m in results["metrics"]}
    published = {r.file: r.accuracy for r in report.results if r.file}
    forms = {c.file: c.accuracy for c in (report.export.image_input, report.export.mobile) if c is not None}
    assert len(forms) == 2 and report.export.openvino is None  # a form not written has no result
    assert accuracy == {f"test accuracy ({f})": round(a, 4) for f, a in {**published, **forms}.items()}
    assert results["dataset"]["split"] == "test"
    text = card.text
    for expected in ("`blue`, `green`, `red`", "## Preprocessing and use", report.host.cpu, "## Limits",
                     "## Licences of the inputs", "student.int8.onnx"):
        assert expected in text, expected


def test_a_noncommercial_input_is_named_first_and_warned(report, tmp_path, tiny_recipe):
    assert is_noncommercial("cc-by-nc-4.0") and is_noncommercial("other (sai-nc-community)")
    assert not is_noncommercial("apache-2.0") and not is_noncommercial("unknown") and not is_noncommercial("mit")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text(json.dumps({"architecture": "test_resnet", "license": "apache-2.0"}))
    recipe = load_recipe(tiny_recipe, ["data.license=cc-by-nc-4.0", f"baseline.weights={weights}"])
    inputs = input_licenses(recipe, "pretrained-finetuned", 0, str(weights), "imagefolder flowers")
    assert [i.input for i in inputs] == ["data", "baseline"]
    assert inputs[0].noncommercial and inputs[0].reaches_shipped and inputs[0].source == "recipe"
    assert inputs[1].license == "apache-2.0" and inputs[1].source == "config.json" and inputs[1].reaches_shipped
    assert "data (imagefolder flowers) under cc-by-nc-4.0" in warning_line(inputs)
    shown = report.model_copy(update={"licensing": Licensing(policy="warn", model_license=None, inputs=inputs)})
    text = str(model_card(shown))
    assert text.index("**Non-commercial input:** data: cc-by-nc-4.0") < text.index("## Classes")
    assert text.index("| data | imagefolder flowers | cc-by-nc-4.0 (non-commercial)") < text.index("| baseline |")
    # a distilled model does not start from the baseline's weights
    distilled = input_licenses(recipe, "distilled", 0, str(weights), "imagefolder flowers")
    assert not next(i for i in distilled if i.input == "baseline").reaches_shipped


def test_weights_record_their_licence_or_say_they_do_not(tmp_path):
    assert weights_license("resnet18", "timm") == ("apache-2.0", "timm's registry")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    assert weights_license("resnet18", str(tmp_path)) == (None, "not recorded")


def test_noncommercial_fail_exits_11_after_publishing(report):
    from factory.cli import check_licences
    from factory.errors import LicenceError

    nc = InputLicense("augment", "diffusion pipeline sd-turbo", "other (sai-nc-community)", "model card", True, True)
    warned = report.model_copy(update={"licensing": Licensing(policy="warn", model_license=None, inputs=[nc])})
    check_licences(warned, Path("out"))  # a warning only
    failed = report.model_copy(update={"licensing": Licensing(policy="fail", model_license=None, inputs=[nc])})
    with pytest.raises(LicenceError, match="augment: diffusion pipeline sd-turbo under other .sai-nc-community.*out"):
        check_licences(failed, Path("out"))
    assert LicenceError.exit_code == 11
