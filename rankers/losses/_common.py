"""Shared input checks and reductions for the ranking / distillation losses.

Every loss in :mod:`rankers.losses` takes scores shaped ``[B, N]`` (``B`` queries,
``N`` candidates per query).  The helpers here validate those inputs, cast them to
float32, detach the teacher and zero out padding so that padded entries (which may
hold ``-inf``/``nan``) can never leak into values or gradients.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

#: Finite stand-in for ``-inf`` when masking logits before a softmax: exp() of it
#: underflows to 0, but ``0 * fill`` and ``fill - fill`` stay finite (no NaN).
NEG_FILL: float = -1e9


class RankingBatch(NamedTuple):
    """Validated, float32 view of one batch of scores (padding set to 0)."""

    student: Tensor  # [B, N] float32, carries the student's graph
    teacher: Tensor | None  # [B, N] float32, detached
    positive: Tensor  # [B, N] bool, valid & judged positive
    negative: Tensor  # [B, N] bool, valid & not judged positive
    valid: Tensor  # [B, N] bool


def prepare(
    loss_name: str,
    student: Tensor,
    teacher: Tensor | None,
    labels: Tensor,
    mask: Tensor | None,
    *,
    needs_teacher: bool,
) -> RankingBatch:
    """Check shapes/dtypes and return a :class:`RankingBatch`.

    ``labels`` may be bool (True = positive) or an integer relevance grade (grade > 0 is
    positive, the TREC convention).  ``mask`` defaults to all-valid.  Raises ``ValueError``
    naming ``loss_name`` and the offending argument on any mismatch.
    """
    if not isinstance(student, Tensor) or student.dim() != 2:
        raise ValueError(f"{loss_name}: `student` must be a 2-D tensor [B, N], got {_describe(student)}")
    if not student.is_floating_point():
        raise ValueError(f"{loss_name}: `student` must be floating point, got dtype {student.dtype}")
    shape = student.shape
    if teacher is None:
        if needs_teacher:
            raise ValueError(f"{loss_name}: `teacher` scores are required for this distillation loss, got None")
    else:
        _check_same_shape(loss_name, "teacher", teacher, shape)
        if not teacher.is_floating_point():
            raise ValueError(f"{loss_name}: `teacher` must be floating point, got dtype {teacher.dtype}")
    _check_same_shape(loss_name, "labels", labels, shape)
    if labels.dtype == torch.bool:
        positive = labels
    elif not labels.is_floating_point() and not labels.is_complex():
        positive = labels > 0
    else:
        raise ValueError(f"{loss_name}: `labels` must be bool (True = positive) or integer grades, got {labels.dtype}")
    if mask is None:
        valid = torch.ones(shape, dtype=torch.bool, device=student.device)
    else:
        _check_same_shape(loss_name, "mask", mask, shape)
        if mask.dtype != torch.bool:
            raise ValueError(f"{loss_name}: `mask` must be bool (True = valid entry), got {mask.dtype}")
        valid = mask.to(student.device)
    positive = positive.to(student.device)

    zero = student.new_zeros((), dtype=torch.float32)
    student32 = torch.where(valid, student.float(), zero)
    teacher32 = None
    if teacher is not None:
        teacher32 = torch.where(valid, teacher.detach().float().to(student.device), zero)
    return RankingBatch(
        student=student32,
        teacher=teacher32,
        positive=positive & valid,
        negative=~positive & valid,
        valid=valid,
    )


def mean_over_queries(per_query: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``per_query[keep]``; a graph-connected 0 when no query is kept.

    Avoids data-dependent Python branching (no host sync on GPU).  ``per_query`` must be
    finite everywhere (callers clamp their denominators).
    """
    kept = torch.where(keep, per_query, torch.zeros_like(per_query))
    return kept.sum() / keep.sum().clamp(min=1).to(per_query.dtype)


def masked_log_softmax(logits: Tensor, valid: Tensor) -> Tensor:
    """Row-wise log-softmax over valid entries; invalid entries get a finite large negative value."""
    return torch.log_softmax(logits.masked_fill(~valid, NEG_FILL), dim=-1)


def check_positive(loss_name: str, name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0."""
    if not (isinstance(value, (int, float)) and value > 0 and value != float("inf")):
        raise ValueError(f"{loss_name}: `{name}` must be a finite number > 0, got {value!r}")


def _check_same_shape(loss_name: str, name: str, value: object, shape: torch.Size) -> None:
    if not isinstance(value, Tensor) or value.shape != shape:
        raise ValueError(f"{loss_name}: `{name}` must have the student's shape {tuple(shape)}, got {_describe(value)}")


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__
