"""The stage contract. A stage is a small unit: a frozen *plan* (everything it reads from the recipe, built before
any work starts), a run function that gets only that plan and its upstream results, and a typed *result* (a
dataclass) that the cache (:mod:`factory.cache`) stores in ``stage.json`` and reads back typed. Its key hashes

- the plan (:func:`keyed_as`; a checkpoint by its content, :class:`factory.models.Pinned`),
- the keys of the upstream outputs it consumes (and the task data's content fingerprint),
- the stage's code identity (:mod:`factory.identity`),
- the versions of the libraries that decide its output (torch, timm, onnx, onnxruntime, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from factory.console import log
from factory.hashing import hash_config
from factory.identity import code_fingerprint, library_versions

CHANGES_NO_RESULT = True

META_FILE = "stage.json"
RESUME_FILE = "resume.pt"  # a training stage's resume checkpoint, removed once the stage has finished


class Plan:
    """Base of stage plans (frozen dataclasses, possibly nested): everything a stage reads from the recipe. A part
    that defines ``keyed_as()`` stands in its stage's key as that returns (:func:`keyed_as`)."""


@dataclass(kw_only=True)
class StageResult:
    """Base of every stage's typed result: what the stage cost besides its wall time."""

    flops: float = 0.0
    """Compute of the stage (torch.utils.flop_counter), including work done before an interruption."""
    resumed_wall_s: float = 0.0
    """Wall time spent on the stage before an interruption (added to this run's)."""


ResultT = TypeVar("ResultT", bound=StageResult)


@dataclass(frozen=True)
class Stage(Generic[ResultT]):
    """A stage's identity: its name, result type, the module that holds its code and the libraries
    whose versions decide its output. ``distributed`` stages train on every process under DDP."""

    name: str
    result: type[ResultT]
    module: str
    libraries: tuple[str, ...] = ()
    distributed: bool = False

    def code_identity(self) -> str:
        return code_fingerprint(self.module)

    def key(self, plan: Any, input_keys: dict[str, str | None]) -> str:
        return hash_config({"stage": self.name, "plan": keyed_as(plan), "inputs": input_keys,
                            "code": self.code_identity(), "libraries": library_versions(self.libraries)})[:20]


@dataclass
class Done(Generic[ResultT]):
    """A finished stage: where its files are, its typed result, and what it cost."""

    stage: str
    key: str
    path: Path
    result: ResultT
    wall_s: float
    cached: bool = False
    inputs: dict[str, str | None] = field(default_factory=dict)

    @property
    def flops(self) -> float:
        return self.result.flops

    def file(self, name: str) -> Path:
        return self.path / name


@dataclass
class BuildLog:
    """What a build says as it goes: every stage it ran or read from the cache, labelled and in the order it ran
    them (the report's stage table), and the notes the report lists."""

    runs: list[tuple[str, Done]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def stage(self, label: str, output: Done) -> Done:
        """``output``, recorded as the stage ``label``, after one line saying that it ran or came from the cache."""
        log(f"  {'[dim]cached[/]' if output.cached else '[green]done[/]  '} {label} ({output.wall_s:.1f}s)")
        self.runs.append((label, output))
        return output

    def warn(self, note: str) -> None:
        """``note`` shown now as a warning and kept for the report."""
        log(f"  [yellow]warning[/] {note}")
        self.notes.append(note)


def keyed_as(plan: Any) -> Any:
    """A plan as its cache key holds it: its fields as plain data, where a part with a ``keyed_as()`` method stands
    as that returns (a :class:`factory.models.Pinned` by its content alone, so the same checkpoint in another
    checkout or a moved folder is the same input, as the same images elsewhere are the same data)."""
    if hasattr(type(plan), "keyed_as"):
        return plan.keyed_as()
    if dataclasses.is_dataclass(plan) and not isinstance(plan, type):
        return {f.name: keyed_as(getattr(plan, f.name)) for f in dataclasses.fields(plan)}
    if isinstance(plan, (list, tuple)):
        return [keyed_as(v) for v in plan]
    if isinstance(plan, dict):
        return {k: keyed_as(v) for k, v in plan.items()}
    return plan


def plan_dict(plan: Any) -> Any:
    """A plan (a frozen dataclass, possibly nested) as plain JSON-able data."""
    return dataclasses.asdict(plan) if dataclasses.is_dataclass(plan) else plan
