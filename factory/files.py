"""Files written safely: atomic writes, folder swaps, cross-process locks, and writable-folder and full-disk
checks with one-line messages. Used by the cache, publishing and pre-training alike."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHANGES_NO_RESULT = True


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
    holds ``marker``: its other files are then kept), since publishing swaps a new folder in; ``--cache-dir``
    can be written. OutputError
    otherwise. Returns the folders the command writes to (where :func:`full_disk_reported` looks)."""
    from factory.errors import OutputError

    check_writable(out_dir, "--out")
    check_writable(out_dir.parent, "--out")  # publishing renames --out and writes beside it
    if os.path.ismount(out_dir):
        raise OutputError(f"--out {out_dir}: is a mount point, which publishing cannot replace (it swaps the "
                          f"finished folder in by renaming); point --out at a folder inside it")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / marker).is_file():
        raise OutputError(f"--out {out_dir}: exists and holds files the factory did not write (no {marker}); "
                          f"publishing swaps a new folder in, so choose a new or empty folder")
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


MANIFEST = ".factory-files.json"
"""The names a publish wrote into its folder; what else the folder holds is the user's and survives the next one."""
FACTORY_NAMES = ("student*", "report.*", "labels.json", "README.md", "*.png", "synthetic_manifest.jsonl",
                 "config.json", "model.safetensors", "pretrain_report.json", "recipe.yaml")
"""What a publish writes, for folders published before the manifest existed."""


def users_files(folder: Path) -> list[Path]:
    """What ``folder`` holds that an earlier publish did not write (its :data:`MANIFEST`, else
    :data:`FACTORY_NAMES`)."""
    if not folder.is_dir():
        return []
    manifest = folder / MANIFEST
    ours = set(json.loads(manifest.read_text())) if manifest.is_file() else set()
    return [p for p in sorted(folder.iterdir()) if p.name != MANIFEST and p.name not in ours
            and not (not ours and any(fnmatch.fnmatch(p.name, pattern) for pattern in FACTORY_NAMES))]


def factory_files(folder: Path) -> list[str]:
    """The names of the files a publish wrote into ``folder`` (the complement of :func:`users_files`)."""
    theirs = set(users_files(folder))
    return [p.name for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST and p not in theirs]
