"""Training objectives: Bradley-Terry with ties and margins, k-way softmax choice, rating MSE.

All losses are shifted by the entropy of their target so that the minimum is 0 (PickScore adds
``log 0.5`` to a tie's cross-entropy for the same reason; for hard labels the shift is 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(loss: torch.Tensor, weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    if weight is not None:
        loss = loss * weight
        if reduction == "mean":
            return loss.sum() / weight.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def bradley_terry_loss(
    score_a: torch.Tensor,
    score_b: torch.Tensor,
    target: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    margin: float | torch.Tensor = 0.0,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Bradley-Terry loss of pairs, with ties.

    ``target`` is the probability that ``a`` is preferred: 1 (a), 0 (b) or 0.5 (tie). With
    ``x = (s_a - s_b - m) / tau`` where ``m = +margin`` if a won, ``-margin`` if b won, 0 for a tie::

        loss = -[t log sigma(x) + (1 - t) log sigma(-x)] + [t log t + (1 - t) log(1 - t)]

    i.e. ``-log sigma((s_w - s_l - margin) / tau)`` for a strict pair (trl's reward loss at tau 1)
    and PickScore's tie loss ``CE(softmax([s_a, s_b] / tau), (0.5, 0.5)) + log 0.5`` for a tie, which
    is 0 when ``s_a == s_b``. Gradient: ``d loss / d s_a = (sigma(x) - t) / tau``.
    ``weight``: per-pair weights (a weighted mean with ``reduction="mean"``).
    """
    target = target.to(score_a.dtype)
    sign = torch.where(target > 0.5, 1.0, torch.where(target < 0.5, -1.0, 0.0)).to(score_a.dtype)
    x = (score_a - score_b - sign * margin) / temperature
    loss = -(target * F.logsigmoid(x) + (1 - target) * F.logsigmoid(-x)) + _neg_entropy(target)
    return _reduce(loss, weight, reduction)


def softmax_choice_loss(
    scores: torch.Tensor,
    target: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``softmax(scores / tau)`` over k candidates to a target distribution.

    ``scores`` and ``target`` are ``(B, k)``; each target row sums to 1 (e.g. one-hot on the chosen
    image, or spread over tied winners). ``mask`` (bool ``(B, k)``) marks real candidates when groups
    have fewer than k. The target's entropy is subtracted so a perfect prediction costs 0; for k = 2
    this equals :func:`bradley_terry_loss` without margin. Gradient: ``(softmax(s / tau) - t) / tau``.
    """
    logits = scores / temperature
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
        target = target.masked_fill(~mask, 0.0)
    logp = torch.log_softmax(logits, dim=-1)
    ce = -(target * torch.where(target > 0, logp, torch.zeros_like(logp))).sum(-1)
    loss = ce + _neg_entropy_rows(target)
    return _reduce(loss, weight, reduction)


def rating_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Squared error ``(pred - target)^2`` (the LAION aesthetic head's MSE on mean ratings)."""
    return _reduce((pred - target.to(pred.dtype)) ** 2, weight, reduction)


def _neg_entropy(t: torch.Tensor) -> torch.Tensor:
    """``t log t + (1 - t) log(1 - t)`` with ``0 log 0 = 0``."""
    return torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t)


def _neg_entropy_rows(t: torch.Tensor) -> torch.Tensor:
    return torch.xlogy(t, t).sum(-1)
