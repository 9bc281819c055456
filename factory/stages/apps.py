"""The shipped model's forms for apps (``export.formats``), made and judged once per shipped file and cached: the
image-input file (:mod:`factory.image_graph`), onnxruntime's mobile format (:mod:`factory.mobile`) and OpenVINO IR
(:mod:`factory.openvino_ir`), each checked on the test split against what ``factory predict`` names with the
shipped file, then judged on validation against it with the paired rule and timed beside it
(:func:`factory.formats.judge_forms`; a rejected form is deleted). Each is made from the shipped file stamped with
its provenance (:func:`provenance`), as published, so its forms carry the same metadata. A form that cannot be
written is left out with a note."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from factory import __version__
from factory.context import Runtime
from factory.formats import FormatRow
from factory.hashing import hash_config
from factory.image_graph import ImageInputCheck
from factory.latency import LatencySettings
from factory.mobile import MobileExport, target_platform
from factory.openvino_ir import OpenVinoExport
from factory.stage import Done, Plan, Stage, StageResult

if TYPE_CHECKING:
    from factory.recipe import Recipe
    from factory.stages.bench import BenchPlan
    from factory.stages.export import Exported


@dataclass(frozen=True)
class AppsPlan(Plan):
    formats: tuple[str, ...]
    """The forms besides the ONNX file (``export.formats``: image, ort, openvino)."""
    max_accuracy_drop: float
    target_platform: str
    """onnxruntime's converter platform for the device profile: 'arm' or 'amd64'."""
    latency: LatencySettings
    host: tuple[tuple[str, str], ...]

    @classmethod
    def from_recipe(cls, recipe: Recipe, bench: BenchPlan) -> AppsPlan | None:
        """None when ``export.formats`` asks for the ONNX file alone; timed as ``bench`` times, on its host."""
        forms = tuple(f for f in recipe.export.formats if f != "onnx")
        if not forms:
            return None
        return cls(forms, recipe.export.max_accuracy_drop, target_platform(recipe.budget.device().machine),
                   bench.settings(), bench.host)


@dataclass(kw_only=True)
class AppFiles(StageResult):
    """The checks of the shipped file's forms for apps (None: not asked for, or not written: see ``notes``)."""

    image_input: ImageInputCheck | None = None
    mobile: MobileExport | None = None
    openvino: OpenVinoExport | None = None
    formats: list[FormatRow] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    """Every file the stage wrote, for the export folder."""
    notes: list[str] = field(default_factory=list)
    """Why a form was not written, or was rejected and deleted."""


APPS = Stage("apps", AppFiles, __name__, ("onnx", "onnxruntime", "openvino", "pillow"))


def published_names(exported: Exported) -> dict[str, str]:
    """An export's files as published: ``model.onnx`` -> ``student.onnx``, its accepted quantized file ->
    ``student.<label>.onnx``."""
    names = {"model.onnx": "student.onnx"}
    quant = exported.quantization
    if quant is not None and quant.file is not None:
        names[quant.file] = f"student.{quant.label}.onnx"
    return names


def provenance(recipe: Recipe, teacher: Done, method: str) -> dict[str, str]:
    """What the published files' ONNX metadata add to the export's: the recipe hash, the factory version, the
    teacher and the method that made the model."""
    t = teacher.result
    return {"recipe_hash": recipe.fingerprint(), "factory_version": __version__,
            "teacher": f"{t.weights}, adapted by {t.adapt}", "method": method}


def app_forms(rt: Runtime, plan: AppsPlan, export: Done[Exported], file: str, stamp: dict[str, str],
              judged: bool) -> Done[AppFiles]:
    """The forms of ``export``'s ``file`` (the shipped one) stamped with ``stamp``; judged on validation unless
    the model trained on those images (``judged`` False: a refit, whose forms are only checked and timed)."""

    def run(work: Path) -> AppFiles:
        from factory.onnx_tools import stamp_metadata

        shipped = work / published_names(export.result)[file]
        stamp_metadata(export.file(file), shipped, stamp)
        apps = _checked(rt, plan, shipped)
        val = [(s.path, s.label) for s in rt.data.val] if judged else []
        apps.formats = _judged(plan, shipped, apps, val)
        shipped.unlink()
        apps.files = sorted(p.name for p in work.iterdir() if p.is_file())
        return apps

    inputs = {"export": export, "file": file, "stamp": hash_config(stamp), "judged": json.dumps(judged),
              "data": rt.data.fingerprint}
    return rt.cache.run(APPS, plan, inputs, run)


def _checked(rt: Runtime, plan: AppsPlan, shipped: Path) -> AppFiles:
    """Each form ``plan`` asks for, written beside ``shipped`` and checked on the test split."""
    from factory.runtime.model import ExportedModel

    images = [(s.path, s.label) for s in rt.data.test]
    expected = ExportedModel.open(shipped, 1).top1([path for path, _ in images])
    notes: list[str] = []
    made = {form: make(plan, shipped, images, expected, notes) if form in plan.formats else None
            for form, make in (("image", _image_input), ("ort", _mobile), ("openvino", _openvino))}
    return AppFiles(image_input=made["image"], mobile=made["ort"], openvino=made["openvino"], notes=notes)


def _judged(plan: AppsPlan, shipped: Path, apps: AppFiles, val: list[tuple[Path, int]]) -> list[FormatRow]:
    """Every written form judged on ``val`` against ``shipped`` and timed beside it; a rejected one is deleted,
    with a note."""
    import onnxruntime

    from factory.formats import judge_forms

    forms = {form: shipped.parent / check.file for form, check in
             (("image", apps.image_input), ("ort", apps.mobile), ("openvino", apps.openvino)) if check is not None}
    if not forms:
        return []
    onnx = f"onnxruntime {onnxruntime.__version__} ({plan.latency.provider})"
    runtimes = {"onnx": onnx, "image": onnx, "ort": onnx,
                "openvino": f"OpenVINO {apps.openvino.openvino} CPU" if apps.openvino else ""}
    rows = judge_forms(shipped, forms, val, plan.max_accuracy_drop, plan.latency, runtimes)
    for row in rows:
        if not row.accepted:
            apps.notes.append(f"{row.file} rejected and deleted: on validation it loses {row.drop * 100:.1f} points "
                              f"against {shipped.name} (90% interval {row.drop_low * 100:+.1f} to "
                              f"{row.drop_high * 100:+.1f}), beyond export.max_accuracy_drop")
    return rows


def _image_input(plan: AppsPlan, shipped: Path, images: list, expected: list[int],
                 notes: list[str]) -> ImageInputCheck | None:
    from factory.errors import ExportError
    from factory.image_graph import check_image_graph, image_graph_path, write_image_graph

    try:
        image_file = write_image_graph(shipped, image_graph_path(shipped))
    except ExportError as err:
        notes.append(f"no image-input file: {err}")
        return None
    return check_image_graph(image_file, images, expected)


def _mobile(plan: AppsPlan, shipped: Path, images: list, expected: list[int], notes: list[str]) -> MobileExport | None:
    from factory.mobile import mobile_export

    try:
        return mobile_export(shipped, shipped.parent, plan.target_platform, images, expected)
    except Exception as err:  # noqa: BLE001 - the converter's own errors; the ONNX files stand without it
        notes.append(f"no .ort file: onnxruntime's converter failed ({str(err).splitlines()[0][:200]})")
        return None


def _openvino(plan: AppsPlan, shipped: Path, images: list, expected: list[int],
              notes: list[str]) -> OpenVinoExport | None:
    from factory.openvino_ir import missing, openvino_export

    if skipped := missing():
        notes.append(skipped)
        return None
    try:
        return openvino_export(shipped, shipped.parent, images, expected, plan.latency.threads)
    except Exception as err:  # noqa: BLE001 - the converter's own errors; the ONNX files stand without it
        notes.append(f"no OpenVINO IR: OpenVINO failed ({str(err).splitlines()[0][:200]})")
        return None
