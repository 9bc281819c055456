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

import shutil
from pathlib import Path

import torch
import yaml
from pydantic import Field, field_validator, model_validator
from safetensors.torch import load_file, save_file

from factory import __version__
from factory import distributed as dist
from factory.cache import StageCache, replace_dir, write_atomic, write_json
from factory.console import log
from factory.context import BuildContext
from factory.data import load_task_data
from factory.losses import DistillLoss
from factory.models import count_params, create_model, save_trained, weights_fingerprint
from factory.recipe import DataConfig, LossWeights, _check_weights, _Section, load_yaml_model
from factory.stages.distill import DistillObjective, frozen_teacher, student_preprocess
from factory.train import ClassifierObjective, TrainSettings, accuracy, forward_flops_per_image, train_loop


class PretrainBudget(_Section):
    seconds: float | None = Field(None, gt=0, description="wall-clock seconds of training")
    flops: float | None = Field(None, gt=0, description="FLOPs of training (teacher forward passes included)")
    epochs: int | None = Field(None, ge=1, description="passes over the corpus")

    @model_validator(mode="after")
    def _at_least_one(self) -> PretrainBudget:
        if self.seconds is None and self.flops is None and self.epochs is None:
            raise ValueError("give a budget: budget.seconds, budget.flops or budget.epochs (the first spent stops training)")
        return self


class PretrainTeacher(_Section):
    model: str
    weights: str = Field(description="the teacher's checkpoint (local path, 'timm' or 'hf-hub:<org>/<repo>'), "
                         "trained on this corpus's classes so that its logits mean something for KD")
    weights_loss: LossWeights = LossWeights()
    temperature: float = Field(4.0, gt=0)
    proj_dim: int = Field(128, ge=2)
    proj_hidden: int = Field(512, ge=2)

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, value: str) -> str:
        return _check_weights(value)


class PretrainRecipe(_Section):
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


def load_pretrain_recipe(path: str | Path, overrides: list[str] | None = None) -> PretrainRecipe:
    return load_yaml_model(PretrainRecipe, path, overrides)


def pretrain(recipe: PretrainRecipe, device: str = "auto", force: bool = False, cache_dir: Path | None = None,
             out_dir: Path | None = None) -> dict:
    """Pre-train ``recipe.model`` on ``recipe.data`` under the budget; returns the pretrain report."""
    from factory.pipeline import DEFAULT_CACHE, resolve_device

    torch_device = dist.process_device(resolve_device(device))
    data = load_task_data(recipe.data)
    cache = StageCache(cache_dir or DEFAULT_CACHE, force)
    out_dir = Path(out_dir or Path("exports") / "pretrained" / recipe.name)
    b = recipe.budget
    log(f"[bold]factory pretrain[/] {recipe.name}: {recipe.model} on {len(data.train)} images of {data.num_classes} "
        f"classes from {data.root}, budget " + ", ".join(f"{k} {v:g}" for k, v in b.model_dump().items() if v))

    def run(work: Path) -> dict:
        from factory.recipe import Recipe

        torch.manual_seed(recipe.seed)
        model = create_model(recipe.model, None, data.num_classes)
        # a BuildContext (it reads only the data section here) gives the views and splits `factory build` uses
        ctx = BuildContext(Recipe.model_construct(data=recipe.data), data, cache, torch_device)
        preprocess = student_preprocess(model, ctx)
        settings = TrainSettings(epochs=b.epochs or 10**6, batch_size=recipe.batch_size,
                                 weight_decay=recipe.weight_decay, warmup_epochs=recipe.warmup_epochs,
                                 seed=recipe.seed, num_workers=recipe.data.num_workers,
                                 max_seconds=b.seconds, max_flops=b.flops)
        if recipe.teacher is None:
            objective = ClassifierObjective(model, preprocess)
        else:
            t = recipe.teacher
            teacher = create_model(t.model, t.weights, data.num_classes, field="teacher.weights")
            teacher_fn = frozen_teacher(teacher, student_preprocess(teacher, ctx), torch_device)
            loss = DistillLoss(model.num_features, teacher.num_features, t.weights_loss, t.temperature,
                               t.proj_dim, t.proj_hidden)
            objective = DistillObjective(model, preprocess, loss, teacher_fn)
        result = train_loop(objective, [{"params": list(objective.parameters()), "lr": recipe.lr}],
                            ctx.train_views(seed=recipe.seed), settings, torch_device, work, f"pretrain {recipe.model}",
                            ctx.val_accuracy_fn(model, preprocess))
        if not dist.is_main():
            return {}
        save_trained(model, preprocess, data.classes, work / "model")
        test_acc = accuracy(model, preprocess, ctx.eval_images("test"), torch_device)
        return {"model": recipe.model, "params": count_params(model), "preprocess": preprocess.to_dict(),
                "test_accuracy": test_acc, "epochs": len(result.history), "stopped_by": result.stopped_by,
                "history": result.history, "flops": result.flops, "resumed_wall_s": result.resumed_wall_s,
                "forward_flops_per_image": forward_flops_per_image(model, preprocess.size)}

    config = recipe.model_dump(mode="json", exclude={"name", "save_fp16"})
    inputs = {"data": data.fingerprint}
    if recipe.teacher is not None:
        inputs["teacher_weights"] = weights_fingerprint(recipe.teacher.weights)
    stage = cache.run("pretrain", config, inputs, run, distributed=True)
    if not dist.is_main():
        return {}
    report = {
        "name": recipe.name, "model": recipe.model, "factory_version": __version__,
        "corpus": {"root": str(data.root), "classes": data.num_classes, "train": len(data.train), "test": len(data.test)},
        "budget": b.model_dump(), "stopped_by": stage.info["stopped_by"], "epochs": stage.info["epochs"],
        "test_accuracy": stage.info["test_accuracy"], "flops": stage.flops, "wall_s": stage.wall_s,
        "params": stage.info["params"], "preprocess": stage.info["preprocess"],
        "teacher": recipe.teacher.model_dump() if recipe.teacher else None, "history": stage.info["history"],
    }
    _publish(stage.file("model"), out_dir, report, recipe)
    log(f"  test accuracy {report['test_accuracy'] * 100:.1f}% after {report['epochs']} epochs "
        f"({report['stopped_by']} budget), {report['flops']:.3g} FLOPs, {report['wall_s']:.0f}s; wrote {out_dir}/")
    return report


def _publish(model_dir: Path, out_dir: Path, report: dict, recipe: PretrainRecipe) -> None:
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(model_dir, tmp)
    if recipe.save_fp16:
        state = load_file(str(tmp / "model.safetensors"))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(tmp / "model.safetensors"))
    write_json(tmp / "pretrain_report.json", report)
    write_atomic(tmp / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    replace_dir(tmp, out_dir)
