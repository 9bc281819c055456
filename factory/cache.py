"""The stage contract and its content-addressed cache, with atomic writes.

A stage is a small unit: a frozen *plan* (everything it reads from the recipe, built before any work
starts), a run function that gets only that plan and its upstream results, and a typed *result* (a
dataclass) that is stored in ``stage.json`` and read back typed. Its output lives in
``<root>/<stage>/<key>/``, where the key hashes

- the plan,
- the keys of the upstream outputs it consumes (and the task data's content fingerprint),
- the stage's *code identity*: a hash of the syntax trees of its module and of every ``factory`` module
  that computes part of its output, found by following imports (:func:`code_fingerprint`). It is derived,
  not written by hand, because a hand-kept version number is what went stale before. Modules that cannot
  change a result (:data:`INFRASTRUCTURE`: storage, messages, network checks, the recipe parser whose
  values the plan already holds, orchestration, the CLI and reporting) are neither hashed nor followed,
  and docstrings, the messages of raised exceptions and the text of console calls are left out of the
  trees, so rewording a message or the report never reruns a stage.
- the versions of the libraries that decide its output (torch, timm, onnx, onnxruntime, ...).

A stage works in ``<key>.partial/`` (where it may keep resume checkpoints) and the folder is renamed
into place only when the stage has finished, so an interrupted run never leaves a half-written output
that looks complete, and the next run picks the partial work up where it stopped.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Generic, TypeVar

from factory import distributed as dist
from factory.hashing import file_sha256, hash_config

DEFAULT_CACHE = Path(os.environ.get("FACTORY_CACHE", ".factory-cache"))
META_FILE = "stage.json"
RESUME_FILE = "resume.pt"  # a training stage's resume checkpoint, removed once the stage has finished


class Plan:
    """Base of stage plans (frozen dataclasses, possibly nested): everything a stage reads from the recipe.

    Inside :func:`recording_plan_reads`, every field read from a plan is recorded as ``(class, field)``; the
    key-completeness test uses this to check that every field in a key is read by its stage.
    """

    def __getattribute__(self, name: str) -> Any:
        reads = _PLAN_READS.get()
        if reads is not None and not name.startswith("_"):
            reads.add((type(self).__name__, name))
        return object.__getattribute__(self, name)


_PLAN_READS: ContextVar[set[tuple[str, str]] | None] = ContextVar("plan_reads", default=None)


@contextmanager
def recording_plan_reads():
    """Yield the set of ``(plan class, field)`` read from any plan inside the block."""
    token = _PLAN_READS.set(reads := set())
    try:
        yield reads
    finally:
        _PLAN_READS.reset(token)


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
        return hash_config({"stage": self.name, "plan": keyed_by_content(plan_dict(plan)), "inputs": input_keys,
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


def keyed_by_content(data: Any) -> Any:
    """A plan's dict as its cache key holds it: a field ``x`` beside a set ``x_content`` (a checkpoint and its
    content fingerprint) is keyed by the content alone, so the same checkpoint in another checkout or a moved
    folder is the same input, as the same images elsewhere are the same data."""
    if isinstance(data, dict):
        return {k: keyed_by_content(v) for k, v in data.items() if data.get(f"{k}_content") is None}
    if isinstance(data, list):
        return [keyed_by_content(v) for v in data]
    return data


def plan_dict(plan: Any) -> Any:
    """A plan (a frozen dataclass, possibly nested) as plain JSON-able data (not counted as reading it)."""
    token = _PLAN_READS.set(None)
    try:
        return dataclasses.asdict(plan) if dataclasses.is_dataclass(plan) else plan
    finally:
        _PLAN_READS.reset(token)


@cache
def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the named distributions ('absent' when not installed)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


_PACKAGE_DIR = Path(__file__).resolve().parent

INFRASTRUCTURE = frozenset({
    "factory",  # the package's __init__: its version string
    "factory.cache", "factory.hashing",  # where a result is stored and how it is named, not what it is
    "factory.console", "factory.errors",  # messages
    "factory.network", "factory.host",  # whether the hub is reachable; what this machine is
    "factory.recipe", "factory.profiles",  # parsed into plans, which a key holds by value
    "factory.pipeline", "factory.cli", "factory.testing",  # orchestration and entry points
    "factory.stages.search", "factory.stages.ship",  # decisions between stage outputs, made after them
    "factory.budget",  # the limits every decision checks, after the stages
    "factory.fields",  # building blocks of the report's schema
    "factory.report",  # the report package, every module of it
})
"""Modules (or packages) that cannot change any stage's output: a stage's code identity neither hashes nor
follows them. Every other ``factory`` module a stage imports, directly or not, is part of its identity. A module
belongs here only when no stage result depends on its code; tests/test_code_identity.py edits these modules and
the ones that compute results, and fails when an edit moves a key it must not or leaves one it must move."""


def is_infrastructure(module: str) -> bool:
    """Whether ``module``, or a package above it other than ``factory`` itself, is in :data:`INFRASTRUCTURE`."""
    parts = module.split(".")
    return module in INFRASTRUCTURE or any(".".join(parts[:n]) in INFRASTRUCTURE for n in range(2, len(parts)))


def _source_file(module: str, package_dir: Path) -> Path | None:
    """The file of a ``factory`` module, found without importing it (None for names that are not modules)."""
    base = package_dir.joinpath(*module.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def factory_imports(tree: ast.Module, module: str, is_package: bool, package_dir: Path | None = None) -> set[str]:
    """``factory`` modules imported anywhere in ``tree`` (top level or inside functions)."""
    package_dir = package_dir or _PACKAGE_DIR
    package = module if is_package else module.rsplit(".", 1)[0]
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                 for n in ast.walk(node)}  # imports for annotations only: not code the stage runs
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from factory import data` imports a module
    return {name for name in found if name.split(".")[0] == "factory" and _source_file(name, package_dir)}


class _WhatComputes(ast.NodeTransformer):
    """A syntax tree without what cannot change a result: docstrings (any string statement), the message of a
    raised exception (its type stays) and the text passed to :mod:`factory.console` (log lines, progress bars)."""

    def __init__(self, console_names: set[str]):
        self.console_names = console_names

    def visit_Expr(self, node: ast.Expr):
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return ast.Pass()
        return self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise):
        if isinstance(node.exc, ast.Call):
            node.exc = node.exc.func
        return node

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in self.console_names:
            for text in ast.walk(node):
                if isinstance(text, ast.Constant) and isinstance(text.value, str):
                    text.value = ""
        return node


def _console_names(tree: ast.Module) -> set[str]:
    return {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module == "factory.console" for a in node.names}


def computing_tree(tree: ast.Module) -> str:
    """The dump of ``tree`` as a code identity hashes it (:class:`_WhatComputes`; the tree is changed)."""
    return ast.dump(_WhatComputes(_console_names(tree)).visit(tree))


def code_modules(module: str, package_dir: Path | None = None) -> dict[str, str]:
    """The modules a code identity covers: ``module`` and every ``factory`` module it imports, transitively,
    except :data:`INFRASTRUCTURE`; each with the hash of its tree as :func:`computing_tree` gives it."""
    package_dir = package_dir or _PACKAGE_DIR
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _source_file(name, package_dir)
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = factory_imports(tree, name, path.name == "__init__.py", package_dir)
        seen[name] = hash_config(computing_tree(tree))  # after the imports are read: it changes the tree
        todo += sorted(m for m in imported - set(seen) if not is_infrastructure(m))
    return seen


@cache
def code_fingerprint(module: str, package_dir: Path | None = None) -> str:
    """Hash of the code that computes ``module``'s stage outputs (:func:`code_modules`)."""
    return hash_config(sorted(code_modules(module, package_dir).items()))[:20]


@contextmanager
def exclusive(lock_file: Path, what: str):
    """Hold an exclusive lock on ``lock_file`` (an OS file lock: released if the process dies), waiting,
    with one line saying so, while another process holds it: two builds of one recipe at once take turns
    at each stage instead of writing the same folder, and the second then finds the first's output cached."""
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from factory.console import log

            log(f"  [yellow]waiting[/] for another build working on {what} (lock {lock_file})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def atomic_path(path: Path, suffix: str = ""):
    """A temporary path beside ``path`` for a writer that takes a file name (torch.save, onnx.save, ...):
    moved onto ``path`` when the block ends, removed when it raises, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`), synced to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def check_writable(folder: Path, option: str) -> None:
    """OutputError unless ``folder`` is (or can be made) a folder that this process can write in."""
    from factory.errors import OutputError

    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder}: is a file, not a folder; choose a folder path")
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"{option} {folder}: {existing} is a file, so no folder can be made there; choose "
                          f"another path")
    probe_in = folder if folder.is_dir() else folder.parent
    try:
        probe_in.mkdir(parents=True, exist_ok=True)
        probe = probe_in / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"{option} {folder}: cannot write there ({err.strerror or err}); choose a writable "
                          f"folder") from None


def check_output_folders(out_dir: Path, marker: str, cache_dir: Path) -> tuple[Path, ...]:
    """Before any work: ``--out`` can be written, and is new, empty or a folder the factory wrote before (it
    holds ``marker``), since publishing replaces it as a whole; ``--cache-dir`` can be written. OutputError
    otherwise. Returns the folders the command writes to (where :func:`full_disk_reported` looks)."""
    from factory.errors import OutputError

    check_writable(out_dir, "--out")
    check_writable(out_dir.parent, "--out")  # publishing renames --out and writes beside it
    if os.path.ismount(out_dir):
        raise OutputError(f"--out {out_dir}: is a mount point, which publishing cannot replace (it swaps the "
                          f"finished folder in by renaming); point --out at a folder inside it")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / marker).is_file():
        raise OutputError(f"--out {out_dir}: exists and holds files the factory did not write (no {marker}); "
                          f"publishing replaces the whole folder, so choose a new or empty folder")
    check_writable(cache_dir, "--cache-dir")
    return tuple(p.absolute() for p in (out_dir, out_dir.parent, cache_dir))


@contextmanager
def full_disk_reported(folders: tuple[Path, ...]):
    """Inside the block, an error raised while the disk is full (:func:`disk_full_message`) becomes an
    OutputError of one line; other errors pass unchanged."""
    from factory.errors import FactoryError, OutputError

    try:
        yield
    except FactoryError:
        raise
    except Exception as err:
        if message := disk_full_message(err, folders):
            raise OutputError(message) from err
        raise


def disk_full_message(err: BaseException, folders: tuple[Path, ...] = ()) -> str | None:
    """One line for running out of disk space or quota while writing, or None for another error. Besides
    ENOSPC/EDQUOT, one of ``folders`` (those the command writes to) with under 1 MiB free counts: torch.save
    reports a full disk as a RuntimeError ("unexpected pos")."""
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {err.filename}" if err.filename else ""
    else:
        full = [folder for folder in sorted(set(folders)) if _free_bytes(folder) < 2**20]
        if not full:
            return None
        where = f" under {full[0]}"
    return (f"no space left on the device{where}; free space there or point --out and --cache-dir "
            f"($FACTORY_CACHE) at another disk, then run the same command again (finished stages are cached, "
            f"earlier outputs are untouched)")


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its closest ancestor that exists."""
    return next((p for p in (folder, *folder.absolute().parents) if p.exists()), Path("/"))


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(_nearest_existing(folder)).free


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
