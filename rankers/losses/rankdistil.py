"""Pairwise teacher-order distillation in the style of RankDistil (Reddi et al. 2021)."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import softplus

from ._common import mean_over_queries, prepare


def rankdistil_pairwise(
    student: Tensor,
    teacher: Tensor | None,
    labels: Tensor,
    mask: Tensor | None = None,
    top_k: int | None = None,
) -> Tensor:
    """Pairwise logistic loss on the pairs the teacher orders, anchored at its top-k.

    Per query, with V the valid entries, K ⊆ V the teacher's top_k valid entries
    (K = V when ``top_k`` is None) and Π = {(i, j) : i ∈ K, j ∈ V, t_i > t_j}:

        ℓ(t, s) = (1/|Π|) · Σ_{(i,j)∈Π} log(1 + exp(−(s_i − s_j)))

    averaged over queries with at least one such pair. Labels are not used. Teacher ties
    are not pairs; ties at the top-k boundary are broken by candidate position.

    Source: Reddi et al., AISTATS 2021, "RankDistil: Knowledge Distillation for Ranking".
    Simplification: RankDistil combines (a) a loss preserving the teacher's order among
    its top-k items with (b) a separate penalty on large student scores of the items the
    teacher ranks low. Here both are folded into one uniformly weighted pairwise logistic
    (RankNet-style) loss: pairs inside the top-k give (a), pairs from a top-k item to a
    lower-ranked item give a relative version of (b); there is no separate absolute
    penalty, no sampling of bottom items and no per-pair weighting.
    """
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"rankdistil_pairwise: `top_k` must be None or an int >= 1, got {top_k!r}")
    batch = prepare("rankdistil_pairwise", student, teacher, labels, mask, needs_teacher=True)
    teacher_scores, valid = batch.teacher, batch.valid
    anchors = valid if top_k is None else valid & _teacher_top_k(teacher_scores, valid, top_k)
    ordered = teacher_scores.unsqueeze(-1) > teacher_scores.unsqueeze(-2)  # t_i > t_j
    pairs = ordered & anchors.unsqueeze(-1) & valid.unsqueeze(-2)
    pair_loss = softplus(-(batch.student.unsqueeze(-1) - batch.student.unsqueeze(-2)))
    n_pairs = pairs.sum(dim=(-2, -1))
    per_query = pair_loss.where(pairs, pair_loss.new_zeros(())).sum(dim=(-2, -1)) / n_pairs.clamp(min=1)
    return mean_over_queries(per_query, n_pairs > 0)


def _teacher_top_k(teacher: Tensor, valid: Tensor, top_k: int) -> Tensor:
    """Bool [B, N]: the entry is among the teacher's ``top_k`` valid entries of its row."""
    ranked = teacher.masked_fill(~valid, float("-inf"))
    order = torch.argsort(ranked, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return rank < top_k
