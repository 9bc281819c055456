"""An exported classifier with the evaluation preprocessing the build measured it with.

The factory's ONNX metadata gives the whole preprocessing (see ``factory.data.Preprocess.metadata``):
decode, RGB, resize the shorter side to ``resize_shorter_side`` with PIL and ``interpolation``, centre
crop ``input_size`` (torchvision's rounding), scale to [0, 1], ``(x - mean) / std``, NCHW float32. This
module redoes exactly that with Pillow and NumPy, so a device reproduces the build's accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from factory.errors import ModelError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
OPTION = {"input_size": "--size N", "mean": "--mean R,G,B", "std": "--std R,G,B"}
INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
                 "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded image as 8-bit RGB: grayscale, palette, RGBA, CMYK convert as Pillow does; 16- and 32-bit
    integer grayscale is scaled to 8 bits (Pillow's own conversion clips it to white)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


@dataclass
class Prediction:
    file: str
    label: str
    probability: float
    top: list[tuple[str, float]] = field(default_factory=list)


def image_files(path: Path) -> list[Path]:
    """``path`` itself, or the images under a folder (recursively, sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ModelError(f"{path}: no such file or folder; pass an image or a folder of images")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ModelError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return files


def folder_labels(path: Path, files: list[Path], classes: list[str], need_labels: bool = False) -> list[str | None]:
    """Each file's class by its first subfolder under ``path`` (None for an image not in a subfolder, or when
    ``path`` is one image). ModelError, naming both, when a subfolder is not one of the model's ``classes`` (it
    would only score wrong), or with ``need_labels`` when no image is in a class subfolder."""
    if not path.is_dir():
        labels = [None for _ in files]
    else:
        labels = [f.relative_to(path).parts[0] if len(f.relative_to(path).parts) > 1 else None for f in files]
    unknown = sorted({label for label in labels if label is not None} - set(classes))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ModelError(f"{path}: class folder(s) {shown} are not among the model's labels "
                         f"({', '.join(classes[:12])}{' ...' if len(classes) > 12 else ''}); name the subfolders by "
                         "the model's labels, or give a folder of unlabelled images to predict")
    if need_labels and all(label is None for label in labels):
        raise ModelError(f"{path}: no class subfolders; accuracy needs <class>/<image> folders named by the model's "
                         "labels")
    return labels


def _openvino_session(path: Path, threads: int | None):
    """An OpenVINO IR opened like an ONNX file (:class:`factory.runtime.openvino.OpenVinoSession`)."""
    from factory.runtime.openvino import INSTALL, OpenVinoSession, installed

    if not installed():
        raise ModelError(f"{path}: an OpenVINO IR needs the openvino package; {INSTALL}")
    try:
        return OpenVinoSession(path, threads or 0)
    except Exception as err:  # OpenVINO raises its own types for files it cannot read
        raise ModelError(f"{path}: not a loadable OpenVINO IR ({str(err).splitlines()[0][:200]})") from None


class ExportedModel:
    """An ONNX classifier exported by the factory, opened with onnxruntime."""

    def __init__(self, path: Path, session, metadata: dict[str, str], overrides: dict[str, str] | None = None):
        self.path, self.session = path, session
        self.metadata = {**metadata, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        missing = [k for k in ("input_size", "mean", "std") if k not in self.metadata]
        if missing:
            raise ModelError(f"{path}: the ONNX metadata has no {', '.join(missing)} (not exported by factory build?); "
                             f"pass {' '.join(OPTION[k] for k in missing)}")
        meta = self.metadata
        self.size = int(json.loads(meta["input_size"])[-1])
        outputs = session.get_outputs()[0].shape[-1]
        self.classes: list[str] = json.loads(meta["classes"]) if "classes" in meta else \
            [str(i) for i in range(outputs if isinstance(outputs, int) else 0)]
        self.mean = np.asarray(json.loads(meta["mean"]), dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(json.loads(meta["std"]), dtype=np.float32).reshape(3, 1, 1)
        self.resize = int(json.loads(meta["resize_shorter_side"])) if "resize_shorter_side" in meta else \
            int(self.size / 0.875)
        self.interpolation = meta.get("interpolation", "bilinear")

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, size: int | None = None,
             mean: list[float] | None = None, std: list[float] | None = None,
             provider: str = "CPUExecutionProvider") -> ExportedModel:
        """Open ``path`` with fixed intra-op threads and sequential execution on ``provider`` (one of
        :func:`factory.runtime.session.check_provider`'s), or an OpenVINO IR (``.xml``) on OpenVINO's CPU plugin;
        ``size``, ``mean`` and ``std`` stand in for metadata an
        ONNX file not written by the factory lacks (its own metadata wins otherwise)."""
        from factory.runtime.session import check_provider, make_session

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file; pass an .onnx file written by `factory build`")
        if path.suffix == ".xml":
            session = _openvino_session(path, threads)
        else:
            check_provider(provider)
            try:
                session = make_session(path, threads or 0, provider)  # 0: onnxruntime's default thread count
            except Exception as err:  # onnxruntime raises its own types for files that are not ONNX
                raise ModelError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0][:200]})") from None
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        given = {"input_size": json.dumps([3, size, size]) if size else None,
                 "mean": json.dumps(mean) if mean else None, "std": json.dumps(std) if std else None}
        return cls(path, session, metadata, {k: v for k, v in given.items() if k not in metadata})

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """PIL image -> float32 CHW array, exactly as the build evaluated."""
        image = to_rgb(image)
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        image = image.resize((new_w, new_h), INTERPOLATION.get(self.interpolation, Image.BILINEAR))
        top, left = int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        return (x - self.mean) / self.std

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": batch})[0]

    def predict(self, files: Iterable[Path], top: int = 5, batch_size: int = 32,
                skipped: list[str] | None = None) -> Iterator[Prediction]:
        """Top-``top`` predictions per image, in batches; undecodable images are listed in ``skipped``."""
        files = list(files)
        for start in range(0, len(files), batch_size):
            arrays, names = [], []
            for file in files[start:start + batch_size]:
                try:
                    with Image.open(file) as raw:
                        arrays.append(self.preprocess(raw))
                    names.append(str(file))
                except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
                    if skipped is None:
                        raise ModelError(f"{file}: cannot decode this image ({err})") from None
                    skipped.append(str(file))
            if not arrays:
                continue
            logits = self.logits(np.stack(arrays))
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            for name, p in zip(names, probs):
                order = np.argsort(-p)[:top]
                ranked = [(self.classes[i], float(p[i])) for i in order]
                yield Prediction(name, ranked[0][0], ranked[0][1], ranked)

    def top1(self, files: Iterable[Path]) -> list[int]:
        """Each image's class index, as ``factory predict`` names it (undecodable images raise ModelError)."""
        return [self.classes.index(p.label) for p in self.predict(files, top=1)]

    def files(self) -> list[Path]:
        """The model's files: the ONNX file, or an OpenVINO IR's ``.xml`` and ``.bin``."""
        return [self.path, self.path.with_suffix(".bin")] if self.path.suffix == ".xml" else [self.path]

    def info(self) -> dict:
        """What the model is: classes, preprocessing, inputs, outputs, precision, size and provenance."""
        meta = self.metadata
        return {
            "file": str(self.path), "size_mb": sum(p.stat().st_size for p in self.files()) / 2**20, "classes": self.classes,
            "precision": meta.get("precision"), "architecture": meta.get("architecture"), "opset": meta.get("opset"),
            "preprocess": {"input_size": self.size, "resize_shorter_side": self.resize,
                           "interpolation": self.interpolation, "mean": json.loads(meta["mean"]),
                           "std": json.loads(meta["std"]), "layout": meta.get("input_layout")},
            "inputs": [{"name": i.name, "shape": i.shape, "type": i.type} for i in self.session.get_inputs()],
            "outputs": [{"name": o.name, "shape": o.shape, "type": o.type} for o in self.session.get_outputs()],
            "recipe_hash": meta.get("recipe_hash"), "factory_version": meta.get("factory_version"),
            "teacher": meta.get("teacher"),
        }
