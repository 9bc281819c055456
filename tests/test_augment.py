"""Augment stage with a tiny random Stable Diffusion pipeline built locally (no hub)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from factory.cache import StageCache
from conftest import recording_plan_reads
from factory.context import Runtime
from factory.data import view_seed
from factory.errors import CheckpointError, HubUnreachableError
from factory.recipe import load_recipe
from factory.sources import load_task_data
from factory.stages import augment
from factory.stages.augment import (
    MANIFEST,
    AugmentPlan,
    generate_images,
    generate_missing,
    load_pipeline,
    read_manifest,
    synthesize,
    synthetic_samples,
    write_manifest,
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
    return Runtime(data, StageCache(cache_root), CPU), AugmentPlan.from_recipe(recipe, data)


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
    with recording_plan_reads() as reads:
        stage = synthesize(rt, plan)
    # every set field of the plan was read by the stage (so none sits in the key unused)
    unread = [f for f in plan.__dataclass_fields__ if getattr(plan, f) is not None and ("AugmentPlan", f) not in reads]
    assert not unread, unread
    return (rt, plan), stage


def test_a_pipeline_folder_changed_during_the_build_is_refused_and_a_hub_id_is_kept_as_written(tmp_path):
    from factory.diffusion import FIELD, pinned_pipeline
    from factory.models import unchanged

    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    pinned = pinned_pipeline(str(folder))
    assert pinned.content is not None and unchanged(pinned, FIELD, pinned_pipeline) == str(folder)
    (folder / "model_index.json").write_text('{"retrained": true}')
    with pytest.raises(CheckpointError, match=f"augment.pipeline: checkpoint {folder} changed while the build"):
        unchanged(pinned, FIELD, pinned_pipeline)
    hub = pinned_pipeline("stabilityai/sd-turbo")
    assert hub.content is None and unchanged(hub, FIELD, pinned_pipeline) == "stabilityai/sd-turbo"


def test_disabled_means_no_plan(tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    assert AugmentPlan.from_recipe(recipe, None) is None


def test_synthesize_images_provenance_and_samples(synthesized, tiny_pipeline_dir):
    (rt, cfg), stage = synthesized
    classes = rt.data.classes
    assert stage.result.images == 2 * len(classes) and stage.result.per_class == [2] * len(classes)
    assert stage.result.pipeline == str(tiny_pipeline_dir) and stage.flops > 0
    assert stage.result.pipeline_revision.startswith("content:") and stage.result.mode == "text2img"
    for label, name in enumerate(classes):
        files = sorted((stage.path / "images" / name).iterdir())
        assert [f.name for f in files] == ["00000.png", "00001.png"]
        assert all(Image.open(f).size == (64, 64) for f in files)
    records = read_manifest(stage.file(MANIFEST))
    assert [r["file"] for r in records] == sorted(r["file"] for r in records) and len(records) == 2 * len(classes)
    assert len(stage.file(MANIFEST).read_text().splitlines()) == len(records)  # one line per image
    for r in records:
        index = int(r["file"].rsplit("/", 1)[1][:5])
        assert r["seed"] == view_seed(cfg.seed, r["label"], index) and classes[r["label"]] == r["class"]
        assert r["class"] in r["prompt"] and r["negative_prompt"] is None  # guidance 0: no negative prompt
        assert (r["steps"], r["image_size"], r["pipeline"]) == (2, 64, str(tiny_pipeline_dir))
        assert r["pipeline_revision"] == stage.result.pipeline_revision and r["source_image"] is None
    assert len({r["seed"] for r in records}) == len(records)
    assert not list(stage.path.glob(".augment_state.json"))

    samples = synthetic_samples(records, stage.path, classes)
    assert len(samples) == len(records)
    assert all(s.path.is_file() and classes[s.label] == s.path.parent.name for s in samples)

    again = synthesize(rt, cfg)
    assert again.cached and again.key == stage.key


def test_image_reproducible_from_its_seed_alone(synthesized, tiny_pipe):
    _, stage = synthesized
    record = read_manifest(stage.file(MANIFEST))[3]  # made in a batch of 6; remade alone
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
    assert generate_missing(tiny_pipe, cfg, work) == 1
    assert np.abs(_pixels(victim) - before).max() <= 1
    assert generate_missing(tiny_pipe, cfg, work) == 0
    records = write_manifest(cfg, work, "content:x")
    assert len(records) == 2 * len(classes) and read_manifest(work / MANIFEST) == records


def test_interrupted_stage_resumes_with_remaining_images(tiny_recipe, tiny_pipeline_dir, tmp_path, monkeypatch):
    rt, plan = _context(tiny_recipe, tiny_pipeline_dir, tmp_path / "cache", per_class=1)
    real = augment.generate_images
    calls = []

    def crash_on_second_batch(pipe, records, root=None):
        calls.append(len(records))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(pipe, records, root)

    monkeypatch.setattr(augment, "generate_images", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        synthesize(rt, plan, batch_size=2)
    partial = list((tmp_path / "cache" / "augment").glob("*.partial"))
    assert len(partial) == 1 and len(list(partial[0].glob("images/*/*.png"))) == 2
    monkeypatch.setattr(augment, "generate_images", real)
    stage = synthesize(rt, plan, batch_size=2)
    assert stage.result.generated_this_run == 1 and stage.result.images == 3
    assert stage.flops == pytest.approx(3 * stage.result.flops_per_image) and stage.flops > 0
    assert len(read_manifest(stage.file(MANIFEST))) == 3


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
                                       "baseline.pretrained=false", "export.quantize=none",
                                       "augment.filter.enabled=false"])
    report = build(recipe, device="cpu", cache_dir=tmp_path / "cache", out_dir=tmp_path / "out").report
    assert report.data.synthetic == 6 and report.augmentation.filter is None  # no filter: all used
    augment_stage = next(s for s in report.compute.stages if s.kind == "augment")
    assert augment_stage.flops > 0
    assert "augmentation" in report.compute.methods["distilled"].includes
    assert {r.name for r in report.results} == {"distilled", "teacher"}


def test_amount_is_a_multiple_of_each_class_real_images(tiny_recipe, tiny_pipeline_dir):
    recipe = load_recipe(tiny_recipe, ["augment.enabled=true", f"augment.pipeline={tiny_pipeline_dir}",
                                       "augment.amount=0.5x", "data.train_per_class=8"])
    data = load_task_data(recipe.data)
    plan = AugmentPlan.from_recipe(recipe, data)
    assert plan.counts == (4, 4, 4) and plan.sources is None and plan.strength is None
    doubled = AugmentPlan.from_recipe(load_recipe(tiny_recipe, ["augment.enabled=true", "augment.amount=2x"]), data)
    assert doubled.counts == (16, 16, 16)
    assert AugmentPlan.from_recipe(load_recipe(tiny_recipe, ["augment.enabled=true"]), data).counts == (8, 8, 8)
    with pytest.raises(Exception, match="images_per_class and augment.amount both set"):
        load_recipe(tiny_recipe, ["augment.amount=1x", "augment.images_per_class=3"])
    with pytest.raises(Exception, match="augment.amount"):
        load_recipe(tiny_recipe, ["augment.amount=double"])


def test_per_class_prompts_and_unknown_class(tiny_recipe):
    data = load_task_data(load_recipe(tiny_recipe).data)
    recipe = load_recipe(tiny_recipe, ["augment.enabled=true", "augment.prompts={red: a scarlet flower}"])
    plan = AugmentPlan.from_recipe(recipe, data)
    assert plan.prompts[data.classes.index("red")] == "a scarlet flower"
    assert plan.prompts[data.classes.index("blue")] == "a photo of a blue, a type of flower"
    with pytest.raises(Exception, match="augment.prompts names class\\(es\\) purple"):
        AugmentPlan.from_recipe(load_recipe(tiny_recipe, ["augment.enabled=true", "augment.prompts={purple: x}"]), data)


def test_img2img_variants_of_the_real_images(tiny_recipe, tiny_pipeline_dir, tiny_pipe, tmp_path):
    recipe = load_recipe(tiny_recipe, [
        "augment.enabled=true", f"augment.pipeline={tiny_pipeline_dir}", "augment.mode=img2img", "augment.strength=0.5",
        "augment.images_per_class=2", "augment.steps=2", "augment.image_size=64", "data.train_per_class=1"])
    data = load_task_data(recipe.data)
    rt, plan = Runtime(data, StageCache(tmp_path / "cache"), CPU), AugmentPlan.from_recipe(recipe, data)
    stage = synthesize(rt, plan)
    records = read_manifest(stage.file(MANIFEST))
    assert stage.result.mode == "img2img" and len(records) == 6
    for r in records:  # one real image per class, cycled
        own = [s for s in data.train if s.label == r["label"]]
        assert (data.root / r["source_image"]) == own[0].path and r["strength"] == 0.5 and r["mode"] == "img2img"
    img2img = load_pipeline(str(tiny_pipeline_dir), CPU, "img2img")
    again, _ = generate_images(img2img, [records[0]], data.root)  # reproducible from its line and the real image
    assert np.abs(np.asarray(again[0].convert("RGB"), dtype=np.int16) - _pixels(stage.path / records[0]["file"])).max() <= 1
    text2img, _ = generate_images(tiny_pipe, [records[0] | {"mode": "text2img"}])
    assert np.abs(np.asarray(text2img[0].convert("RGB"), dtype=np.int16) - _pixels(stage.path / records[0]["file"])).max() > 1


def test_teacher_filter_drops_images_and_a_new_threshold_does_not_regenerate(tiny_recipe, tiny_pipeline_dir, tmp_path):
    from factory.pipeline import build

    base = ["augment.enabled=true", f"augment.pipeline={tiny_pipeline_dir}", "augment.images_per_class=4",
            "augment.steps=1", "augment.image_size=64", "distill.epochs=1", "teacher.epochs=2", "baseline.scratch=true",
            "baseline.pretrained=false", "export.quantize=none"]
    first = build(load_recipe(tiny_recipe, base), device="cpu", cache_dir=tmp_path / "cache", out_dir=tmp_path / "out")
    report = first.report
    aug = report.augmentation
    records = read_manifest(tmp_path / "out" / "synthetic_manifest.jsonl")
    assert aug.generated == 12 == len(records) and aug.filter.kept + aug.filter.dropped == 12
    for r in records:
        assert r["kept"] == (r["teacher_top1"] == r["class"]) and 0 <= r["score"] <= 1 and r["verdict"]
    assert report.data.synthetic == aug.used == aug.filter.kept
    assert sum(c.real for c in aug.per_class.values()) == report.data.train == 39
    assert report.comparison.baselines_real_only and "synthetic images (augment.for_baselines: false" in \
        report.comparison.line
    assert "augmentation + teacher filter" in report.compute.methods["distilled"].includes

    # a threshold between the kept images' scores drops some of them; nothing is generated again
    kept_scores = sorted(r["score"] for r in records if r["kept"])
    threshold = kept_scores[len(kept_scores) // 2] if kept_scores else 0.5
    second = build(load_recipe(tiny_recipe, base + [f"augment.filter.min_confidence={threshold}"]), device="cpu",
                   cache_dir=tmp_path / "cache", out_dir=tmp_path / "out2").report
    reran = {s.kind for s in second.compute.stages if not s.cached}
    assert "augment" not in reran and "augment_filter" in reran and "baseline_scratch" not in reran
    expected = sum(1 for r in records if r["kept"] and r["score"] >= threshold)
    assert second.augmentation.filter.kept == expected == second.data.synthetic
    if kept_scores:
        assert expected < len(kept_scores) and "distill" in reran
    dropped = [r for r in read_manifest(tmp_path / "out2" / "synthetic_manifest.jsonl") if not r["kept"]]
    assert any("class probability" in r["verdict"] for r in dropped) or not kept_scores


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_interrupted_augmentation_regenerates_only_the_missing_images(tiny_recipe, tiny_pipeline_dir, tmp_path, stop):
    """SIGTERM stops cleanly (exit 130) and SIGKILL gives no chance to clean up; either way the next build makes
    only the missing images, and (SIGTERM) ends with the same images and models as an uninterrupted build."""
    import hashlib
    import os
    import signal

    from fresh_process import FreshProcess, run_fresh

    per_class = 10

    def args(name):
        cmd = ["-m", "factory.cli", "build", str(tiny_recipe), "--cache-dir", str(tmp_path / name),
               "--out", str(tmp_path / f"out-{name}"), "--device", "cpu"]
        for item in ["augment.enabled=true", f"augment.pipeline={tiny_pipeline_dir}",
                     f"augment.images_per_class={per_class}", "augment.batch_size=1", "augment.steps=2",
                     "augment.image_size=64", "distill.epochs=1", "teacher.epochs=1", "baseline.scratch=false",
                     "baseline.pretrained=false", "export.quantize=none", "export.formats=[onnx]"]:
            cmd += ["--set", item]
        return cmd

    cache = tmp_path / "interrupted"
    process = FreshProcess(args("interrupted"), tmp_path / "interrupted.log")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("augment/*.partial/images/*/*.png"))) < 3:
        time.sleep(0.02)
    os.kill(process.pid, getattr(signal, stop))
    stopped = process.wait(timeout=120)
    output = stopped.stdout
    made_before = len(list(cache.glob("augment/*.partial/images/*/*.png")))
    assert 3 <= made_before < 3 * per_class
    if stop == "SIGTERM":
        assert stopped.returncode == 130 and "interrupted" in output and "Traceback" not in output, output[-2000:]
    done = run_fresh(args("interrupted"), tmp_path / "resumed.log")
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads(next(cache.glob("augment/*/stage.json")).read_text())
    assert meta["result"]["images"] == 3 * per_class
    assert meta["result"]["generated_this_run"] == 3 * per_class - made_before
    assert len(read_manifest(tmp_path / "out-interrupted" / "synthetic_manifest.jsonl")) == 3 * per_class
    if stop == "SIGTERM":
        whole = run_fresh(args("whole"), tmp_path / "whole.log")
        assert whole.returncode == 0, whole.stderr[-2000:]

        def images(name):
            return {f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
                    for p in (tmp_path / name).glob("augment/*/images/*/*.png")}

        assert images("interrupted") == images("whole") and len(images("whole")) == 3 * per_class
        reports = [json.loads((tmp_path / f"out-{n}" / "report.json").read_text()) for n in ("interrupted", "whole")]
        assert [r["accuracy"] for r in reports[0]["results"]] == [r["accuracy"] for r in reports[1]["results"]]
