"""The licences of a build's inputs (the data, the teacher's and the baseline's weights, the diffusion pipeline),
which of them reach the shipped model, and whether one of those is non-commercial. The report records them, the
model card states them (the most restrictive first), and the build warns, or fails with ``noncommercial: fail``,
when a non-commercial input reaches the shipped model.

A licence comes from the recipe (``data.license``, ``teacher.license``, ``baseline.license``,
``augment.license``), else from the input's own record: a checkpoint folder's ``config.json`` (its top-level
``license``, as ``factory pretrain`` and ``factory imagenet-weights`` write it), timm's registry for ``timm`` and
``hf-hub:timm/`` weights, a local diffusers folder's model card, or the hub's model card when it can be reached;
otherwise it is ``unknown``, said as such."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic.dataclasses import dataclass

from factory.fields import STRICT
from factory.methods import method

if TYPE_CHECKING:
    from factory.recipe import Recipe

CHANGES_NO_RESULT = True

UNKNOWN = "unknown"
NONCOMMERCIAL_MARKS = ("-nc", "nc-", "noncommercial", "non-commercial", "research-only", "research only")
"""Substrings of a licence id or name that mark it non-commercial (cc-by-nc-4.0, sai-nc-community, ...)."""


def is_noncommercial(license_: str) -> bool:
    """Whether ``license_`` (an SPDX-like id or a name) forbids commercial use."""
    text = license_.lower()
    return any(mark in text for mark in NONCOMMERCIAL_MARKS)


@dataclass(config=STRICT)
class InputLicense:
    """One input of the build and its licence."""

    input: str
    """'data', 'teacher', 'baseline' or 'augment'."""
    name: str
    """What the input is: the data's source, the weights, the pipeline."""
    license: str
    source: str
    """Where the licence was read: 'recipe', 'config.json', "timm's registry", 'model card', or 'not recorded'."""
    noncommercial: bool
    reaches_shipped: bool
    """Whether the shipped model was made with it (its weights, its teacher, or images it trained on)."""


def weights_license(model: str, weights: str) -> tuple[str | None, str]:
    """The licence ``weights`` (for timm architecture ``model``) record, and where it was read."""
    if weights == "timm" or weights.startswith("hf-hub:timm/"):
        import timm

        name = weights.removeprefix("hf-hub:timm/") if weights != "timm" else model
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except RuntimeError:
            cfg = None
        return (cfg.license, "timm's registry") if cfg is not None and cfg.license else (None, "not recorded")
    if weights.startswith("hf-hub:"):
        return hub_license(weights.removeprefix("hf-hub:"))
    config = Path(weights).expanduser() / "config.json"
    if config.is_file():
        found = json.loads(config.read_text()).get("license")
        return (found, "config.json") if found else (None, "not recorded")
    return None, "not recorded"


def pipeline_license(pipeline: str) -> tuple[str | None, str]:
    """The licence of a diffusers pipeline: a local folder's model card (README.md), else the hub's card."""
    card = Path(pipeline).expanduser() / "README.md"
    if Path(pipeline).expanduser().is_dir():
        return _card_license(card) if card.is_file() else (None, "not recorded")
    return hub_license(pipeline)


def hub_license(repo_id: str) -> tuple[str | None, str]:
    """The licence in a hub repository's model card, when the hub can be reached (within seconds otherwise)."""
    from factory.network import hub_reachable

    if not hub_reachable():
        return None, "not recorded (the hub cannot be reached)"
    try:
        from huggingface_hub import model_info

        data = model_info(repo_id).card_data
    except Exception:  # noqa: BLE001 - any failure to read a card leaves the licence unknown, said so
        return None, "not recorded"
    return _card_data_license(data)


def _card_license(card: Path) -> tuple[str | None, str]:
    from huggingface_hub import ModelCard

    return _card_data_license(ModelCard.load(card).data)


def _card_data_license(data) -> tuple[str | None, str]:
    """A model card's licence; 'other' with its ``license_name`` (sd-turbo's: other (sai-nc-community))."""
    if data is None or not data.license:
        return None, "not recorded"
    name = data.license_name if data.license == "other" else None
    return (f"other ({name})" if name else data.license), "model card"


def input_licenses(recipe: Recipe, shipped_method: str, synthetic_images: int, baseline_weights: str | None,
                   data_name: str) -> list[InputLicense]:
    """Every input of the build with its licence, the most restrictive first (non-commercial ones that reach
    the shipped model, then the other non-commercial ones, then unknown ones). ``shipped_method``: how the
    shipped model was trained; ``baseline_weights``: the checkpoint the baselines started from (None: none)."""
    shipped = method(shipped_method)
    distilled, pretrained, teacher = shipped.distils, "student" in shipped.pretrained, shipped.role == "teacher"
    synthetic = synthetic_images > 0 and (distilled or teacher or recipe.augment.for_baselines)
    not_recorded = lambda: (None, "not recorded")  # noqa: E731
    inputs = [("data", data_name, recipe.data.license, not_recorded, True)]
    if recipe.teacher.weights is not None:
        inputs.append(("teacher", f"{recipe.teacher.model} weights {recipe.teacher.weights}", recipe.teacher.license,
                       lambda: weights_license(recipe.teacher.model, recipe.teacher.weights),
                       distilled or teacher or synthetic))
    if baseline_weights is not None:
        inputs.append(("baseline", f"{recipe.student.model} weights {baseline_weights}", recipe.baseline.license,
                       lambda: weights_license(recipe.student.model, baseline_weights), pretrained))
    if recipe.augment.enabled:
        inputs.append(("augment", f"diffusion pipeline {recipe.augment.pipeline}", recipe.augment.license,
                       lambda: pipeline_license(recipe.augment.pipeline), synthetic))
    found = []
    for what, name, given, record, reaches in inputs:  # the input's own record is read only without a recipe licence
        license_, source = (given, "recipe") if given else _recorded(record())
        found.append(InputLicense(what, name, license_, source, is_noncommercial(license_), reaches))
    return sorted(found, key=lambda i: (not (i.noncommercial and i.reaches_shipped), not i.noncommercial,
                                        i.license != UNKNOWN))


def _recorded(record: tuple[str | None, str]) -> tuple[str, str]:
    found, where = record
    return found or UNKNOWN, where


def restricted(licenses: list[InputLicense]) -> list[InputLicense]:
    """The non-commercial inputs that reach the shipped model."""
    return [i for i in licenses if i.noncommercial and i.reaches_shipped]


def warning_line(licenses: list[InputLicense]) -> str | None:
    """One line naming the non-commercial inputs that reach the shipped model, or None."""
    found = restricted(licenses)
    if not found:
        return None
    return ("non-commercial input reaches the shipped model: "
            + "; ".join(f"{i.input} ({i.name}) under {i.license}" for i in found)
            + ": the model may not be usable commercially (set noncommercial: fail to make this an error)")
