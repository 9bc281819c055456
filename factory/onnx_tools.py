"""ONNX files from torch: export (each model structure traced once per process), metadata, evaluation on
onnxruntime and the calibration images the quantizers read (the quantizers: :mod:`factory.quant.quantizers`)."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch

from factory.files import atomic_path
from factory.errors import ExportError
from factory.runtime.session import make_session

if TYPE_CHECKING:
    from factory.context import Runtime
    from factory.data import EvalImages, Preprocess


def export_onnx(model: torch.nn.Module, preprocess: Preprocess, path: Path, metadata: dict[str, str], opset: int) -> None:
    """Export ``model`` to ``path`` (dynamic batch), check it and embed ``metadata``. A model of a structure this
    process has traced before is not traced again: the stored graph takes its weights (see :data:`TEMPLATES`),
    and its outputs on a random batch must match PyTorch's, or the model is traced after all."""
    model = model.cpu().eval()
    key = _structure(model, preprocess.size, opset)
    with atomic_path(path, ".onnx") as tmp:
        if not _reused(key, model, preprocess.size, tmp):
            try:
                _save_optimized(_traced(model, preprocess.size, opset, key), tmp)
            except Exception as err:
                raise ExportError(f"ONNX export of {model.__class__.__name__} failed: {err}") from None
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        set_metadata(proto, metadata)
        onnx.save(proto, str(tmp))


TEMPLATES: collections.OrderedDict[tuple, bytes | None] = collections.OrderedDict()
"""Graphs traced in this process, before optimization and without their weights, by model structure
(:func:`_structure`): tracing takes seconds, filling a traced graph with another model's weights a fraction of one.
Kept only when every initializer is a state-dict tensor, the :data:`TEMPLATES_KEPT` last used; None marks a
structure whose filled graph once failed its check, traced every time since."""
TEMPLATES_KEPT = 4


def _structure(model: torch.nn.Module, size: int, opset: int) -> tuple:
    """What decides a traced graph besides the weights: the modules with their settings, the state dict's names,
    shapes and types, the input size and the opset."""
    tensors = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in model.state_dict().items())
    return type(model).__qualname__, repr(model), tensors, size, opset


def _reused(key: tuple, model: torch.nn.Module, size: int, path: Path) -> bool:
    """Whether the stored trace of ``model``'s structure, filled with its weights, is saved at ``path`` and computes
    what ``model`` computes; any failure marks the structure as one to trace every time."""
    template = TEMPLATES.get(key)
    if template is None:
        return False
    TEMPLATES.move_to_end(key)
    try:
        reused = _save_checked(_filled(template, model), model, size, path)
    except Exception:  # e.g. a dtype NumPy cannot hold: the trace below then says what is wrong, if anything
        reused = False
    if not reused:
        TEMPLATES[key] = None
    return reused


def _traced(model: torch.nn.Module, size: int, opset: int, key: tuple) -> torch.onnx.ONNXProgram:
    """The dynamo export of ``model``, not yet optimized; its graph kept in :data:`TEMPLATES` when reusable."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.zeros(2, 3, size, size),), input_names=["input"],
                                    output_names=["logits"], opset_version=opset, dynamo=True, optimize=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    if key not in TEMPLATES and set(program.model.graph.initializers) <= set(model.state_dict()):
        proto = ir.serde.serialize_model(program.model)
        for tensor in proto.graph.initializer:  # shapes and types stay; the weights come from each model
            tensor.ClearField("raw_data")
        TEMPLATES[key] = proto.SerializeToString()
        while len(TEMPLATES) > TEMPLATES_KEPT:
            TEMPLATES.popitem(last=False)
    return program


def _filled(template: bytes, model: torch.nn.Module) -> torch.onnx.ONNXProgram:
    """A traced graph with ``model``'s weights as its initializers."""
    graph_model = ir.serde.deserialize_model(onnx.ModelProto.FromString(template))
    weights = model.state_dict()
    for name, initializer in graph_model.graph.initializers.items():
        initializer.const_value = ir.tensor(weights[name].detach().numpy(), name=name)
    return torch.onnx.ONNXProgram(graph_model, None)


def _save_optimized(program: torch.onnx.ONNXProgram, path: Path) -> None:
    """Optimize ``program`` as ``torch.onnx.export`` does by default (constant folding, batch norm folded into
    convolutions, ...) and save it with its weights inside."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program.optimize()
        program.save(str(path), external_data=False)


def _save_checked(program: torch.onnx.ONNXProgram, model: torch.nn.Module, size: int, path: Path) -> bool:
    """Save ``program`` as :func:`_save_optimized` does and tell whether it computes what ``model`` computes on a
    random batch (to 1e-3 of the logits' scale): a structure that :func:`_structure` could not tell apart fails."""
    _save_optimized(program, path)
    batch = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(batch).numpy()
    got = make_session(path, threads=1, spinning=False).run(None, {"input": batch.numpy()})[0]
    return got.shape == expected.shape and np.abs(got - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, str(value)


def stamp_metadata(source: Path, target: Path, metadata: dict[str, str]) -> None:
    """Copy ``source`` to ``target`` with ``metadata`` added (used when publishing)."""
    proto = onnx.load(str(source))
    set_metadata(proto, metadata)
    with atomic_path(target, ".onnx") as tmp:
        onnx.save(proto, str(tmp))


def read_metadata(path: Path) -> dict[str, str]:
    """The factory metadata of an exported ONNX file (as onnxruntime users read it)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def onnx_metadata(architecture: str, preprocess: Preprocess, classes: list[str], opset: int) -> dict[str, str]:
    """What an exported FP32 file carries: its classes, evaluation preprocessing, architecture and opset."""
    return {"classes": json.dumps(classes), **preprocess.metadata(), "architecture": architecture,
            "precision": "fp32", "opset": str(opset)}


def onnx_logits(path: Path, preprocess: Preprocess, dataset: EvalImages, threads: int = 2, batch_size: int = 64,
                reference: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits of an ONNX classifier over an evaluation dataset, and the labels; with ``reference``, as the QDQ
    definition computes them (the graph unoptimized, see :func:`factory.runtime.session.make_session`)."""
    sess = make_session(path, threads, optimize=not reference)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    logits, labels = [], []
    for images, y in loader:
        logits.append(sess.run(None, {"input": preprocess(images).numpy()})[0])
        labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(labels)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` (N, classes) against ``labels``."""
    return float((logits.argmax(1) == labels).mean())


def spread_images(dataset: EvalImages, preprocess: Preprocess, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images spread evenly over ``dataset``, preprocessed, and their labels."""
    step = max(1, len(dataset) // count)
    items = [dataset[i] for i in list(range(0, len(dataset), step))[:count]]
    return preprocess(torch.stack([image for image, _ in items])).numpy(), np.array([label for _, label in items])


def calibration_batches(rt: Runtime, preprocess: Preprocess, count: int) -> list[np.ndarray]:
    """``count`` calibration images spread evenly over the calibration split, preprocessed, in batches of 16."""
    images, _ = spread_images(rt.eval_images("calibration", preprocess), preprocess, count)
    return _in_batches(images)


def noise_calibration_batches(preprocess: Preprocess, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` seeded uniform-noise images, preprocessed, in batches of 16: enough to build a static INT8
    graph whose size and latency are measured, not its accuracy (no task image is read)."""
    noise = torch.randint(0, 256, (count, 3, preprocess.size, preprocess.size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(seed))
    return _in_batches(preprocess(noise).numpy())


def _in_batches(images: np.ndarray, size: int = 16) -> list[np.ndarray]:
    return [images[i:i + size] for i in range(0, len(images), size)]
