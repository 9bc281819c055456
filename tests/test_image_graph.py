"""The shipped model with its preprocessing in the graph: a decoded uint8 image of any size in, the same class
as the Python runtime (Pillow's preprocessing) out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from factory.data import Preprocess
from factory.errors import ExportError
from factory.image_graph import IMAGE_INPUT, check_image_graph, write_image_graph
from factory.models import create_model
from factory.runtime.model import ExportedModel
from factory.runtime.session import make_session
from factory.stages.export import export_onnx

FLOWERS12 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers12"


def _exported(folder: Path, interpolation: str) -> Path:
    torch.manual_seed(0)
    pre = Preprocess(48, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), crop_pct=0.9, interpolation=interpolation)
    path = folder / f"{interpolation}.onnx"
    export_onnx(create_model("test_resnet", None, 12).eval(), pre, path,
                {"classes": json.dumps([str(i) for i in range(12)]), **pre.metadata(), "precision": "fp32"}, opset=18)
    return path


def _images(tmp_path: Path) -> list[tuple[Path, int]]:
    """Flowers12 test photos (when the shared data is there) and odd-sized ones of random pixels."""
    rng = np.random.default_rng(0)
    odd = []
    for i, (h, w) in enumerate([(37, 91), (120, 33), (64, 64), (301, 199), (49, 50)]):
        path = tmp_path / f"odd{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        odd.append((path, 0))
    photos = sorted(FLOWERS12.glob("test/*/*.jpg"))[::4]
    return odd + [(p, 0) for p in photos]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_the_image_graph_names_the_runtimes_class(tmp_path, interpolation):
    model = _exported(tmp_path, interpolation)
    image_file = write_image_graph(model)
    session = make_session(image_file, 1)
    assert session.get_inputs()[0].name == IMAGE_INPUT and session.get_inputs()[0].type == "tensor(uint8)"
    images = _images(tmp_path)
    runtime = ExportedModel.open(model, 1)
    check = check_image_graph(image_file, images, runtime.top1([path for path, _ in images]))
    assert check.images == len(images) and check.agreement >= 0.995
    for path, _ in images[:5]:  # odd sizes: the same logits, not only the same class
        image = Image.open(path).convert("RGB")
        expected = runtime.logits(runtime.preprocess(image)[None])
        got = session.run(None, {IMAGE_INPUT: np.asarray(image)})[0]
        assert np.abs(expected - got).max() < 1e-2 * max(1.0, np.abs(expected).max())
    meta = {p.key: p.value for p in onnx.load(str(image_file)).metadata_props}
    assert meta["preprocessing"] == "in-graph" and meta["classes"] == json.dumps([str(i) for i in range(12)])


def test_an_opset_without_antialiased_resize_is_refused(tmp_path):
    from factory.image_graph import with_image_input

    model = onnx.load(str(_exported(tmp_path, "bilinear")))
    next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = 17
    with pytest.raises(ExportError, match="opset 17: an image-input graph needs Resize with antialiasing"):
        with_image_input(model)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_the_graphs_pixels_are_pillows(tmp_path, interpolation):
    """Pixel by pixel, not only class by class: Pillow resamples width then height, rounding each pass (one
    rounded 2-D pass put 10-12% of pixels off, bicubic ones by up to 4 levels)."""
    from factory.image_graph import preprocessing_graph

    runtime = ExportedModel.open(_exported(tmp_path, interpolation), 1)
    meta = dict(runtime.session.get_modelmeta().custom_metadata_map)
    graph = make_session(preprocessing_graph(meta, 18, 9).SerializeToString(), 1)
    off, levels = [], []
    for path, _ in _images(tmp_path):
        image = Image.open(path).convert("RGB")
        got = graph.run(None, {IMAGE_INPUT: np.asarray(image)})[0][0]
        diff = np.abs(got - runtime.preprocess(image)) * runtime.std * 255  # in uint8 levels
        off.append((diff > 0.5).mean())
        levels.append(diff.max())
    assert max(levels) < 1.1 and np.mean(off) < 5e-3  # single-pass: about 10% of pixels off
