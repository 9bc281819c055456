"""The distillation objective of Farhat & Chen (2024), plus cross-entropy and logit KD.

Student and teacher pooled features each go through their own projection head (Linear-ReLU-Linear
to ``proj_dim``, then L2 normalisation); the teacher's head trains together with the student.

    loss = w_ce * CE + w_align * align(s, t) + w_uniform * (uniform(s) + uniform(t)) / 2 + w_kd * KD
    align(s, t) = mean_i ||s_i - t_i||^2
    uniform(x)  = log mean_{i<j} exp(-2 ||x_i - x_j||^2)
    KD          = T^2 * KL(softmax(t_logits / T) || softmax(s_logits / T))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from factory.stage import Plan


@dataclass(frozen=True)
class LossSpec(Plan):
    """The distillation objective's settings (part of a distilling stage's plan)."""

    ce: float = 1.0
    align: float = 1.0
    uniform: float = 1.0
    kd: float = 1.0
    temperature: float = 4.0
    proj_dim: int = 128
    proj_hidden: int | None = None
    """Hidden width of each projection head; None: that head's input width (the paper's code)."""

    @classmethod
    def from_recipe(cls, weights, temperature: float, proj_dim: int, proj_hidden: int | None) -> LossSpec:
        return cls(weights.ce, weights.align, weights.uniform, weights.kd, temperature, proj_dim, proj_hidden)


class ProjectionHead(nn.Module):
    """Linear-ReLU-Linear to ``out_dim``, L2-normalised output; the hidden width defaults to ``in_dim``."""

    def __init__(self, in_dim: int, hidden_dim: int | None, out_dim: int):
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x.float()), dim=-1)


def align_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between paired (normalised) embeddings."""
    return (s - t).pow(2).sum(dim=1).mean()


def uniform_loss(x: torch.Tensor) -> torch.Tensor:
    """Log of the mean Gaussian potential exp(-2 d^2) over all distinct pairs."""
    return torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: KL(teacher || student) on temperature-softened distributions, scaled by T^2."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


class DistillLoss(nn.Module):
    """The full objective; holds both projection heads (its parameters train with the student)."""

    def __init__(self, student_dim: int, teacher_dim: int, spec: LossSpec):
        super().__init__()
        self.weights = spec
        self.temperature = spec.temperature
        self.student_head = ProjectionHead(student_dim, spec.proj_hidden, spec.proj_dim)
        self.teacher_head = ProjectionHead(teacher_dim, spec.proj_hidden, spec.proj_dim)

    def forward(self, s_feat: torch.Tensor, s_logits: torch.Tensor, t_feat: torch.Tensor, t_logits: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = self.weights
        s = self.student_head(s_feat)
        t = self.teacher_head(t_feat.float())
        parts = {
            "ce": F.cross_entropy(s_logits.float(), labels),
            "align": align_loss(s, t),
            "uniform": (uniform_loss(s) + uniform_loss(t)) / 2,
            "kd": kd_loss(s_logits, t_logits, self.temperature),
        }
        total = w.ce * parts["ce"] + w.align * parts["align"] + w.uniform * parts["uniform"] + w.kd * parts["kd"]
        return total, {k: v.detach() for k, v in parts.items()}
