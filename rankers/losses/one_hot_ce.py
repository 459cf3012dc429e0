"""Listwise softmax cross-entropy against the relevance labels (label training)."""
from __future__ import annotations

from torch import Tensor

from ._common import check_positive, masked_log_softmax, mean_over_queries, prepare


def one_hot_ce(
    student: Tensor,
    teacher: Tensor | None = None,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Softmax cross-entropy with a target uniform over the judged positives.

    Per query, with P the valid positives and the softmax taken over valid entries only:

        ℓ(s, y) = −Σ_{i∈P} (1/|P|) · log softmax(s/τ)_i

    With one positive this is the usual "one positive vs. the rest" softmax CE (e.g. DPR,
    Karpukhin et al. 2020; listwise softmax ranking loss, Cao et al. 2007 "ListNet").
    The mean is taken over queries with at least one valid positive; queries without a
    valid negative contribute their (possibly non-zero, when |P| > 1) value as well.
    ``teacher`` is ignored. Padding (``mask`` False) never enters the softmax, so in-batch
    negatives can be appended as extra columns of a large ``N``.
    """
    if labels is None:
        raise ValueError("one_hot_ce: `labels` are required, got None")
    check_positive("one_hot_ce", "temperature", temperature)
    batch = prepare("one_hot_ce", student, None, labels, mask, needs_teacher=False)
    log_probs = masked_log_softmax(batch.student / temperature, batch.valid)
    n_pos = batch.positive.sum(dim=-1)
    pos_log_probs = log_probs.where(batch.positive, log_probs.new_zeros(()))
    per_query = -pos_log_probs.sum(dim=-1) / n_pos.clamp(min=1)
    return mean_over_queries(per_query, n_pos > 0)
