"""Carry an image folder to a machine that can only be reached through small transfers (the GPU
machine of experiments/README.md takes at most 64 MiB per call, the checkout included).

    python experiments/pack_corpus.py pack ../shared/datasets/tinyimagenet200 .devdata --chunk-mib 46
    python experiments/pack_corpus.py verify .devdata tinyimagenet200-001.zip   # there, after each transfer
    python experiments/pack_corpus.py unpack .devdata /tmp/corpus               # there, once all have arrived

``pack`` stores the files unchanged (the JPEGs are already compressed; re-encoding would change the
data) in uncompressed zip chunks of at most ``--chunk-mib``, and writes ``<name>-manifest.json`` with
each chunk's SHA-256 and file count. ``verify`` checks one chunk against the manifest; ``unpack`` checks
every chunk and extracts them into ``DEST/<name>/`` (the folder layout is kept, so ``DEST/<name>`` is
an ImageFolder root), then counts the files. Keep the chunks out of git (``.devdata/`` is ignored).
It needs only ``factory.hashing`` (no torch): run it from the project's venv, or with PYTHONPATH=. elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

from factory.hashing import file_sha256

ZIP_ENTRY_OVERHEAD = 30 + 46 + 2 * 120  # local header + central directory entry + the name twice, generously


def pack(root: Path, out: Path, chunk_mib: float) -> Path:
    """Split the files under ``root`` into zip chunks in ``out``; returns the manifest's path."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        sys.exit(f"pack: no files under {root}")
    out.mkdir(parents=True, exist_ok=True)
    limit = chunk_mib * 2**20
    chunks: list[list[Path]] = [[]]
    size = 0.0
    for path in files:
        cost = path.stat().st_size + ZIP_ENTRY_OVERHEAD
        if chunks[-1] and size + cost > limit:
            chunks.append([])
            size = 0.0
        chunks[-1].append(path)
        size += cost
    manifest = {"name": root.name, "files": len(files), "chunks": []}
    for i, members in enumerate(chunks):
        chunk = out / f"{root.name}-{i:03d}.zip"
        with zipfile.ZipFile(chunk, "w", zipfile.ZIP_STORED) as z:
            for path in members:
                z.write(path, path.relative_to(root).as_posix())
        manifest["chunks"].append({"file": chunk.name, "sha256": file_sha256(chunk), "files": len(members),
                                   "bytes": chunk.stat().st_size})
        print(f"{chunk.name}: {len(members)} files, {chunk.stat().st_size / 2**20:.1f} MiB")
    path = out / f"{root.name}-manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def _manifest(folder: Path, name: str | None = None) -> dict:
    found = [folder / f"{name}-manifest.json"] if name else sorted(folder.glob("*-manifest.json"))
    if len(found) != 1 or not found[0].is_file():
        sys.exit(f"no single manifest in {folder} (found {[p.name for p in found]}); copy <name>-manifest.json there")
    return json.loads(found[0].read_text())


def verify(folder: Path, chunk_name: str) -> None:
    """Exit non-zero unless ``chunk_name`` in ``folder`` has the manifest's hash."""
    manifest = _manifest(folder, chunk_name.rsplit("-", 1)[0])
    entry = next((c for c in manifest["chunks"] if c["file"] == chunk_name), None)
    if entry is None:
        sys.exit(f"{chunk_name} is not in the manifest of {manifest['name']}")
    got = file_sha256(folder / chunk_name)
    if got != entry["sha256"]:
        sys.exit(f"{chunk_name}: sha256 {got[:16]} != manifest {entry['sha256'][:16]}; send it again")
    print(f"{chunk_name}: ok ({entry['files']} files)")


def unpack(folder: Path, dest: Path, name: str | None = None) -> Path:
    """Check every chunk's hash and extract them into ``dest/<name>``; returns that folder."""
    manifest = _manifest(folder, name)
    target = dest / manifest["name"]
    for entry in manifest["chunks"]:
        verify(folder, entry["file"])
        with zipfile.ZipFile(folder / entry["file"]) as z:
            z.extractall(target)
    count = sum(1 for p in target.rglob("*") if p.is_file())
    if count != manifest["files"]:
        sys.exit(f"{target}: {count} files after unpacking, the manifest says {manifest['files']}")
    print(f"{target}: {count} files, all chunks verified")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("root", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--chunk-mib", type=float, default=46.0)
    v = sub.add_parser("verify")
    v.add_argument("folder", type=Path)
    v.add_argument("chunk")
    u = sub.add_parser("unpack")
    u.add_argument("folder", type=Path)
    u.add_argument("dest", type=Path)
    u.add_argument("--name", default=None, help="which corpus, when the folder holds several manifests")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.root, args.out, args.chunk_mib)
    elif args.command == "verify":
        verify(args.folder, args.chunk)
    else:
        unpack(args.folder, args.dest, args.name)


if __name__ == "__main__":
    main()
