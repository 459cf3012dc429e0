"""Pointwise score regression onto the teacher."""
from __future__ import annotations

from torch import Tensor

from ._common import mean_over_queries, prepare


def pointwise_mse(
    student: Tensor,
    teacher: Tensor | None,
    labels: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean squared error between student and teacher scores.

    Per query, with V the valid entries:

        ℓ(t, s) = (1/|V|) · Σ_{i∈V} (s_i − t_i)²

    averaged over queries with at least one valid entry (equal to the mean over all valid
    entries when every query has the same number of them). Labels are not used: this is
    plain score regression / logit matching (Ba & Caruana 2014, "Do deep nets really need
    to be deep?"; used for rankers e.g. by Hofstätter et al. 2020 as a baseline).
    """
    batch = prepare("pointwise_mse", student, teacher, labels, mask, needs_teacher=True)
    squared = (batch.student - batch.teacher) ** 2  # padding is 0 − 0
    n_valid = batch.valid.sum(dim=-1)
    per_query = squared.sum(dim=-1) / n_valid.clamp(min=1)
    return mean_over_queries(per_query, n_valid > 0)
