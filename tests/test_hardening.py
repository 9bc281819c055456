"""Bad input, each answered with one line naming what is wrong, a distinct exit code and no traceback, and
nothing already produced lost; damaged cache entries recomputed. (Interruption: test_build, test_cache,
test_augment; the gate: test_build; property tests of the loader: test_recipe_properties.)"""

from __future__ import annotations

import errno
import json
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image
from typer.testing import CliRunner

from factory.cache import StageCache
from factory.stage import META_FILE, Plan, Stage, StageResult
from factory.cli import app
from factory.errors import CheckpointError, DataError, OutputError, RecipeError

runner = CliRunner()


def _cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return output[output.index("error:"):]


# ---- recipe -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, expected", [
    (["distil.epochs=3"], "did you mean 'distill'?"),                       # unknown section: closest key
    (["distill.epoch=3"], "did you mean 'distill.epochs'?"),                # unknown field: closest key
    (["data.zzz=3"], "valid here: source, root"),                           # nothing close: the valid keys
    (["distill.epochs=zero"], "distill.epochs"),                            # wrong type
    (["distill.epochs=-1"], "greater than or equal to 1"),                  # out of range
    (["name.x=3"], "name is not a section"),                                # --set on a field that is not a section
    (["distill.epochs"], "KEY.PATH=VALUE"),                                    # --set without a value
    (["name=../../etc"], "name: String should match pattern"),              # would write outside exports/
    (["name=a/b"], "name: String should match pattern"),
])
def test_bad_recipe_values(tiny_recipe, overrides, expected):
    code, output = _cli("validate", tiny_recipe, *[a for o in overrides for a in ("--set", o)])
    assert code == RecipeError.exit_code == 2
    assert expected in _one_error_line(output)


@pytest.mark.parametrize("text, expected", [
    ("name: x\ndata: [1,\n", "line 3, column 1: not valid YAML"),
    ("- just\n- a list\n", "a recipe is a YAML mapping"),
    ("name: x\n\tdata: 1\n", "not valid YAML"),
])
def test_malformed_yaml(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, output = _cli("validate", path)
    assert code == 2 and expected in _one_error_line(output) and str(path) in output


# ---- data -------------------------------------------------------------------------------------------------

def _data_case(root: Path, case: str) -> tuple[Path, str]:
    make_image_folder(root, {"train": 3, "test": 2}, size=16)
    if case == "missing root":
        return root / "nowhere", "nowhere"
    if case == "no test split":
        shutil.rmtree(root / "test")
        return root, "test"
    if case == "one class":
        for name in ("green", "blue"):
            shutil.rmtree(root / "train" / name)
            shutil.rmtree(root / "test" / name)
        return root, "class"
    if case == "class without images":
        for f in (root / "train" / "blue").iterdir():
            f.unlink()
        return root, "blue"
    if case == "splits disagree":
        (root / "test" / "blue").rename(root / "test" / "purple")
        return root, "purple"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing root", "no test split", "one class", "class without images",
                                  "splits disagree"])
def test_bad_data_roots(tiny_recipe, tmp_path, case):
    root, named = _data_case(tmp_path / "data", case)
    code, output = _cli("validate", tiny_recipe, "--set", f"data.root={root}", "--cache-dir", tmp_path / "cache")
    assert code == DataError.exit_code == 3
    assert named in _one_error_line(output)


def _png_with_size(path: Path, width: int, height: int) -> None:
    """A small PNG file whose header declares ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[12:ihdr + 13])))
    path.write_bytes(bytes(data))


def _odd_images(folder: Path) -> tuple[list[str], list[str]]:
    """Images of every mode worth converting, and files that cannot be decoded; returns both name lists."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png", transparency=0)
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.linspace(0, 65535, 24 * 24).reshape(24, 24).astype(np.uint16)).save(folder / "gray16.png")
    rgb.save(folder / "whole.jpg")
    (folder / "truncated.jpg").write_bytes((folder / "whole.jpg").read_bytes()[:200])
    (folder / "whole.jpg").unlink()
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.png").write_bytes(b"not an image at all" * 10)
    _png_with_size(folder / "bomb.png", 40000, 40000)
    return ["gray.png", "palette.png", "rgba.png", "cmyk.jpg", "gray16.png"], \
        ["truncated.jpg", "empty.png", "corrupt.png", "bomb.png"]


def test_image_modes_convert_and_undecodable_files_are_skipped_and_counted(tiny_recipe, tmp_path):
    root = make_image_folder(tmp_path / "data", {"train": 3, "test": 2}, size=16)
    converted, broken = _odd_images(root / "train" / "red")
    code, output = _cli("validate", tiny_recipe, "--set", f"data.root={root}", "--set", "data.val_fraction=0",
                        "--cache-dir", tmp_path / "cache")
    assert code == 0, output
    assert f"{3 * 3 + len(converted)} train" in output and f"{len(broken)} undecodable skipped" in output

    from factory.data import decode_rgb
    from factory.runtime.model import to_rgb

    for name in converted:
        image = decode_rgb(root / "train" / "red" / name)
        assert image.mode == "RGB" and image.size == (24, 24)
    gray16 = np.asarray(decode_rgb(root / "train" / "red" / "gray16.png"))
    assert 100 < gray16.mean() < 155, "16-bit grayscale is scaled to 8 bits, not clipped to white"
    with Image.open(root / "train" / "red" / "gray16.png") as raw:
        assert np.array_equal(np.asarray(to_rgb(raw)), gray16)  # the runtime without torch sees the same pixels

    code, output = _cli("validate", tiny_recipe, "--set", f"data.root={root}", "--set", "data.strict=true",
                        "--cache-dir", tmp_path / "cache")
    line = _one_error_line(output)
    assert code == 3 and "data.strict" in line and any(name in line for name in broken)


# ---- models -----------------------------------------------------------------------------------------------

def test_unknown_timm_model_suggests_close_names(tiny_recipe, tmp_path):
    code, output = _cli("build", tiny_recipe, "--set", "student.model=resnet81", "--cache-dir", tmp_path / "cache",
                        "--out", tmp_path / "out", "--device", "cpu")
    line = _one_error_line(output)
    assert code == CheckpointError.exit_code == 5 and "resnet81" in line and "resnet18" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["another architecture", "not a checkpoint"])
def test_a_teacher_checkpoint_that_does_not_fit(tiny_recipe, tmp_path, case):
    from safetensors.torch import save_file

    from factory.models import create_model

    path = tmp_path / "teacher.safetensors"
    if case == "another architecture":
        save_file(create_model("test_vit", None, num_classes=3).state_dict(), str(path))
    else:
        path.write_bytes(b"\x00" * 64)
    code, output = _cli("build", tiny_recipe, "--set", f"teacher.weights={path}", "--set", "teacher.adapt=finetune",
                        "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out", "--device", "cpu")
    line = _one_error_line(output)
    assert code == CheckpointError.exit_code == 5 and "teacher.weights" in line and str(path) in line
    assert not (tmp_path / "out").exists()


def test_an_unreachable_hub_id_fails_fast(tiny_recipe, tmp_path):
    code, output = _cli("build", tiny_recipe, "--set", "teacher.weights=hf-hub:timm/not-cached-anywhere",
                        "--set", "teacher.adapt=finetune", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out",
                        "--device", "cpu")
    line = _one_error_line(output)
    assert code == 4 and "teacher.weights" in line and "local checkpoint" in line


# (a checkpoint with another class count gets a new classifier, as timm does:
#  test_models.test_local_checkpoint_keeps_body_and_replaces_classifier)


# ---- output -----------------------------------------------------------------------------------------------

def _earlier_build(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "report.json").write_text("{}")
    (folder / "model.onnx").write_bytes(b"earlier model")
    return folder


@pytest.mark.parametrize("case", ["out is a file", "out under a file", "foreign folder", "cache dir is a file",
                                  "out is a mount point"])
def test_unusable_output_folders_fail_before_any_work(tiny_recipe, tmp_path, case, monkeypatch):
    out, cache = tmp_path / "out", tmp_path / "cache"
    if case == "out is a file":
        out.write_text("not a folder")
    elif case == "out under a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    elif case == "foreign folder":
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
    elif case == "cache dir is a file":
        cache.write_text("not a folder")
    else:
        out = Path("/")  # a mount point everywhere
        monkeypatch.setattr("factory.files.check_writable", lambda folder, option: None)
    code, output = _cli("build", tiny_recipe, "--cache-dir", cache, "--out", out, "--device", "cpu")
    line = _one_error_line(output)
    assert code == OutputError.exit_code == 10 and ("--out" in line or "--cache-dir" in line)
    assert "factory build tiny" not in output  # refused before loading data or training
    if case == "foreign folder":
        assert (out / "thesis.tex").read_text() == "years of work"
    if case == "out is a mount point":
        assert "mount point" in line


@pytest.mark.parametrize("reported_as", ["OSError", "torch.save"])
def test_a_full_disk_is_one_line_and_keeps_the_earlier_outputs(tiny_recipe, tmp_path, monkeypatch, reported_as):
    """ENOSPC from a write, or what torch.save raises on a full disk (a RuntimeError; seen on a 3 MB tmpfs)."""
    out = _earlier_build(tmp_path / "out")

    def disk_full(*args, **kwargs):
        if reported_as == "OSError":
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache" / "teacher" / "x.partial"))
        monkeypatch.setattr("factory.files._free_bytes", lambda folder: 0)
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 3061504 vs 3061392")

    monkeypatch.setattr("factory.pipeline.adapt_teacher", disk_full)
    code, output = _cli("build", tiny_recipe, "--cache-dir", tmp_path / "cache", "--out", out, "--device", "cpu")
    line = _one_error_line(output)
    assert code == 10 and "no space left" in line and "--cache-dir" in line
    assert ("x.partial" if reported_as == "OSError" else str(tmp_path)) in line
    assert (out / "model.onnx").read_bytes() == b"earlier model"


# ---- cache ------------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class _Result(StageResult):
    pass


@dataclass(frozen=True)
class _Plan(Plan):
    n: int


@pytest.mark.parametrize("damage", ["changed", "same size", "missing", "truncated meta"])
def test_a_damaged_cache_entry_is_detected_and_recomputed(tmp_path, damage):
    stage = Stage("numbers", _Result, "factory.cache")
    runs = []

    def run(work: Path) -> _Result:
        runs.append(work)
        (work / "numbers.json").write_text(json.dumps(list(range(100))))
        return _Result()

    cache = StageCache(tmp_path)
    first = cache.run(stage, _Plan(3), {}, run)
    assert StageCache(tmp_path).run(stage, _Plan(3), {}, run).cached and len(runs) == 1
    if damage == "changed":
        first.file("numbers.json").write_text(json.dumps(list(range(99))))
    elif damage == "same size":  # only the content tells
        first.file("numbers.json").write_text(json.dumps(list(range(100))).replace("0", "7", 1))
    elif damage == "missing":
        first.file("numbers.json").unlink()
    else:
        meta = first.path / META_FILE
        meta.write_text(meta.read_text()[:40])
    again = StageCache(tmp_path).run(stage, _Plan(3), {}, run)
    assert not again.cached and len(runs) == 2
    assert json.loads(again.file("numbers.json").read_text()) == list(range(100))
    assert StageCache(tmp_path).run(stage, _Plan(3), {}, run).cached and len(runs) == 2


def test_cores_come_from_the_affinity_and_the_cgroup_quota(tmp_path):
    """A container limited to 2 CPUs on a large host has 2 cores, whatever os.cpu_count() says."""
    import os

    from factory.host import usable_cores
    from factory.profiles import get_profile

    mine = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == mine  # no cpu.max: the affinity
    for quota, expected in (("max 100000", mine), ("50000 100000", 1), (f"{(mine + 3) * 100000} 100000", mine)):
        (tmp_path / "cpu.max").write_text(quota + "\n")
        assert usable_cores(tmp_path) == expected, quota
    profile = get_profile("x86-avx2")  # 2 threads
    host = {"providers": ["CPUExecutionProvider"], "machine": "x86_64", "isa_flags": ["avx2", "fma"], "cores": 1}
    stands_in, why = profile.stand_in(host)
    assert not stands_in and "1 cores" in why


def test_a_recipe_of_nested_aliases_is_one_line_and_exit_2_within_seconds_and_little_memory(tmp_path):
    """The 'billion laughs' given to factory validate, in a process of its own (its peak memory measured)."""
    import subprocess
    import sys
    import time

    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(laughs) + "\n")
    peak = tmp_path / "peak.txt"
    # the child's own peak resident memory (VmHWM starts afresh at exec; ru_maxrss would count the forking
    # test process's), written when it exits
    probe = ("import atexit, runpy, sys; out = sys.argv.pop(); atexit.register(lambda: open(out, 'w').write(next("
             "l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))); "
             "sys.argv[0] = 'factory'; runpy.run_module('factory.cli', run_name='__main__')")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", probe, "validate", str(path), str(peak)], capture_output=True,
                          text=True, timeout=60)
    assert time.monotonic() - started < 20
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "laughs.yaml: line 2" in lines[0] and "alias" in lines[0]
    assert int(peak.read_text()) < 1024 * 1024  # kB: under 1 GB
