"""Margin-MSE distillation (Hofstätter et al. 2020)."""
from __future__ import annotations

from torch import Tensor

from ._common import mean_over_queries, prepare


def margin_mse(
    student: Tensor,
    teacher: Tensor | None,
    labels: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Margin-MSE: match the teacher's positive−negative score margins.

    Per query, with P the valid positives and N the valid negatives:

        ℓ(t, s) = (1/(|P|·|N|)) · Σ_{i∈P} Σ_{j∈N} ((s_i − s_j) − (t_i − t_j))²

    averaged over queries with at least one valid positive and one valid negative.
    Source: Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with
    Cross-Architecture Knowledge Distillation" (arXiv:2010.02666); their training triples
    are the |P| = |N| = 1 case. Memory is O(B·N²) for the pair grid.
    """
    batch = prepare("margin_mse", student, teacher, labels, mask, needs_teacher=True)
    # (s_i − s_j) − (t_i − t_j) = d_i − d_j with d = s − t.
    gap = batch.student - batch.teacher
    pair_error = (gap.unsqueeze(-1) - gap.unsqueeze(-2)) ** 2  # [B, N(i), N(j)]
    pairs = batch.positive.unsqueeze(-1) & batch.negative.unsqueeze(-2)
    n_pairs = pairs.sum(dim=(-2, -1))
    per_query = pair_error.where(pairs, pair_error.new_zeros(())).sum(dim=(-2, -1)) / n_pairs.clamp(min=1)
    return mean_over_queries(per_query, n_pairs > 0)
