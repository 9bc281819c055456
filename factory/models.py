"""Creating timm models from a recipe's weights reference, failing fast when the hub is offline.

A weights reference is one of: ``None`` (random init), ``"timm"`` (timm's default pretrained tag
for the architecture, from the Hugging Face hub), ``"hf-hub:<org>/<repo>"``, a local folder in
timm's layout (``config.json`` + ``model.safetensors``, loaded through ``local-dir:``) or a local
checkpoint file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) in timm's state-dict format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import timm
import torch
from torch import nn

from factory.errors import CheckpointError, HubUnreachableError
from factory.network import hub_reachable, offline
from factory.stage import Plan

if TYPE_CHECKING:
    from factory.data import Preprocess

def _is_hub_ref(weights: str) -> bool:
    return weights == "timm" or weights.startswith("hf-hub:")


def describe_weights(model_name: str, weights: str | None) -> str:
    if weights is None:
        return f"{model_name} (random init)"
    if weights == "timm":
        return f"{model_name} (timm pretrained)"
    return f"{model_name} ({weights})"


@dataclass(frozen=True)
class Pinned(Plan):
    """Weights a stage starts from, as its plan holds them: ``ref`` as the recipe wrote it and ``content``, what the
    stage's key holds in its place: a local file or folder's content hash, None for a hub reference (keyed as
    written). So the same weights in another checkout are the same input, and weights retrained in place are not.
    :meth:`of` knows timm's references; augment's diffusers pipeline is pinned by
    :func:`factory.diffusion.pinned_pipeline`."""

    ref: str
    content: str | None

    @classmethod
    def of(cls, weights: str | None) -> Pinned | None:
        """The checkpoint ``weights`` names (None: random init)."""
        if weights is None:
            return None
        return cls(weights, None if _is_hub_ref(weights) else path_fingerprint(Path(weights)))

    def keyed_as(self) -> str:
        """What its stage's key holds: the content, or a hub reference as written."""
        return self.content or self.ref


def unchanged(checkpoint: Pinned | None, field: str, pin: Callable[[str], Pinned | None] = Pinned.of) -> str | None:
    """The checkpoint's reference after checking that ``pin`` (how its stage pinned it) still finds the content its
    stage was keyed with (a local one could be retrained in place while a build runs); CheckpointError otherwise."""
    if checkpoint is None:
        return None
    if checkpoint != pin(checkpoint.ref):
        raise CheckpointError(f"{field}: checkpoint {checkpoint.ref} changed while the build was running; "
                              f"run the build again")
    return checkpoint.ref


def path_fingerprint(path: Path, suffixes: tuple[str, ...] = (".json", ".safetensors", ".pth", ".pt", ".bin",
                                                                ".txt", ".model")) -> str:
    """Content hash of a file, or of the files with ``suffixes`` under a folder (recursively, by relative path)."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:20]


def close_model_names(name: str, n: int = 6) -> list[str]:
    """timm architectures spelled like ``name`` (a typo, a missing suffix), closest first."""
    import difflib

    names = timm.list_models()
    base = name.split(".")[0].lower()
    close = difflib.get_close_matches(base, names, n=n, cutoff=0.6)
    return close or [m for m in names if base[:6] in m][:n]


def create_model(model_name: str, weights: str | None, num_classes: int, field: str = "weights",
                 image_size: int | None = None) -> nn.Module:
    """Build ``model_name`` with ``num_classes`` outputs and load ``weights`` (see module doc).

    ``image_size`` is passed on to architectures built for a fixed input size (ViTs and the like,
    whose position embeddings timm resamples); convnets take any size and ignore it.

    Raises :class:`HubUnreachableError` quickly when hub weights are asked for offline and are not
    in the local cache, and :class:`CheckpointError` when a local checkpoint does not fit.
    """
    if model_name not in timm.list_models() and not _is_hub_ref(weights or ""):
        raise CheckpointError(f"unknown timm architecture {model_name!r}; close names: "
                              f"{', '.join(close_model_names(model_name)) or 'none'} (all: timm.list_models())")
    if weights is None:
        return _timm_create(model_name, image_size, pretrained=False, num_classes=num_classes)
    if _is_hub_ref(weights):
        name = weights if weights.startswith("hf-hub:") else model_name
        try:
            with offline(not hub_reachable()):
                return _timm_create(name, image_size, pretrained=True, num_classes=num_classes)
        except Exception as err:  # huggingface_hub raises several types for "not available offline"
            if "offline" in str(err).lower() or type(err).__name__ in {
                "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout",
            }:
                raise HubUnreachableError(
                    f"{field}: {weights!r} needs {name} weights from the Hugging Face hub, which cannot be reached "
                    f"and has no cached copy; run where the hub is reachable, or set {field} to a local checkpoint "
                    f"(.safetensors/.pth file, or a folder with config.json + model.safetensors)"
                ) from None
            raise
    path = Path(weights)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{field}: folder {path} has no config.json; expected timm's layout (config.json + model.safetensors)")
        return _timm_create(f"local-dir:{path}", image_size, pretrained=True, num_classes=num_classes)
    if not path.is_file():
        raise CheckpointError(f"{field}: checkpoint {path} not found")
    model = _timm_create(model_name, image_size, pretrained=False, num_classes=num_classes)
    load_checkpoint_file(model, path, field)
    return model


def weights_input_size(model_name: str, weights: str | None) -> int | None:
    """The input size ``weights`` were trained at, known without loading them: a checkpoint folder's
    config.json; timm's registry for ``"timm"`` and a ``hf-hub:timm/NAME`` id; None for random init, a bare
    checkpoint file (its size is not recorded) or a name the registry does not know."""
    if weights is None:
        return None
    if not _is_hub_ref(weights):
        config = _folder_config(weights) or {}
        size = (config.get("pretrained_cfg") or {}).get("input_size") or config.get("input_size")
        return int(size[-1]) if size else None
    name = weights.removeprefix("hf-hub:").removeprefix("timm/") if weights.startswith("hf-hub:") else model_name
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown pretrained tag
        return None
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None


def _timm_create(name: str, image_size: int | None, **kwargs) -> nn.Module:
    if image_size is not None:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as err:  # convnets have no img_size argument
            if "img_size" not in str(err):
                raise
    return timm.create_model(name, **kwargs)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_checkpoint_file(model: nn.Module, path: Path, field: str = "weights") -> list[str]:
    """Load a timm state dict into ``model``, keeping its own classifier when the class count differs.

    Returns the names of the checkpoint tensors left out (classifier of another task).
    """
    try:
        state = _read_state_dict(path)
    except Exception as err:
        raise CheckpointError(f"{field}: cannot read checkpoint {path}: {err}") from None
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(fitting))
    missing = sorted(set(own) - set(fitting))
    classifier = model.pretrained_cfg.get("classifier", "fc")
    classifier = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    not_head = [k for k in missing if not any(k.startswith(c + ".") for c in classifier) and "num_batches_tracked" not in k]
    if not_head:
        raise CheckpointError(
            f"{field}: checkpoint {path} does not fit {model.__class__.__name__} "
            f"({len(not_head)} tensors missing or of another shape, e.g. {', '.join(not_head[:3])}); "
            f"check that the recipe's model name matches the checkpoint's architecture"
        )
    model.load_state_dict(fitting, strict=False)
    return skipped


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled pre-logit features :func:`pooled_and_logits` returns: timm's ``head_hidden_size``
    where the head widens the features (mobilenetv3/v4, ghostnet, mambaout, ...), else ``num_features``."""
    return getattr(model, "head_hidden_size", None) or model.num_features


def pooled_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled pre-logit features and logits of a timm model in one forward pass."""
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    return pooled, model.get_classifier()(pooled)


def _folder_config(weights: str | None) -> dict | None:
    """The config.json of a local checkpoint folder (timm's layout); None for anything else."""
    if weights is None or _is_hub_ref(weights) or not (Path(weights) / "config.json").is_file():
        return None
    return json.loads((Path(weights) / "config.json").read_text())


def checkpoint_architecture(weights: str | None) -> str | None:
    """The architecture a local checkpoint folder (timm's layout) was saved from; None for anything else."""
    return (_folder_config(weights) or {}).get("architecture")


def checkpoint_for(weights: str | None, model: str) -> str | None:
    """``weights`` as ``model`` would load them: a local folder of checkpoint folders (as ``factory pretrain``
    writes them under ``exports/pretrained/``) gives the one saved from ``model``, None when none is; anything
    else is returned as it is. CheckpointError when several are (which to use is then the user's choice)."""
    if weights is None or _is_hub_ref(weights) or not Path(weights).is_dir() or checkpoint_architecture(weights):
        return weights
    folders = sorted(str(f) for f in Path(weights).iterdir() if checkpoint_architecture(str(f)) == model)
    if len(folders) > 1:
        raise CheckpointError(f"baseline.weights {weights} holds {len(folders)} checkpoints of {model} "
                              f"({', '.join(Path(f).name for f in folders)}); name one of them")
    return folders[0] if folders else None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_trained(model: nn.Module, preprocess, classes: list[str], folder: Path, license: str | None = None) -> None:
    """Save in timm's local-folder layout (config.json + model.safetensors), loadable by ``local-dir:``.

    The pretrained config records the resolution, mean and std the model was trained with; ``license``, the
    licence of these weights (top-level ``license``, read by :mod:`factory.licenses`): the one timm's registry
    gives the architecture's own pretrained weights is not carried over, since these weights are others."""
    import json

    from safetensors.torch import save_file

    from factory.files import atomic_path, write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    model = model.cpu()
    cfg = dict(model.pretrained_cfg)
    cfg.update({"input_size": [3, preprocess.size, preprocess.size], "mean": list(preprocess.mean),
                "std": list(preprocess.std), "crop_pct": preprocess.crop_pct, "interpolation": preprocess.interpolation})
    cfg["num_classes"] = len(classes)
    cfg["label_names"] = list(classes)
    cfg.pop("license", None)
    config = {
        "architecture": model.pretrained_cfg.get("architecture", model.default_cfg.get("architecture")),
        "num_classes": len(classes),
        "num_features": model.num_features,
        "label_names": list(classes),
        "pretrained_cfg": {k: v for k, v in cfg.items() if _jsonable(v)},
        **({"license": license} if license else {}),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_atomic(folder / "config.json", json.dumps(config, indent=2))


def load_saved_model(folder: Path) -> nn.Module:
    """Load a model written by :func:`save_trained`."""
    return timm.create_model(f"local-dir:{folder}", pretrained=True)


def load_trained(stage) -> tuple[nn.Module, Preprocess]:
    """The model a training stage (a :class:`~factory.stage.Done` whose result is a
    :class:`TrainedModel`) saved under ``model/``, in eval mode, with its preprocessing."""
    return load_saved_model(stage.file("model")).eval(), stage.result.preprocess


def _jsonable(value) -> bool:
    import json

    try:
        json.dumps(value)
        return True
    except TypeError:
        return False
