"""Shared fixtures: a tiny synthetic ImageFolder dataset and a tiny recipe that builds in seconds."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from factory.testing import CLASSES, TINY_RECIPE, make_image_folder  # noqa: F401 (tests import them from here)

if TYPE_CHECKING:
    from factory.report.schema import Report

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub
# the datasets library's cache in a temporary folder, not the user's
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="factory-tests-hf-datasets-"))

FLOWERS12 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers12"  # beside the checkout

MARKS = {"build": ('["build"', "_build(", "factory.build(", "run_build(", "build(recipe", "build(load_recipe",
                   '["pretrain"', "pretrain(", "interrupted_build"),
         "subprocess": ("subprocess.", "Popen(", "run_fresh(", "FreshProcess(")}
"""Markers given from what a test's own code does: ``pytest -m "not build"`` runs the rest (a build inside a
fixture or a helper is not seen)."""


@pytest.hookimpl(wrapper=True)  # before every plugin's own hook, deselection included
def pytest_collection_modifyitems(items):
    import inspect

    for item in items:
        function = getattr(item, "function", None)
        if function is None:
            continue
        own = inspect.getsource(function)
        for mark, patterns in MARKS.items():
            if any(p in own for p in patterns):
                item.add_marker(mark)
        if "tiny_build" in getattr(item, "fixturenames", ()):
            item.add_marker("build")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # stable: workers take the long tests first and finish together
        items.sort(key=_slow_first)  # (in one process, the files' order keeps each module's fixtures made once)
    return (yield)


def _slow_first(item) -> int:
    if item.get_closest_marker("subprocess") or item.get_closest_marker("slow"):
        return 0
    return 1 if item.get_closest_marker("build") else 2


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist hands out tests one by one, except a module with module-scoped fixtures: its tests go to one
    worker, so those fixtures are made once (``--dist loadgroup`` cannot say it: pytest 9 ignores its node ids)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleFixturesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if _has_module_fixtures(module) else nodeid

    return ModuleFixturesTogether(config, log)


@cache
def _has_module_fixtures(module: str) -> bool:
    path = Path(__file__).parents[1] / module
    return path.is_file() and 'scope="module"' in path.read_text()


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` starts one worker per CPU this process may use (a container's quota, not the host's count)."""
    from factory.host import usable_cores

    return usable_cores()


def pytest_configure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread a worker: workers share the CPUs instead of spinning
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), {"train": 18, "test": 4})


@pytest.fixture
def tiny_recipe(tmp_path, tiny_data) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE.format(root=tiny_data))
    return path


@contextmanager
def recording_plan_reads():
    """Yield the set of ``(plan class, field)`` read from any plan (:class:`factory.stage.Plan`) inside the
    block, to check that every field a key holds is read by its stage. Reading a whole plan to key it
    (:func:`factory.stage.keyed_as` and the ``keyed_as`` of its parts) or to store it (``dataclasses.asdict``) does
    not count."""
    from factory.stage import Plan

    reads: set[tuple[str, str]] = set()

    def recording(plan, name: str):
        if not name.startswith("_") and sys._getframe(1).f_code.co_name not in ("_asdict_inner", "keyed_as"):
            reads.add((type(plan).__name__, name))
        return object.__getattribute__(plan, name)

    outer = Plan.__dict__.get("__getattribute__")
    if outer is not None:
        raise RuntimeError("recording_plan_reads does not nest")
    Plan.__getattribute__ = recording
    try:
        yield reads
    finally:
        del Plan.__getattribute__


@dataclass
class Built:
    """A finished ``factory build`` of a test: its typed report, its output folder and what it printed."""

    report: Report | None
    """None when the build stopped before writing one."""
    out: Path
    output: str

    def reran(self) -> set[str]:
        """The labels of the stages this build ran (not read from the cache)."""
        return {s.stage for s in self.report.compute.stages if not s.cached}


def cli_build(recipe: Path, cache: Path, out: Path, *args: str, exit_code: int = 0) -> Built:
    """``factory build`` of ``recipe`` through the CLI on the CPU, with ``args`` (``--set k=v``, ``--no-gate``, ...);
    asserts its exit code."""
    from typer.testing import CliRunner

    from factory.cli import app
    from factory.report.schema import Report

    result = CliRunner().invoke(app, ["build", str(recipe), "--cache-dir", str(cache), "--out", str(out),
                                      "--device", "cpu", *args])
    assert result.exit_code == exit_code, result.output
    report = Report.load(out / "report.json") if (out / "report.json").is_file() else None
    return Built(report, out, result.output)


@dataclass
class TinyBuild(Built):
    """The tiny recipe built once per test session (``tiny_build``), with the plan fields its stages read."""

    recipe: Path
    args: tuple[str, ...]
    cache: Path
    plan_reads: set[tuple[str, str]]

    def cache_copy(self, tmp_path: Path) -> Path:
        """A copy of this build's cache under ``tmp_path`` (made once), for a test that builds again."""
        copy = tmp_path / "cache"
        if not copy.exists():
            shutil.copytree(self.cache, copy)
        return copy

    def again(self, tmp_path: Path, *args: str, out: str = "out", exit_code: int = 0) -> Built:
        """This build once more with ``args`` added, from a copy of its cache, into ``tmp_path / out``: only the
        stages whose inputs ``args`` change run."""
        return cli_build(self.recipe, self.cache_copy(tmp_path), tmp_path / out, *self.args, *args,
                         exit_code=exit_code)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Pre-trained weights for the pretrain-then-finetune baseline (another task's head)."""
    from safetensors.torch import save_file

    from factory.models import create_model

    torch.manual_seed(1)
    checkpoint = tmp_path_factory.mktemp("checkpoint") / "pretrained.safetensors"
    save_file(create_model("test_efficientnet", None, 10).state_dict(), str(checkpoint))
    return checkpoint


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, tiny_data, tiny_checkpoint) -> TinyBuild:
    """The tiny recipe built once per session through the CLI, every method trained, its baseline pre-trained
    (``tiny_checkpoint``, its pre-training stated as 1e15 FLOPs). Tests read it; a test that changes a setting
    builds again from a copy of its cache (:meth:`TinyBuild.again`)."""
    root = tmp_path_factory.mktemp("tiny_build")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(root=tiny_data))
    args = ("--set", f"baseline.weights={tiny_checkpoint}", "--set", "baseline.pretrain_flops=1e15")
    with recording_plan_reads() as reads:
        built = cli_build(recipe, root / "cache", root / "out", *args)
    return TinyBuild(built.report, built.out, built.output, recipe, args, root / "cache", reads)


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: one printable character per byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _tiny_tokenizer(folder):
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77), len(tokens)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"))


def make_tiny_pipeline(root) -> Path:
    """A tiny random Stable Diffusion pipeline (64 px images) saved with save_pretrained under ``root``."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer, vocab_size = _tiny_tokenizer(root / "tok_src")
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    ))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=EulerDiscreteScheduler(steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    assert pipe.vae_scale_factor == 2  # 64 px images -> 32 x 32 latents: tiny but a valid SD layout
    folder = root / "pipeline"
    pipe.save_pretrained(folder)
    return folder
