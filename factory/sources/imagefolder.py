"""An image folder: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, or one folder of class subfolders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from factory.cache import StageCache
from factory.errors import DataError
from factory.runtime.model import IMAGE_EXTENSIONS
from factory.sources.common import FOLDER_HELP, Found
from factory.task import Sample

if TYPE_CHECKING:
    from factory.recipe import DataConfig


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
