"""A Hugging Face dataset: from the hub, a dataset saved with ``save_to_disk``, or local parquet files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from factory.cache import StageCache
from factory.class_names import resolve_class_names
from factory.errors import DataError
from factory.network import hub_reachable, offline
from factory.sources.common import LOCAL_HF_HELP, DownloadPending, Found, MaterializePlan, _materialize

if TYPE_CHECKING:
    from factory.recipe import DataConfig


def find_hf(cfg: DataConfig, cache: StageCache | None, download: bool) -> Found:
    """A Hugging Face dataset by hub id or local folder, loaded with ``datasets.load_dataset`` (and its cache)."""
    import datasets

    local = Path(cfg.dataset).expanduser()
    ref = str(local.resolve()) if local.exists() else cfg.dataset
    where = f"data.dataset {cfg.dataset!r}"
    unreachable = not local.exists() and not hub_reachable()
    if not local.exists() and not unreachable and not download:
        features = _hub_features(ref, cfg, where)
        if features is not None:
            _class_names_hf(features, None, cfg, where)
        raise DownloadPending(f"{where} is on the hub; factory build loads it (downloading what the datasets cache lacks)")
    try:
        with offline(unreachable):  # the datasets cache only: no retries against an unreachable hub
            loaded = datasets.load_dataset(ref, revision=cfg.revision)
    except (OSError, ValueError) as err:
        if unreachable:
            raise DataError(f"{where}: the Hugging Face hub cannot be reached (or HF_HUB_OFFLINE is set) and the "
                            f"dataset is not in the local datasets cache; run once where the hub is reachable, or "
                            f"{LOCAL_HF_HELP}") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{where}: the datasets library cannot load it ({first}); give a hub id or {LOCAL_HF_HELP}") from None
    names = cfg.split_names()
    missing = {ours: theirs for ours, theirs in names.items() if theirs not in loaded}
    if missing:
        raise DataError(f"{where} has splits {sorted(loaded)}, not {sorted(missing.values())}; set data.splits "
                        f"(e.g. {{train: {next(iter(loaded))}, test: ...}}), or data.test_fraction to hold out test")
    first = loaded[names["train"]]
    _check_columns(first.features, cfg, where)
    classes = _class_names_hf(first.features, {s: loaded[n] for s, n in names.items()}, cfg, where)
    identity = json.dumps({"revision": cfg.revision, "image": cfg.image_column, "label": cfg.label_column,
                           "splits": {s: [n, loaded[n]._fingerprint] for s, n in names.items()}, "classes": classes})
    items = {}
    for split, name in names.items():
        rows = loaded[name].cast_column(cfg.image_column, datasets.Image(decode=False)).select_columns(
            [cfg.image_column, cfg.label_column])
        items[split] = (len(rows), _hf_row_reader(rows, cfg, classes, f"{where} split {name!r}"))
    description = f"Hugging Face dataset {cfg.dataset}" + (f"@{cfg.revision}" if cfg.revision else "") + \
        " (" + ", ".join(f"{s}: {n}" for s, n in names.items()) + ")"
    return _materialize(cache, MaterializePlan("hf", ref, identity), classes, items, description)


def _hub_features(ref: str, cfg: DataConfig, where: str):
    import datasets

    try:
        return datasets.load_dataset_builder(ref, revision=cfg.revision).info.features
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{where}: not found on the hub ({first}); give a hub id or {LOCAL_HF_HELP}") from None


def _check_columns(features, cfg: DataConfig, where: str) -> None:
    import datasets

    columns = ", ".join(features)
    image = features.get(cfg.image_column)
    if not isinstance(image, datasets.Image):
        what = "does not exist" if image is None else f"holds {image}, not images"
        raise DataError(f"data.image_column {cfg.image_column!r} {what} in {where} (columns: {columns}); set "
                        "data.image_column to the column of images")
    if cfg.label_column not in features:
        raise DataError(f"data.label_column {cfg.label_column!r} does not exist in {where} (columns: {columns}); set "
                        "data.label_column to the column of class labels")


def _class_names_hf(features, splits, cfg: DataConfig, where: str) -> list[str]:
    """Class names in label order: the ClassLabel's (or data.class_names), data.class_names for integer labels,
    the sorted distinct values of a string column."""
    import datasets

    label = features.get(cfg.label_column)
    given = resolve_class_names(cfg.class_names)
    if isinstance(label, datasets.ClassLabel):
        if given is not None and len(given) != label.num_classes:
            raise DataError(f"data.class_names has {len(given)} names but {where}'s {cfg.label_column!r} has "
                            f"{label.num_classes} classes; give one name per class, in label order")
        return given or list(label.names)
    dtype = getattr(label, "dtype", "")
    if dtype.startswith("int") or dtype.startswith("uint"):
        if given is None:
            raise DataError(f"data.label_column {cfg.label_column!r} in {where} holds integers, not a ClassLabel; give "
                            "data.class_names (a list, a text file with one name a line, or a shipped list such as "
                            "flowers102)")
        return given
    if dtype in ("string", "large_string"):
        if splits is None:
            return []
        return given or sorted({value for rows in splits.values() for value in rows[cfg.label_column]})
    raise DataError(f"data.label_column {cfg.label_column!r} in {where} holds {label}, not a class label (ClassLabel, "
                    "integers with data.class_names, or strings); set data.label_column to the label column")


def _hf_row_reader(rows, cfg: DataConfig, classes: list[str], where: str):
    def get(index: int) -> tuple[bytes, str | None, int]:
        row = rows[index]
        image, label = row[cfg.image_column], row[cfg.label_column]
        if isinstance(label, str):
            label = classes.index(label) if label in classes else -1
        if not 0 <= label < len(classes):
            raise DataError(f"{where}: row {index} has label {row[cfg.label_column]!r}, outside the {len(classes)} "
                            "classes; choose a labelled split (data.splits), or give data.class_names for every label")
        data = image.get("bytes")
        if data is None and image.get("path"):
            data = Path(image["path"]).read_bytes()
        if data is None:
            raise DataError(f"{where}: row {index} has no image; remove the row or choose another split")
        return data, image.get("path"), int(label)

    return get
