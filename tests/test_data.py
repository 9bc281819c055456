import shutil

import pytest
import torch

from factory.data import ImageStore, Preprocess, TrainViews, ViewPlan
from factory.errors import DataError
from factory.recipe import DataConfig
from factory.sources import load_task_data


def test_load_and_val_split(tiny_data):
    data = load_task_data(DataConfig(root=tiny_data, val_fraction=0.25))
    assert data.classes == ["blue", "green", "red"]
    assert len(data.train) == 39 and len(data.val) == 15 and len(data.test) == 12  # at least 5 per class held out
    assert {s.label for s in data.val} == {0, 1, 2}
    assert not {s.path for s in data.train} & {s.path for s in data.val}


def test_train_per_class_cuts_each_class_and_keeps_val_and_test(tiny_data):
    full = load_task_data(DataConfig(root=tiny_data, val_fraction=0.25))
    cut = load_task_data(DataConfig(root=tiny_data, val_fraction=0.25, train_per_class=4))
    assert [sum(s.label == c for s in cut.train) for c in range(3)] == [4, 4, 4]
    assert {s.path for s in cut.train} < {s.path for s in full.train}
    assert cut.val == full.val and cut.test == full.test
    assert cut.fingerprint != full.fingerprint
    again = load_task_data(DataConfig(root=tiny_data, val_fraction=0.25, train_per_class=4))
    assert again.train == cut.train


def test_same_view_seed_gives_same_image(tiny_data):
    data = load_task_data(DataConfig(root=tiny_data))
    views = TrainViews(data.train, ImageStore(), ViewPlan(seed=3, num_views=4, size=32))
    a, b = views.render(5, 2), views.render(5, 2)
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, views.render(5, 3))  # another view is another augmentation
    other = TrainViews(data.train, ImageStore(), ViewPlan(3, 4, 32))  # e.g. after a restart
    assert torch.equal(a, other.render(5, 2))
    image, label, index, view = views[5]
    assert index == 5 and 0 <= view < 4 and torch.equal(image, views.render(5, view))


def test_views_do_not_touch_global_rng(tiny_data):
    data = load_task_data(DataConfig(root=tiny_data))
    views = TrainViews(data.train, ImageStore(), ViewPlan(0, 0, 32))
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    views.render(0, 0)
    assert torch.equal(torch.rand(3), expected)
    if torch.cuda.is_available():  # seeding a view must not reseed (and leave reseeded) the CUDA generators
        torch.cuda.manual_seed_all(5)
        cuda_state = torch.cuda.get_rng_state()
        views.render(1, 0)
        assert torch.equal(torch.cuda.get_rng_state(), cuda_state)


def test_view_digest_detects_other_pixels(tiny_data, tmp_path):
    import shutil

    data = load_task_data(DataConfig(root=tiny_data))
    views = TrainViews(data.train, ImageStore(), ViewPlan(0, 2, 32))
    assert views.digest() == TrainViews(data.train, ImageStore(), ViewPlan(0, 2, 32)).digest()
    assert views.digest() != TrainViews(data.train, ImageStore(), ViewPlan(1, 2, 32)).digest()
    copy = tmp_path / "d"
    shutil.copytree(tiny_data, copy)
    edited = load_task_data(DataConfig(root=copy))
    from PIL import Image

    Image.new("RGB", (40, 40), (9, 9, 9)).save(edited.train[0].path)
    assert TrainViews(edited.train, ImageStore(), ViewPlan(0, 2, 32)).digest() != views.digest()


def test_eval_images_follow_the_models_data_config(tiny_data):
    """Resize the shorter side to floor(size / crop_pct) with the model's interpolation, centre crop: on the
    decoded PIL image, so that PIL alone reproduces it."""
    import numpy as np
    from PIL import Image

    from factory.data import EvalImages

    data = load_task_data(DataConfig(root=tiny_data))
    pre = Preprocess(32, (0.5,) * 3, (0.5,) * 3, crop_pct=0.9, interpolation="bicubic")
    image, _ = EvalImages(data.test, ImageStore(), pre)[0]
    with Image.open(data.test[0].path) as raw:
        pil = raw.convert("RGB").resize((35, 35), Image.BICUBIC)  # floor(32 / 0.9) = 35 (square source)
    left = int(round((35 - 32) / 2))  # torchvision's centre crop offset
    expected = np.asarray(pil.crop((left, left, left + 32, left + 32)))
    assert pre.resize == 35 and image.shape == (3, 32, 32)
    assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - expected.astype(int)).max() <= 1


def test_preprocess_resizes_and_normalises():
    pre = Preprocess(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    out = pre(torch.full((2, 3, 32, 32), 255, dtype=torch.uint8))
    assert out.shape == (2, 3, 16, 16) and torch.allclose(out, torch.ones_like(out))


def test_data_errors_name_the_path(tmp_path, tiny_data):
    with pytest.raises(DataError, match="does not exist"):
        load_task_data(DataConfig(root=tmp_path / "missing"))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    shutil.rmtree(broken / "test")
    with pytest.raises(DataError, match="no test/ folder"):
        load_task_data(DataConfig(root=broken))
    (broken / "test" / "red").mkdir(parents=True)
    (broken / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_task_data(DataConfig(root=broken))


def test_unreadable_image_is_named(tmp_path, tiny_data):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    bad = root / "train" / "red" / "zzz.png"
    bad.write_bytes(b"not an image")
    data = load_task_data(DataConfig(root=root))
    assert [name for name, _ in data.skipped] == ["train/red/zzz.png"]  # found when loading, left out
    assert not any(s.path == bad for s in data.train)
    with pytest.raises(DataError, match="zzz.png"):  # and named if it breaks later
        ImageStore().get(bad, 32)
