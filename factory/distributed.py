"""Multi-process training under ``accelerate launch`` (or torchrun): who does what, on which device.

A build launched on N processes runs every stage once, on the main process, while the others wait
and then read the result from the stage cache; the training stages (teacher adaptation,
distillation, baselines) run on all processes with DDP, each on its shard of every epoch. Nothing
here initialises anything in a plain single-process run.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when a process group is needed (the runtime commands run without it)
    import torch


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@lru_cache(maxsize=1)
def state():
    """accelerate's PartialState: sets up the process group (NCCL on GPUs, gloo on CPUs) from the launcher's env."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    return state().num_processes if is_distributed() else 1


def rank() -> int:
    return state().process_index if is_distributed() else 0


def is_main() -> bool:
    return not is_distributed() or state().is_main_process


def barrier() -> None:
    if is_distributed():
        state().wait_for_everyone()


def process_device(requested: torch.device) -> torch.device:
    """This process's device: the launcher's choice when distributed, else the one asked for."""
    if is_distributed():
        return state().device
    return requested


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    import torch

    from factory.errors import FactoryError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FactoryError("--device cuda: no CUDA device is visible to torch; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise FactoryError(f"--device {name!r}: expected cpu, cuda or auto")
    return torch.device(name)


def training_device(requested: torch.device) -> torch.device:
    """This process's device; on the CPU always plain 'cpu' (a DDP launch names it 'cpu:0', and moving a model
    from 'cpu' to 'cpu:0' copies its tensors: under inference mode, as validation runs, they could not train
    again)."""
    import torch

    device = process_device(requested)
    return torch.device("cpu") if device.type == "cpu" else device
