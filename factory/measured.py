"""Latency measured on the device itself: the files ``factory bench --json`` writes there, read by one strict reader
for ``budget.measured`` (checked when the recipe loads) and ``factory students --measured`` alike. A figure replaces
this host's for the candidate of its architecture, image size and precision; one recorded for another file than the
candidate (its sha256 differs) is refused, naming both."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory.errors import RecipeError
from factory.latency import Latency

CHANGES_NO_RESULT = True

HOW = "write one on the device with `factory bench MODEL.onnx ... --json FILE`"


class _Read(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the file holds more (settings, load, accuracy) than is read here


class MeasuredHost(_Read):
    cpu: str


class MeasuredFile(_Read):
    model: str
    architecture: str | None = None
    image_size: int
    precision: str | None = None
    latency_ms: Latency
    sha256: str | None = None
    """The measured file's sha256 (written by ``factory bench --json`` since it records it)."""


class BenchFile(_Read):
    host: MeasuredHost
    results: list[MeasuredFile] = Field(min_length=1)


def read_bench_file(path: str | Path) -> BenchFile:
    """``path`` as ``factory bench --json`` wrote it; RecipeError naming the file, the first bad field and the fix."""
    path = Path(path)
    try:
        return BenchFile.model_validate_json(path.read_bytes())
    except OSError as err:
        raise RecipeError(f"{path}: cannot read it ({err.strerror or err}); {HOW}") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        got = f" (got {first['input']!r})" if first["type"] not in ("missing", "json_invalid") else ""
        raise RecipeError(f"{path}: not a `factory bench --json` file: {where}: {first['msg']}{got}; {HOW}") from None
