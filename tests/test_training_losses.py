"""The training losses and their gradients against closed forms on hand-built tensors."""

from __future__ import annotations

import math

import pytest
import torch

from prefscore.training.heads import HeadConfig, ScoreHead, load_head
from prefscore.training.losses import bradley_terry_loss, rating_loss, softmax_choice_loss


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bradley_terry_strict_tie_margin_temperature_and_gradient():
    sa = torch.tensor([2.0, 0.5, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    sb = torch.tensor([1.0, 1.5, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.5, 0.5], dtype=torch.float64)
    tau, m = 2.0, 0.3
    loss = bradley_terry_loss(sa, sb, t, temperature=tau, margin=m, reduction="none")
    # a won by 1 with margin 0.3: -log sigma((2 - 1 - 0.3) / 2)
    x0 = (2.0 - 1.0 - 0.3) / tau
    # b won: -log sigma((s_b - s_a - m) / tau), i.e. x = (s_a - s_b + m) / tau and target 0
    x1 = (0.5 - 1.5 + 0.3) / tau
    # ties ignore the margin: CE to (0.5, 0.5) + log 0.5 (PickScore), 0 at equal scores
    x3 = (3.0 - 1.0) / tau
    expected = [-math.log(sig(x0)), -math.log(1 - sig(x1)), 0.0,
                -0.5 * math.log(sig(x3)) - 0.5 * math.log(sig(-x3)) + math.log(0.5)]
    assert torch.allclose(loss, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    loss.sum().backward()
    xs = [x0, x1, 0.0, x3]
    grad = [(sig(x) - tt) / tau for x, tt in zip(xs, [1.0, 0.0, 0.5, 0.5])]
    assert torch.allclose(sa.grad, torch.tensor(grad, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(sb.grad, -sa.grad, atol=1e-12)


def test_tie_loss_is_pickscore_cross_entropy_and_minimal_at_equal_scores():
    sa = torch.tensor([0.7, -1.2, 4.0], dtype=torch.float64)
    sb = torch.tensor([0.2, -1.2, 1.0], dtype=torch.float64)
    half = torch.full((3,), 0.5, dtype=torch.float64)
    tau = 0.5
    ours = bradley_terry_loss(sa, sb, half, temperature=tau, reduction="none")
    logits = torch.stack([sa, sb], -1) / tau
    pick = -(0.5 * torch.log_softmax(logits, -1)).sum(-1) + math.log(0.5)
    assert torch.allclose(ours, pick, atol=1e-12)
    assert ours[1] == 0.0 and (ours[[0, 2]] > 0).all()
    # the mean reduction and per-pair weights
    w = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    assert math.isclose(float(bradley_terry_loss(sa, sb, half, tau, weight=w)), float((ours * w).sum() / 4), rel_tol=1e-12)


def test_softmax_choice_closed_form_gradient_mask_and_two_way_equals_bt():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.3, -0.1, 9.9]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])  # second group has 2 candidates
    tau = 0.5
    loss = softmax_choice_loss(s, t, tau, mask, reduction="none")
    p0 = torch.softmax(s[0].detach() / tau, -1)
    p1 = torch.softmax(s[1, :2].detach() / tau, -1)
    exp0 = -math.log(p0[1])
    exp1 = -0.5 * math.log(p1[0]) - 0.5 * math.log(p1[1]) + math.log(0.5)
    assert torch.allclose(loss.detach(), torch.tensor([exp0, exp1], dtype=torch.float64), atol=1e-12)
    loss.sum().backward()
    g0 = (p0 - t[0]) / tau
    g1 = torch.cat([(p1 - t[1, :2]) / tau, torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(s.grad, torch.stack([g0, g1]), atol=1e-12)
    # k = 2 without margin is Bradley-Terry
    a, b = torch.tensor([1.3, -0.4]), torch.tensor([0.1, 0.6])
    tgt = torch.tensor([1.0, 0.5])
    bt = bradley_terry_loss(a, b, tgt, 0.7, reduction="none")
    ch = softmax_choice_loss(torch.stack([a, b], -1), torch.stack([tgt, 1 - tgt], -1), 0.7, reduction="none")
    assert torch.allclose(bt, ch, atol=1e-6)


def test_rating_loss_and_gradient():
    pred = torch.tensor([1.0, 2.5, -1.0], requires_grad=True)
    y = torch.tensor([2.0, 2.0, 0.0])
    loss = rating_loss(pred, y)
    assert math.isclose(float(loss.detach()), (1 + 0.25 + 1) / 3, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(pred.grad, 2 * (pred.detach() - y) / 3)
    with pytest.raises(ValueError, match="reduction"):
        rating_loss(pred, y, reduction="avg")


def test_head_standardises_clamps_and_round_trips():
    torch.manual_seed(0)
    x = torch.randn(50, 5) * torch.tensor([1.0, 10.0, 0.1, 1.0, 1.0]) + 3
    x[:, 4] = 2.0  # constant in training
    head = ScoreHead(5, HeadConfig("mlp", (8,), 0.0))
    head.fit_standardisation(x)
    assert torch.allclose(head.mean, x.mean(0)) and head.std[4] == 1.0
    head.eval()
    odd = x[:1].clone()
    odd[0, 2] = 1e6  # far outside the training range: clamped at 8 standard deviations
    odd2 = odd.clone()
    odd2[0, 2] = 1e9
    assert head(odd).item() == head(odd2).item()
    again = load_head(head.state_dict(), HeadConfig("mlp", (8,), 0.0), "mem")
    assert torch.equal(again(x), head(x))
    with pytest.raises(Exception, match="missing"):
        load_head(head.state_dict(), HeadConfig("mlp", (8, 4), 0.0), "mem")
