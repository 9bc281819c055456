"""A diffusers pipeline loaded for the augment stage: from a local folder saved with ``save_pretrained`` or a
hub id (failing fast, with one line, when the hub is unreachable and nothing is cached), and what identifies
its weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from factory.errors import CheckpointError, FactoryError, HubUnreachableError
from factory.models import Pinned, path_fingerprint
from factory.network import hub_reachable, offline

FIELD = "augment.pipeline"
_LOCAL_HELP = "a local folder saved with pipeline.save_pretrained() (model_index.json + component folders)"


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "~", os.sep)) or Path(ref).is_absolute() or ref.count("/") > 1


def load_pipeline(ref: str, device: torch.device, mode: str = "text2img", revision: str | None = None):
    """Load the diffusers pipeline ``ref`` (hub id at ``revision``, or local folder) for ``device``, as
    text-to-image or (``mode='img2img'``) image-to-image from the same components.

    fp16 on CUDA, fp32 elsewhere; attention through PyTorch's scaled-dot-product kernel (diffusers'
    default processor on torch 2). Raises :class:`HubUnreachableError` quickly when a hub id is asked
    for, the hub cannot be reached and there is no cached copy, and :class:`CheckpointError` when a
    local folder is missing or is not a saved pipeline.
    """
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise CheckpointError(f"{FIELD}: folder {str(local)!r} has no model_index.json; expected {_LOCAL_HELP}")
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(str(local), dtype=dtype)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{FIELD}: cannot load the pipeline in {str(local)!r} ({err}); expected {_LOCAL_HELP}") from None
    elif _looks_like_path(ref):
        raise CheckpointError(f"{FIELD}: folder {ref!r} does not exist; give a hub id (e.g. stabilityai/sd-turbo) or {_LOCAL_HELP}")
    else:
        reachable = hub_reachable()
        try:
            with offline(not reachable):  # the local cache only: no retries against an unreachable hub
                pipe = AutoPipelineForText2Image.from_pretrained(ref, dtype=dtype, revision=revision)
        except Exception as err:  # huggingface_hub / diffusers raise several types for "not available"
            if not reachable:
                raise HubUnreachableError(
                    f"{FIELD}: {ref!r} is a Hugging Face hub id, the hub cannot be reached and there is no cached "
                    f"copy; run where the hub is reachable (once, to fill the cache), or set {FIELD} to {_LOCAL_HELP}"
                ) from None
            if isinstance(err, (OSError, ValueError)):
                raise FactoryError(f"{FIELD}: cannot load {ref!r} from the Hugging Face hub ({err}); check the id, or set {FIELD} to {_LOCAL_HELP}") from None
            raise
    if mode == "img2img":
        pipe = AutoPipelineForImage2Image.from_pipe(pipe)
    if device.type == "cuda":
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pinned_pipeline(pipeline: str) -> Pinned:
    """The pipeline as the augment plan pins it: a local folder by its content, a hub id as written."""
    local = Path(pipeline).expanduser()
    return Pinned(pipeline, path_fingerprint(local, (".json", ".safetensors", ".bin", ".txt", ".model"))
                  if local.is_dir() else None)
