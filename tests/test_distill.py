"""Distillation across architectures, with the teacher cache and with the online teacher."""

import numpy as np
import torch

from factory.cache import StageCache
from factory.context import BuildContext
from factory.data import load_task_data
from factory.recipe import load_recipe
from factory.stages.distill import distill_student
from factory.stages.teacher import TeacherOutputs, adapt_teacher, cache_teacher_outputs


def test_vit_teacher_distills_into_cnn_student_cached_and_online(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe, ["teacher.model=test_vit", "student.model=test_efficientnet",
                                       "teacher.epochs=1", "distill.epochs=1", "distill.teacher_views=2"])
    ctx = BuildContext(recipe, load_task_data(recipe.data), StageCache(tmp_path), torch.device("cpu"))
    teacher = adapt_teacher(ctx)
    assert teacher.info["preprocess"]["size"] == 32 and teacher.info["feature_dim"] == 64

    cache = cache_teacher_outputs(ctx, teacher)
    outputs = TeacherOutputs(cache)
    assert outputs.features.shape == (36 * 2, 64) and outputs.logits.shape == (36 * 2, 3)
    assert np.isfinite(np.asarray(outputs.features)).all()

    cached = distill_student(ctx, teacher, cache)
    assert cached.info["teacher_mode"] == "cached" and cached.flops > 0
    history = cached.info["history"][0]
    assert {"ce", "align", "uniform", "kd"} <= set(history)
    assert 0.0 <= history["align"] <= 4.0 and history["uniform"] <= 0.0  # unit vectors: ||s-t||^2 in [0, 4]

    online_recipe = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"teacher_views": 0})})
    online_ctx = BuildContext(online_recipe, ctx.data, StageCache(tmp_path), torch.device("cpu"))
    online = distill_student(online_ctx, teacher, None)
    assert online.info["teacher_mode"] == "online" and online.key != cached.key
    # the online teacher's forward passes are counted in distillation's FLOPs; the cached ones are not
    assert online.flops > cached.flops
