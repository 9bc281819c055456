"""A trained torch model evaluated: its logits over evaluation images, its accuracy, the FLOPs of one forward
pass, its PyTorch eager latency, and its agreement with its ONNX file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from factory.console import progress_bar
from factory.data import EvalImages, Preprocess
from factory.latency import Latency, LatencySettings, interleaved, latency_of
from factory.runtime.session import make_session
from factory.train import autocast

@torch.inference_mode()
def predict(model: nn.Module, preprocess: Preprocess, dataset: Dataset, device: torch.device,
            batch_size: int = 128, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``model`` over an :class:`~factory.data.EvalImages` dataset."""
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    logits, labels = [], []
    with progress_bar(transient=True) as bar:
        task = bar.add_task(desc or "predict", total=len(loader), visible=desc is not None)
        for images, y in loader:
            with autocast(device):
                logits.append(model(preprocess(images.to(device))).float().cpu())
            labels.append(y)
            bar.update(task, advance=1)
    return torch.cat(logits), torch.cat(labels)


def accuracy(model: nn.Module, preprocess: Preprocess, dataset: Dataset, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` over an :class:`~factory.data.EvalImages` dataset."""
    logits, labels = predict(model, preprocess, dataset, device)
    return float((logits.argmax(1) == labels).float().mean())


def forward_flops_per_image(model: nn.Module, size: int) -> float:
    """FLOPs of one forward pass on one image (torch.utils.flop_counter; a MAC counts as 2 FLOPs)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size, device=device))
    model.train(was_training)
    return float(counter.get_total_flops())


def parity(model: torch.nn.Module, preprocess: Preprocess, path: Path, dataset: EvalImages, limit: int = 64) -> dict:
    """Max |logit| difference and top-1 agreement between PyTorch and onnxruntime on real images."""
    subset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    batch = torch.stack([subset[i][0] for i in range(len(subset))])
    x = preprocess(batch)
    with torch.inference_mode():
        expected = model.cpu().eval()(x).numpy()
    got = make_session(path, 2).run(None, {"input": x.numpy()})[0]
    return {"images": len(subset), "max_abs_diff": float(np.abs(expected - got).max()),
            "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean())}


def eager_latency(model, size: int, settings: LatencySettings) -> Latency:
    """PyTorch eager latency (CPU, inference mode, the settings' threads and rounds) for reference."""
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    model = model.cpu().eval()
    x = torch.randn(settings.batch_size, 3, size, size)
    try:
        with torch.inference_mode():
            (times,) = interleaved([lambda: model(x)], settings)
    finally:
        torch.set_num_threads(previous)
    return latency_of(times, settings, "torch eager")
