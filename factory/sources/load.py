"""One task from any source: the splits held out, every class checked, the content fingerprint, and the
``data_check`` stage that decodes every image once."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from factory.cache import StageCache
from factory.console import log, progress_bar
from factory.errors import DataError
from factory.sources.common import SHOWN, SOURCES_PACKAGE, Found
from factory.sources.hf import find_hf
from factory.sources.imagefolder import find_imagefolder
from factory.sources.torchvision_datasets import find_torchvision
from factory.stage import Plan, Stage, StageResult
from factory.task import Sample, TaskData

if TYPE_CHECKING:
    from factory.recipe import DataConfig


SOURCES = {"imagefolder": find_imagefolder, "hf": find_hf, "torchvision": find_torchvision}


@dataclass(frozen=True)
class CheckPlan(Plan):
    """Decoding every image of the task data (keyed by its content fingerprint alone)."""


@dataclass(kw_only=True)
class DataCheck(StageResult):
    undecodable: list[tuple[str, str]] = field(default_factory=list)
    """Images that cannot be decoded: path under the data root and why."""


DATA_CHECK = Stage("data_check", DataCheck, SOURCES_PACKAGE, libraries=("pillow",))


def load_task_data(cfg: DataConfig, cache_dir: Path | None = None, download: bool = True) -> TaskData:
    """The task data of ``cfg``: its source's images split into train / val / test, every image checked to
    decode; :class:`DataError` naming the field and the fix when it cannot be. ``cache_dir`` holds images
    written from datasets whose images are not files, and the decode check (without it, images go to the
    default cache and the check is not remembered). ``download=False`` (``factory validate``) raises
    :class:`DownloadPending` instead of downloading a reachable source."""
    cache = StageCache(cache_dir) if cache_dir is not None else None
    found = SOURCES[cfg.source](cfg, cache, download)
    splits = _split(found, cfg)
    fingerprint = content_fingerprint(splits, found.root, found.classes)
    undecodable = _undecodable(splits, found.root, fingerprint, cache)
    if undecodable and cfg.strict:
        shown = "; ".join(f"{name}: {why}" for name, why in undecodable[:SHOWN])
        raise DataError(f"{len(undecodable)} image(s) under {found.root} cannot be decoded ({shown}"
                        f"{' ...' if len(undecodable) > SHOWN else ''}); replace or remove them, or set data.strict: "
                        "false to skip them")
    if undecodable:
        bad = {found.root / name for name, _ in undecodable}
        splits = {split: [s for s in samples if s.path not in bad] for split, samples in splits.items()}
        _check_every_class(splits, found)
        fingerprint = hashlib.sha256(f"{fingerprint}|{json.dumps(undecodable)}".encode()).hexdigest()[:20]
        log(f"  [yellow]skipped[/] {len(undecodable)} image(s) that cannot be decoded, e.g. {undecodable[0][0]} "
            f"({undecodable[0][1]}); data.strict: true fails instead")
    return TaskData(found.root, found.classes, splits["train"], splits["val"], splits["test"], fingerprint,
                    source=found.description, skipped=undecodable)


VAL_PER_CLASS = 5
"""The fewest validation images per class held out by data.val_fraction (decisions need a few per class)."""


def _split(found: Found, cfg: DataConfig) -> dict[str, list[Sample]]:
    """Train / val / test: the source's own, test held out of train by ``test_fraction`` and val by
    ``val_fraction`` when the source lacks them (per class, seeded), then ``train_per_class`` drawn."""
    have = found.splits
    where = found.description
    for split, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction)):
        if split in have and fraction > 0 and f"{split}_fraction" in cfg.model_fields_set:  # not the default
            raise DataError(f"data.{split}_fraction is {fraction} but {where} has its own {split} split; set "
                            f"data.{split}_fraction: 0 (or leave the {split} split out of data.splits)")
    train = have["train"]
    test = have.get("test")
    if test is None:
        train, test = _hold_out(train, found.classes, cfg.test_fraction, random.Random(f"test:{cfg.split_seed}"), "test")
        train = [s for per_class in train for s in per_class]
    # the validation draw also orders each class for the train_per_class draw, as it always has
    kept, val = _hold_out(train, found.classes, 0.0 if "val" in have else cfg.val_fraction,
                          random.Random(cfg.split_seed), "val", at_least=VAL_PER_CLASS)
    train = sorted((s for per_class in kept for s in per_class[:cfg.train_per_class]), key=lambda s: (s.label, s.path))
    splits = {"train": train, "val": have.get("val", val), "test": test}
    splits = {name: sorted(samples, key=lambda s: (s.label, s.path)) for name, samples in splits.items()}
    _check_every_class(splits, found)
    return splits


def _hold_out(samples: list[Sample], classes: list[str], fraction: float, rng: random.Random,
              split: str, at_least: int = 0) -> tuple[list[list[Sample]], list[Sample]]:
    """Per class (each shuffled by ``rng``): the rest, and ``round(n * fraction)`` images held out; when
    ``fraction`` > 0, raised to ``at_least`` where the class has twice that many, else to half the class."""
    by_label: list[list[Sample]] = [[] for _ in classes]
    for sample in samples:
        by_label[sample.label].append(sample)
    rest, held = [], []
    for name, own in zip(classes, by_label):
        own.sort(key=lambda s: s.path)
        rng.shuffle(own)
        n = int(round(len(own) * fraction))
        if fraction > 0:
            n = max(n, min(at_least, len(own) // 2))
        if fraction > 0 and own and len(own) - n < 1:
            raise DataError(f"class {name!r}: {len(own)} training image(s) is too few for data.{split}_fraction={fraction}")
        held += own[:n]
        rest.append(own[n:])
    return rest, held


def _check_every_class(splits: dict[str, list[Sample]], found: Found) -> None:
    if len(found.classes) < 2:
        raise DataError(f"{found.description} has {len(found.classes)} class; a classifier needs at least 2")
    for split in ("train", "test"):
        present = {s.label for s in splits[split]}
        lacking = [name for label, name in enumerate(found.classes) if label not in present]
        if lacking:
            raise DataError(f"{found.description}: the {split} split has no images of class(es) "
                            f"{', '.join(lacking[:SHOWN])}{' ...' if len(lacking) > SHOWN else ''}; every class needs "
                            "training and test images (add them, or drop the class from the data)")


def content_fingerprint(samples: dict[str, list[Sample]], root: Path, classes: list[str]) -> str:
    """Hash of what the task data *is*: class names, and per split each image's path under ``root``,
    label and bytes. Moving the folder or touching a file keeps it; editing an image changes it."""
    digest = hashlib.sha256(json.dumps(classes).encode())
    for split, items in samples.items():
        digest.update(f"\n[{split}]".encode())
        for sample in items:
            digest.update(f"{_relative(sample.path, root)}\0{sample.label}\0".encode())
            digest.update(hashlib.sha256(sample.path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _undecodable(splits: dict[str, list[Sample]], root: Path, fingerprint: str,
                 cache: StageCache | None) -> list[tuple[str, str]]:
    """Images of the task data that cannot be decoded (path under ``root``, why), once per fingerprint."""
    samples = [s for split in splits.values() for s in split]

    def check(work: Path | None = None) -> DataCheck:
        bad = []
        with progress_bar(transient=True, disable=len(samples) < 500) as bar:
            for sample in bar.track(samples, description="checking images"):
                why = decode_problem(sample.path)
                if why:
                    bad.append((_relative(sample.path, root), why))
        return DataCheck(undecodable=bad)

    if cache is None:
        return check().undecodable
    return [tuple(item) for item in cache.run(DATA_CHECK, CheckPlan(), {"data": fingerprint}, check).result.undecodable]


def decode_problem(path: Path) -> str | None:
    """Why the image file at ``path`` cannot be decoded, or None. JPEGs decode at reduced scale, which still
    reads every byte (a truncated file fails)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except Image.DecompressionBombError as err:
        return f"decompression bomb: {err}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return str(err) or type(err).__name__
    return None
