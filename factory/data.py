"""Task data (found by :mod:`factory.sources`), reproducible augmented views and per-model preprocessing.

Datasets yield uint8 image tensors at the *view* resolution; each model then resizes and
normalises a batch on its own device with its own pretrained config (:class:`Preprocess`), so a
teacher and a student with different means, stds or resolutions see the very same augmented view.
A training view is a pure function of ``(image, seed)``, which is what lets the teacher cache store
a seed per view instead of pixels (and a digest of a few rendered views, checked before the cache is
used). Evaluation images follow the model's timm data config (resize the shorter side to
``size / crop_pct`` with its interpolation, centre crop), done on the decoded PIL image so that a
runtime with PIL and no torch reproduces them exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from factory.stage import Plan
from factory.errors import DataError
from factory.runtime.model import INTERPOLATION, to_rgb
from factory.task import Sample


class ImageStore:
    """Decoded images kept in memory: training copies shrunk to at most twice the view size on the short
    side (views are crops of them), and finished evaluation images."""

    def __init__(self):
        self._images: dict[tuple[Path, int], Image.Image] = {}
        self._eval: dict[tuple[Path, Preprocess], torch.Tensor] = {}

    def get(self, path: Path, view_size: int) -> Image.Image:
        """The training copy of an image for views of ``view_size``: RGB, short side at most ``2 * view_size``."""
        max_short_side = 2 * view_size
        image = self._images.get((path, max_short_side))
        if image is None:
            image = decode_rgb(path)
            short = min(image.size)
            if short > max_short_side:
                scale = max_short_side / short
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
            self._images[(path, max_short_side)] = image
        return image

    def eval_view(self, path: Path, preprocess: Preprocess) -> torch.Tensor:
        """The evaluation image (uint8 CHW) of ``preprocess``, made from the full-size decoded file."""
        key = (path, preprocess)
        view = self._eval.get(key)
        if view is None:
            view = self._eval[key] = preprocess.eval_transform()(decode_rgb(path))
        return view


def decode_rgb(path: Path) -> Image.Image:
    """Decode an image file as RGB; DataError naming the file when it cannot be read."""
    try:
        with Image.open(path) as raw:
            return to_rgb(raw)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}; remove or replace the file") from None


def train_view_transform(size: int) -> v2.Compose:
    """Augmentation of a training view (uint8 CHW output); geometry plus mild photometric jitter."""
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ])


def seeded(transform, image: Image.Image, seed: int) -> torch.Tensor:
    """Apply a random transform under ``seed``, leaving every RNG (Python, NumPy, torch CPU and CUDA)
    as it found it. Only the CPU generator is seeded (``torch.manual_seed`` would also reseed every CUDA
    generator); the transforms draw from it alone."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    cpu_state = torch.get_rng_state()
    try:
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return transform(image)
    finally:
        torch.set_rng_state(cpu_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


def view_seed(base_seed: int, index: int, view: int) -> int:
    """The seed of view ``view`` of image ``index``: a stable 63-bit hash."""
    digest = hashlib.blake2b(f"{base_seed}:{index}:{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass(frozen=True)
class ViewPlan(Plan):
    """Which augmented views a training run sees: ``num_views`` fixed seeded views per image, one
    chosen per epoch (0: a fresh view every epoch), at ``size`` pixels. Runs with equal view plans,
    batch size and seed see the very same pixels in the same order."""

    seed: int
    num_views: int
    size: int


class TrainViews(Dataset):
    """Training images; item ``i`` is ``(view, label, i, v)`` for the view ``v`` chosen this epoch.

    With ``num_views`` > 0 each image has a fixed set of views (seeds ``view_seed(seed, i, v)``) and
    every epoch picks one of them, so that cached teacher outputs for ``(i, v)`` match the pixels
    exactly. With ``num_views`` == 0 every epoch draws a fresh view.
    """

    def __init__(self, samples: list[Sample], store: ImageStore, plan: ViewPlan):
        self.samples = samples
        self.store = store
        self.transform = train_view_transform(plan.size)
        self.size = plan.size
        self.seed = plan.seed
        self.num_views = plan.num_views
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
        image = self.store.get(self.samples[index].path, self.size)
        return seeded(self.transform, image, view_seed(self.seed, index, view))

    def __getitem__(self, index: int):
        view = self.view_of(index)
        return self.render(index, view), self.samples[index].label, index, view

    def digest(self, count: int = 8) -> str:
        """Hash of the pixels of a few rendered views spread over the data, to check later that the
        same seeds still render the same views (another torchvision, another image file)."""
        digest = hashlib.sha256()
        n, k = len(self), max(1, self.num_views)
        for j in range(min(count, n * k)):
            index, view = (j * 7919) % n, j % k
            digest.update(self.render(index, view).numpy().tobytes())
        return digest.hexdigest()[:20]


class EvalImages(Dataset):
    """Evaluation images as ``preprocess`` evaluates them (uint8); item is ``(image, label)``."""

    def __init__(self, samples: list[Sample], store: ImageStore, preprocess: Preprocess):
        self.samples = samples
        self.store = store
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        return self.store.eval_view(sample.path, self.preprocess), sample.label


@dataclass(frozen=True)
class Preprocess:
    """A model's input convention, from timm's data config: resolution, mean, std, and how an
    evaluation image is made (shorter side resized to ``floor(size / crop_pct)`` with
    ``interpolation``, then a centre crop of ``size``). Training views are resized to ``size``
    bilinearly on the batch."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875
    interpolation: str = "bilinear"

    @property
    def resize(self) -> int:
        """The shorter side before the centre crop (timm's ``floor(size / crop_pct)``)."""
        return math.floor(self.size / self.crop_pct)

    def eval_transform(self) -> v2.Compose:
        """PIL image -> uint8 CHW tensor: resize (PIL, this interpolation), centre crop, to tensor."""
        mode = v2.InterpolationMode(self.interpolation if self.interpolation in INTERPOLATION else "bilinear")
        return v2.Compose([v2.Resize(self.resize, interpolation=mode), v2.CenterCrop(self.size), v2.ToImage()])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW batch -> normalised float batch at this model's resolution."""
        x = images.float().div_(255.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def metadata(self) -> dict[str, str]:
        """The ONNX metadata that lets a runtime without torch reproduce the evaluation exactly."""
        return {
            "mean": json.dumps(list(self.mean)), "std": json.dumps(list(self.std)),
            "input_size": json.dumps([3, self.size, self.size]), "crop_pct": json.dumps(self.crop_pct),
            "resize_shorter_side": json.dumps(self.resize), "interpolation": self.interpolation,
            "input_layout": "NCHW float32: decode, RGB, resize the shorter side to resize_shorter_side "
                            "(PIL, interpolation), centre crop input_size, scale to [0,1], (x - mean) / std",
        }


def preprocess_for(model: torch.nn.Module, size: int | None = None) -> Preprocess:
    """The model's :class:`Preprocess` from timm's resolved data config (mean, std, crop_pct,
    interpolation), optionally at another size."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return Preprocess(size or int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]),
                      float(cfg.get("crop_pct") or 0.875), str(cfg.get("interpolation") or "bilinear"))


class DeviceViews:
    """Training views made on the training device from the whole training set held there as one uint8
    tensor: for corpora whose CPU data loader cannot keep up with a GPU (on an H100 at 64 px the loader gave
    6,000 views/s against 8,600-15,000 images/s of training; experiments/README.md).

    Every image is stored once as a ``stored``-pixel square (shorter side resized, centre crop). A batch's
    views are random resized crops (area 0.35-1, aspect 3/4-4/3, bilinear via ``torchvision.ops.roi_align``),
    horizontal flips and brightness / contrast / saturation jitter of 0.2, drawn from a generator seeded by
    ``(seed, epoch, batch)``: the same seed gives the same views on the same device. They are not the CPU
    path's pixels (:class:`TrainViews`), so they suit training from scratch (pre-training), not the teacher
    cache. Batches are float32 NCHW in 0..255, which :class:`Preprocess` takes like uint8.
    """

    def __init__(self, samples: list[Sample], plan: ViewPlan, device: torch.device, stored: int | None = None,
                 num_workers: int = 0):
        self.size, self.seed, self.device = plan.size, plan.seed, device
        self.stored = stored or plan.size
        self.labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        decoded = DataLoader(_Squares(samples, self.stored), batch_size=256, num_workers=num_workers)
        self.images = torch.cat([batch for batch in decoded]).to(device)
        self.luma = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, batch_size: int, drop_last: bool, rank: int = 0, world: int = 1):
        """This epoch's batches ``(views, labels, indices, views_id)``, shuffled by ``(seed, epoch)`` and sharded by rank."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        shard = order[rank::world][: len(order) // world]
        stop = len(shard) - len(shard) % batch_size if drop_last else len(shard)
        for b, start in enumerate(range(0, stop, batch_size)):
            indices = shard[start:start + batch_size]
            views = torch.full_like(indices, self.epoch)
            yield self.render(indices, b), self.labels[indices], indices, views

    def render(self, indices: torch.Tensor, batch: int = 0) -> torch.Tensor:
        """Views of the images at ``indices`` for this epoch's batch ``batch``."""
        from torchvision.ops import roi_align

        n, s = len(indices), float(self.stored)
        g = torch.Generator(device=self.device).manual_seed(view_seed(self.seed, self.epoch, batch) % 2**62)

        def uniform(low: float, high: float, count: int = n) -> torch.Tensor:
            return torch.rand(count, generator=g, device=self.device) * (high - low) + low

        area = uniform(0.35, 1.0)
        ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
        w = torch.sqrt(area * ratio).clamp(max=1.0) * s
        h = torch.sqrt(area / ratio).clamp(max=1.0) * s
        x0, y0 = uniform(0, 1) * (s - w), uniform(0, 1) * (s - h)
        boxes = torch.stack([torch.arange(n, device=self.device, dtype=torch.float32), x0, y0, x0 + w, y0 + h], 1)
        source = self.images[indices.to(self.device)].float()
        x = roi_align(source, boxes, output_size=(self.size, self.size), sampling_ratio=2, aligned=True)
        flip = uniform(0, 1) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        brightness, contrast, saturation = (uniform(0.8, 1.2).view(-1, 1, 1, 1) for _ in range(3))
        x = x * brightness
        mean_gray = (x * self.luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = (x - mean_gray) * contrast + mean_gray
        gray = (x * self.luma).sum(1, keepdim=True)
        x = (x - gray) * saturation + gray
        return x.clamp_(0, 255)


class _Squares(Dataset):
    """Images decoded as uint8 squares: shorter side resized to ``size``, centre crop (for :class:`DeviceViews`)."""

    def __init__(self, samples: list[Sample], size: int):
        self.samples = samples
        self.transform = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.ToImage()])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(decode_rgb(self.samples[index].path)).as_subclass(torch.Tensor)
