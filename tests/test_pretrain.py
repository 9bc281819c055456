"""`factory pretrain` on a tiny corpus: epochs, seconds and FLOP budgets, resume, and a usable checkpoint."""

import json

import pytest
import torch

from factory import checkpoint, train
from factory.models import create_model
from factory.pretrain import load_pretrain_recipe, pretrain

RECIPE = """
name: tiny_pretrain
data:
  root: {root}
  image_size: 32
model: test_resnet
budget:
{budget}
batch_size: 12
"""


def _recipe(tmp_path, tiny_data, budget, *overrides):
    path = tmp_path / "pretrain.yaml"
    path.write_text(RECIPE.format(root=tiny_data, budget=budget))
    return load_pretrain_recipe(path, list(overrides))


def test_epoch_budget_writes_a_checkpoint_recipes_can_use(tmp_path, tiny_data):
    recipe = _recipe(tmp_path, tiny_data, "  epochs: 2")
    out = tmp_path / "out"
    report = pretrain(recipe, device="cpu", cache_dir=tmp_path / "cache", out_dir=out)
    assert report["stopped_by"] == "epochs" and report["epochs"] == 2 and report["flops"] > 0
    assert 0.0 <= report["test_accuracy"] <= 1.0
    assert json.loads((out / "pretrain_report.json").read_text())["flops"] == report["flops"]
    assert (out / "recipe.yaml").is_file() and (out / "config.json").is_file()
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(str(out / "model.safetensors")).values() if v.is_floating_point())
    # a recipe's teacher or baseline loads it as a local folder, with its own classifier for the task
    model = create_model("test_resnet", str(out), num_classes=5)
    assert model.get_classifier().out_features == 5


def test_seconds_and_flops_budgets_stop_training(tmp_path, tiny_data):
    by_time = pretrain(_recipe(tmp_path, tiny_data, "  seconds: 0.5\n  epochs: 1000"), device="cpu",
                       cache_dir=tmp_path / "c1", out_dir=tmp_path / "o1")
    assert by_time["stopped_by"] == "seconds" and by_time["epochs"] < 1000
    assert by_time["wall_s"] < 30
    one_epoch = pretrain(_recipe(tmp_path, tiny_data, "  epochs: 1"), device="cpu", cache_dir=tmp_path / "c2",
                         out_dir=tmp_path / "o2")
    budget = one_epoch["flops"] * 2.5
    by_flops = pretrain(_recipe(tmp_path, tiny_data, f"  flops: {budget}"), device="cpu", cache_dir=tmp_path / "c3",
                        out_dir=tmp_path / "o3")
    assert by_flops["stopped_by"] == "flops"
    assert budget <= by_flops["flops"] <= budget + one_epoch["flops"]  # stops within one step of the budget
    assert by_flops["epochs"] == 3  # two full epochs and the part of the third the budget allowed


def test_interrupted_pretraining_resumes(tmp_path, tiny_data, monkeypatch):
    recipe = _recipe(tmp_path, tiny_data, "  epochs: 3")
    real_save = checkpoint.save_resume
    calls = []

    def save_then_interrupt(path, state):
        real_save(path, state)
        calls.append(state["progress"]["epoch"])
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint after every epoch
    monkeypatch.setattr(checkpoint, "save_resume", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        pretrain(recipe, device="cpu", cache_dir=tmp_path / "cache", out_dir=tmp_path / "out")
    report = pretrain(recipe, device="cpu", cache_dir=tmp_path / "cache", out_dir=tmp_path / "out")
    assert calls == [1, 2, 3, 3]  # epoch 1 was not trained again; the last is the final checkpoint
    assert report["epochs"] == 3


def test_budget_is_required(tmp_path, tiny_data):
    from factory.errors import RecipeError

    with pytest.raises(RecipeError, match="give a budget"):
        _recipe(tmp_path, tiny_data, "  {}")


def test_distilling_while_pretraining_counts_the_teachers_flops(tmp_path, tiny_data):
    teacher_dir = tmp_path / "teacher"
    pretrain(_recipe(tmp_path, tiny_data, "  epochs: 1"), device="cpu", cache_dir=tmp_path / "c", out_dir=teacher_dir)
    plain = pretrain(_recipe(tmp_path, tiny_data, "  epochs: 1", "model=test_efficientnet"), device="cpu",
                     cache_dir=tmp_path / "c", out_dir=tmp_path / "plain")
    distilled = pretrain(_recipe(tmp_path, tiny_data, "  epochs: 1", "model=test_efficientnet",
                                 "teacher.model=test_resnet", f"teacher.weights={teacher_dir}"),
                         device="cpu", cache_dir=tmp_path / "c", out_dir=tmp_path / "kd")
    assert distilled["teacher"]["model"] == "test_resnet"
    assert {"kd", "align", "uniform"} <= set(distilled["history"][0])
    assert distilled["flops"] > plain["flops"]  # the teacher's forward passes count against the budget


def test_build_counts_the_pretraining_behind_its_teacher_and_baseline(tmp_path, tiny_data, tiny_recipe):
    """A build whose teacher and baseline start from factory checkpoints adds their pre-training FLOPs,
    and pre-training a checkpoint again in place invalidates the stages built on it."""
    from factory.pipeline import build
    from factory.recipe import load_recipe

    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    teacher_pre = pretrain(_recipe(tmp_path, tiny_data, "  epochs: 1"), device="cpu", cache_dir=tmp_path / "c",
                           out_dir=teacher_dir)
    student_pre = pretrain(_recipe(tmp_path, tiny_data, "  epochs: 1", "model=test_efficientnet"), device="cpu",
                           cache_dir=tmp_path / "c", out_dir=student_dir)
    overrides = [f"teacher.weights={teacher_dir}", "teacher.adapt=linear_probe", f"baseline.weights={student_dir}",
                 "baseline.scratch=false", "export.quantize=none", "data.train_per_class=6"]
    first = build(load_recipe(tiny_recipe, overrides), device="cpu", cache_dir=tmp_path / "c", out_dir=tmp_path / "o")
    methods = first.report.compute.methods
    assert methods["distilled"].pretrain_flops == teacher_pre["flops"]
    assert methods["distilled"].flops == methods["distilled"].build_flops + teacher_pre["flops"]
    assert methods["pretrained-finetuned"].pretrain_flops == student_pre["flops"]
    assert methods["teacher"].pretrain_flops == teacher_pre["flops"]
    assert first.report.data.train == 18  # 6 of each of the 3 classes
    assert any("compute with pre-training included" in n for n in first.report.notes)

    pretrain(_recipe(tmp_path, tiny_data, "  epochs: 1", "seed=1"), device="cpu", cache_dir=tmp_path / "c",
             out_dir=teacher_dir)
    again = build(load_recipe(tiny_recipe, overrides), device="cpu", cache_dir=tmp_path / "c", out_dir=tmp_path / "o")
    teacher_stage = next(s for s in again.report.compute.stages if s.kind == "teacher")
    assert not teacher_stage.cached


def test_views_made_on_the_device_are_seeded_augmentations_of_the_stored_images(tiny_data):
    from factory.data import DeviceViews, ViewPlan
    from factory.recipe import DataConfig
    from factory.sources import load_task_data

    data = load_task_data(DataConfig(root=str(tiny_data), image_size=32))
    views = DeviceViews(data.train, ViewPlan(3, 0, 24), torch.device("cpu"), stored=32)
    assert views.images.shape == (len(data.train), 3, 32, 32) and views.images.dtype == torch.uint8
    first = [b for b in views.batches(8, drop_last=True)]
    assert len(first) == len(data.train) // 8 and first[0][0].shape == (8, 3, 24, 24)
    x = first[0][0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 255 and x.std() > 1
    again = [b for b in views.batches(8, drop_last=True)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(first, again))  # seeded
    views.set_epoch(1)
    other = next(views.batches(8, drop_last=True))
    assert not torch.equal(other[2], first[0][2])  # another order and other crops next epoch
    # each view is still its image: the class's colour channel dominates (the tiny task's classes are colours)
    channel = torch.tensor([["red", "green", "blue"].index(name) for name in data.classes])
    images, labels = torch.cat([b[0] for b in first]), torch.cat([b[1] for b in first])
    assert (images.mean((2, 3)).argmax(1) == channel[labels]).float().mean() >= 0.9
    # two processes of a DDP run see disjoint shards
    ranks = [torch.cat([b[2] for b in views.batches(4, drop_last=True, rank=r, world=2)]) for r in (0, 1)]
    assert not set(ranks[0].tolist()) & set(ranks[1].tolist())


def test_pretraining_with_views_on_the_device_learns(tmp_path, tiny_data):
    report = pretrain(_recipe(tmp_path, tiny_data, "  epochs: 6", "views_on_device=true"), device="cpu",
                      cache_dir=tmp_path / "cache", out_dir=tmp_path / "out")
    assert report["epochs"] == 6 and report["test_accuracy"] > 0.5  # 3 classes: chance is 1/3
