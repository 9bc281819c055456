"""A build stopped at any point of a training stage resumes to the model an uninterrupted build makes.

The builds run in fresh processes (``tests/fresh_process.py``), as a user's rerun does, stopped by SIGTERM at a counted step
(``tests/interrupted_build.py``), under kernels that round by their inputs' memory alignment as
oneMKL's do on Intel CPUs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from factory.testing import TINY_RECIPE
from fresh_process import run_fresh

HELPER = Path(__file__).with_name("interrupted_build.py")
SETTINGS = ["distill.epochs=12", "baseline.scratch=false", "baseline.pretrained=false", "export.quantize=none",
            "export.formats=[onnx]"]  # the models alone: no app forms of the shipped one
UPSTREAM_OF_DISTILL = ("data_check", "select", "teacher", "teacher_cache")  # 3 steps an epoch, 36 in all


def _build(recipe: Path, cache: Path, out: Path, stop: tuple[str, str, int]) -> subprocess.CompletedProcess:
    stage, point, n = stop
    argv = [str(HELPER), stage, point, str(n), "build", str(recipe), "--cache-dir", str(cache), "--out", str(out),
            "--device", "cpu"]
    for item in SETTINGS:
        argv += ["--set", item]
    env = {"FACTORY_CHECKPOINT_EVERY_S": "0"}  # a resume checkpoint after every epoch
    return run_fresh(argv, out.with_name(f"{out.name}-{stage}-{point}-{n}.log"), env)


def _largest_differences(cache: Path, reference: Path, stage: str) -> tuple[float, float]:
    """The largest difference between the two caches' weights of ``stage`` and between the outputs of
    every ONNX file both exported (the stopped stage's model among them)."""
    (trained,) = [p.relative_to(cache) for p in cache.glob(f"{stage}/*/model/model.safetensors")]
    weights = [load_file(root / trained) for root in (cache, reference)]
    weight_diff = max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[1])
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    files = sorted(p.relative_to(reference) for p in reference.glob("export/*/model.onnx"))
    assert files and all((cache / f).is_file() for f in files)
    outputs = [[ort.InferenceSession(str(root / f)).run(None, {"input": x})[0] for root in (cache, reference)]
               for f in files]
    return weight_diff, max(float(np.abs(a - b).max()) for a, b in outputs)


@pytest.fixture(scope="module")
def whole(tmp_path_factory, tiny_data) -> Path:
    """An uninterrupted build under the same kernels: its cache and export folder."""
    folder = tmp_path_factory.mktemp("whole")
    (folder / "tiny.yaml").write_text(TINY_RECIPE.format(root=tiny_data))
    done = _build(folder / "tiny.yaml", folder / "cache", folder / "out", ("distill", "none", 0))
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.mark.parametrize("stop", [
    ("distill", "step", 2),    # before the first checkpoint
    ("distill", "step", 7),    # mid-epoch, after two checkpoints
    ("distill", "epoch", 3),   # at an epoch's end, before its checkpoint
    ("distill", "write", 3),   # while a checkpoint is being written
    ("teacher", "step", 11),   # in another training stage, mid-epoch
], ids=lambda s: "-".join(map(str, s)))
def test_a_build_stopped_in_training_resumes_to_the_same_model(whole, tmp_path, stop):
    cache = tmp_path / "cache"
    if stop[0] == "distill":  # the stages before distillation as the whole build left them
        for name in UPSTREAM_OF_DISTILL:
            shutil.copytree(whole / "cache" / name, cache / name)
    recipe = whole / "tiny.yaml"
    stopped = _build(recipe, cache, tmp_path / "out", stop)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    output = stopped.stdout  # and stderr, merged
    assert "interrupted" in output and "Traceback" not in output
    partial = list(cache.glob(f"{stop[0]}/*.partial"))
    assert len(partial) == 1 and not list(cache.glob(f"{stop[0]}/*/stage.json"))  # nothing half-done looks done
    assert not list(partial[0].glob(".resume.pt.tmp*"))  # an interrupted checkpoint write leaves no debris
    assert (partial[0] / "resume.pt").is_file() == (stop[1:] != ("step", 2))

    resumed = _build(recipe, cache, tmp_path / "out", ("distill", "none", 0))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reports = [json.loads((out / "report.json").read_text()) for out in (tmp_path / "out", whole / "out")]
    assert [r["accuracy"] for r in reports[0]["results"]] == [r["accuracy"] for r in reports[1]["results"]]
    weight_diff, output_diff = _largest_differences(cache, whole / "cache", stop[0])
    assert weight_diff < 1e-6 and output_diff < 1e-5


class _Dropped(nn.Module):
    """A classifier objective whose every step draws from the global generator (dropout)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 8 * 8, 3))

    def forward(self, images, labels, indices, views):
        loss = nn.functional.cross_entropy(self.net(images.float() / 255), labels)
        return loss, {"ce": loss.detach()}


class _Views(torch.utils.data.TensorDataset):
    def set_epoch(self, epoch: int) -> None:
        pass


def _train_dropped(work: Path, monkeypatch, stop_after_step: int | None = None) -> dict:
    """Train :class:`_Dropped` as a stage does (seeded, then built); stop with Ctrl-C after a step if asked."""
    from factory import train

    torch.manual_seed(0)
    objective = _Dropped()
    n = 24
    views = _Views(torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)),
                   torch.arange(n) % 3, torch.arange(n), torch.zeros(n, dtype=torch.long))
    settings = train.TrainSettings(epochs=4, batch_size=6, weight_decay=0.0, warmup_epochs=0, seed=0)
    step, steps = train._step, []

    def counted(*args, **kwargs):
        out = step(*args, **kwargs)
        steps.append(1)
        if len(steps) == stop_after_step:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(train, "CHECKPOINT_EVERY_S", 0.0)
    monkeypatch.setattr(train, "_step", counted)
    train.train_loop(objective, [{"params": list(objective.parameters()), "lr": 0.01}], views, settings,
                     torch.device("cpu"), work, "dropped")
    return objective.state_dict()


def test_a_resumed_run_draws_the_random_numbers_the_uninterrupted_one_would(tmp_path, monkeypatch):
    whole = _train_dropped(tmp_path / "whole", monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _train_dropped(tmp_path / "stopped", monkeypatch, stop_after_step=10)  # mid-epoch 3, after 2 checkpoints
    torch.manual_seed(123)  # whatever the process drew meanwhile
    resumed = _train_dropped(tmp_path / "stopped", monkeypatch)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_teacher_outputs_are_in_aligned_memory(tmp_path):
    """Cached teacher outputs reach the projection heads in torch's 64-byte aligned memory, whatever the
    heap's state: oneMKL on Intel rounds by alignment, so NumPy's 16-byte aligned arrays would make a
    resumed run compute other gradients."""
    from factory.stages.teacher import TeacherOutputs

    outputs = TeacherOutputs.__new__(TeacherOutputs)
    outputs.views = 2
    outputs.features = np.random.default_rng(0).standard_normal((200, 24)).astype(np.float16)
    outputs.logits = np.random.default_rng(1).standard_normal((200, 5)).astype(np.float16)
    rng = np.random.default_rng(2)
    for batch in range(1, 40):
        indices, views = torch.from_numpy(rng.integers(0, 100, batch)), torch.from_numpy(rng.integers(0, 2, batch))
        junk = [np.empty(int(k)) for k in rng.integers(1, 50, 5)]  # move the heap along
        features, logits = outputs(indices, views, torch.device("cpu"))
        assert features.data_ptr() % 64 == 0 and logits.data_ptr() % 64 == 0
        assert features.dtype == logits.dtype == torch.float32
        rows = (indices * 2 + views).numpy()
        np.testing.assert_array_equal(features.numpy(), outputs.features[rows].astype(np.float32))
        del junk
