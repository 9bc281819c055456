"""Distillation across architectures, with the teacher cache and with the online teacher."""

import numpy as np
import pytest
import torch

from factory.cache import StageCache
from factory.context import Runtime
from factory.errors import FactoryError
from factory.pipeline import BuildPlans
from factory.recipe import load_recipe
from factory.sources import load_task_data
from factory.stages.distill import distill_student
from factory.stages.teacher import TeacherOutputs, adapt_teacher, cache_teacher_outputs
from factory.quant.qat import int8_conv_exact


def _setup(tiny_recipe, tmp_path, *overrides):
    recipe = load_recipe(tiny_recipe, ["teacher.model=test_vit", "student.model=test_efficientnet", "teacher.epochs=1",
                                       "distill.epochs=1", "distill.teacher_views=2", *overrides])
    data = load_task_data(recipe.data)
    return Runtime(data, StageCache(tmp_path), torch.device("cpu")), BuildPlans.from_recipe(recipe, data, int8_conv_exact())


def test_vit_teacher_distills_into_cnn_student_cached_and_online(tiny_recipe, tmp_path):
    rt, plans = _setup(tiny_recipe, tmp_path)
    teacher = adapt_teacher(rt, plans.teacher)
    assert teacher.result.preprocess.size == 32 and teacher.result.feature_dim == 64

    cache = cache_teacher_outputs(rt, plans.teacher_cache, teacher)
    outputs = TeacherOutputs(cache, rt.train_views(plans.teacher_cache.views))
    n = len(rt.data.train) * 2  # two views of every training image
    assert outputs.features.shape == (n, 64) and outputs.logits.shape == (n, 3)
    assert np.isfinite(np.asarray(outputs.features)).all()

    cached = distill_student(rt, plans.distill, teacher, cache)
    assert cached.result.teacher_mode == "cached" and cached.flops > 0
    history = cached.result.history[0]
    assert {"ce", "align", "uniform", "kd"} <= set(history)
    assert 0.0 <= history["align"] <= 4.0 and history["uniform"] <= 0.0  # unit vectors: ||s-t||^2 in [0, 4]
    assert not (cached.path / "resume.pt").exists()  # resume checkpoints do not outlive their stage

    online_rt, online_plans = _setup(tiny_recipe, tmp_path, "distill.teacher_views=0")
    assert online_plans.teacher_cache is None
    online = distill_student(online_rt, online_plans.distill, teacher, None)
    assert online.result.teacher_mode == "online" and online.key != cached.key
    # the online teacher's forward passes are counted in distillation's FLOPs; the cached ones are not
    assert online.flops > cached.flops


def test_distill_refuses_a_teacher_cache_whose_views_render_differently(tiny_recipe, tmp_path, monkeypatch):
    rt, plans = _setup(tiny_recipe, tmp_path)
    teacher = adapt_teacher(rt, plans.teacher)
    cache = cache_teacher_outputs(rt, plans.teacher_cache, teacher)
    import factory.data

    jitter = factory.data.train_view_transform
    monkeypatch.setattr(factory.data, "train_view_transform", lambda size: jitter(size + 1))  # e.g. another torchvision
    with pytest.raises(FactoryError, match="no longer render the views the teacher saw"):
        distill_student(Runtime(rt.data, rt.cache, rt.device), plans.distill, teacher, cache)


def test_teacher_trains_evaluates_and_caches_at_its_own_resolution(tiny_recipe, tmp_path):
    """The teacher at 48 px over 32 px students: it is finetuned on views at 48 px, evaluated (and exported) at
    48 px, and the cache renders the students' views at 48 px, which each student's preprocessing scales to 32.
    (A teacher trained on views at the students' size but evaluated sharp scored 27 points lower on test.)"""
    rt, plans = _setup(tiny_recipe, tmp_path, "teacher.model=test_resnet", "teacher.image_size=48")
    assert plans.teacher.image_size == plans.teacher.views.size == 48
    assert plans.teacher_cache.views.size == plans.distill.views.size == plans.scratch.views.size == 48
    teacher = adapt_teacher(rt, plans.teacher)
    assert teacher.result.preprocess.size == 48
    cache = cache_teacher_outputs(rt, plans.teacher_cache, teacher)
    assert rt.train_views(plans.teacher_cache.views)[0][0].shape[-2:] == (48, 48)
    student = distill_student(rt, plans.distill, teacher, cache)
    assert student.result.preprocess.size == 32


def test_teacher_resolution_defaults_to_its_weights_then_to_the_data(tiny_recipe, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text('{"architecture": "test_resnet", "pretrained_cfg": {"input_size": [3, 40, 40]}}')
    _, plans = _setup(tiny_recipe, tmp_path, "teacher.model=test_resnet", f"teacher.weights={folder}",
                      "teacher.adapt=finetune")
    assert plans.teacher.image_size == plans.teacher.views.size == plans.distill.views.size == 40
    _, plans = _setup(tiny_recipe, tmp_path)  # trained from scratch: the students' size
    assert plans.teacher.image_size == plans.distill.views.size == 32


def test_teacher_resolution_from_the_registry_for_hub_and_file_weights():
    from factory.models import weights_input_size

    assert weights_input_size("vit_base_patch16_224", "hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k") == 224
    assert weights_input_size("tf_efficientnet_lite2", "timm") == 260
    assert weights_input_size("tf_efficientnet_lite2", "/nowhere/lite2.safetensors") is None  # not recorded
    assert weights_input_size("resnet18", "hf-hub:someone/unknown") is None
    assert weights_input_size("resnet18", None) is None
