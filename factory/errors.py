"""Errors the factory reports to users: one clear line saying what, where and how to fix."""

from __future__ import annotations

CHANGES_NO_RESULT = True


class FactoryError(Exception):
    """Base class of every error the CLI shows as a one-line message (no traceback)."""

    exit_code = 1


class RecipeError(FactoryError):
    """The recipe file or a ``--set`` override is invalid."""

    exit_code = 2


class DataError(FactoryError):
    """The dataset named by the recipe is missing or malformed."""

    exit_code = 3


class HubUnreachableError(FactoryError):
    """Weights were asked for by hub id but the Hugging Face hub cannot be reached."""

    exit_code = 4


class CheckpointError(FactoryError):
    """A local checkpoint path is missing or does not fit the model."""

    exit_code = 5


class ExportError(FactoryError):
    """ONNX export, parity or quantization failed."""

    exit_code = 6


class ModelError(FactoryError):
    """An exported model, or an image given to it, cannot be used."""

    exit_code = 7


class BudgetMissed(FactoryError):
    """The shipped model misses a budget limit or the accuracy floor (its files and report are still written)."""

    exit_code = 9


class OutputError(FactoryError):
    """The output or cache folder cannot be written (not a folder, read-only, full), or holds files the
    factory did not write and would replace."""

    exit_code = 10


class LicenceError(FactoryError):
    """A non-commercial input reaches the shipped model and the recipe says ``noncommercial: fail`` (its files and
    report are still written)."""

    exit_code = 11
