"""Listwise softmax distillation: KL divergence and cross-entropy to the teacher's softmax."""
from __future__ import annotations

from torch import Tensor

from ._common import RankingBatch, check_positive, masked_log_softmax, mean_over_queries, prepare


def softmax_kl(
    student: Tensor,
    teacher: Tensor | None,
    labels: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """KL divergence from the teacher's to the student's softmax over the candidates.

    Per query, with p = softmax(t/T) and q = softmax(s/T) over the valid entries V:

        ℓ(t, s) = T² · KL(p ‖ q) = T² · Σ_{i∈V} p_i · (log p_i − log q_i)

    averaged over queries with at least two valid entries (one candidate carries no
    signal). Labels are not used. Source: Hinton et al. 2015, "Distilling the Knowledge
    in a Neural Network" (the T² keeps gradient magnitudes comparable across T); used for
    rankers e.g. in RocketQAv2 (Ren et al. 2021) and as softmax cross-entropy
    distillation by Menon et al. 2022.
    """
    check_positive("softmax_kl", "temperature", temperature)
    batch = prepare("softmax_kl", student, teacher, labels, mask, needs_teacher=True)
    teacher_log_probs, student_log_probs = _log_probs(batch, temperature)
    terms = teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)
    return _reduce(batch, terms, temperature)


def softmax_ce(
    student: Tensor,
    teacher: Tensor | None,
    labels: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Cross-entropy from the teacher's softmax to the student's softmax.

    Per query, with p = softmax(t/T) and q = softmax(s/T) over the valid entries V:

        ℓ(t, s) = −T² · Σ_{i∈V} p_i · log q_i = softmax_kl + T² · H(p)

    i.e. it differs from :func:`softmax_kl` by the (student-independent) teacher entropy
    H(p), so both have the same gradient. Same query filter and sources as
    :func:`softmax_kl`.
    """
    check_positive("softmax_ce", "temperature", temperature)
    batch = prepare("softmax_ce", student, teacher, labels, mask, needs_teacher=True)
    teacher_log_probs, student_log_probs = _log_probs(batch, temperature)
    terms = -teacher_log_probs.exp() * student_log_probs
    return _reduce(batch, terms, temperature)


def _log_probs(batch: RankingBatch, temperature: float) -> tuple[Tensor, Tensor]:
    teacher_log_probs = masked_log_softmax(batch.teacher / temperature, batch.valid)
    student_log_probs = masked_log_softmax(batch.student / temperature, batch.valid)
    return teacher_log_probs, student_log_probs


def _reduce(batch: RankingBatch, terms: Tensor, temperature: float) -> Tensor:
    per_query = terms.where(batch.valid, terms.new_zeros(())).sum(dim=-1) * temperature**2
    return mean_over_queries(per_query, batch.valid.sum(dim=-1) >= 2)
