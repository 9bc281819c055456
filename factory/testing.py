"""A tiny task that builds in seconds: synthetic images of three colour classes and a recipe of timm's
``test_*`` models. The tests use it, and so does the container check (``.ci/docker``), which regenerates
its models inside the image:

    python -m factory.testing DIR      # writes DIR/data (ImageFolder) and DIR/tiny.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

CHANGES_NO_RESULT = True

CLASSES = ["red", "green", "blue"]


def make_image_folder(root: Path, per_class: dict[str, int], size: int = 40, seed: int = 0) -> Path:
    """Learnable synthetic images: each class has its own dominant colour, plus noise and a random box."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
                img[..., label] += 150
                x, y = rng.integers(0, size // 2, 2)
                img[y:y + size // 3, x:x + size // 3] = rng.integers(0, 255, 3)
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


TINY_RECIPE = """
name: tiny
data:
  root: {root}
  image_size: 32
budget:
  profile: x86-avx2
  threads: 1
  latency_ms: 1000
  max_size_mb: 50
  min_accuracy: 0.0
student:
  model: test_efficientnet
teacher:
  model: test_resnet
  adapt: scratch
  epochs: 8
  batch_size: 12
distill:
  epochs: 12
  batch_size: 12
  teacher_views: 2
export:
  calibration_images: 8
  max_accuracy_drop: 1.0
bench:
  rounds: 3
  warmup: 1
  runs: 5
  min_time_s: 0
  batch_size: 2
baseline:
  weights: timm
refit: false
"""


def write_tiny_task(folder: str | Path, train: int = 18, test: int = 4) -> Path:
    """Write the tiny task's images under ``folder/data`` and its recipe as ``folder/tiny.yaml``; returns the recipe."""
    folder = Path(folder)
    data = make_image_folder(folder / "data", {"train": train, "test": test})
    recipe = folder / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(root=data.resolve()))
    return recipe


if __name__ == "__main__":
    print(write_tiny_task(sys.argv[1] if len(sys.argv) > 1 else "tiny-task"))
