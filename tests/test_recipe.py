from pathlib import Path

import pytest

from factory.errors import RecipeError
from factory.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def test_shipped_recipes_are_valid():
    cpu = load_recipe(REPO / "recipes" / "flowers12_cpu.yaml")
    assert cpu.name == "flowers12_cpu" and cpu.student.model == "auto" and cpu.data.val_fraction > 0
    assert cpu.data.root.is_absolute()  # relative paths resolve against the recipe file
    from factory.models import checkpoint_architecture, create_model
    from factory.decide.search import student_recipe, with_student

    # the committed Tiny ImageNet checkpoints it starts from load into their architectures for 12 classes;
    # baseline.weights is their folder: the student the search chooses gets its own, if there is one
    students = {model: with_student(cpu, model).baseline for model in ("resnet18", "resnet10t", "ghostnet_100")}
    assert not students["ghostnet_100"].pretrained and not students["ghostnet_100"].distill_pretrained
    checkpoints = [(cpu.teacher.model, cpu.teacher.weights)]
    for model in ("resnet18", "resnet10t"):
        assert students[model].pretrained and checkpoint_architecture(students[model].weights) == model
        checkpoints.append((model, students[model].weights))
    for model, weights in checkpoints:
        assert (Path(weights) / "pretrain_report.json").is_file()
        assert create_model(model, weights, num_classes=12).get_classifier().out_features == 12
    named = cpu.model_copy(update={"student": cpu.student.model_copy(update={"model": "resnet10t"})})
    assert student_recipe(named, "resnet10t", False, []).baseline == students["resnet10t"]  # one policy for both
    with pytest.raises(RecipeError, match="holds no checkpoint of ghostnet_100, but student.model is ghostnet_100"):
        student_recipe(cpu, "ghostnet_100", False, [])
    notes = []
    assert not student_recipe(cpu, "ghostnet_100", True, notes).baseline.pretrained  # searched: skipped, said
    assert len(notes) == 1 and "auto chose ghostnet_100" in notes[0]
    mobile = load_recipe(REPO / "recipes" / "mobile_flowers.yaml")
    assert mobile.augment.enabled and mobile.teacher.weights is not None


def test_set_overrides_any_field_with_types(tiny_recipe):
    recipe = load_recipe(tiny_recipe, ["distill.epochs=7", "name=other", "distill.weights.kd=0.5", "export.quantize=none"])
    assert recipe.distill.epochs == 7 and recipe.name == "other"
    assert recipe.distill.weights.kd == 0.5 and recipe.export.quantize == "none"


def test_unknown_and_invalid_fields_are_all_reported(tiny_recipe):
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe, ["distill.epochz=3", "distill.lr=-1", "budget.profile=toaster"])
    msg = str(info.value)
    assert "tiny.yaml" in msg and "3 problems" in msg
    assert "distill.epochz: unknown field" in msg
    assert "distill.lr" in msg and "-1" in msg
    assert "budget.profile" in msg and "toaster" in msg and "x86-avx2" in msg


def test_bad_override_syntax(tiny_recipe):
    with pytest.raises(RecipeError, match="expected KEY.PATH=VALUE"):
        load_recipe(tiny_recipe, ["distill.epochs"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: line \d+"):
        load_recipe(bad)


def test_teacher_weights_rules(tiny_recipe):
    with pytest.raises(RecipeError, match="teacher.weights is null"):
        load_recipe(tiny_recipe, ["teacher.adapt=finetune"])
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tiny_recipe, ["teacher.adapt=finetune", "teacher.weights=/no/such/ckpt.safetensors"])
    recipe = load_recipe(tiny_recipe, ["teacher.adapt=linear_probe", "teacher.weights=hf-hub:timm/resnet50.a1_in1k"])
    assert recipe.teacher.weights == "hf-hub:timm/resnet50.a1_in1k"


def test_fingerprint_changes_with_content(tiny_recipe):
    assert load_recipe(tiny_recipe).fingerprint() == load_recipe(tiny_recipe).fingerprint()
    assert load_recipe(tiny_recipe).fingerprint() != load_recipe(tiny_recipe, ["distill.epochs=3"]).fingerprint()


def test_shipped_pretrain_recipes_are_valid():
    from factory.pretrain import load_pretrain_recipe

    for model in ("resnet18", "resnet26"):
        recipe = load_pretrain_recipe(REPO / "recipes" / f"pretrain_tinyimagenet_{model}.yaml")
        assert recipe.model == model and recipe.budget.seconds > 0 and recipe.data.root.is_absolute()


def test_a_profile_spelled_out_takes_every_device_field(tiny_recipe):
    """The recipe's profile mapping is the DeviceProfile itself: reduce_range (7-bit weights) is writable too."""
    from factory.stages.export import ExportPlan

    text = Path(tiny_recipe).read_text().replace(
        "  profile: x86-avx2", "  profile: {name: old-x86, threads: 2, machine: [x86_64], isa: [avx2], reduce_range: true}")
    Path(tiny_recipe).write_text(text)
    recipe = load_recipe(tiny_recipe, ["export.quantize=auto"])
    device = recipe.budget.device()
    assert device.name == "old-x86" and device.machine == ("x86_64",) and device.reduce_range and device.int8_exact
    assert ExportPlan.from_recipe(recipe, True).reduce_range
    Path(tiny_recipe).write_text(text.replace("reduce_range: true", "reduce_rang: true"))
    with pytest.raises(RecipeError, match="reduce_rang"):
        load_recipe(tiny_recipe)


def test_a_tag_that_would_construct_an_object_is_refused_with_its_place(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nteacher: !!python/object/apply:os.system [ls]\n")
    with pytest.raises(RecipeError, match=r"r.yaml: line 2, column 10: not valid YAML: could not determine a constructor"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"--set 'distill.epochs=\*a': an alias"):
        load_recipe(_minimal(tmp_path), ["distill.epochs=*a"])


def _minimal(folder: Path) -> Path:
    path = folder / "minimal.yaml"
    path.write_text("name: r\ndata: {root: .}\nteacher: {model: resnet18, adapt: scratch}\n")
    return path
