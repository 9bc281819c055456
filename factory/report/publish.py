"""Publishing a folder as a whole (a swap: readers see the old folder or the new one, never half of either), and
the build's ``exports/<name>/``: the shipped model stamped with its provenance, its labels, the synthetic
images' manifest and the report."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from factory.files import MANIFEST, exclusive, replace_dir, users_files, write_atomic, write_json
from factory.report.assemble import Provenance, assemble_report
from factory.report.augmentation import SYNTHETIC_MANIFEST
from factory.report.card import CARD_FILE, model_card
from factory.report.html import render_html
from factory.report.markdown import render_markdown
from factory.report.plots import write_plots
from factory.report.schema import Report

if TYPE_CHECKING:
    from factory.report.outcome import BuildOutcome

CHANGES_NO_RESULT = True

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
    write_json(folder / "labels.json", outcome.data.classes)
    manifest = outcome.augment_filter or outcome.augment
    if manifest is not None:
        from factory.stages.augment import MANIFEST

        shutil.copyfile(manifest.file(MANIFEST), folder / SYNTHETIC_MANIFEST)
    report = assemble_report(outcome, published, made)
    write_report(report, folder)
    return report


def stamp_shipped_model(outcome: BuildOutcome, folder: Path) -> dict[str, str]:
    """Copy the shipped model's files into ``folder`` with its provenance in their ONNX metadata
    (:func:`factory.stages.apps.provenance`), and its forms for apps from their stage; returns source file ->
    published name."""
    from factory.onnx_tools import stamp_metadata
    from factory.stages.apps import provenance, published_names

    model = outcome.shipped.published
    stamp = provenance(outcome.recipe, outcome.teacher, model.name)
    published = published_names(model.export.result)
    for source, target in published.items():
        stamp_metadata(model.export.file(source), folder / target, stamp)
    for name in outcome.apps.result.files if outcome.apps else []:
        shutil.copyfile(outcome.apps.file(name), folder / name)
    return published


def write_report(report: Report, folder: Path) -> None:
    """``report.json``, its JSON Schema (``report.schema.json``), the plots, ``report.md``, ``report.html`` and the
    model card (``README.md``)."""
    write_atomic(folder / "report.json", report.model_dump_json(indent=2) + "\n")
    write_json(folder / "report.schema.json", Report.model_json_schema())
    write_plots(report, folder)
    write_atomic(folder / "report.md", render_markdown(report))
    write_atomic(folder / "report.html", render_html(report, folder))
    write_atomic(folder / CARD_FILE, str(model_card(report)))
