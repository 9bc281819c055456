"""``factory pretrain``: train a timm model on a corpus under a compute budget, optionally distilling
from a teacher as it goes, and save a checkpoint any recipe's teacher or baseline can point at.

The budget is wall-clock seconds, FLOPs or epochs (the first one spent stops training); the
learning rate follows the budget's progress (warmup, then cosine to zero at the end of the budget),
so a budget is spent fully whichever kind it is. With a teacher, its forward passes count against
the budget, as in "Knowledge Distillation vs. Pretraining from Scratch under a Fixed Compute Budget".
The output folder is timm's local layout (``config.json`` + ``model.safetensors``) plus
``pretrain_report.json`` (test accuracy on the corpus, FLOPs, wall time) and the recipe.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file

from factory import __version__
from factory import distributed as dist
from factory.cache import DEFAULT_CACHE, StageCache
from factory.files import check_output_folders, full_disk_reported, write_atomic, write_json
from factory.stage import Plan, Stage
from factory.console import log
from factory.context import Runtime
from factory.data import DeviceViews, ViewPlan, preprocess_for
from factory.losses import DistillLoss, LossSpec
from factory.models import Pinned, create_model, feature_dim, unchanged
from factory.config import Section, Weights, load_yaml_model
from factory.recipe import DataConfig, LossWeights
from factory.report.publish import publish_folder
from factory.sources import load_task_data
from factory.stages.distill import DistillObjective, frozen_teacher
from factory.train_stage import Trainee, train_stage
from factory.train import ClassifierObjective, ComputeBudget, TrainedModel, TrainSettings, param_groups


class PretrainBudget(Section):
    seconds: float | None = Field(None, gt=0, description="wall-clock seconds of training")
    flops: float | None = Field(None, gt=0, description="FLOPs of training (teacher forward passes included)")
    epochs: int | None = Field(None, ge=1, description="passes over the corpus")

    @model_validator(mode="after")
    def _at_least_one(self) -> PretrainBudget:
        if self.seconds is None and self.flops is None and self.epochs is None:
            raise ValueError("give a budget: budget.seconds, budget.flops or budget.epochs (the first spent stops training)")
        return self


class PretrainTeacher(Section):
    model: str
    weights: Weights = Field(description="the teacher's checkpoint (local path, 'timm' or 'hf-hub:<org>/<repo>'), "
                             "trained on this corpus's classes so that its logits mean something for KD")
    weights_loss: LossWeights = LossWeights()
    temperature: float = Field(4.0, gt=0)
    proj_dim: int = Field(128, ge=2)
    proj_hidden: int | None = Field(None, ge=2, description="projection heads' hidden width; default: each head's input width")


class PretrainRecipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: DataConfig
    model: str = Field(description="timm architecture to pre-train")
    budget: PretrainBudget
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    seed: int = 0
    teacher: PretrainTeacher | None = Field(None, description="distil from this teacher while pre-training")
    save_fp16: bool = Field(True, description="store the weights as float16 (half the size; loads into float32)")
    views_on_device: bool = Field(False, description="hold the corpus on the training device and make the views "
                                  "there (factory.data.DeviceViews): for a GPU that the CPU data loader cannot keep busy")


def load_pretrain_recipe(path: str | Path, overrides: list[str] | None = None) -> PretrainRecipe:
    return load_yaml_model(PretrainRecipe, path, overrides)


@dataclass(frozen=True)
class PretrainTeacherPlan(Plan):
    model: str
    weights: Pinned
    loss: LossSpec


@dataclass(frozen=True)
class PretrainPlan(Plan):
    model: str
    num_classes: int
    lr: float
    train: TrainSettings
    views: ViewPlan
    teacher: PretrainTeacherPlan | None
    views_on_device: bool = False

    @classmethod
    def from_recipe(cls, recipe: PretrainRecipe, num_classes: int) -> PretrainPlan:
        b, t = recipe.budget, recipe.teacher
        teacher = None if t is None else PretrainTeacherPlan(
            t.model, Pinned.of(t.weights),
            LossSpec.from_recipe(t.weights_loss, t.temperature, t.proj_dim, t.proj_hidden))
        return cls(recipe.model, num_classes, recipe.lr,
                   TrainSettings(b.epochs or 10**6, recipe.batch_size, recipe.weight_decay, recipe.warmup_epochs,
                                 recipe.seed, ComputeBudget.of(b.seconds, b.flops)),
                   ViewPlan(recipe.seed, 0, recipe.data.image_size), teacher, recipe.views_on_device)


@dataclass(kw_only=True)
class Pretrained(TrainedModel):
    test_accuracy: float
    epochs: int
    stopped_by: str
    forward_flops_per_image: float


PRETRAIN = Stage("pretrain", Pretrained, __name__, ("torch", "torchvision", "timm"), distributed=True)


def pretrain(recipe: PretrainRecipe, device: str = "auto", force: bool = False, cache_dir: Path | None = None,
             out_dir: Path | None = None) -> dict:
    """Pre-train ``recipe.model`` on ``recipe.data`` under the budget; returns the pretrain report."""
    cache_dir = Path(cache_dir or DEFAULT_CACHE)
    out_dir = Path(out_dir or Path("exports") / "pretrained" / recipe.name)
    with full_disk_reported(check_output_folders(out_dir, "pretrain_report.json", cache_dir)):
        return _pretrain(recipe, device, force, cache_dir, out_dir)


def _pretrain(recipe: PretrainRecipe, device: str, force: bool, cache_dir: Path, out_dir: Path) -> dict:
    rt = Runtime(load_task_data(recipe.data, cache_dir), StageCache(cache_dir, force),
                 dist.training_device(dist.resolve_device(device)), recipe.data.num_workers)
    data = rt.data
    b = recipe.budget
    log(f"[bold]factory pretrain[/] {recipe.name}: {recipe.model} on {len(data.train)} images of {data.num_classes} "
        f"classes from {data.source}, budget " + ", ".join(f"{k} {v:g}" for k, v in b.model_dump().items() if v))
    plan = PretrainPlan.from_recipe(recipe, data.num_classes)

    def build() -> Trainee:
        model = create_model(plan.model, None, plan.num_classes)
        preprocess = preprocess_for(model, plan.views.size)
        if plan.teacher is None:
            objective = ClassifierObjective(model, preprocess)
        else:
            t = plan.teacher
            weights = unchanged(t.weights, "teacher.weights")
            teacher = create_model(t.model, weights, plan.num_classes, field="teacher.weights")
            teacher_fn = frozen_teacher(teacher, preprocess_for(teacher, plan.views.size), rt.device)
            objective = DistillObjective(model, preprocess, DistillLoss(feature_dim(model), feature_dim(teacher), t.loss),
                                         teacher_fn)
        views = DeviceViews(data.train, plan.views, rt.device, num_workers=rt.num_workers) \
            if plan.views_on_device else rt.train_views(plan.views)
        return Trainee(model, preprocess, objective, param_groups(objective, plan.train.weight_decay, plan.lr), views)

    def run(work: Path) -> Pretrained | None:
        trained = train_stage(rt, plan.train, work, f"pretrain {plan.model}", build)
        if trained is None:
            return None
        return Pretrained(**trained.fields(plan.model), test_accuracy=trained.test_accuracy(rt),
                          epochs=len(trained.run.history), stopped_by=trained.run.stopped_by,
                          forward_flops_per_image=trained.forward_flops_per_image(rt))

    stage = rt.cache.run(PRETRAIN, plan, {"data": data.fingerprint}, run)
    if not dist.is_main():
        return {}
    trained = stage.result
    report = {
        "name": recipe.name, "model": recipe.model, "factory_version": __version__,
        "corpus": {"root": str(data.root), "source": data.source, "classes": data.num_classes, "train": len(data.train), "test": len(data.test)},
        "budget": b.model_dump(), "stopped_by": trained.stopped_by, "epochs": trained.epochs,
        "test_accuracy": trained.test_accuracy, "flops": stage.flops, "wall_s": stage.wall_s,
        "params": trained.params, "preprocess": trained.preprocess.metadata(),
        "teacher": recipe.teacher.model_dump() if recipe.teacher else None, "history": trained.history,
    }
    _publish(stage.file("model"), out_dir, report, recipe)
    log(f"  test accuracy {report['test_accuracy'] * 100:.1f}% after {report['epochs']} epochs "
        f"({report['stopped_by']} budget), {report['flops']:.3g} FLOPs, {report['wall_s']:.0f}s; wrote {out_dir}/")
    return report


def _publish(model_dir: Path, out_dir: Path, report: dict, recipe: PretrainRecipe) -> None:
    """The checkpoint folder, its report and recipe, published as a whole (:func:`publish_folder`)."""
    def fill(folder: Path) -> None:
        shutil.copytree(model_dir, folder, dirs_exist_ok=True)
        if recipe.save_fp16:
            state = load_file(str(folder / "model.safetensors"))
            save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                      str(folder / "model.safetensors"))
        write_json(folder / "pretrain_report.json", report)
        write_atomic(folder / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        if recipe.data.license:  # the weights' licence, as factory.licenses reads it: their corpus's
            config = json.loads((folder / "config.json").read_text())
            write_json(folder / "config.json", {**config, "license": recipe.data.license})

    publish_folder(out_dir, fill)
