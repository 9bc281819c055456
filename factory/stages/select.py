"""Student selection. For now the recipe names the student; this stage measures it (parameters and
MACs at the task resolution, by counting) so the build can stop early if it cannot fit the budget."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from factory.cache import Done, Plan, Stage, StageResult
from factory.context import Runtime
from factory.errors import RecipeError
from factory.models import count_params, create_model
from factory.train import forward_flops_per_image

if TYPE_CHECKING:
    from factory.recipe import Recipe


@dataclass(frozen=True)
class SelectPlan(Plan):
    model: str
    image_size: int
    num_classes: int

    @classmethod
    def from_recipe(cls, recipe: Recipe, num_classes: int) -> SelectPlan:
        return cls(recipe.student.model, recipe.data.image_size, num_classes)


@dataclass(kw_only=True)
class StudentChoice(StageResult):
    model: str
    params: int
    macs: int
    image_size: int


SELECT = Stage("select", StudentChoice, __name__, ("torch", "timm"))


def select_student(rt: Runtime, plan: SelectPlan) -> Done[StudentChoice]:
    """Count the student's parameters and MACs at the task resolution."""

    def run(work: Path) -> StudentChoice:
        model = create_model(plan.model, None, plan.num_classes, field="student.model")
        macs = int(forward_flops_per_image(model, plan.image_size) // 2)
        return StudentChoice(model=plan.model, params=count_params(model), macs=macs, image_size=plan.image_size)

    return rt.cache.run(SELECT, plan, {}, run)


def check_student_fits(choice: StudentChoice, recipe: Recipe) -> None:
    """Raise RecipeError when the student's size alone breaks ``budget.max_params`` or ``budget.max_macs``."""
    b = recipe.budget
    if b.max_params is not None and choice.params > b.max_params:
        raise RecipeError(f"student.model {choice.model!r} has {choice.params:,} parameters, over "
                          f"budget.max_params {b.max_params:,}; choose a smaller student or raise the limit")
    if b.max_macs is not None and choice.macs > b.max_macs:
        raise RecipeError(f"student.model {choice.model!r} needs {choice.macs:,} MACs at {choice.image_size}px, over "
                          f"budget.max_macs {b.max_macs:,}; choose a smaller student, lower data.image_size or "
                          f"raise the limit")
