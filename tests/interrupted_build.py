"""Run ``factory build`` in this process, stopped by SIGTERM at a chosen point of one training stage.

    python tests/interrupted_build.py STAGE POINT N build RECIPE [build options...]

POINT is counted within the training stage whose progress label is STAGE (``distill``, ``teacher``, ...):

- ``step``: after its N-th optimisation step;
- ``epoch``: at the end of its N-th epoch, before that epoch is checkpointed;
- ``write``: during its N-th checkpoint write, the temporary file written and not yet renamed;
- ``none``: never (an uninterrupted build under the same kernels).

The point is a count of steps, not a delay, so where the build stops does not depend on the machine's
speed. The kernels of linear layers, convolutions and matrix products are also made to round differently
by the alignment of their inputs' memory, as oneMKL's do on Intel CPUs: a training loop whose tensors'
alignment depends on the process's history then resumes to another model on every machine, not only there.
"""

from __future__ import annotations

import os
import signal
import sys

import torch
import torch.nn.functional as F

import factory.train_stage as training
import factory.checkpoint as checkpoint
import factory.train as train
from factory import cli


def _offset(x) -> int:
    if not isinstance(x, torch.Tensor) or not x.numel() or torch.compiler.is_compiling():
        return 0
    try:
        return x.data_ptr() % 64
    except RuntimeError:  # a tensor without memory, traced by the ONNX export
        return 0


def alignment_sensitive(kernel):
    """``kernel`` whose result moves (by 0.01 to 0.03) when its first input is not 64-byte aligned."""

    def run(x, *args, **kwargs):
        out = kernel(x, *args, **kwargs)
        offset = _offset(x)
        return out + 1e-2 * offset / 16 if offset and out.is_floating_point() else out

    return run


def simulate_alignment_sensitive_kernels() -> None:
    F.linear = alignment_sensitive(F.linear)
    F.conv2d = alignment_sensitive(F.conv2d)
    torch.matmul = alignment_sensitive(torch.matmul)
    torch.Tensor.__matmul__ = alignment_sensitive(torch.Tensor.__matmul__)


def stop_at(stage: str, point: str, n: int) -> None:
    """Raise SIGTERM in this process at ``point`` number ``n`` of the training stage labelled ``stage``."""
    counts = {"active": False, "step": 0, "epoch": 0, "write": 0}

    def count(kind: str) -> None:
        if counts["active"]:
            counts[kind] += 1
            if kind == point and counts[kind] == n:
                os.kill(os.getpid(), signal.SIGTERM)  # handled as the CLI handles a real one

    loop, step, epoch = training.train_loop, train._step, train._train_epoch

    def train_loop(objective, groups, dataset, settings, device, work_dir, desc, *args, **kwargs):
        counts["active"] = desc == stage or desc.startswith(stage + " ")
        try:
            return loop(objective, groups, dataset, settings, device, work_dir, desc, *args, **kwargs)
        finally:
            counts["active"] = False

    def counted_step(*args, **kwargs):
        out = step(*args, **kwargs)
        count("step")
        return out

    def counted_epoch(*args, **kwargs):
        out = epoch(*args, **kwargs)
        count("epoch")
        return out

    def counted_save(path, state):
        with checkpoint.atomic_path(path) as tmp:
            torch.save(state, tmp)
            count("write")

    training.train_loop, train._step, train._train_epoch, checkpoint.save_resume = (
        train_loop, counted_step, counted_epoch, counted_save)


if __name__ == "__main__":
    stage, point, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.argv = [sys.argv[0], *sys.argv[4:]]
    simulate_alignment_sensitive_kernels()
    stop_at(stage, point, n)
    cli.main()
