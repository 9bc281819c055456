"""Where the task's images come from: an image folder, a Hugging Face dataset or a torchvision dataset.

:func:`load_task_data` turns every source into the same :class:`~factory.data.TaskData` (classes in
label order, train / val / test samples that are image files with labels, a content fingerprint), so no
stage after loading depends on the source. A source's own splits are used as they are; a split it lacks
is held out of train (``data.test_fraction``, ``data.val_fraction``), stratified and seeded.

Images that are not files of their own (a Hugging Face dataset's embedded bytes, a torchvision dataset
held in arrays) are written once into the cache by the ``data`` stage, with their original bytes, as
``<split>/<class>/<file>``; a source whose images are files (an image folder, Flowers102) is read in
place. Every image is decoded once per content fingerprint (the ``data_check`` stage): one that cannot
be is skipped and counted, or fails the load under ``data.strict``. A remote source fails within seconds
when its host cannot be reached, saying how to use local files instead.

This module is not imported by any training stage: the data's content fingerprint, not the code that
found it, is what their keys hold.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import io
import json
import random
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from PIL import Image, UnidentifiedImageError

from factory.cache import DEFAULT_CACHE, StageCache
from factory.stage import Plan, Stage, StageResult
from factory.class_names import resolve_class_names
from factory.console import log, progress_bar
from factory.errors import DataError
from factory.network import hub_reachable, offline, reachable
from factory.runtime.model import IMAGE_EXTENSIONS
from factory.task import Sample, TaskData

if TYPE_CHECKING:
    from factory.recipe import DataConfig

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


# ---------------------------------------------------------------------------------------------- folders

def _scan_split(split_dir: Path) -> dict[str, list[Path]]:
    classes: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes[class_dir.name] = sorted(p for p in class_dir.rglob("*")
                                         if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not classes:
        raise DataError(f"{split_dir} has no class folders; {FOLDER_HELP}")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DataError(f"{split_dir}: class folder(s) {', '.join(empty)} hold no images (extensions "
                        f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folders")
    return classes


def find_imagefolder(cfg: DataConfig, cache: StageCache | None, download: bool) -> Found:
    """``root/train``, ``root/test`` (and optional ``root/val``) of class folders, or ``root`` itself as
    one folder of class folders when ``data.test_fraction`` is set."""
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} does not exist; {FOLDER_HELP}")
    if (root / "train").is_dir():
        folders = {split: _scan_split(root / split) for split in ("train", "val", "test") if (root / split).is_dir()}
        if "test" not in folders and cfg.test_fraction == 0:
            raise DataError(f"data.root {str(root)!r} has no test/ folder; add test/<class>/ folders, or set "
                            "data.test_fraction (e.g. 0.2) to hold out part of train/")
        for split, classes in folders.items():
            if split != "train" and set(classes) != set(folders["train"]):
                only_train = sorted(set(folders["train"]) - set(classes))
                only_here = sorted(set(classes) - set(folders["train"]))
                raise DataError(
                    f"{root / split} and {root / 'train'} have different class folders (only in train/: "
                    f"{', '.join(only_train) or '-'}; only in {split}/: {', '.join(only_here) or '-'}); the splits "
                    "must share class folders")
    elif cfg.test_fraction > 0:
        folders = {"train": _scan_split(root)}
    else:
        raise DataError(f"data.root {str(root)!r} has no train/ folder; {FOLDER_HELP}")
    classes = list(folders["train"])
    label_of = {name: label for label, name in enumerate(classes)}
    splits = {split: [Sample(p, label_of[name]) for name, files in found.items() for p in files]
              for split, found in folders.items()}
    return Found(classes, splits, root, f"image folder {root}")


# ------------------------------------------------------------------------- sources written to the cache

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


MATERIALIZE = Stage("data", Materialized, __name__, libraries=("datasets", "torchvision", "pillow"))


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


# ------------------------------------------------------------------------------ Hugging Face datasets

def find_hf(cfg: DataConfig, cache: StageCache | None, download: bool) -> Found:
    """A Hugging Face dataset by hub id or local folder, loaded with ``datasets.load_dataset`` (and its cache)."""
    import datasets

    local = Path(cfg.dataset).expanduser()
    ref = str(local.resolve()) if local.exists() else cfg.dataset
    where = f"data.dataset {cfg.dataset!r}"
    unreachable = not local.exists() and not hub_reachable()
    if not local.exists() and not unreachable and not download:
        features = _hub_features(ref, cfg, where)
        if features is not None:
            _class_names_hf(features, None, cfg, where)
        raise DownloadPending(f"{where} is on the hub; factory build loads it (downloading what the datasets cache lacks)")
    try:
        with offline(unreachable):  # the datasets cache only: no retries against an unreachable hub
            loaded = datasets.load_dataset(ref, revision=cfg.revision)
    except (OSError, ValueError) as err:
        if unreachable:
            raise DataError(f"{where}: the Hugging Face hub cannot be reached (or HF_HUB_OFFLINE is set) and the "
                            f"dataset is not in the local datasets cache; run once where the hub is reachable, or "
                            f"{LOCAL_HF_HELP}") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{where}: the datasets library cannot load it ({first}); give a hub id or {LOCAL_HF_HELP}") from None
    names = cfg.split_names()
    missing = {ours: theirs for ours, theirs in names.items() if theirs not in loaded}
    if missing:
        raise DataError(f"{where} has splits {sorted(loaded)}, not {sorted(missing.values())}; set data.splits "
                        f"(e.g. {{train: {next(iter(loaded))}, test: ...}}), or data.test_fraction to hold out test")
    first = loaded[names["train"]]
    _check_columns(first.features, cfg, where)
    classes = _class_names_hf(first.features, {s: loaded[n] for s, n in names.items()}, cfg, where)
    identity = json.dumps({"revision": cfg.revision, "image": cfg.image_column, "label": cfg.label_column,
                           "splits": {s: [n, loaded[n]._fingerprint] for s, n in names.items()}, "classes": classes})
    items = {}
    for split, name in names.items():
        rows = loaded[name].cast_column(cfg.image_column, datasets.Image(decode=False)).select_columns(
            [cfg.image_column, cfg.label_column])
        items[split] = (len(rows), _hf_row_reader(rows, cfg, classes, f"{where} split {name!r}"))
    description = f"Hugging Face dataset {cfg.dataset}" + (f"@{cfg.revision}" if cfg.revision else "") + \
        " (" + ", ".join(f"{s}: {n}" for s, n in names.items()) + ")"
    return _materialize(cache, MaterializePlan("hf", ref, identity), classes, items, description)


def _hub_features(ref: str, cfg: DataConfig, where: str):
    import datasets

    try:
        return datasets.load_dataset_builder(ref, revision=cfg.revision).info.features
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{where}: not found on the hub ({first}); give a hub id or {LOCAL_HF_HELP}") from None


def _check_columns(features, cfg: DataConfig, where: str) -> None:
    import datasets

    columns = ", ".join(features)
    image = features.get(cfg.image_column)
    if not isinstance(image, datasets.Image):
        what = "does not exist" if image is None else f"holds {image}, not images"
        raise DataError(f"data.image_column {cfg.image_column!r} {what} in {where} (columns: {columns}); set "
                        "data.image_column to the column of images")
    if cfg.label_column not in features:
        raise DataError(f"data.label_column {cfg.label_column!r} does not exist in {where} (columns: {columns}); set "
                        "data.label_column to the column of class labels")


def _class_names_hf(features, splits, cfg: DataConfig, where: str) -> list[str]:
    """Class names in label order: the ClassLabel's (or data.class_names), data.class_names for integer labels,
    the sorted distinct values of a string column."""
    import datasets

    label = features.get(cfg.label_column)
    given = resolve_class_names(cfg.class_names)
    if isinstance(label, datasets.ClassLabel):
        if given is not None and len(given) != label.num_classes:
            raise DataError(f"data.class_names has {len(given)} names but {where}'s {cfg.label_column!r} has "
                            f"{label.num_classes} classes; give one name per class, in label order")
        return given or list(label.names)
    dtype = getattr(label, "dtype", "")
    if dtype.startswith("int") or dtype.startswith("uint"):
        if given is None:
            raise DataError(f"data.label_column {cfg.label_column!r} in {where} holds integers, not a ClassLabel; give "
                            "data.class_names (a list, a text file with one name a line, or a shipped list such as "
                            "flowers102)")
        return given
    if dtype in ("string", "large_string"):
        if splits is None:
            return []
        return given or sorted({value for rows in splits.values() for value in rows[cfg.label_column]})
    raise DataError(f"data.label_column {cfg.label_column!r} in {where} holds {label}, not a class label (ClassLabel, "
                    "integers with data.class_names, or strings); set data.label_column to the label column")


def _hf_row_reader(rows, cfg: DataConfig, classes: list[str], where: str):
    def get(index: int) -> tuple[bytes, str | None, int]:
        row = rows[index]
        image, label = row[cfg.image_column], row[cfg.label_column]
        if isinstance(label, str):
            label = classes.index(label) if label in classes else -1
        if not 0 <= label < len(classes):
            raise DataError(f"{where}: row {index} has label {row[cfg.label_column]!r}, outside the {len(classes)} "
                            "classes; choose a labelled split (data.splits), or give data.class_names for every label")
        data = image.get("bytes")
        if data is None and image.get("path"):
            data = Path(image["path"]).read_bytes()
        if data is None:
            raise DataError(f"{where}: row {index} has no image; remove the row or choose another split")
        return data, image.get("path"), int(label)

    return get


# --------------------------------------------------------------------------------- torchvision datasets

def find_torchvision(cfg: DataConfig, cache: StageCache | None, download: bool) -> Found:
    """A torchvision dataset class stored under ``data.root``, downloaded there when ``data.download``."""
    import torchvision.datasets as tvd
    from torchvision.datasets import VisionDataset

    cls = getattr(tvd, cfg.dataset, None)
    if not (isinstance(cls, type) and issubclass(cls, VisionDataset)):
        close = difflib.get_close_matches(cfg.dataset, tvd.__all__, n=3, cutoff=0.5)
        raise DataError(f"data.dataset {cfg.dataset!r} is not a torchvision dataset class"
                        + (f"; did you mean {', '.join(close)}?" if close else "; see torchvision.datasets"))
    root = Path(cfg.root).expanduser().resolve()
    where = f"torchvision {cfg.dataset} in data.root {str(root)!r}"
    names = cfg.split_names()
    try:
        try:
            made = {split: _construct(cls, root, spec, False) for split, spec in names.items()}
        except (RuntimeError, FileNotFoundError) as err:
            if not cfg.download:
                raise DataError(f"{where}: not found ({err}); set data.download: true to download it there, or "
                                "point data.root at a copy") from None
            for host in _download_hosts(cls):
                if not reachable(host):
                    raise DataError(f"{where}: not there, and its download host {host} cannot be reached; download it "
                                    "where the internet is reachable and copy it to data.root (or point data.root "
                                    "at a copy)") from None
            if not download:
                raise DownloadPending(f"{where} is not there yet; factory build downloads it") from None
            root.mkdir(parents=True, exist_ok=True)
            made = _with_socket_timeout(lambda: {split: _construct(cls, root, spec, True) for split, spec in names.items()})
    except (TypeError, ValueError) as err:
        raise DataError(f"data.splits {names}: {cfg.dataset} rejects them ({err}); give each split's name or the "
                        "class's keyword arguments") from None
    except ImportError as err:
        raise DataError(f"{where}: needs a package that is not installed ({err}); pip install it") from None
    first = made["train"]
    classes = resolve_class_names(cfg.class_names) or _names_of(first)
    if not classes:
        raise DataError(f"{where}: its labels are numbers and the class has no class names; give data.class_names "
                        "(a list, a text file with one name a line, or a shipped list such as flowers102)")
    description = f"torchvision {cfg.dataset} in {root} (" + ", ".join(f"{s}: {n}" for s, n in names.items()) + ")"
    files = {split: _files_of(ds) for split, ds in made.items()}
    if all(f is not None for f in files.values()):
        return Found(classes, {split: [Sample(p, _label(t, classes, where)) for p, t in rows]
                               for split, rows in files.items()}, root, description)
    identity = json.dumps({"root": str(root), "splits": names, "lengths": {s: len(d) for s, d in made.items()},
                           "classes": classes}, default=str)
    items = {split: (len(ds), _torchvision_reader(ds, classes, where)) for split, ds in made.items()}
    return _materialize(cache, MaterializePlan("torchvision", cfg.dataset, identity), classes, items, description)


def _construct(cls, root: Path, spec: str | dict[str, Any], download: bool):
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"root": str(root)} if "root" in params else {}
    if isinstance(spec, dict):
        kwargs.update(spec)
    elif "split" in params:
        kwargs["split"] = spec
    elif "train" in params:
        if spec not in ("train", "test"):
            raise ValueError(f"{cls.__name__} has only train=True/False; name the splits train and test")
        kwargs["train"] = spec == "train"
    else:
        raise ValueError(f"{cls.__name__} takes no split; give each split as keyword arguments")
    if "download" in params:
        kwargs["download"] = download
    return cls(**kwargs)


def _with_socket_timeout(fn, seconds: float = 60.0):
    """Run ``fn`` with a socket timeout, so that a stalled download fails instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        return fn()
    finally:
        socket.setdefaulttimeout(previous)


def _download_hosts(cls) -> list[str]:
    """Hosts of the http(s) addresses a torchvision dataset class downloads from (its class attributes)."""
    hosts: list[str] = []

    def visit(value):
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            host = urlparse(value).hostname
            if host and host not in hosts:
                hosts.append(host)
        elif isinstance(value, (list, tuple, set)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    for klass in cls.__mro__:
        if klass.__module__.startswith("torchvision.datasets") and klass.__name__ != "VisionDataset":
            for value in vars(klass).values():
                visit(value)
    return hosts


def _names_of(dataset) -> list[str] | None:
    names = getattr(dataset, "classes", None)
    if not names:
        return None
    return [name if isinstance(name, str) else ", ".join(map(str, name)) for name in names]


def _files_of(dataset) -> list[tuple[Path, int]] | None:
    """A file-backed dataset's ``(image file, label)`` pairs (torchvision's ``_image_files``/``_labels`` or
    ImageFolder's ``samples``), or None when its images are not files."""
    if hasattr(dataset, "_image_files") and hasattr(dataset, "_labels"):
        return [(Path(p), int(t)) for p, t in zip(dataset._image_files, dataset._labels)]
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and samples and isinstance(samples[0], tuple) and len(samples[0]) == 2:
        return [(Path(p), int(t)) for p, t in samples]
    return None


def _label(target, classes: list[str], where: str) -> int:
    label = int(target)
    if not 0 <= label < len(classes):
        raise DataError(f"{where}: label {label} is outside the {len(classes)} class names; give data.class_names "
                        "with a name for every label")
    return label


def _torchvision_reader(dataset, classes: list[str], where: str):
    import numpy as np
    import torch

    def get(index: int) -> tuple[bytes, str | None, int]:
        image, target = dataset[index]
        if isinstance(image, torch.Tensor):
            array = image.detach().cpu().numpy()
            if array.dtype != np.uint8:
                array = (array.clip(0, 1) * 255).round().astype(np.uint8)
            image = Image.fromarray(array.transpose(1, 2, 0).squeeze())
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless
        return buffer.getvalue(), None, _label(target, classes, where)

    return get


SOURCES = {"imagefolder": find_imagefolder, "hf": find_hf, "torchvision": find_torchvision}


# ------------------------------------------------------------------------------ one task from any source

@dataclass(frozen=True)
class CheckPlan(Plan):
    """Decoding every image of the task data (keyed by its content fingerprint alone)."""


@dataclass(kw_only=True)
class DataCheck(StageResult):
    undecodable: list[tuple[str, str]] = field(default_factory=list)
    """Images that cannot be decoded: path under the data root and why."""


DATA_CHECK = Stage("data_check", DataCheck, __name__, libraries=("pillow",))


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
