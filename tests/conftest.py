"""Shared fixtures: a tiny synthetic ImageFolder dataset and a tiny recipe that builds in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub

FLOWERS12 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "flowers12"
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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), {"train": 12, "test": 4})


TINY_RECIPE = """
name: tiny
data:
  root: {root}
  image_size: 32
budget:
  profile: x86-cpu
  threads: 1
  latency_ms: 1000
  max_size_mb: 50
  min_accuracy: 0.0
student:
  model: test_efficientnet
teacher:
  model: test_resnet
  adapt: scratch
  epochs: 2
  batch_size: 12
distill:
  epochs: 2
  batch_size: 12
  teacher_views: 2
export:
  calibration_images: 8
  max_accuracy_drop: 1.0
bench:
  warmup: 2
  runs: 5
  min_time_s: 0
  batch_size: 2
baseline:
  weights: timm
"""


@pytest.fixture
def tiny_recipe(tmp_path, tiny_data) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE.format(root=tiny_data))
    return path
