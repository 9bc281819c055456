"""GPU paths (teacher on CUDA with autocast and channels_last, Stable Diffusion in fp16). Skipped without CUDA."""

import json

import pytest
import torch

from factory.cache import StageCache
from factory.context import Runtime
from factory.pipeline import build
from factory.recipe import load_recipe
from factory.sources import load_task_data
from factory.stages.augment import AugmentPlan, load_pipeline, synthesize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_build_on_cuda_with_online_and_cached_teacher(tiny_recipe, tmp_path):
    for views in (2, 0):
        recipe = load_recipe(tiny_recipe, [f"distill.teacher_views={views}", f"name=gpu{views}"])
        report = build(recipe, device="cuda", cache_dir=tmp_path / "cache", out_dir=tmp_path / f"out{views}").report
        assert report.device.startswith("cuda")
        assert report.export.parity.top1_agreement == 1.0
        assert json.loads((tmp_path / f"out{views}" / "labels.json").read_text()) == ["blue", "green", "red"]


def test_stable_diffusion_fp16_on_cuda(tiny_recipe, tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cuda"))
    assert pipe.unet.dtype == torch.float16 and pipe.device.type == "cuda"
    recipe = load_recipe(tiny_recipe, ["augment.enabled=true", f"augment.pipeline={tiny_pipeline_dir}",
                                       "augment.images_per_class=3", "augment.steps=2", "augment.image_size=64"])
    data = load_task_data(recipe.data)
    stage = synthesize(Runtime(data, StageCache(tmp_path), torch.device("cuda")), AugmentPlan.from_recipe(recipe, data))
    assert stage.result.images == 9 and stage.flops > 0


class _Views(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=g)

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 2, i, 0


def test_training_resumes_on_cuda(tmp_path):
    """A resume file's optimizer state lands on the parameters' device (it was loaded onto the CPU while the
    model trained on CUDA: 'Expected all tensors to be on the same device')."""
    from factory.data import Preprocess
    from factory.train import ClassifierObjective, TrainSettings, param_groups, train_loop

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 2))
    preprocess = Preprocess(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for epochs in (1, 2):
        result = train_loop(ClassifierObjective(model, preprocess), param_groups(model, 0.0, 1e-2), _Views(),
                            TrainSettings(epochs, 4, 0.0, 0.0, 0), torch.device("cuda"), tmp_path, "resume")
    assert [r["epoch"] for r in result.history] == [1, 2] and result.resumed_wall_s > 0
