"""A training run's resume file: weights, optimizer state, every global random generator and the run's progress,
written atomically at most every ``every_s`` seconds (and at the end), so an interrupted run continues where it
stopped and draws the numbers the uninterrupted one would."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from factory import distributed as dist
from factory.files import atomic_path

@dataclass
class Progress:
    """What a resume checkpoint holds besides weights and optimizer state."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    flops_per_image: float | None = None
    images_seen: int = 0
    stopped_by: str | None = None
    views_seen: str = ""


class Checkpoint:
    """Atomic resume file of a training run, written at most every ``every_s`` seconds (and at the end)."""

    def __init__(self, path: Path, objective: nn.Module, optimizer, every_s: float):
        self.path, self.objective, self.optimizer, self.every_s = path, objective, optimizer, every_s
        self.last_save = time.perf_counter()

    def load(self) -> Progress:
        if not self.path.is_file():
            return Progress()
        ckpt = torch.load(self.path, map_location="cpu", weights_only=False)
        self.objective.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        return Progress(**ckpt["progress"])

    def save(self, progress: Progress, final: bool = False) -> None:
        if not dist.is_main() or (not final and time.perf_counter() - self.last_save < self.every_s):
            return
        save_resume(self.path, {"model": self.objective.state_dict(), "optimizer": self.optimizer.state_dict(),
                                 "progress": vars(progress), "rng": rng_state()})
        self.last_save = time.perf_counter()


def rng_state() -> dict:
    """Every global generator a training step may draw from (dropout, drop-path, an evaluation loader's
    worker seeds): torch's CPU generator, CUDA's where it is in use, Python's and NumPy's."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved, so a resumed run draws the numbers the interrupted one would."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume(path: Path, state: dict) -> None:
    """Write a resume file atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
