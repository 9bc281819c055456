"""Content-addressed stage cache with atomic writes.

Each stage's output lives in ``<root>/<stage>/<key>/`` where ``key`` hashes the stage name, its
recipe section, the keys of the stage outputs it consumed and the factory version. A stage works in
``<key>.partial/`` (where it may keep resume checkpoints) and the folder is renamed into place only
when the stage has finished, so an interrupted run never leaves a half-written output that looks
complete, and the next run picks the partial work up where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory import __version__
from factory import distributed as dist
from factory.recipe import hash_config

META_FILE = "stage.json"


@dataclass
class StageOutput:
    """A finished stage: where its files are, what it reported, and what it cost."""

    stage: str
    key: str
    path: Path
    info: dict[str, Any]
    wall_s: float
    flops: float
    cached: bool = False
    inputs: dict[str, str] = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap the finished folder ``tmp`` in as ``final``; the previous ``final`` stays until the swap."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


class StageCache:
    """Runs stages once per distinct (config, inputs, version) and remembers their outputs."""

    def __init__(self, root: str | Path, force: bool = False):
        self.root = Path(root)
        self.force = force
        self._forced: set[Path] = set()

    def key(self, stage: str, config: Any, inputs: dict[str, str]) -> str:
        return hash_config({"stage": stage, "config": config, "inputs": inputs, "version": __version__})[:20]

    def run(
        self,
        stage: str,
        config: Any,
        inputs: dict[str, StageOutput | str],
        fn: Callable[[Path], dict[str, Any]],
        distributed: bool = False,
    ) -> StageOutput:
        """Return the cached output of ``stage`` or run ``fn(work_dir)`` to produce it.

        ``fn`` writes its files into ``work_dir`` and returns a JSON-able info dict; it may put
        ``"flops"`` in it to account for its compute, and ``"resumed_wall_s"`` for time spent on it before
        an interruption. ``inputs`` maps names to upstream outputs (or to plain content keys, e.g. a
        dataset fingerprint) so that any upstream change reruns it.

        Under a multi-process launch, a ``distributed`` stage runs ``fn`` on every process (it trains
        with DDP) and the main process writes the output; any other stage runs on the main process
        first and the others then read it from the cache.
        """
        input_keys = {k: (v.key if isinstance(v, StageOutput) else v) for k, v in inputs.items()}
        key = self.key(stage, config, input_keys)
        if not dist.is_distributed():
            return self._run(stage, config, input_keys, key, fn, self.force, True)
        if not distributed:
            with dist.state().main_process_first():
                return self._run(stage, config, input_keys, key, fn, self.force and dist.is_main(), dist.is_main())
        cached = self._cached(stage, key, input_keys)
        work = self.root / stage / f"{key}.partial"
        if self.force and dist.is_main() and work not in self._forced and work.exists():
            shutil.rmtree(work)
        self._forced.add(work)
        dist.barrier()  # every process has looked, and --force has cleared old partial work
        if cached is not None and not self.force:
            return cached
        out = self._run(stage, config, input_keys, key, fn, self.force, dist.is_main())
        dist.barrier()
        return out if dist.is_main() else self._cached(stage, key, input_keys)

    def _cached(self, stage: str, key: str, input_keys: dict[str, str]) -> StageOutput | None:
        final = self.root / stage / key
        meta_path = final / META_FILE
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        return StageOutput(stage, key, final, meta["info"], meta["wall_s"], meta["flops"], True, input_keys)

    def _run(self, stage: str, config: Any, input_keys: dict[str, str], key: str,
             fn: Callable[[Path], dict[str, Any]], force: bool, writer: bool) -> StageOutput:
        final = self.root / stage / key
        cached = self._cached(stage, key, input_keys)
        if cached is not None and not force:
            return cached
        work = self.root / stage / f"{key}.partial"
        if force and writer and work not in self._forced and work.exists():
            shutil.rmtree(work)  # --force means recompute, not resume
        self._forced.add(work)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        info = fn(work)
        if not writer:
            return StageOutput(stage, key, final, info, 0.0, 0.0, False, input_keys)
        wall_s = time.perf_counter() - start
        wall_s += float(info.pop("resumed_wall_s", 0.0))  # time spent before an interruption
        flops = float(info.pop("flops", 0.0))
        write_json(work / META_FILE, {
            "stage": stage, "key": key, "inputs": input_keys, "config": config,
            "factory_version": __version__, "wall_s": wall_s, "flops": flops, "info": info,
        })
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        return StageOutput(stage, key, final, info, wall_s, flops, False, input_keys)
