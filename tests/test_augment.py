"""Augment stage with a tiny random Stable Diffusion pipeline built locally (no hub)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from factory.cache import Plan, StageCache
from factory.context import Runtime
from factory.data import view_seed
from factory.errors import CheckpointError, HubUnreachableError
from factory.recipe import load_recipe
from factory.sources import load_task_data
from factory.stages import augment
from factory.stages.augment import (
    AugmentPlan,
    generate_images,
    generate_missing,
    load_pipeline,
    synthesize,
    synthetic_samples,
    write_provenance,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_pipe(tiny_pipeline_dir):
    return load_pipeline(str(tiny_pipeline_dir), CPU)


def _context(tiny_recipe, tiny_pipeline_dir, cache_root, per_class=2):
    recipe = load_recipe(tiny_recipe, [
        "augment.enabled=true", f"augment.pipeline={tiny_pipeline_dir}", f"augment.images_per_class={per_class}",
        "augment.steps=2", "augment.image_size=64",
    ])
    data = load_task_data(recipe.data)
    return Runtime(data, StageCache(cache_root), CPU), AugmentPlan.from_recipe(recipe, data.classes)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def synthesized(tiny_pipeline_dir, tmp_path_factory):
    """One synthesize() run shared by the tests below (the tiny_recipe fixture is function scoped)."""
    from conftest import TINY_RECIPE, make_image_folder

    root = tmp_path_factory.mktemp("aug")
    data = make_image_folder(root / "data", {"train": 3, "test": 1})
    recipe_path = root / "tiny.yaml"
    recipe_path.write_text(TINY_RECIPE.format(root=data))
    rt, plan = _context(recipe_path, tiny_pipeline_dir, root / "cache")
    Plan.reads = set()
    try:
        stage = synthesize(rt, plan)
        reads = Plan.reads
    finally:
        Plan.reads = None
    # every set field of the plan was read by the stage (so none sits in the key unused)
    unread = [f for f in plan.__dataclass_fields__ if getattr(plan, f) is not None and ("AugmentPlan", f) not in reads]
    assert not unread, unread
    return (rt, plan), stage


def test_disabled_means_no_plan(tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    assert AugmentPlan.from_recipe(recipe, ["a", "b"]) is None


def test_synthesize_images_provenance_and_samples(synthesized, tiny_pipeline_dir):
    (rt, cfg), stage = synthesized
    classes = rt.data.classes
    assert stage.result.images == 2 * len(classes) and stage.result.per_class == 2
    assert stage.result.pipeline == str(tiny_pipeline_dir) and stage.flops > 0
    for label, name in enumerate(classes):
        files = sorted((stage.path / "images" / name).iterdir())
        assert [f.name for f in files] == ["00000.png", "00001.png"]
        assert all(Image.open(f).size == (64, 64) for f in files)
    records = json.loads(stage.file("provenance.json").read_text())
    assert [r["file"] for r in records] == sorted(r["file"] for r in records) and len(records) == 2 * len(classes)
    for r in records:
        index = int(r["file"].rsplit("/", 1)[1][:5])
        assert r["seed"] == view_seed(cfg.seed, r["label"], index) and classes[r["label"]] == r["class"]
        assert r["class"] in r["prompt"] and r["negative_prompt"] is None  # guidance 0: no negative prompt
        assert (r["steps"], r["image_size"], r["pipeline"]) == (2, 64, str(tiny_pipeline_dir))
    assert len({r["seed"] for r in records}) == len(records)
    assert not list(stage.path.glob(".augment_state.json"))

    samples = synthetic_samples(stage, classes)
    assert len(samples) == len(records)
    assert all(s.path.is_file() and classes[s.label] == s.path.parent.name for s in samples)

    again = synthesize(rt, cfg)
    assert again.cached and again.key == stage.key


def test_image_reproducible_from_its_seed_alone(synthesized, tiny_pipe):
    _, stage = synthesized
    record = json.loads(stage.file("provenance.json").read_text())[3]  # made in a batch of 6; remade alone
    images, _ = generate_images(tiny_pipe, [record])
    diff = np.abs(np.asarray(images[0].convert("RGB"), dtype=np.int16) - _pixels(stage.path / record["file"]))
    assert diff.max() <= 1  # same pixels, up to rounding of batched vs single float math


def test_generate_missing_resumes(synthesized, tiny_pipe, tmp_path):
    (rt, cfg), stage = synthesized
    classes = rt.data.classes
    work = tmp_path / "work"
    shutil.copytree(stage.path, work)
    victim = work / "images" / classes[1] / "00001.png"
    before = _pixels(victim)
    victim.unlink()
    assert generate_missing(tiny_pipe, cfg, classes, work) == 1
    assert np.abs(_pixels(victim) - before).max() <= 1
    assert generate_missing(tiny_pipe, cfg, classes, work) == 0
    records = write_provenance(cfg, classes, work)
    assert len(records) == 2 * len(classes) and json.loads((work / "provenance.json").read_text()) == records


def test_interrupted_stage_resumes_with_remaining_images(tiny_recipe, tiny_pipeline_dir, tmp_path, monkeypatch):
    rt, plan = _context(tiny_recipe, tiny_pipeline_dir, tmp_path / "cache", per_class=1)
    real = augment.generate_images
    calls = []

    def crash_on_second_batch(pipe, records):
        calls.append(len(records))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(pipe, records)

    monkeypatch.setattr(augment, "BATCH_SIZE", 2)
    monkeypatch.setattr(augment, "generate_images", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        synthesize(rt, plan)
    partial = list((tmp_path / "cache" / "augment").glob("*.partial"))
    assert len(partial) == 1 and len(list(partial[0].glob("images/*/*.png"))) == 2
    monkeypatch.setattr(augment, "generate_images", real)
    stage = synthesize(rt, plan)
    assert stage.result.generated_this_run == 1 and stage.result.images == 3
    assert stage.flops == pytest.approx(3 * stage.result.flops_per_image) and stage.flops > 0
    assert len(json.loads(stage.file("provenance.json").read_text())) == 3


def test_offline_hub_id_fails_fast():
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="augment.pipeline") as err:
        load_pipeline("stabilityai/sd-turbo-does-not-exist", CPU)
    assert time.perf_counter() - start < 10
    assert "save_pretrained" in str(err.value) and "sd-turbo-does-not-exist" in str(err.value)


def test_local_folder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="model_index.json"):
        load_pipeline(str(tmp_path), CPU)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pipeline(str(tmp_path / "nowhere"), CPU)


def test_build_with_augmentation_trains_on_synthetic_images(tiny_recipe, tiny_pipeline_dir, tmp_path):
    from factory.pipeline import build

    recipe = load_recipe(tiny_recipe, ["augment.enabled=true", f"augment.pipeline={tiny_pipeline_dir}",
                                       "augment.images_per_class=2", "augment.steps=1", "augment.image_size=64",
                                       "distill.epochs=1", "teacher.epochs=1", "baseline.scratch=false",
                                       "baseline.pretrained=false", "export.quantize=none"])
    report = build(recipe, device="cpu", cache_dir=tmp_path / "cache", out_dir=tmp_path / "out").report
    assert report["data"]["synthetic"] == 6
    augment_stage = next(s for s in report["compute"]["stages"] if s["kind"] == "augment")
    assert augment_stage["flops"] > 0
    assert "augmentation" in report["compute"]["methods"]["distilled"]["includes"]
    assert {r["name"] for r in report["results"]} == {"distilled", "teacher"}
