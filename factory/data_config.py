"""The recipe's ``data`` section: where a task's images come from and how they are split (every source ends in
the same task data, :mod:`factory.sources`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from factory.class_names import SHIPPED_CLASS_NAMES
from factory.config import Section, role

CHANGES_NO_RESULT = True


SPLITS = ("train", "val", "test")


class DataConfig(Section):
    """Where the task's images come from and how they are split. Every source ends in the same task data
    (classes, train / val / test images, a content fingerprint), so nothing after loading depends on it."""

    source: Literal["imagefolder", "hf", "torchvision"] = Field(
        "imagefolder", description="imagefolder: `root` with train/ and test/ (and optional val/) class folders, or "
        "one folder of class folders split by test_fraction; hf: a Hugging Face dataset (`dataset`: hub id or local "
        "folder); torchvision: a torchvision dataset class (`dataset`) stored under `root`",
        json_schema_extra=role("source"))
    root: Path | None = Field(None, description="imagefolder: the folder; torchvision: where the dataset is stored",
                              json_schema_extra=role("data"))
    dataset: str | None = Field(None, description="hf: hub id or local folder (save_to_disk, parquet, images); "
                                "torchvision: dataset class name, e.g. Flowers102", json_schema_extra=role("source"))
    revision: str | None = Field(None, description="hf: hub revision (branch, tag or commit) of the dataset",
                                 json_schema_extra=role("source"))
    splits: dict[Literal["train", "val", "test"], str | dict[str, Any]] | None = Field(
        None, description="hf / torchvision: the source's split for each of train, val (optional) and test; for "
        "torchvision a name (passed as split=, or train=True/False) or keyword arguments of the class; "
        "default {train: train, test: test}", json_schema_extra=role("source"))
    license: str | None = Field(None, description="licence of the images (an SPDX id such as apache-2.0 or cc-by-nc-4.0, or its name): recorded in the report and the model card; default: unknown",
                                json_schema_extra=role("report"))
    image_column: str = Field("image", description="hf: the column holding images", json_schema_extra=role("source"))
    label_column: str = Field("label", description="hf: the column holding labels", json_schema_extra=role("source"))
    class_names: list[str] | str | None = Field(
        None, description="class names when the source's labels are numbers: a list, a text file (one name a "
        f"line) or a list the factory ships ({', '.join(SHIPPED_CLASS_NAMES)})", json_schema_extra=role("source"))
    download: bool = Field(False, description="torchvision: download the dataset into `root` when it is not there",
                           json_schema_extra=role("source"))
    test_fraction: float = Field(0.0, ge=0.0, lt=0.9, description="share of each class held out for test when the "
                                 "source has no test split (stratified, seeded by split_seed)",
                                 json_schema_extra=role("source"))
    strict: bool = Field(False, description="fail on an image that cannot be decoded, instead of skipping it "
                         "(skips are counted in the report)", json_schema_extra=role("source"))
    image_size: int = Field(224, ge=16, le=1024, description="student input resolution (square)")
    val_fraction: float = Field(0.1, ge=0.0, lt=0.9, description="share of train held out for validation when the "
                                "source has no validation split (stratified, at least 5 per class): every decision "
                                "of a build is made on it, never on test", json_schema_extra=role("data"))
    split_seed: int = Field(0, description="seed of the validation split (kept apart from training seeds)",
                            json_schema_extra=role("data"))
    train_per_class: int | None = Field(
        None, ge=1, description="keep at most this many training images per class (a seeded draw by split_seed), "
        "to study the data-scarce regime; default: all"
    , json_schema_extra=role("data"))
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader workers; 0 loads in the main process",
                             json_schema_extra=role("execution"))

    @field_validator("class_names")
    @classmethod
    def _names_exist(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, str) and value not in SHIPPED_CLASS_NAMES and not Path(value).expanduser().is_file():
            raise ValueError(f"class names file {value!r} does not exist; give a list, a text file with one name a "
                             f"line, or one of: {', '.join(SHIPPED_CLASS_NAMES)}")
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("data.class_names has repeated names; class names must be distinct")
        return value

    @model_validator(mode="after")
    def _fields_of_the_source(self) -> DataConfig:
        needs = {"imagefolder": ("root",), "hf": ("dataset",), "torchvision": ("dataset", "root")}[self.source]
        missing = [f"data.{name}" for name in needs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"data.source: {self.source} needs {' and '.join(missing)}")
        foreign = {"imagefolder": ("dataset", "revision", "splits", "class_names"), "hf": ("root",),
                   "torchvision": ("revision",)}[self.source]
        if self.download and self.source != "torchvision":
            foreign += ("download",)
        given = [f"data.{name}" for name in foreign if getattr(self, name) not in (None, False)]
        if given:
            raise ValueError(f"{', '.join(given)} do(es) not apply to data.source: {self.source}; remove them")
        if self.splits is not None and ("train" not in self.splits or
                                        ("test" not in self.splits and self.test_fraction == 0)):
            raise ValueError("data.splits must name the train split, and the test split unless data.test_fraction holds "
                             "one out of train, e.g. {train: train, test: test}")
        return self

    def split_names(self) -> dict[str, str | dict[str, Any]]:
        """The source's split for each of the factory's splits (train; test unless ``test_fraction`` holds one
        out of train; val when given)."""
        return dict(self.splits or ({"train": "train"} if self.test_fraction > 0 else {"train": "train", "test": "test"}))
