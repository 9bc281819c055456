"""Data sources: image folders, Hugging Face datasets (saved to disk, loaded as a hub id is) and torchvision
datasets all end in the same task data; offline sources fail fast; bad data gets one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from factory.cli import app
from factory.errors import DataError, RecipeError
from factory.recipe import DataConfig, load_recipe
from factory.sources import DownloadPending, load_task_data

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def saved_hf_dataset(folder: Path, out: Path) -> Path:
    """An image folder turned into a Hugging Face dataset saved with save_to_disk (ClassLabel labels)."""
    import datasets

    datasets.load_dataset("imagefolder", data_dir=str(folder)).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory, tiny_data) -> Path:
    return saved_hf_dataset(tiny_data, tmp_path_factory.mktemp("hf") / "saved")


# ------------------------------------------------------------------------------------------- folders

def test_one_folder_of_classes_is_split_by_test_fraction(tmp_path, tiny_data):
    flat = tmp_path / "flat"
    shutil.copytree(tiny_data / "train", flat)
    cfg = DataConfig(root=flat, test_fraction=0.25, val_fraction=0.25)
    data = load_task_data(cfg)
    assert [sum(s.label == c for s in data.test) for c in range(3)] == [4, 4, 4]  # stratified
    # 14 left per class: 0.25 of them rounds to 4, raised to the 5 a validation split needs
    assert [sum(s.label == c for s in data.val) for c in range(3)] == [5, 5, 5]
    assert len(data.train) == 54 - 12 - 15
    paths = [s.path for s in data.train + data.val + data.test]
    assert len(set(paths)) == len(paths) == 54
    assert load_task_data(cfg).fingerprint == data.fingerprint  # seeded
    other = load_task_data(cfg.model_copy(update={"split_seed": 1}))
    assert {s.path for s in other.test} != {s.path for s in data.test}
    with pytest.raises(DataError, match="has no train/ folder.*data.test_fraction"):
        load_task_data(DataConfig(root=flat))


def test_a_val_folder_is_the_validation_split(tmp_path, tiny_data):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    shutil.copytree(tiny_data / "test", root / "val")
    data = load_task_data(DataConfig(root=root))
    assert len(data.val) == 12 and all("val" in s.path.parts for s in data.val)
    with pytest.raises(DataError, match="data.val_fraction is 0.25 but .* has its own val split"):
        load_task_data(DataConfig(root=root, val_fraction=0.25))


def test_class_folders_that_differ_between_splits_are_named(tmp_path, tiny_data):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    shutil.move(root / "test" / "blue", root / "test" / "purple")
    with pytest.raises(DataError, match=r"only in train/: blue; only in test/: purple"):
        load_task_data(DataConfig(root=root))


def test_undecodable_images_are_skipped_and_counted_or_fail_under_strict(tmp_path, tiny_data):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    (root / "train" / "red" / "zero.png").write_bytes(b"")
    good = (root / "train" / "red" / "000.png").read_bytes()
    (root / "train" / "red" / "truncated.png").write_bytes(good[: len(good) // 2])
    data = load_task_data(DataConfig(root=root), cache_dir=tmp_path / "cache")
    assert sorted(name for name, _ in data.skipped) == ["train/red/truncated.png", "train/red/zero.png"]
    assert len(data.train) + len(data.val) == 54  # the two undecodable images skipped, the rest split
    assert load_task_data(DataConfig(root=root), cache_dir=tmp_path / "cache").fingerprint == data.fingerprint
    with pytest.raises(DataError, match="2 image.*cannot be decoded.*data.strict: false"):
        load_task_data(DataConfig(root=root, strict=True))


# ------------------------------------------------------------------------------ Hugging Face datasets

def test_hf_dataset_saved_to_disk_is_the_same_task_data_as_its_folder(hf_saved, tiny_data, tmp_path):
    folder = load_task_data(DataConfig(root=tiny_data, val_fraction=0.25, train_per_class=6))
    hf = load_task_data(DataConfig(source="hf", dataset=str(hf_saved), val_fraction=0.25, train_per_class=6),
                        cache_dir=tmp_path / "cache")
    assert hf.classes == folder.classes == ["blue", "green", "red"]
    assert hf.fingerprint == folder.fingerprint  # same names, labels, bytes, splits
    assert [s.path.relative_to(hf.root) for s in hf.train] == [s.path.relative_to(folder.root) for s in folder.train]
    assert "Hugging Face dataset" in hf.source
    again = load_task_data(DataConfig(source="hf", dataset=str(hf_saved)), cache_dir=tmp_path / "cache")
    assert again.root == hf.root  # the images were written once


def test_hf_integer_and_string_labels(tmp_path, tiny_data):
    import datasets

    files = sorted((tiny_data / "train").rglob("*.png"))
    names = [f.parent.name for f in files]
    order = ["red", "green", "blue"]
    image = datasets.Image()
    ints = datasets.Dataset.from_dict({"img": [str(f) for f in files], "y": [order.index(n) for n in names]},
                                      features=datasets.Features({"img": image, "y": datasets.Value("int64")}))
    datasets.DatasetDict({"train": ints, "test": ints}).save_to_disk(str(tmp_path / "ints"))
    cfg = dict(source="hf", dataset=str(tmp_path / "ints"), image_column="img", label_column="y")
    with pytest.raises(DataError, match="holds integers, not a ClassLabel; give data.class_names"):
        load_task_data(DataConfig(**cfg), cache_dir=tmp_path / "cache")
    named = load_task_data(DataConfig(**cfg, class_names=order), cache_dir=tmp_path / "cache")
    assert named.classes == order and {s.path.parent.name for s in named.train if s.label == 0} == {"red"}
    with pytest.raises(DataError, match="data.image_column 'image' does not exist .*columns: img, y"):
        load_task_data(DataConfig(**{**cfg, "image_column": "image"}, class_names=order), cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="has splits \\['test', 'train'\\], not \\['validation'\\]"):
        load_task_data(DataConfig(**cfg, class_names=order, splits={"train": "train", "test": "test", "val": "validation"}),
                       cache_dir=tmp_path / "cache")

    strings = datasets.Dataset.from_dict({"image": [str(f) for f in files], "label": names},
                                         features=datasets.Features({"image": image, "label": datasets.Value("string")}))
    datasets.DatasetDict({"train": strings, "test": strings}).save_to_disk(str(tmp_path / "strings"))
    data = load_task_data(DataConfig(source="hf", dataset=str(tmp_path / "strings")), cache_dir=tmp_path / "cache")
    assert data.classes == ["blue", "green", "red"]

    floats = datasets.Dataset.from_dict({"image": [str(f) for f in files], "label": [0.5] * len(files)},
                                        features=datasets.Features({"image": image, "label": datasets.Value("float32")}))
    datasets.DatasetDict({"train": floats, "test": floats}).save_to_disk(str(tmp_path / "floats"))
    with pytest.raises(DataError, match="holds Value\\('float32'.*not a class label"):
        load_task_data(DataConfig(source="hf", dataset=str(tmp_path / "floats")), cache_dir=tmp_path / "cache")


def test_a_class_without_training_images_is_named(tmp_path, tiny_data):
    import datasets

    files = sorted((tiny_data / "train").rglob("*.png"))
    labels = datasets.ClassLabel(names=["blue", "green", "red", "violet"])
    ds = datasets.Dataset.from_dict({"image": [str(f) for f in files], "label": [labels.str2int(f.parent.name) for f in files]},
                                    features=datasets.Features({"image": datasets.Image(), "label": labels}))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "four"))
    with pytest.raises(DataError, match="the train split has no images of class\\(es\\) violet"):
        load_task_data(DataConfig(source="hf", dataset=str(tmp_path / "four")), cache_dir=tmp_path / "cache")


def test_unreachable_hub_dataset_fails_fast_with_the_local_alternative(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataError, match="cannot be reached.*not in the local datasets cache.*save_to_disk"):
        load_task_data(DataConfig(source="hf", dataset="someone/not-cached-flowers"), cache_dir=tmp_path)
    assert time.perf_counter() - start < 10


# --------------------------------------------------------------------------------- torchvision datasets

def test_torchvision_in_memory_dataset_is_written_once_with_class_names(tmp_path):
    cfg = DataConfig(source="torchvision", dataset="FakeData", root=tmp_path / "tv", class_names=["a", "b", "c"],
                     splits={"train": {"size": 30, "image_size": [3, 20, 20], "num_classes": 3},
                             "test": {"size": 9, "image_size": [3, 20, 20], "num_classes": 3, "random_offset": 100}})
    data = load_task_data(cfg, cache_dir=tmp_path / "cache")
    assert data.classes == ["a", "b", "c"] and len(data.train) + len(data.val) == 30 and len(data.test) == 9
    assert all(s.path.suffix == ".png" and s.path.is_file() for s in data.train)
    assert load_task_data(cfg, cache_dir=tmp_path / "cache").fingerprint == data.fingerprint
    with pytest.raises(DataError, match="labels are numbers .* give data.class_names"):
        load_task_data(cfg.model_copy(update={"class_names": None}), cache_dir=tmp_path / "cache")


def test_torchvision_errors_name_the_field(tmp_path):
    with pytest.raises(DataError, match="'Flowers101' is not a torchvision dataset class; did you mean Flowers102"):
        load_task_data(DataConfig(source="torchvision", dataset="Flowers101", root=tmp_path))
    with pytest.raises(DataError, match="not found .*set data.download: true"):
        load_task_data(DataConfig(source="torchvision", dataset="Flowers102", root=tmp_path))


def test_torchvision_download_from_an_unreachable_host_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr("factory.sources.torchvision_datasets.reachable", lambda host, **_: False)
    cfg = DataConfig(source="torchvision", dataset="Flowers102", root=tmp_path, download=True)
    with pytest.raises(DataError, match="download host www.robots.ox.ac.uk cannot be reached.*copy it to data.root"):
        load_task_data(cfg)
    monkeypatch.setattr("factory.sources.torchvision_datasets.reachable", lambda host, **_: True)
    with pytest.raises(DownloadPending, match="factory build downloads it"):
        load_task_data(cfg, download=False)  # factory validate: says so, downloads nothing
    assert not any(tmp_path.iterdir())


def test_validate_headline_recipe_offline_exits_non_zero_within_10_seconds(tmp_path):
    from factory.network import reachable

    if reachable("www.robots.ox.ac.uk"):
        pytest.skip("the Flowers-102 host is reachable here: validate would report a pending download")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "factory.cli", "validate", str(REPO / "recipes" / "mobile_flowers.yaml"),
                           "--set", f"data.root={tmp_path}", "--cache-dir", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 3, done.stdout + done.stderr
    assert "torchvision Flowers102" in done.stderr and "copy it to data.root" in done.stderr
    assert elapsed < 10, elapsed


def test_recipe_rejects_fields_of_another_source(tmp_path, tiny_data):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\ndata: {{root: {tiny_data}, dataset: x}}\nteacher: {{model: test_resnet, adapt: scratch}}\n")
    with pytest.raises(RecipeError, match="data.dataset do\\(es\\) not apply to data.source: imagefolder"):
        load_recipe(recipe)
    recipe.write_text("name: r\ndata: {source: hf}\nteacher: {model: test_resnet, adapt: scratch}\n")
    with pytest.raises(RecipeError, match="data.source: hf needs data.dataset"):
        load_recipe(recipe)
    recipe.write_text(f"name: r\ndata: {{source: torchvision, dataset: Flowers102, root: {tmp_path}, "
                      "class_names: nowhere.txt}\nteacher: {model: test_resnet, adapt: scratch}\n")
    with pytest.raises(RecipeError, match="class names file .*nowhere.txt' does not exist"):
        load_recipe(recipe)


# ------------------------------------------------------------------------------ a tiny build per source

@pytest.mark.parametrize("kind", ["hf", "torchvision"])
def test_tiny_build_on_each_source(kind, tiny_recipe, tiny_data, hf_saved, tmp_path):
    source = {
        "hf": ["data.source=hf", f"data.dataset={hf_saved}", "data.root=null"],
        "torchvision": ["data.source=torchvision", "data.dataset=ImageFolder", f"data.root={tiny_data}",
                        f"data.splits={{train: {{root: {tiny_data / 'train'}}}, test: {{root: {tiny_data / 'test'}}}}}"],
    }[kind]
    args = ["build", str(tiny_recipe), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--set", "baseline.scratch=false", "--set", "baseline.pretrained=false"]
    for item in source:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["source"].startswith({"hf": "Hugging Face", "torchvision": "torchvision ImageFolder"}[kind])
    assert report["data"]["classes"] == ["blue", "green", "red"]
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == ["blue", "green", "red"]
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "out" / "student.onnx")).metadata_props}
    assert json.loads(meta["classes"]) == ["blue", "green", "red"]
    distilled = next(r for r in report["results"] if r["method"] == "distilled" and r["precision"] == "fp32")
    assert distilled["accuracy"] > 1 / 3 + 0.2  # beats chance on the colour task


def test_an_error_with_brackets_is_printed_as_written(tiny_recipe, tmp_path):
    weird = tmp_path / "[/odd]"
    result = runner.invoke(app, ["validate", str(tiny_recipe), "--set", f"data.root={weird}"])
    assert result.exit_code == 3 and "[/odd]" in result.output and "does not exist" in result.output


def test_recipe_paths_resolve_against_the_recipe_but_names_stay_names(tmp_path):
    (tmp_path / "names.txt").write_text("a\nb\n")
    (tmp_path / "Flowers102").mkdir()  # a folder named like the class must not turn the class name into a path
    recipe = tmp_path / "r.yaml"
    teacher = "teacher: {model: test_resnet, adapt: scratch}\n"
    recipe.write_text("name: r\ndata: {source: torchvision, dataset: Flowers102, root: data, class_names: names.txt}\n"
                      + teacher)
    data = load_recipe(recipe).data
    assert data.dataset == "Flowers102" and data.root == tmp_path / "data"
    assert data.class_names == str(tmp_path / "names.txt")
    recipe.write_text("name: r\ndata: {source: torchvision, dataset: Flowers102, root: data, class_names: [x, y]}\n"
                      + teacher)
    assert load_recipe(recipe).data.class_names == ["x", "y"]
    (tmp_path / "saved").mkdir()
    recipe.write_text("name: r\ndata: {source: hf, dataset: saved}\n" + teacher)
    assert load_recipe(recipe).data.dataset == str(tmp_path / "saved")
    recipe.write_text("name: r\ndata: {source: hf, dataset: someone/flowers}\n" + teacher)
    assert load_recipe(recipe).data.dataset == "someone/flowers"


def test_a_source_with_only_a_train_split_holds_out_test_by_test_fraction(tmp_path, tiny_data):
    import datasets

    datasets.load_dataset("imagefolder", data_dir=str(tiny_data / "train")).save_to_disk(str(tmp_path / "only_train"))
    data = load_task_data(DataConfig(source="hf", dataset=str(tmp_path / "only_train"), test_fraction=0.25),
                          cache_dir=tmp_path / "cache")
    assert [sum(s.label == c for s in data.test) for c in range(3)] == [4, 4, 4]
    assert len(data.train) + len(data.val) == 54 - 12
    assert DataConfig(source="hf", dataset="x", splits={"train": "train"}, test_fraction=0.2).split_names() == \
        {"train": "train"}
    with pytest.raises(ValueError, match="must name the train split, and the test split unless data.test_fraction"):
        DataConfig(source="hf", dataset="x", splits={"train": "train"})
