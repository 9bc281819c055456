"""Cache keys that cannot go stale.

A stage reads the recipe only through its plan (its run gets the plan, never the recipe), and its key
hashes the plan, so a recipe field changes exactly the keys of the stages whose plans hold it. These
tests walk the recipe's pydantic schema, so a new field is covered without editing them: each field,
changed, must change the plan of at least one stage (or be one of the few fields that only the report
reads), and for a set of fields the exact stages are asserted. That every field in a plan is really
read by its stage is asserted on a real build in test_build.py.
"""

from __future__ import annotations

import json

import dataclasses
import shutil
import typing
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import save_file

from factory.identity import code_fingerprint, library_versions
from factory.stage import Stage
from factory.errors import RecipeError
from factory.models import create_model
from factory.pipeline import BuildPlans
from factory.recipe import Recipe, load_recipe
from factory.sources import load_task_data
from factory.quant.qat import int8_conv_exact

# each field's role, declared on the field (factory.config.role); the fields without one change stage plans
SEARCH = {"student.search.max_candidates", "student.search.eta", "student.search.rungs", "student.search.max_cost"}


def field_roles(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Dotted path -> role (``json_schema_extra``) of every field that declares one, from the schema."""
    roles = {}
    for name, info in model.model_fields.items():
        if isinstance(info.json_schema_extra, dict) and "role" in info.json_schema_extra:
            roles[f"{prefix}{name}"] = info.json_schema_extra["role"]
        inner = [a for a in typing.get_args(info.annotation) if a is not type(None)] or [info.annotation]
        sub = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        roles |= field_roles(sub, f"{prefix}{name}.") if sub else {}
    return roles


def with_role(*names: str) -> set[str]:
    return {path for path, role in field_roles(Recipe).items() if role in names}


def test_the_declared_roles_are_the_known_ones():
    """What the key test treats specially, declared on the fields: the set each test below relies on."""
    assert with_role("report") >= {"name", "budget.latency_ms", "budget.max_memory_mb", "ship", "refit", "license",
                                   "teacher.pretrain_flops"}
    assert "export.formats" not in with_role("report")  # the apps stage reads it
    assert with_role("execution") == {"data.num_workers", "augment.batch_size"}
    assert with_role("selection") == {"student.candidates", "student.exclude", "budget.measured", *SEARCH}
    assert with_role("data") == {"data.root", "data.val_fraction", "data.split_seed", "data.train_per_class"}
    assert "data.source" in with_role("source") and "data.splits" in with_role("source")


# fields that matter only under another setting, and that setting
CONDITIONS = {"augment.negative_prompt": ["augment.guidance_scale=2"], "augment.strength": ["augment.mode=img2img"], "data.split_seed": ["data.val_fraction=0.25"],
              "student.candidates": ["student.model=auto"], "student.exclude": ["student.model=auto"],
              **{field: ["student.model=auto"] for field in SEARCH}}
# exactly the stages that read these fields
EXPECTED = {
    # apps: the shipped model's forms are timed beside it as the benchmarks time
    **{f: {"bench", "apps"} for f in ("bench.runs", "bench.warmup", "bench.rounds", "bench.noise_band",
                                      "bench.threads", "budget.threads")},
    # export: its quantization-aware remedy trains with the students' settings, views and distillation loss
    "distill.weight_decay": {"distill", "scratch", "finetune", "export"},
    "distill.warmup_epochs": {"distill", "scratch", "finetune"},
    "distill.teacher_views": {"teacher_cache", "distill", "scratch", "finetune", "export"},
    "distill.temperature": {"distill", "export"}, "distill.proj_hidden": {"distill", "export"},
    "distill.weights.kd": {"distill", "export"}, "export.qat_epochs": {"export"}, "export.qat_lr": {"export"},
    "teacher.weight_decay": {"teacher"}, "teacher.warmup_epochs": {"teacher"}, "teacher.lr": {"teacher"},
    "export.calibration": {"export"}, "export.max_accuracy_drop": {"export", "apps"}, "export.formats": {"apps"}, "export.opset": {"export"},
    "baseline.lr": {"finetune"}, "baseline.distill_pretrained": {"distill_pretrained"}, "student.model": {"select", "distill", "scratch", "finetune"},
    "data.image_size": {"select", "teacher", "teacher_cache", "distill", "scratch", "finetune", "export"},
    "augment.steps": {"augment"}, "augment.amount": {"augment"}, "augment.filter.min_confidence": {"augment_filter"},
    "augment.for_baselines": {"scratch", "finetune"},
}


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field of a pydantic model, from its schema."""
    paths = []
    for name, info in model.model_fields.items():
        inner = [a for a in typing.get_args(info.annotation) if a is not type(None)] or [info.annotation]
        sub = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if str in inner:  # a name or a spelled-out section (budget.profile): one field
            sub = None
        paths += leaf_fields(sub, f"{prefix}{name}.") if sub else [f"{prefix}{name}"]
    return paths


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_data):
    """The tiny recipe with every stage on: augmentation (a local pipeline folder), a finetuned teacher and a
    pretrain-then-finetune baseline from local checkpoints, and what the mutations need."""
    from conftest import TINY_RECIPE

    root = tmp_path_factory.mktemp("keys")
    for name, model in (("teacher", "test_resnet"), ("student", "test_efficientnet"), ("other", "test_resnet")):
        torch.manual_seed(len(name))
        save_file(create_model(model, None, 5).state_dict(), str(root / f"{name}.safetensors"))
    for name in ("pipe", "pipe2"):
        (root / name).mkdir()
        (root / name / "model_index.json").write_text(f'{{"name": "{name}"}}')
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(root=tiny_data))
    overrides = ["augment.enabled=true", f"augment.pipeline={root / 'pipe'}", "teacher.adapt=finetune",
                 f"teacher.weights={root / 'teacher.safetensors'}", f"baseline.weights={root / 'student.safetensors'}"]
    return recipe, overrides, root


def special_values(root: Path, tiny_data: Path) -> dict[str, list[str]]:
    """Overrides for fields whose new value must be a real model, file or template."""
    moved = root / "moved_data"
    if not moved.exists():
        shutil.copytree(tiny_data, moved)
    latency = {"p50": 1.0, "low": 0.9, "high": 1.1, "rounds_p50": [1.0], "p90": 1.0, "p99": 1.0, "mean": 1.0, "std": 0.0,
               "runs": 3, "batch_size": 1, "threads": 2, "provider": "CPUExecutionProvider"}
    (root / "measured.json").write_text(json.dumps({"host": {"cpu": "Device CPU"}, "results": [
        {"model": "x.onnx", "architecture": "test_resnet", "image_size": 32, "precision": "int8", "latency_ms": latency}]}))
    return {
        "budget.measured": [f"budget.measured=[{root / 'measured.json'}]"],
        "student.candidates": ["student.candidates=[test_*]"], "student.exclude": ["student.exclude=[test_vit*]"],
        "data.root": [f"data.root={moved}"], "student.model": ["student.model=test_resnet"],
        "teacher.model": ["teacher.model=test_efficientnet"], "teacher.weights": [f"teacher.weights={root / 'other.safetensors'}"],
        "teacher.adapt": ["teacher.adapt=linear_probe"], "baseline.weights": [f"baseline.weights={root / 'other.safetensors'}"],
        "augment.pipeline": [f"augment.pipeline={root / 'pipe2'}"], "augment.prompt": ["augment.prompt=a {label}"],
        "augment.amount": ["augment.amount=2x"], "augment.revision": ["augment.revision=v1.0"], "augment.prompts": ["augment.prompts={red: a red flower}"],
        "budget.profile": ["budget.profile=cuda-gpu"], "name": ["name=other"],
        "student.search.rungs": ["student.search.rungs=[0.5, 1.0]"],
        "data.val_fraction": ["data.val_fraction=0.5"],  # 0.2 of 18 images is still the 5 a class keeps at least
        "export.formats": ["export.formats=[onnx]"],
        **{f"{section}license": [f"{section}license=cc-by-nc-4.0"] for section in ("", "data.", "teacher.", "baseline.",
                                                                                    "augment.")},
    }


def candidates(recipe: BaseModel, path: str) -> list[str]:
    """New values to try for a field, from its type and current value."""
    value = recipe
    for part in path.split("."):
        value = getattr(value, part)
    model = type(recipe)
    for part in path.split(".")[:-1]:
        model = next(a for a in [model.model_fields[part].annotation, *typing.get_args(model.model_fields[part].annotation)]
                     if isinstance(a, type) and issubclass(a, BaseModel))
    annotation = model.model_fields[path.split(".")[-1]].annotation
    options = [a for a in typing.get_args(annotation) if isinstance(a, str)]
    if options:  # a Literal
        return [o for o in options if o != value]
    if isinstance(value, bool):
        return [str(not value).lower()]
    if isinstance(value, (int, float)):
        return [str(v) for v in (value + 1, value * 2, value / 2, value - 1, 0.5) if v != value]
    if value is None:
        return ["1", "0.5", "16"]
    if isinstance(value, str):
        return [value + " again"]
    return []


def plans_for(recipe: Recipe) -> dict[str, object]:
    plans = BuildPlans.from_recipe(recipe, load_task_data(recipe.data), int8_conv_exact())
    return {f.name: getattr(plans, f.name) for f in dataclasses.fields(plans)}


def changed_plans(before: dict, after: dict) -> set[str]:
    return {name for name in before if before[name] != after[name]}


def test_every_recipe_field_reaches_the_plans_of_the_stages_that_read_it(base, tiny_data):
    recipe_path, overrides, root = base
    special = special_values(root, tiny_data)
    problems, untested = [], []
    for path in leaf_fields(Recipe):
        if path in with_role("source"):
            continue
        extra = CONDITIONS.get(path, [])
        recipe = load_recipe(recipe_path, overrides + extra)
        tries = special.get(path) or [f"{path}={v}" for v in candidates(recipe, path)]
        valid = []
        for attempt in tries:
            try:
                valid.append(load_recipe(recipe_path, overrides + extra + [attempt]))
            except RecipeError:  # an invalid value for this field: try the next one
                continue
        if not valid:
            untested.append(path)
            continue
        if path in with_role("data"):
            before = load_task_data(recipe.data).fingerprint
            after = load_task_data(valid[0].data).fingerprint
            if path == "data.root":  # the same images elsewhere are the same data; an edited image is not
                assert after == before
            else:
                assert after != before, path
            continue
        # a new value may equal what the old one resolved to (quantize 'auto' is static_int8 here): take the
        # first value that changes anything
        changes = [changed_plans(plans_for(recipe), plans_for(m)) for m in valid]
        changed = next((c for c in changes if c), set())
        if path in with_role("report", "execution", "selection"):
            if any(changes):
                problems.append(f"{path} is report/execution-only but changes the plans of {sorted(changed)}")
        elif not changed:
            problems.append(f"{path} changes no stage's plan: no stage would rerun when it changes")
        elif path in EXPECTED and changed != EXPECTED[path]:
            problems.append(f"{path} changes the plans of {sorted(changed)}, expected {sorted(EXPECTED[path])}")
    assert not untested, f"no valid new value found for {untested}: add one to special_values()"
    assert not problems, "\n".join(problems)


def test_an_edited_image_changes_the_data_fingerprint(tmp_path, tiny_data):
    from factory.recipe import DataConfig

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    before = load_task_data(DataConfig(root=copy)).fingerprint
    image = next((copy / "train" / "red").iterdir())
    image.write_bytes(image.read_bytes()[:-1] + b"\0")
    assert load_task_data(DataConfig(root=copy)).fingerprint != before


def test_keys_include_code_identity_and_library_versions(monkeypatch):
    from factory.stages.select import SELECT, SelectPlan

    plan = SelectPlan("test_resnet", 32, 3)
    key = SELECT.key(plan, {})
    assert key == SELECT.key(plan, {})
    assert key != SELECT.key(SelectPlan("test_resnet", 32, 4), {})
    assert key != SELECT.key(plan, {"data": "x"})
    other_code = Stage("select", SELECT.result, "factory.stages.bench", SELECT.libraries)
    assert other_code.key(plan, {}) != key  # the same plan under other code is another output
    assert set(library_versions(("torch", "timm"))) == {"torch", "timm"}
    monkeypatch.setattr("factory.stage.library_versions", lambda names: {n: "0.0" for n in names})
    assert SELECT.key(plan, {}) != key  # another torch or timm reruns the stage


def test_code_identity_follows_the_import_closure_and_ignores_comments(tmp_path, monkeypatch):
    import factory.identity as cache

    package = tmp_path / "factory"
    (package / "stages").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "stages" / "__init__.py").write_text("")
    (package / "helper.py").write_text("def f():\n    return 1\n")
    (package / "shapes.py").write_text("X = 1\n")
    (package / "stages" / "a.py").write_text("from factory.helper import f\n\n\ndef run():\n    from factory import shapes\n")
    monkeypatch.setattr(cache, "_PACKAGE_DIR", package)

    def identity():
        cache.code_fingerprint.cache_clear()
        return cache.code_fingerprint("factory.stages.a")

    first = identity()
    (package / "helper.py").write_text("# a comment\ndef f():\n    return 1  # same code\n")
    assert identity() == first
    (package / "helper.py").write_text("def f():\n    return 2\n")
    assert identity() != first  # a change in a module the stage imports
    second = identity()
    (package / "shapes.py").write_text("X = 2\n")
    assert identity() != second  # imported inside a function counts too
    cache.code_fingerprint.cache_clear()


def test_bench_key_includes_the_host(tiny_recipe, monkeypatch):
    from factory import host
    from factory.stages.bench import BenchPlan

    recipe = load_recipe(tiny_recipe)
    here = BenchPlan.from_recipe(recipe)
    assert dict(here.host)["cpu"] and "isa_flags" in dict(here.host)
    other = {**host.host_info(), "cpu": "Some Other CPU", "isa_flags": ["avx512_vnni"]}
    monkeypatch.setattr("factory.stages.bench.host_info", lambda: other)
    assert BenchPlan.from_recipe(recipe) != here


def test_code_fingerprint_of_real_stages_is_stable():
    assert code_fingerprint("factory.stages.distill") == code_fingerprint("factory.stages.distill")
    assert code_fingerprint("factory.stages.distill") != code_fingerprint("factory.stages.bench")


def test_every_pretrain_recipe_field_reaches_the_pretrain_plan(tmp_path, tiny_data):
    """The same walk for `factory pretrain`'s recipe: each field (teacher included) changes the one stage's plan,
    except the output's name and storage; data fields are the shared DataConfig's, walked above."""
    from factory.pretrain import PretrainPlan, load_pretrain_recipe

    for name in ("teacher", "other"):
        torch.manual_seed(len(name))
        save_file(create_model("test_resnet", None, 3).state_dict(), str(tmp_path / f"{name}.safetensors"))
    path = tmp_path / "pretrain.yaml"
    path.write_text(f"name: p\ndata: {{root: {tiny_data}, image_size: 32}}\nmodel: test_resnet\n"
                    f"budget: {{epochs: 2}}\nteacher: {{model: test_resnet, weights: {tmp_path / 'teacher.safetensors'}}}\n")
    special = {"model": ["model=test_efficientnet"], "teacher.model": ["teacher.model=test_efficientnet"],
               "teacher.weights": [f"teacher.weights={tmp_path / 'other.safetensors'}"]}
    recipe = load_pretrain_recipe(path)
    before = PretrainPlan.from_recipe(recipe, 3)
    problems = []
    for field in leaf_fields(type(recipe)):
        if field.startswith("data.") or field in {"name", "save_fp16"}:
            continue
        plans = []
        for attempt in special.get(field) or [f"{field}={v}" for v in candidates(recipe, field)]:
            try:
                plans.append(PretrainPlan.from_recipe(load_pretrain_recipe(path, [attempt]), 3))
            except RecipeError:
                continue
        if not any(plan != before for plan in plans):
            problems.append(f"{field} changes no part of the pretrain plan" if plans else f"{field}: no valid value")
    assert not problems, "\n".join(problems)
