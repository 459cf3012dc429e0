"""Multi-margin MSE (M3SE) distillation of Menon et al. 2022."""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import mean_over_queries, prepare


def m3se(
    student: Tensor,
    teacher: Tensor | None,
    labels: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """M3SE: margin-MSE against the teacher's hardest negative plus a hinge on the rest.

    Per query, with P the valid positives, N the valid negatives, j* = argmax_{j∈N} t_j
    (the teacher's — not the student's — hardest valid negative) and [x]₊ = max(x, 0):

        ℓ(t, s) = Σ_{i∈P} ((t_i − t_{j*}) − (s_i − s_{j*}))² + Σ_{j∈N} [s_j − s_{j*}]₊²

    Both terms are SUMS inside a query, exactly as in the paper's formula (no division by
    |P| or |N|); the result is averaged over queries with at least one valid positive and
    one valid negative. The second term pushes every student negative below the student's
    score of j* (a cheap stand-in for matching all negative margins). Teacher ties for j*
    go to the first candidate. Source: Menon et al., ICML 2022, "In defense of
    dual-encoders for neural ranking" (M3SE loss).
    """
    batch = prepare("m3se", student, teacher, labels, mask, needs_teacher=True)
    s, t = batch.student, batch.teacher
    hardest = t.masked_fill(~batch.negative, float("-inf")).argmax(dim=-1, keepdim=True)  # j*, [B, 1]
    s_star = s.gather(-1, hardest)
    t_star = t.gather(-1, hardest)
    margin_error = ((t - t_star) - (s - s_star)) ** 2
    hinge = torch.relu(s - s_star) ** 2
    zero = s.new_zeros(())
    per_query = margin_error.where(batch.positive, zero).sum(dim=-1) + hinge.where(batch.negative, zero).sum(dim=-1)
    keep = batch.positive.any(dim=-1) & batch.negative.any(dim=-1)
    return mean_over_queries(per_query, keep)
