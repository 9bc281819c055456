import math

import pytest
import torch
import torch.nn.functional as F

from factory.losses import (
    DistillLoss,
    LossSpec,
    ProjectionHead,
    align_loss,
    kd_loss,
    uniform_loss,
)


def test_align_hand_computed():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # ||s0 - t0||^2 = 2, ||s1 - t1||^2 = 0 -> mean 1
    assert align_loss(s, t).item() == pytest.approx(1.0)


def test_uniform_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # squared distances of the 3 pairs: 2, 4, 2
    expected = math.log((math.exp(-4) + math.exp(-8) + math.exp(-4)) / 3)
    assert uniform_loss(x).item() == pytest.approx(expected, rel=1e-6)


def test_kd_zero_for_equal_logits_and_hand_value():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    assert kd_loss(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    s, t, temp = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), 1.0
    # teacher p = (3/4, 1/4), student q = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_loss(s, t, temp).item() == pytest.approx(expected, rel=1e-6)
    # T^2 scaling: at T=2 the logits are halved before softmax, and the loss is multiplied by 4
    t2 = t * 2
    assert kd_loss(s, t2, 2.0).item() == pytest.approx(4 * expected, rel=1e-5)


def test_projection_head_shape_and_norm():
    head = ProjectionHead(10, 16, 128)
    out = head(torch.randn(5, 10))
    assert out.shape == (5, 128)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)


def test_distill_loss_combines_weighted_parts():
    torch.manual_seed(0)
    loss = DistillLoss(8, 12, LossSpec(ce=1.0, align=2.0, uniform=0.5, kd=3.0, temperature=4.0, proj_dim=16,
                                       proj_hidden=32))
    s_feat, t_feat = torch.randn(6, 8), torch.randn(6, 12)
    s_logits, t_logits, labels = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    total, parts = loss(s_feat, s_logits, t_feat, t_logits, labels)
    parts = {k: v.item() for k, v in parts.items()}
    s, t = loss.student_head(s_feat), loss.teacher_head(t_feat)
    assert parts["ce"] == pytest.approx(F.cross_entropy(s_logits, labels).item(), rel=1e-5)
    assert parts["align"] == pytest.approx(align_loss(s, t).item(), rel=1e-5)
    assert parts["uniform"] == pytest.approx(((uniform_loss(s) + uniform_loss(t)) / 2).item(), rel=1e-5)
    expected = parts["ce"] + 2 * parts["align"] + 0.5 * parts["uniform"] + 3 * parts["kd"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert loss.teacher_head.net[0].weight.grad is not None  # the teacher's head trains with the student


def test_projection_hidden_width_defaults_to_each_heads_input_width():
    """As in the paper's code (sfarhat/dapt, models/projector.py): Linear(in, in)-ReLU-Linear(in, out)."""
    loss = DistillLoss(8, 12, LossSpec(proj_dim=16))
    assert loss.student_head.net[0].weight.shape == (8, 8) and loss.student_head.net[2].weight.shape == (16, 8)
    assert loss.teacher_head.net[0].weight.shape == (12, 12) and loss.teacher_head.net[2].weight.shape == (16, 12)
