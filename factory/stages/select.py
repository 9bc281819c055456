"""Student selection. For now the recipe names the student; this stage measures it (parameters and
MACs at the task resolution, by counting) and stops the build early if it cannot fit the budget."""

from __future__ import annotations

from pathlib import Path

from factory.cache import StageOutput
from factory.context import BuildContext
from factory.errors import RecipeError
from factory.models import count_params, create_model
from factory.train import forward_flops_per_image


def select_student(ctx: BuildContext) -> StageOutput:
    """Measure the recipe's student; raise RecipeError when its size alone breaks the budget."""
    r = ctx.recipe

    def run(work: Path) -> dict:
        model = create_model(r.student.model, None, ctx.data.num_classes, field="student.model")
        params = count_params(model)
        macs = int(forward_flops_per_image(model, ctx.view_size) // 2)
        return {"model": r.student.model, "params": params, "macs": macs, "image_size": ctx.view_size}

    stage = ctx.cache.run("select", {"student": r.student.model, "size": ctx.view_size,
                                     "classes": ctx.data.num_classes}, {}, run)
    b = r.budget
    if b.max_params is not None and stage.info["params"] > b.max_params:
        raise RecipeError(f"student.model {r.student.model!r} has {stage.info['params']:,} parameters, over "
                          f"budget.max_params {b.max_params:,}; choose a smaller student or raise the limit")
    if b.max_macs is not None and stage.info["macs"] > b.max_macs:
        raise RecipeError(f"student.model {r.student.model!r} needs {stage.info['macs']:,} MACs at "
                          f"{ctx.view_size}px, over budget.max_macs {b.max_macs:,}; choose a smaller student, "
                          f"lower data.image_size or raise the limit")
    return stage
