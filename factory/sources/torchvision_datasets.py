"""A torchvision dataset class (Flowers102, CIFAR10, ...), downloaded where its host is reachable."""

from __future__ import annotations

import difflib
import inspect
import io
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from PIL import Image

from factory.cache import StageCache
from factory.class_names import resolve_class_names
from factory.errors import DataError
from factory.network import reachable
from factory.sources.common import DownloadPending, Found, MaterializePlan, _materialize
from factory.task import Sample

if TYPE_CHECKING:
    from factory.recipe import DataConfig


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
