import json
import time

import pytest
import torch
from safetensors.torch import save_file

from factory.data import Preprocess
from factory.errors import CheckpointError, HubUnreachableError
from factory.models import (
    checkpoint_for,
    create_model,
    load_saved_model,
    pooled_and_logits,
    save_trained,
)


def test_local_checkpoint_keeps_body_and_replaces_classifier(tmp_path):
    torch.manual_seed(0)
    source = create_model("test_resnet", None, num_classes=7)
    path = tmp_path / "ckpt.safetensors"
    save_file(source.state_dict(), str(path))
    model = create_model("test_resnet", str(path), num_classes=3)
    assert model.get_classifier().out_features == 3
    body = [k for k in source.state_dict() if not k.startswith("fc.")]
    assert all(torch.equal(model.state_dict()[k], source.state_dict()[k]) for k in body)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "ckpt.pth")
    create_model("test_resnet", str(tmp_path / "ckpt.pth"), num_classes=3)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file(create_model("test_vit", None, num_classes=3).state_dict(), str(path))
    with pytest.raises(CheckpointError, match="does not fit"):
        create_model("test_resnet", str(path), num_classes=3, field="teacher.weights")


def test_unknown_architecture():
    with pytest.raises(CheckpointError, match="unknown timm architecture 'resnet_nope'"):
        create_model("resnet_nope", None, 3)


def test_hub_weights_fail_fast_offline():
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="baseline.weights.*local checkpoint"):
        create_model("test_resnet", "hf-hub:timm/definitely-not-cached", 3, field="baseline.weights")
    with pytest.raises(HubUnreachableError):
        create_model("resnet18", "timm", 3)
    assert time.perf_counter() - start < 15


def test_saved_folder_round_trip_in_timm_layout(tmp_path):
    model = create_model("test_efficientnet", None, 3).eval()
    save_trained(model, Preprocess(32, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)), ["a", "b", "c"], tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "model.safetensors").is_file()
    loaded = load_saved_model(tmp_path / "m").eval()
    assert loaded.pretrained_cfg["input_size"] == [3, 32, 32] or tuple(loaded.pretrained_cfg["input_size"]) == (3, 32, 32)
    assert list(loaded.pretrained_cfg["mean"]) == [0.1, 0.2, 0.3]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
        feats, logits = pooled_and_logits(model, x)
    assert feats.shape == (2, model.num_features) and torch.allclose(logits, model(x), atol=1e-6)


@pytest.mark.parametrize("name", ["test_mambaout", "test_resnet"])
def test_feature_dim_is_the_width_of_the_pooled_features(name):
    """mambaout (like mobilenetv3/v4 and ghostnet) widens its features in the head: num_features is not the
    width the projection heads receive."""
    import torch

    from factory.models import create_model, feature_dim, pooled_and_logits

    model = create_model(name, None, 3).eval()
    pooled, logits = pooled_and_logits(model, torch.zeros(2, 3, 32, 32))
    assert pooled.shape == (2, feature_dim(model)) and logits.shape == (2, 3)


def test_a_folder_of_checkpoints_gives_the_students_own(tmp_path):
    for name, architecture in (("a", "resnet18"), ("b", "resnet10t"), ("c", "resnet10t")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"architecture": architecture}))
    assert checkpoint_for(str(tmp_path), "resnet18") == str(tmp_path / "a")
    assert checkpoint_for(str(tmp_path), "ghostnet_100") is None
    with pytest.raises(CheckpointError, match="2 checkpoints of resnet10t"):
        checkpoint_for(str(tmp_path), "resnet10t")
    assert checkpoint_for(str(tmp_path / "a"), "resnet10t") == str(tmp_path / "a")  # a checkpoint is itself
    assert checkpoint_for("timm", "resnet18") == "timm" and checkpoint_for(None, "resnet18") is None
