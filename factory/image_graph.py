"""An exported model with its preprocessing inside the graph, for apps that hand it a decoded image: input
``image``, uint8 RGB, height x width x 3 of any size; then, as the build evaluated (:mod:`factory.runtime.model`):
resize the shorter side to ``resize_shorter_side`` (onnx ``Resize`` with antialiasing and Pillow's edge weights,
as Pillow filters when it shrinks: the width, then the height, each pass rounded to uint8 as Pillow's are), centre
crop ``input_size`` (rounding half to even, as Python's ``round``), scale to [0, 1], ``(x - mean) / std``, and the model. Plain ONNX operators at the model's own
opset (18 or later: ``Resize`` antialiasing), so every onnxruntime (mobile builds included) runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic.dataclasses import dataclass

from factory.errors import ExportError
from factory.fields import STRICT
from factory.runtime.session import IMAGE_INPUT

if TYPE_CHECKING:
    import onnx

CHANGES_NO_RESULT = True

RESIZE_MODE = {"bilinear": ("linear", 1), "bicubic": ("cubic", 1), "nearest": ("nearest", 0)}
"""Pillow's filter -> onnx Resize mode and whether it antialiases (Pillow's nearest does not)."""
PILLOW_CUBIC_A = -0.5
"""Pillow's bicubic kernel coefficient (onnx's default is -0.75)."""


def image_graph_path(path: Path) -> Path:
    """Where the image-input file of ``path`` goes: ``student.int8.onnx`` -> ``student.int8.image.onnx``."""
    return path.with_name(f"{path.stem}.image.onnx")


def with_image_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a factory export, whose metadata states its preprocessing) behind a preprocessing graph that takes
    a decoded image (module doc). ExportError when its opset is below 18."""
    import onnx
    from onnx import compose

    meta = {p.key: p.value for p in model.metadata_props}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 18:
        raise ExportError(f"opset {opset}: an image-input graph needs Resize with antialiasing (opset 18 or later); "
                          "set export.opset: 18")
    pre = preprocessing_graph(meta, opset, model.ir_version)
    merged = compose.merge_models(compose.add_prefix(pre, "pre_"), model,
                                  io_map=[("pre_pixel_values", model.graph.input[0].name)])
    _rename_input(merged.graph, f"pre_{IMAGE_INPUT}", IMAGE_INPUT)
    onnx.helper.set_model_props(merged, {**meta, "input_layout": "uint8 HWC RGB image of any size; preprocessing "
                                         "in the graph", "preprocessing": "in-graph"})
    onnx.checker.check_model(merged)
    return merged


def _rename_input(graph, old: str, new: str) -> None:
    for value in graph.input:
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def preprocessing_graph(meta: dict[str, str], opset: int, ir_version: int) -> onnx.ModelProto:
    """The preprocessing alone: ``image`` (uint8 HWC) -> ``pixel_values`` (float32 1x3xSxS)."""
    from onnx import TensorProto, helper, numpy_helper

    size = int(json.loads(meta["input_size"])[-1])
    resize = int(json.loads(meta["resize_shorter_side"]))
    mode, antialias = RESIZE_MODE[meta.get("interpolation", "bilinear")]
    mean = np.asarray(json.loads(meta["mean"]), np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(json.loads(meta["std"]), np.float32).reshape(1, 3, 1, 1)
    consts = {"resize": np.array([resize], np.float32), "one_three": np.array([1, 3], np.int64),
              "one": np.array([1], np.int64), "two": np.array([2], np.int64), "zero": np.array([0], np.int64),
              "half": np.array([2.0], np.float32),
              "size_f": np.array([size], np.float32), "size_i": np.array([size, size], np.int64),
              "axes_hw": np.array([2, 3], np.int64), "u8_max": np.array(255.0, np.float32),
              "u8_min": np.array(0.0, np.float32), "mean": mean, "std": std}
    resize_attrs = {"mode": mode, "antialias": antialias, "coordinate_transformation_mode": "half_pixel",
                    "exclude_outside": 1}  # Pillow renormalizes the weights at the edges
    if mode == "cubic":
        resize_attrs["cubic_coeff_a"] = PILLOW_CUBIC_A
    nodes = [
        helper.make_node("Cast", [IMAGE_INPUT], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x"], ["chw"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["chw", "zero"], ["nchw"]),
        helper.make_node("Shape", [IMAGE_INPUT], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "two"], ["hw"]),
        helper.make_node("Cast", ["hw"], ["hw_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMin", ["hw_f"], ["short"], keepdims=1),
        helper.make_node("Mul", ["hw_f", "resize"], ["scaled"]),  # resize * side / short: exact on the short side
        helper.make_node("Div", ["scaled", "short"], ["new_f"]),
        helper.make_node("Floor", ["new_f"], ["new_floor"]),
        helper.make_node("Cast", ["new_floor"], ["new_hw"], to=TensorProto.INT64),
        # Pillow resamples the width, rounds to uint8, then the height: two passes, each rounded, as here
        helper.make_node("Slice", ["shape", "zero", "one"], ["h"]),
        helper.make_node("Slice", ["new_hw", "one", "two"], ["new_w"]),
        helper.make_node("Concat", ["one_three", "h", "new_w"], ["sizes_w"], axis=0),
        helper.make_node("Resize", ["nchw", "", "", "sizes_w"], ["wide_f"], **resize_attrs),
        helper.make_node("Round", ["wide_f"], ["wide_r"]),
        helper.make_node("Clip", ["wide_r", "u8_min", "u8_max"], ["wide"]),
        helper.make_node("Concat", ["one_three", "new_hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["wide", "", "", "sizes"], ["resized_f"], **resize_attrs),
        helper.make_node("Round", ["resized_f"], ["rounded"]),
        helper.make_node("Clip", ["rounded", "u8_min", "u8_max"], ["resized"]),
        helper.make_node("Sub", ["new_floor", "size_f"], ["margin"]),
        helper.make_node("Div", ["margin", "half"], ["offset_f"]),
        helper.make_node("Round", ["offset_f"], ["offset_r"]),  # half to even, as Python's round
        helper.make_node("Cast", ["offset_r"], ["starts"], to=TensorProto.INT64),
        helper.make_node("Add", ["starts", "size_i"], ["ends"]),
        helper.make_node("Slice", ["resized", "starts", "ends", "axes_hw"], ["cropped"]),
        helper.make_node("Div", ["cropped", "u8_max"], ["unit"]),
        helper.make_node("Sub", ["unit", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["pixel_values"]),
    ]
    graph = helper.make_graph(
        nodes, "preprocessing", [helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8, ["height", "width", 3])],
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, size, size])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def write_image_graph(path: Path, out: Path | None = None) -> Path:
    """The image-input file of the exported model at ``path`` (:func:`image_graph_path`), written atomically."""
    import onnx

    from factory.files import atomic_path

    out = out or image_graph_path(path)
    with atomic_path(out, ".onnx") as tmp:
        onnx.save(with_image_input(onnx.load(str(path))), str(tmp))
    return out


@dataclass(config=STRICT)
class ImageInputCheck:
    """The image-input file against ``factory predict`` (the runtime's Pillow preprocessing) on the test split."""

    file: str
    images: int
    agreement: float
    """Share of the images on which both name the same class."""
    accuracy: float
    """The image-input file's top-1 accuracy."""


def check_image_graph(image_file: Path, images: list[tuple[Path, int]], expected: list[int]) -> ImageInputCheck:
    """Run ``image_file`` on each decoded image of ``images`` (path, label) and compare its class with ``expected``
    (what ``factory predict`` names with the model it wraps) and with the label."""
    from PIL import Image

    from factory.formats import scores_on_test
    from factory.runtime.model import to_rgb
    from factory.runtime.session import make_session

    session = make_session(image_file, 1)
    got = []
    for path, _ in images:
        with Image.open(path) as raw:
            got.append(int(session.run(None, {IMAGE_INPUT: np.asarray(to_rgb(raw))})[0].argmax()))
    accuracy, agreement = scores_on_test(got, images, expected)
    return ImageInputCheck(image_file.name, len(images), agreement, accuracy)
