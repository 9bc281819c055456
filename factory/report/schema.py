"""The schema of ``report.json``: :class:`Report` and the models nested in it (published beside every report as
``report.schema.json``). Field names are the file's keys; renderers and the CLI read these attributes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from factory.report.augmentation import Augmentation
from factory.decide.types import ShipOption
from factory.report.budget import Budget
from factory.report.compute import Compute
from factory.fields import Band, Number, Strict
from factory.latency import HostLoad
from factory.licenses import InputLicense, restricted
from factory.report.quantization import ExportSummary
from factory.report.selection import Selection

CHANGES_NO_RESULT = True

SCHEMA_VERSION = 7


class Latency(Band):
    p90: float
    p99: float
    mean: float
    std: float
    rounds_p50: list[float]
    runs: int


class BatchLatency(Strict):
    batch_size: int
    p50: float


class Ratio(Strict):
    median: float
    low: float
    high: float


class ResultRow(Strict):
    """One model at one precision, as benchmarked."""

    name: str
    method: str
    role: str
    precision: str
    ships: bool
    """Whether this is the precision the model would ship at."""
    file: str | None
    """The published file, on the shipped model's rows."""
    val_accuracy: float | None
    accuracy: float
    test_images: int
    latency_ms: Latency
    latency_ms_batch: BatchLatency
    vs_student: Ratio
    """This row's latency over the shipped model's, round by round."""
    size_mb: float
    params: int
    threads: int
    provider: str
    peak_memory_mb: float | None
    eager_latency_ms: Band | None
    end_to_end_ms: Band | None = None
    """Decode + preprocess + model per image at batch 1 (what a user waits for), beside ``latency_ms``."""


class Margin(Strict):
    value: float
    low: float
    high: float
    confidence: float
    images: int


class ShipDecision(Strict):
    """Which model ships, by which rule, and by how much over the runner-up."""

    name: str
    method: str
    file: str | None
    rule: str
    decision: str
    why: str
    runner_up: str | None
    margin: Margin | None
    tie: bool
    """The validation split could not tell the best models apart on accuracy (inside the paired noise)."""
    tied: list[str]
    """The models tied with the best on accuracy; the lowest validation NLL among them decided."""
    refit: bool
    """The published files are the chosen method refit on train + validation (``refit: true``)."""
    options: list[ShipOption]


class LatencySetup(Strict):
    rounds: int
    noise_band: float
    session_options: dict[str, Any]
    load: HostLoad
    warning: str | None


class Comparison(Strict):
    same_views: bool
    baselines_real_only: bool
    views_seen: dict[str, str | None]
    line: str


class Host(Strict):
    machine: str
    cpu: str
    isa_flags: list[str]
    cores: int | None
    os: str
    python: str
    onnxruntime: str
    providers: list[str]


class GitRevision(Strict):
    commit: str
    dirty: bool


class DataSummary(Strict):
    source: str
    root: str
    classes: list[str]
    train: int
    skipped: list[list[str]]
    val: int
    test: int
    synthetic: int
    decisions_on: str


class StudentSummary(Strict):
    model: str
    params: int
    macs: int
    image_size: int
    chosen_by: str


class TeacherSummary(Strict):
    model: str
    weights: str
    adapt: str
    test_accuracy: float
    params: int


class Licensing(Strict):
    """The licences of the build's inputs, the most restrictive first (:mod:`factory.licenses`), the licence the
    recipe releases the model under, and what it says to do when a non-commercial input reaches the model."""

    policy: Literal["warn", "fail"]
    model_license: str | None
    inputs: list[InputLicense]

    def restricted(self) -> list[InputLicense]:
        """The non-commercial inputs that reach the shipped model."""
        return restricted(self.inputs)


class Report(Strict):
    """Everything ``report.json`` holds about one build."""

    schema_version: int = SCHEMA_VERSION
    name: str
    recipe_hash: str
    factory_version: str
    created: str
    device: str
    host: Host
    libraries: dict[str, str]
    git: GitRevision | None
    data: DataSummary
    augmentation: Augmentation | None
    results: list[ResultRow]
    shipped: ShipDecision
    budget: Budget
    latency: LatencySetup
    comparison: Comparison
    compute: Compute
    student: StudentSummary
    selection: Selection | None
    teacher: TeacherSummary
    export: ExportSummary
    training_curves: dict[str, list[dict[str, Number]]]
    notes: list[str]
    recipe: dict[str, Any]
    licensing: Licensing | None = None
    """None in reports written before licences were recorded."""

    @classmethod
    def load(cls, path: Path) -> Report:
        """The report in ``path`` (a ``report.json``), validated against this schema."""
        return cls.model_validate_json(Path(path).read_text())

    @property
    def first_row(self) -> ResultRow:
        """The first benchmarked row: its threads and provider are every row's."""
        return self.results[0]
