"""Listwise softmax distillation over the in-batch passages: the teacher's mass on the query's own candidates."""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_positive, masked_log_softmax, mean_over_queries


def in_batch_softmax_kl(
    student: Tensor,
    teacher: Tensor,
    support: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """KL divergence from the teacher's softmax over a query's own candidates to the student's softmax over
    every passage of the batch.

    Inputs are ``[B, M]`` over the M in-batch passages: ``student`` scores, ``teacher`` scores (read only on
    ``support``), ``support`` -- the query's own valid candidates S (the ones its teacher scored), ``mask`` --
    the other valid passages; the student's softmax runs over V = mask ∪ S. Per query, with p = softmax(t/T) over S (p_j = 0
    for j ∉ S: the other queries' passages are taken as irrelevant, as the in-batch label loss does) and
    q = softmax(s/T) over V:

        ℓ(t, s) = T² · KL(p ‖ q) = T² · Σ_{i∈S} p_i · (log p_i − log q_i)

    averaged over queries with at least two entries in S. With V = S it is :func:`softmax_kl`; with p one-hot
    on the judged positive it is the in-batch label loss (:func:`one_hot_ce` over the batch). So it is the
    in-batch negatives of DPR (Karpukhin et al. 2020) with the teacher's soft targets in place of the labels,
    the combination TCT-ColBERT (Lin et al. 2021, "In-batch negatives for knowledge distillation with
    tightly-coupled teachers for dense retrieval") distils with, except that the teacher scores only each
    query's own candidates (a CA is too costly for all B·M pairs) and the rest get zero target mass.
    Source of the KL form: Hinton et al. 2015.
    """
    check_positive("in_batch_softmax_kl", "temperature", temperature)
    for name, value in (("teacher", teacher), ("support", support), ("mask", mask)):
        if not isinstance(value, Tensor) or value.shape != student.shape:
            raise ValueError(f"in_batch_softmax_kl: `{name}` must have the student's shape {tuple(student.shape)}")
    if support.dtype != torch.bool or mask.dtype != torch.bool:
        raise ValueError("in_batch_softmax_kl: `support` and `mask` must be bool")
    mask = mask | support
    student32 = student.float()
    teacher32 = teacher.detach().float().to(student.device)
    teacher_log_probs = masked_log_softmax(teacher32 / temperature, support)
    student_log_probs = masked_log_softmax(student32 / temperature, mask)
    terms = teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)
    per_query = terms.where(support, terms.new_zeros(())).sum(dim=-1) * temperature**2
    return mean_over_queries(per_query, support.sum(dim=-1) >= 2)
