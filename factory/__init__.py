"""factory: turn a recipe into small, fast, deployable image classifiers.

A recipe names a dataset and a device budget; ``factory build`` distills a small
timm student from a teacher, exports it to ONNX, quantizes it and benchmarks it
against a scratch-trained student and the pretrain-then-finetune baseline.

    import factory
    from factory.runtime import ExportedModel

    result = factory.build("recipes/flowers12_cpu.yaml", ["distill.epochs=5"], device="cpu")
    print(result.report.shipped.decision)
    model = ExportedModel.open(result.out_dir / result.report.shipped.file)
    for p in model.predict(["rose.jpg"]):
        print(p.file, p.label, p.probability)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from factory.recipe import Recipe
    from factory.report.publish import BuildResult

CHANGES_NO_RESULT = True

__version__ = "0.2.0"


def build(recipe: str | Path | Recipe, overrides: Sequence[str] = (), device: str = "auto", force: bool = False,
          cache_dir: str | Path | None = None, out_dir: str | Path | None = None) -> BuildResult:
    """Build ``recipe`` (a YAML file, with ``--set``-style ``overrides``, or a loaded :class:`~factory.recipe.Recipe`)
    as ``factory build`` does, without the CLI's budget gate: returns where it published (``out_dir``), the typed
    report (``report``) and every stage output (``outcome``). Needs the build extra (torch, timm, ...)."""
    from factory.pipeline import build as run_build
    from factory.recipe import Recipe, load_recipe

    loaded = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, list(overrides))
    return run_build(loaded, device=device, force=force, cache_dir=cache_dir and Path(cache_dir),
                     out_dir=out_dir and Path(out_dir))
