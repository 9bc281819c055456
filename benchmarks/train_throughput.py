"""Training throughput, split into its two halves: how fast the data loader makes training views, and
how fast the device trains on views already in its memory (the factory's own objective, optimizer,
autocast and memory format). The slower one bounds a real epoch; comparing an epoch's measured time
(pretrain_report.json history) with the compute-only figure gives the data-loading share.

    python benchmarks/train_throughput.py --root ../shared/datasets/tinyimagenet200 --models resnet50 resnet18 \\
        --device cuda --workers 14 --batch-size 256
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from factory.cache import DEFAULT_CACHE
from factory.data import DeviceViews, ImageStore, TrainViews, ViewPlan, preprocess_for
from factory.host import host_info
from factory.models import create_model
from factory.recipe import DataConfig
from factory.sources import load_task_data
from factory.train import ClassifierObjective, param_groups, to_device


def loader_images_per_s(views: TrainViews, batch_size: int, workers: int, batches: int) -> float:
    """Views per second out of a DataLoader like the training loop's (pinned memory, shuffled)."""
    loader = DataLoader(views, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=torch.cuda.is_available(),
                        drop_last=True)
    n, started = 0, None
    for i, (images, *_rest) in enumerate(loader):
        if i == 2:  # workers started and warm
            started, n = time.perf_counter(), 0
        n += len(images)
        if i == batches + 2:
            break
    return n / (time.perf_counter() - started)


def device_views_per_s(views: DeviceViews, batch_size: int, batches: int) -> float:
    """Views per second made on the device (:class:`DeviceViews`), the corpus already there."""
    def run(count: int) -> int:
        n = 0
        for i, (images, *_rest) in enumerate(views.batches(batch_size, drop_last=True)):
            n += len(images)
            if i + 1 == count:
                break
        if views.device.type == "cuda":
            torch.cuda.synchronize()
        return n

    run(2)
    started = time.perf_counter()
    n = run(batches)
    return n / (time.perf_counter() - started)


def compute_images_per_s(model_name: str, classes: int, size: int, batch_size: int, device: torch.device,
                         steps: int) -> tuple[float, float]:
    """Training steps per second on one batch held on the device; returns (images/s, forward FLOPs per image)."""
    from factory.train import autocast
    from factory.evaluate import forward_flops_per_image

    model = create_model(model_name, None, classes)
    objective = to_device(ClassifierObjective(model, preprocess_for(model, size)), device).train()
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the training loop sets it
    optimizer = torch.optim.AdamW(param_groups(objective, 0.05, 1e-3))
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, classes, (batch_size,), device=device)
    indices = views = torch.zeros(batch_size, dtype=torch.long)

    def step():
        loss, _ = objective(images, labels, indices, views)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = steps * batch_size / (time.perf_counter() - started)
    with autocast(device):
        flops = forward_flops_per_image(model, size)
    return rate, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="an ImageFolder corpus (train/<class>/...)")
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40, help="loader batches timed")
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per model")
    args = parser.parse_args()

    host = host_info()
    print(f"host: {host['cpu']} ({host['cores']} cores), flags {' '.join(host['isa_flags'])}")
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()} torch {torch.__version__}")
    data = load_task_data(DataConfig(root=args.root, image_size=args.size), DEFAULT_CACHE)
    views = TrainViews(data.train, ImageStore(), ViewPlan(0, 0, args.size))
    loader_rate = loader_images_per_s(views, args.batch_size, args.workers, args.batches)
    print(f"data loader: {loader_rate:,.0f} views/s at {args.size}px with {args.workers} workers "
          f"(decode, random resized crop, flip, colour jitter)")
    device_views = DeviceViews(data.train, ViewPlan(0, 0, args.size), device, num_workers=args.workers)
    device_rate = device_views_per_s(device_views, args.batch_size, args.batches)
    print(f"views made on the {device.type} from the corpus held there (pretrain views_on_device: true): "
          f"{device_rate:,.0f} views/s ({device_rate / loader_rate:.1f}x the loader)")
    for name in args.models:
        rate, flops = compute_images_per_s(name, data.num_classes, args.size, args.batch_size, device, args.steps)
        bound = "data loader" if loader_rate < rate else "compute"
        print(f"{name}: {rate:,.0f} images/s training on device-resident batches of {args.batch_size} "
              f"({3 * flops * rate / 1e12:.1f} TFLOP/s at 3x forward FLOPs); with this loader an epoch is "
              f"{bound}-bound, at most {min(rate, loader_rate):,.0f} images/s "
              f"(loader/compute ratio {loader_rate / rate:.2f})")


if __name__ == "__main__":
    main()
