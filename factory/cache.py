"""The stages' content-addressed cache (:class:`StageCache`): each stage's output lives in
``<root>/<stage>/<key>/`` (the key: :meth:`factory.stage.Stage.key`) with its typed result in ``stage.json``.

A stage works in ``<key>.partial/`` (where it may keep resume checkpoints) and the folder is renamed into place
only when the stage has finished, so an interrupted run never leaves a half-written output that looks complete,
and the next run picks the partial work up where it stopped. An entry whose files no longer match their
checksums is recomputed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from factory import distributed as dist
from factory.files import exclusive, write_json
from factory.hashing import file_sha256
from factory.identity import library_versions
from factory.stage import META_FILE, RESUME_FILE, Done, ResultT, Stage, plan_dict

CHANGES_NO_RESULT = True

DEFAULT_CACHE = Path(os.environ.get("FACTORY_CACHE", ".factory-cache"))


def _checksums(folder: Path) -> dict[str, dict]:
    """SHA-256, size and modification time of every file a stage wrote, by path relative to its folder."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != META_FILE:
            stat = path.stat()
            files[path.relative_to(folder).as_posix()] = {"sha256": file_sha256(path), "size": stat.st_size,
                                                          "mtime_ns": stat.st_mtime_ns}
    return files


def _damage(folder: Path, files: dict[str, dict]) -> str | None:
    """What is wrong with a cache entry's files (missing, another size, changed content), or None. A file
    whose size and modification time are as recorded is trusted without reading it; one touched since is
    hashed."""
    for name, record in files.items():
        path = folder / name
        try:
            stat = path.stat()
            if stat.st_size != record["size"]:
                return f"{name} is {stat.st_size} bytes, was {record['size']}"
            if stat.st_mtime_ns != record["mtime_ns"] and file_sha256(path) != record["sha256"]:
                return f"{name} does not match its checksum"
        except OSError as err:
            return f"{name}: {err.strerror or err}"
    return None


def _adapter(result_type: type):
    from pydantic import TypeAdapter

    return TypeAdapter(result_type)


class StageCache:
    """Runs stages once per distinct key and remembers their typed results."""

    def __init__(self, root: str | Path, force: bool = False):
        self.root = Path(root)
        self.force = force
        self._forced: set[Path] = set()
        self._verified: set[Path] = set()

    def run(self, stage: Stage[ResultT], plan: Any, inputs: dict[str, Done | str | None],
            fn: Callable[[Path], ResultT]) -> Done[ResultT]:
        """Return the cached output of ``stage`` for ``plan`` and ``inputs``, or run ``fn(work_dir)``.

        ``fn`` writes its files into ``work_dir`` and returns the stage's result. ``inputs`` maps
        names to upstream outputs (or to plain content keys, e.g. a dataset fingerprint) so that any
        upstream change reruns it.

        Under a multi-process launch, a ``distributed`` stage runs ``fn`` on every process (it trains
        with DDP) and the main process writes the output (the others return None from ``fn``); any
        other stage runs on the main process first and the others then read it from the cache.
        """
        input_keys = {k: (v.key if isinstance(v, Done) else v) for k, v in inputs.items()}
        key = stage.key(plan, input_keys)
        if not dist.is_distributed():
            return self._run(stage, plan, input_keys, key, fn, self.force, True)
        if not stage.distributed:
            with dist.state().main_process_first():
                return self._run(stage, plan, input_keys, key, fn, self.force and dist.is_main(), dist.is_main())
        cached = self._cached(stage, key, input_keys)
        work = self.root / stage.name / f"{key}.partial"
        if self.force and dist.is_main() and work not in self._forced and work.exists():
            shutil.rmtree(work)
        self._forced.add(work)
        dist.barrier()  # every process has looked, and --force has cleared old partial work
        if cached is not None and not self.force:
            return cached
        out = self._run(stage, plan, input_keys, key, fn, self.force, dist.is_main())
        dist.barrier()
        return out if dist.is_main() else self._cached(stage, key, input_keys)

    def cached(self, stage: Stage[ResultT], plan: Any, inputs: dict[str, Done | str | None]) -> Done[ResultT] | None:
        """What :meth:`run` would return without running anything, or None when it would have to run
        (always None under ``--force``)."""
        input_keys = {k: (v.key if isinstance(v, Done) else v) for k, v in inputs.items()}
        return None if self.force else self._cached(stage, stage.key(plan, input_keys), input_keys)

    def _cached(self, stage: Stage[ResultT], key: str, input_keys: dict[str, str | None]) -> Done[ResultT] | None:
        final = self.root / stage.name / key
        meta_path = final / META_FILE
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            result = _adapter(stage.result).validate_python(meta["result"])
            verify = final not in self._verified and dist.is_main()  # one process reads, under DDP
            damage = _damage(final, meta.get("files", {})) if verify else None
        except (ValueError, KeyError, TypeError) as err:  # unreadable JSON, or a record that no longer validates
            damage = f"{META_FILE}: {str(err).splitlines()[0]}"
        if damage:
            from factory.console import log

            log(f"  [yellow]damaged[/] cache entry {final} ({damage}): recomputing it")
            return None
        self._verified.add(final)
        return Done(stage.name, key, final, result, meta["wall_s"], True, input_keys)

    def _run(self, stage: Stage[ResultT], plan: Any, input_keys: dict[str, str | None], key: str,
             fn: Callable[[Path], ResultT], force: bool, writer: bool) -> Done[ResultT]:
        if not writer:
            return self._run_locked(stage, plan, input_keys, key, fn, force, writer)
        with exclusive(self.root / stage.name / f"{key}.lock", f"stage {stage.name} ({key})"):
            return self._run_locked(stage, plan, input_keys, key, fn, force, writer)

    def _run_locked(self, stage: Stage[ResultT], plan: Any, input_keys: dict[str, str | None], key: str,
                    fn: Callable[[Path], ResultT], force: bool, writer: bool) -> Done[ResultT]:
        final = self.root / stage.name / key
        cached = self._cached(stage, key, input_keys)
        if cached is not None and not force:
            return cached
        work = self.root / stage.name / f"{key}.partial"
        if force and writer and work not in self._forced and work.exists():
            shutil.rmtree(work)  # --force means recompute, not resume
        self._forced.add(work)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = fn(work)
        if not writer:
            return Done(stage.name, key, final, result, 0.0, False, input_keys)
        wall_s = time.perf_counter() - start + result.resumed_wall_s
        (work / RESUME_FILE).unlink(missing_ok=True)
        write_json(work / META_FILE, {
            "stage": stage.name, "key": key, "inputs": input_keys, "plan": plan_dict(plan),
            "code": stage.code_identity(), "libraries": library_versions(stage.libraries), "wall_s": wall_s,
            "result": _adapter(stage.result).dump_python(result, mode="json"), "files": _checksums(work),
        })
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        return Done(stage.name, key, final, result, wall_s, False, input_keys)
