"""What every source shares: the help lines, what a source found, and the ``data`` stage that writes
images that are not files of their own into the cache, with their original bytes."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from factory.cache import DEFAULT_CACHE, StageCache
from factory.console import log, progress_bar
from factory.stage import Plan, Stage, StageResult
from factory.task import Sample

if TYPE_CHECKING:
    pass


LOCAL_HF_HELP = ("set data.dataset to a local folder: a dataset saved with save_to_disk, or a folder of parquet "
                 "files or of class subfolders")
FOLDER_HELP = ("set data.root (or --set data.root=PATH) to a folder with train/<class>/*.jpg and test/<class>/*.jpg, "
               "or to one folder of class subfolders with data.test_fraction set")
SHOWN = 5  # names listed in an error before "..."


class DownloadPending(Exception):
    """Not an error: the source is reachable but not downloaded yet (``factory validate`` says so; a build
    downloads it)."""


@dataclass
class Found:
    """What a source holds before the factory splits it: the classes (in label order) and, per split it
    has (train; test and val when it has them), its images as files with labels."""

    classes: list[str]
    splits: dict[str, list[Sample]]
    root: Path
    description: str


@dataclass(frozen=True)
class MaterializePlan(Plan):
    """A dataset whose images are not files: which dataset, which of its splits, and its identity there
    (the datasets library's fingerprint of each split, or the torchvision class and its arguments)."""

    source: str
    dataset: str
    identity: str


@dataclass(kw_only=True)
class Materialized(StageResult):
    classes: list[str]
    samples: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """Per split, each image's path under the stage folder and its label."""


SOURCES_PACKAGE = "factory.sources"
"""The module whose code identity keys the ``data`` and ``data_check`` stages: the whole package, since the
readers of every source compute what they write."""

MATERIALIZE = Stage("data", Materialized, SOURCES_PACKAGE, libraries=("datasets", "torchvision", "pillow"))


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.+-]+", "_", name).strip("._") or "class"


def _image_suffix(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = (image.format or "").lower()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        return ".img"  # written anyway: the decode check skips it (or fails under data.strict)
    return {"jpeg": ".jpg", "tiff": ".tif"}.get(fmt, f".{fmt}" if fmt else ".img")


def _materialize(cache: StageCache | None, plan: MaterializePlan, classes: list[str],
                 items: dict[str, tuple[int, Callable[[int], tuple[bytes, str | None, int]]]], description: str) -> Found:
    """Write every image of ``items`` (per split: its length and ``index -> (bytes, file name or None,
    label)``) into the ``data`` stage folder, once per plan."""

    def write(work: Path) -> Materialized:
        samples: dict[str, list[tuple[str, int]]] = {}
        with progress_bar(transient=True) as bar:
            for split, (count, get) in items.items():
                task = bar.add_task(f"writing {split} images", total=count)
                taken: set[str] = set()
                samples[split] = []
                for index in range(count):
                    data, name, label = get(index)
                    name = _safe_name(Path(name).name) if name else f"{index:06d}{_image_suffix(data)}"
                    relative = f"{split}/{_safe_name(classes[label])}/{name}"
                    if relative in taken:
                        relative = f"{split}/{_safe_name(classes[label])}/{index:06d}-{name}"
                    taken.add(relative)
                    (work / relative).parent.mkdir(parents=True, exist_ok=True)
                    (work / relative).write_bytes(data)
                    samples[split].append((relative, label))
                    bar.advance(task)
        return Materialized(classes=classes, samples=samples)

    cache = cache or StageCache(DEFAULT_CACHE)
    done = cache.run(MATERIALIZE, plan, {}, write)
    if not done.cached:
        log(f"  [green]done[/]   data: {description} written to {done.path} ({done.wall_s:.1f}s)")
    splits = {split: [Sample(done.path / rel, label) for rel, label in rows]
              for split, rows in done.result.samples.items()}
    return Found(done.result.classes, splits, done.path, description)
