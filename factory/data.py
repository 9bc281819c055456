"""Task data: ImageFolder splits, reproducible augmented views and per-model preprocessing.

Datasets yield uint8 image tensors at the *view* resolution; each model then resizes and
normalises a batch on its own device with its own pretrained config (:class:`Preprocess`), so a
teacher and a student with different means, stds or resolutions see the very same augmented view.
A training view is a pure function of ``(image, seed)``, which is what lets the teacher cache store
a seed per view instead of pixels.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from factory.errors import DataError
from factory.recipe import DataConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class TaskData:
    """The task's classes and its train / val / test samples."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    fingerprint: str
    synthetic: list[Sample] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _scan_split(split_dir: Path) -> dict[str, list[Path]]:
    classes: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        classes[class_dir.name] = files
    return classes


def _fingerprint(files: list[Path], root: Path, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def load_task_data(cfg: DataConfig) -> TaskData:
    """Scan ``cfg.root`` (train/ and test/ ImageFolders) and split off validation; raise DataError if malformed."""
    root = Path(cfg.root).expanduser().resolve()
    fix = "set data.root in the recipe (or --set data.root=PATH) to a folder with train/<class>/*.jpg and test/<class>/*.jpg"
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} does not exist; {fix}")
    splits = {}
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"data.root {str(root)!r} has no {split}/ folder; {fix}")
        splits[split] = _scan_split(split_dir)
        if not splits[split]:
            raise DataError(f"{split_dir} has no class folders; {fix}")
        empty = [name for name, files in splits[split].items() if not files]
        if empty:
            raise DataError(
                f"{split_dir}: class folder(s) {', '.join(empty)} hold no images "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)}); add images or remove the folders"
            )
    classes = list(splits["train"])
    unknown = sorted(set(splits["test"]) - set(classes))
    if unknown:
        raise DataError(f"{root / 'test'} has classes missing from train/: {', '.join(unknown)}; the two splits must share class folders")
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} has {len(classes)} class folder; a classifier needs at least 2")

    rng = random.Random(cfg.split_seed)
    train, val = [], []
    for label, name in enumerate(classes):
        files = list(splits["train"][name])
        rng.shuffle(files)
        n_val = int(round(len(files) * cfg.val_fraction))
        if cfg.val_fraction > 0 and len(files) - n_val < 1:
            raise DataError(f"{root / 'train' / name}: {len(files)} image(s) is too few for data.val_fraction={cfg.val_fraction}")
        val += [Sample(p, label) for p in sorted(files[:n_val])]
        train += [Sample(p, label) for p in sorted(files[n_val:][:cfg.train_per_class])]
    test = [Sample(p, classes.index(name)) for name, files in splits["test"].items() for p in files]
    all_files = [s.path for s in train + val + test]
    fingerprint = _fingerprint(sorted(all_files), root, f"{classes}|{cfg.val_fraction}|{cfg.split_seed}"
                               + (f"|{cfg.train_per_class}" if cfg.train_per_class else ""))
    return TaskData(root, classes, train, val, test, fingerprint)


class ImageStore:
    """Decodes images once and keeps them, shrunk to at most ``2 * size`` on the short side, in memory."""

    def __init__(self, size: int):
        self.max_short_side = 2 * size
        self._images: dict[Path, Image.Image] = {}

    def get(self, path: Path) -> Image.Image:
        image = self._images.get(path)
        if image is None:
            try:
                with Image.open(path) as raw:
                    image = raw.convert("RGB")
            except (UnidentifiedImageError, OSError) as err:
                raise DataError(f"cannot read image {path}: {err}; remove or replace the file") from None
            short = min(image.size)
            if short > self.max_short_side:
                scale = self.max_short_side / short
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
            self._images[path] = image
        return image


def train_view_transform(size: int) -> v2.Compose:
    """Augmentation of a training view (uint8 CHW output); geometry plus mild photometric jitter."""
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ])


def eval_view_transform(size: int, crop_pct: float = 0.875) -> v2.Compose:
    """Resize then centre crop (uint8 CHW output), as timm evaluates."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(int(round(size / crop_pct)), antialias=True),
        v2.CenterCrop(size),
    ])


def seeded(transform, image: Image.Image, seed: int) -> torch.Tensor:
    """Apply a random transform under ``seed`` without disturbing the global RNG state."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        out = transform(image)
    random.setstate(py_state)
    np.random.set_state(np_state)
    return out


def view_seed(base_seed: int, index: int, view: int) -> int:
    """The seed of view ``view`` of image ``index``: a stable 63-bit hash."""
    digest = hashlib.blake2b(f"{base_seed}:{index}:{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class TrainViews(Dataset):
    """Training images; item ``i`` is ``(view, label, i, v)`` for the view ``v`` chosen this epoch.

    With ``num_views`` > 0 each image has a fixed set of views (seeds ``view_seed(seed, i, v)``) and
    every epoch picks one of them, so that cached teacher outputs for ``(i, v)`` match the pixels
    exactly. With ``num_views`` == 0 every epoch draws a fresh view.
    """

    def __init__(self, samples: list[Sample], store: ImageStore, size: int, seed: int, num_views: int = 0):
        self.samples = samples
        self.store = store
        self.transform = train_view_transform(size)
        self.seed = seed
        self.num_views = num_views
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def view_of(self, index: int) -> int:
        if self.num_views == 0:
            return self.epoch
        return view_seed(self.seed + 7919 * self.epoch, index, -1) % self.num_views

    def __len__(self) -> int:
        return len(self.samples)

    def render(self, index: int, view: int) -> torch.Tensor:
        return seeded(self.transform, self.store.get(self.samples[index].path), view_seed(self.seed, index, view))

    def __getitem__(self, index: int):
        view = self.view_of(index)
        return self.render(index, view), self.samples[index].label, index, view


class EvalImages(Dataset):
    """Evaluation images at the view resolution; item is ``(image, label)``."""

    def __init__(self, samples: list[Sample], store: ImageStore, size: int, crop_pct: float = 0.875):
        self.samples = samples
        self.store = store
        self.transform = eval_view_transform(size, crop_pct)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        return self.transform(self.store.get(sample.path)), sample.label


@dataclass(frozen=True)
class Preprocess:
    """A model's input convention: resolution, mean and std (timm's pretrained config)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW batch -> normalised float batch at this model's resolution."""
        x = images.float().div_(255.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """Inverse of :meth:`to_dict` (as stored in a stage's info)."""
        return cls(d["size"], tuple(d["mean"]), tuple(d["std"]))


def preprocess_for(model: torch.nn.Module, size: int | None = None) -> Preprocess:
    """The model's :class:`Preprocess` from timm's resolved data config, optionally at another size."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return Preprocess(size or int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]))
