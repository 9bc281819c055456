"""Every form of the shipped model an app can load, judged like a quantized ONNX file: on the validation split,
image by image against the shipped ONNX file, with the factory's paired rule (:func:`factory.decide.noise.drop_beyond`,
``export.max_accuracy_drop``; a rejected form is deleted), and timed on this host beside the ONNX file in one
interleaved run (:func:`factory.latency.measure`), each by its own runtime: onnxruntime for the ``.onnx``, ``.ort``
and image-input files, OpenVINO's CPU plugin for the IR. The image-input file is fed a decoded 640 x 480 frame, so its
figure includes the resize and crop in its graph. Imports no torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic.dataclasses import dataclass

from factory.fields import STRICT
from factory.latency import Latency, LatencySettings, Ratio

CHANGES_NO_RESULT = True


@dataclass(config=STRICT)
class FormatRow:
    """One form of the shipped model: its validation verdict against the ONNX file and its latency beside it."""

    format: str
    """onnx, image, ort or openvino (``export.formats``)."""
    file: str
    runtime: str
    val_images: int
    """0: not judged, because the shipped model was refit on train + validation (it trained on those images)."""
    val_accuracy: float | None
    drop: float | None
    """Validation top-1 of the ONNX file minus this form's, paired image by image (0 on the ONNX file's row)."""
    drop_low: float | None
    drop_high: float | None
    accepted: bool
    """False: the drop is beyond ``export.max_accuracy_drop`` outside the noise, and the file was deleted."""
    latency: Latency | None = None
    vs_onnx: Ratio | None = None
    """This form's latency over the ONNX file's, round by round in the same run."""


def scores_on_test(got: Sequence[int], images: Sequence[tuple[Path, int]],
                   expected: Sequence[int]) -> tuple[float, float]:
    """(accuracy, agreement) of a form's classes ``got`` on ``images`` (path, label): its top-1 accuracy, and the
    share of images on which it names the class ``expected`` (what ``factory predict`` names with the shipped
    file)."""
    n = max(len(images), 1)
    return (sum(int(g) == label for g, (_, label) in zip(got, images)) / n,
            sum(int(g) == e for g, e in zip(got, expected)) / n)


def _decoded(paths: Sequence[Path]) -> list[Image.Image]:
    from factory.runtime.model import to_rgb

    images = []
    for path in paths:
        with Image.open(path) as raw:
            images.append(to_rgb(raw).copy())
    return images


def form_logits(form: str, path: Path, images: list[Image.Image], onnx_model, threads: int) -> np.ndarray:
    """The logits of the file ``path`` of ``form`` on decoded ``images``, preprocessed as the shipped ONNX file
    (``onnx_model``, a :class:`factory.runtime.ExportedModel`) says, except for the image-input file, which takes
    the decoded image itself."""
    from factory.runtime.model import ExportedModel
    from factory.runtime.session import IMAGE_INPUT, make_session

    if form == "image":
        session = make_session(path, threads)
        return np.concatenate([session.run(None, {IMAGE_INPUT: np.asarray(image)})[0] for image in images])
    model = onnx_model if form == "onnx" else ExportedModel.open(path, threads)  # .ort and .xml open like .onnx
    return np.concatenate([model.logits(np.stack([onnx_model.preprocess(image) for image in images[i:i + 32]]))
                           for i in range(0, len(images), 32)])


def _unjudged(form: str, path: Path, runtimes: dict[str, str]) -> dict:
    return dict(format=form, file=path.name, runtime=runtimes[form], val_accuracy=None, drop=None, drop_low=None,
                drop_high=None, accepted=True)


def _delete(form: str, path: Path) -> None:
    path.unlink(missing_ok=True)
    if form == "openvino":
        path.with_suffix(".bin").unlink(missing_ok=True)


def judge_forms(shipped: Path, forms: dict[str, Path], val: Sequence[tuple[Path, int]], max_drop: float,
                settings: LatencySettings, runtimes: dict[str, str]) -> list[FormatRow]:
    """The shipped ONNX file's row, then one per file of ``forms`` (format -> path): judged on ``val`` (path,
    label) against the ONNX file with the paired rule and ``max_drop`` (a rejected file deleted; ``val`` empty: not
    judged), the accepted ones timed with ``settings`` beside the ONNX file in one run; ``runtimes``: format ->
    what runs it."""
    from factory.decide.noise import drop_beyond
    from factory.latency import measure, ratio
    from factory.runtime.model import ExportedModel

    onnx_model = ExportedModel.open(shipped, settings.threads)
    rows, timed = [_unjudged("onnx", shipped, runtimes)], {"onnx": shipped, **forms}
    if val:  # nothing is decided on images the model trained on: a refit model's forms are only timed
        images, labels = _decoded([path for path, _ in val]), np.asarray([label for _, label in val])
        reference = form_logits("onnx", shipped, images, onnx_model, settings.threads).argmax(1) == labels
        rows[0] |= dict(val_accuracy=float(reference.mean()), drop=0.0, drop_low=0.0, drop_high=0.0)
    for form, path in forms.items():
        rows.append(_unjudged(form, path, runtimes))
        if not val:
            continue
        correct = form_logits(form, path, images, onnx_model, settings.threads).argmax(1) == labels
        beyond, drop = drop_beyond(reference, correct, max_drop)
        rows[-1] |= dict(val_accuracy=float(correct.mean()), drop=drop.value, drop_low=drop.low, drop_high=drop.high,
                         accepted=not beyond)
        if beyond:
            _delete(form, path)
            del timed[form]
    latencies = dict(zip(timed, measure([(str(p), onnx_model.size) for p in timed.values()], settings,
                                        memory=False).latencies))
    return [FormatRow(**row, val_images=len(val), latency=latencies.get(row["format"]),
                      vs_onnx=ratio(latencies["onnx"], latencies[row["format"]]) if row["format"] in latencies
                      else None) for row in rows]
