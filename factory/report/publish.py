"""Publishing a folder as a whole (a swap: readers see the old folder or the new one, never half of either), and
the build's ``exports/<name>/``: the shipped model stamped with its provenance, its labels, the synthetic
images' manifest and the report."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from factory import __version__
from factory.files import MANIFEST, exclusive, replace_dir, users_files, write_atomic, write_json
from factory.report.assemble import Provenance, assemble_report
from factory.report.augmentation import SYNTHETIC_MANIFEST
from factory.report.card import CARD_FILE, model_card
from factory.report.html import render_html
from factory.report.markdown import render_markdown
from factory.report.plots import write_plots
from factory.report.quantization import AppFiles
from factory.report.schema import Report

if TYPE_CHECKING:
    from factory.image_graph import ImageInputCheck
    from factory.mobile import MobileExport
    from factory.formats import FormatRow
    from factory.openvino_ir import OpenVinoExport
    from factory.report.outcome import BuildOutcome

CHANGES_NO_RESULT = True  # no stage result depends on this module (factory.identity)

T = TypeVar("T")


@dataclass(frozen=True)
class BuildResult:
    """Where a build published, its report and every stage output it was made from (both None on the non-main
    processes of a multi-process launch)."""

    out_dir: Path
    report: Report | None
    outcome: BuildOutcome | None = None


def publish_folder(out_dir: Path, fill: Callable[[Path], T]) -> T:
    """Let ``fill`` write a fresh temporary folder beside ``out_dir``, then swap it in as ``out_dir``: a failure
    leaves the last good one. Files and folders in ``out_dir`` the factory did not write (:data:`MANIFEST`) are
    copied into the new one first, so a rebuild keeps them. Two processes publishing to one folder take turns.
    Returns what ``fill`` returns."""
    with exclusive(out_dir.with_name(f".{out_dir.name}.lock"), f"publishing {out_dir}"):
        tmp = out_dir.with_name(f".{out_dir.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        filled = fill(tmp)
        written = sorted(p.name for p in tmp.iterdir())
        write_json(tmp / MANIFEST, written)
        for kept in users_files(out_dir):
            if not (tmp / kept.name).exists():
                (shutil.copytree if kept.is_dir() else shutil.copy2)(kept, tmp / kept.name)
        replace_dir(tmp, out_dir)
        return filled


def publish(outcome: BuildOutcome, out_dir: Path, made: Provenance | None = None) -> Report:
    """Write exports/<name>/ (:func:`publish_folder`) and return its report.

    Published: the shipped model (:mod:`factory.decide.ship`; the distilled student unless a comparison beat it)
    in FP32 (``student.onnx``) and at its accepted quantized precision (``student.<label>.onnx``), stamped with
    the recipe hash, teacher, method and factory version; never a quantized file that was rejected. The other
    models stay in the stage cache."""
    return publish_folder(out_dir, lambda folder: _fill(outcome, folder, made or Provenance.of_this_process()))


def _fill(outcome: BuildOutcome, folder: Path, made: Provenance) -> Report:
    published = stamp_shipped_model(outcome, folder)
    apps = publish_app_files(outcome, folder, published)
    write_json(folder / "labels.json", outcome.data.classes)
    manifest = outcome.augment_filter or outcome.augment
    if manifest is not None:
        from factory.stages.augment import MANIFEST

        shutil.copyfile(manifest.file(MANIFEST), folder / SYNTHETIC_MANIFEST)
    report = assemble_report(outcome, published, made, apps)
    write_report(report, folder)
    return report


def stamp_shipped_model(outcome: BuildOutcome, folder: Path) -> dict[str, str]:
    """Copy the shipped model's files into ``folder`` with its provenance in their ONNX metadata; returns
    source file -> published name."""
    from factory.onnx_tools import stamp_metadata

    model, teacher = outcome.shipped.published, outcome.teacher.result
    stamp = {"recipe_hash": outcome.recipe.fingerprint(), "factory_version": __version__,
             "teacher": f"{teacher.weights}, adapted by {teacher.adapt}", "method": model.name}
    published = {"model.onnx": "student.onnx"}
    quant = model.export.result.quantization
    if quant is not None and quant.file is not None:
        published[quant.file] = f"student.{quant.label}.onnx"
    for source, target in published.items():
        stamp_metadata(model.export.file(source), folder / target, stamp)
    return published


def publish_app_files(outcome: BuildOutcome, folder: Path, published: dict[str, str]) -> AppFiles:
    """The shipped file's forms for apps that ``export.formats`` asks for, each checked on the test split against
    what ``factory predict`` names with the shipped file: the image-input file (:mod:`factory.image_graph`), the
    ``.ort`` file (:mod:`factory.mobile`) and the OpenVINO IR (:mod:`factory.openvino_ir`); each is None, with a
    note, when it cannot be written. Then every one written is judged on validation against the shipped file with
    the paired rule and timed beside it (:func:`factory.formats.judge_forms`)."""
    formats = set(outcome.recipe.export.formats)
    if not formats & {"image", "ort", "openvino"}:
        return AppFiles()
    from factory.runtime.model import ExportedModel

    shipped = folder / published[outcome.shipped.published.ships.file]
    images = [(s.path, s.label) for s in outcome.data.test]
    expected = ExportedModel.open(shipped, 1).top1([path for path, _ in images])
    apps = AppFiles(image_input=_image_input(outcome, shipped, images, expected) if "image" in formats else None,
                    mobile=_mobile(outcome, shipped, images, expected) if "ort" in formats else None,
                    openvino=_openvino(outcome, shipped, images, expected) if "openvino" in formats else None)
    return dataclasses.replace(apps, formats=_judged(outcome, shipped, apps))


def _judged(outcome: BuildOutcome, shipped: Path, apps: AppFiles) -> list[FormatRow]:
    import onnxruntime

    from factory.formats import judge_forms
    from factory.stages.bench import BenchPlan

    forms = {form: shipped.parent / check.file for form, check in
             (("image", apps.image_input), ("ort", apps.mobile), ("openvino", apps.openvino)) if check is not None}
    if not forms:
        return []
    settings = BenchPlan.from_recipe(outcome.recipe).settings()
    onnx = f"onnxruntime {onnxruntime.__version__} ({settings.provider})"
    runtimes = {"onnx": onnx, "image": onnx, "ort": onnx,
                "openvino": f"OpenVINO {apps.openvino.openvino} CPU" if apps.openvino else ""}
    refit = outcome.shipped.refit is not None  # it trained on the validation images: they decide nothing for it
    val = [] if refit else [(s.path, s.label) for s in outcome.data.val]
    rows = judge_forms(shipped, forms, val, outcome.recipe.export.max_accuracy_drop, settings, runtimes)
    for row in rows:
        if not row.accepted:
            outcome.notes.append(f"{row.file} rejected and deleted: on validation it loses {row.drop * 100:.1f} points "
                                 f"against {shipped.name} (90% interval {row.drop_low * 100:+.1f} to "
                                 f"{row.drop_high * 100:+.1f}), beyond export.max_accuracy_drop")
    return rows


def _image_input(outcome: BuildOutcome, shipped: Path, images: list, expected: list[int]) -> ImageInputCheck | None:
    from factory.errors import ExportError
    from factory.image_graph import check_image_graph, image_graph_path, write_image_graph

    try:
        image_file = write_image_graph(shipped, image_graph_path(shipped))
    except ExportError as err:
        outcome.notes.append(f"no image-input file: {err}")
        return None
    return check_image_graph(image_file, images, expected)


def _mobile(outcome: BuildOutcome, shipped: Path, images: list, expected: list[int]) -> MobileExport | None:
    from factory.mobile import mobile_export, target_platform

    platform = target_platform(outcome.recipe.budget.device().machine)
    try:
        return mobile_export(shipped, shipped.parent, platform, images, expected)
    except Exception as err:  # noqa: BLE001 - the converter's own errors; the ONNX files stand without it
        outcome.notes.append(f"no .ort file: onnxruntime's converter failed ({str(err).splitlines()[0][:200]})")
        return None


def _openvino(outcome: BuildOutcome, shipped: Path, images: list, expected: list[int]) -> OpenVinoExport | None:
    from factory.openvino_ir import missing, openvino_export

    if skipped := missing():
        outcome.notes.append(skipped)
        return None
    try:
        return openvino_export(shipped, shipped.parent, images, expected, outcome.bench.result.threads)
    except Exception as err:  # noqa: BLE001 - the converter's own errors; the ONNX files stand without it
        outcome.notes.append(f"no OpenVINO IR: OpenVINO failed ({str(err).splitlines()[0][:200]})")
        return None


def write_report(report: Report, folder: Path) -> None:
    """``report.json``, its JSON Schema (``report.schema.json``), the plots, ``report.md``, ``report.html`` and the
    model card (``README.md``)."""
    write_atomic(folder / "report.json", report.model_dump_json(indent=2) + "\n")
    write_json(folder / "report.schema.json", Report.model_json_schema())
    write_plots(report, folder)
    write_atomic(folder / "report.md", render_markdown(report))
    write_atomic(folder / "report.html", render_html(report, folder))
    write_atomic(folder / CARD_FILE, str(model_card(report)))
