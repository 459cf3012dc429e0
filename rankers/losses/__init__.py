"""Ranking and distillation losses for the CA teacher and DE student.

Every loss has the signature::

    fn(student [B, N], teacher [B, N] | None, labels [B, N] bool, mask [B, N] bool | None = None,
       **hyperparameters) -> scalar float32 Tensor

where ``mask`` False marks padding.  Inputs may be float32 or bf16 (computed in float32);
the teacher is detached inside, so gradients reach ``student`` only.  Each returns the
mean over the queries the loss is defined on, and a zero that still carries the student's
graph when there are none.

``one_hot_ce`` is the label-training loss; the distillation losses are registered by
name in :data:`DISTILLATION_LOSSES` (see :func:`get_distillation_loss`). Models take them as
weighted lists of loss objects over these kernels (:mod:`rankers.losses.terms`: ``LabelLoss``,
``DistillationLoss``).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from torch import Tensor

from .m3se import m3se
from .margin_mse import margin_mse
from .one_hot_ce import one_hot_ce
from .pointwise_mse import pointwise_mse
from .rankdistil import rankdistil_pairwise
from .in_batch_kl import in_batch_softmax_kl
from .softmax_kl import softmax_ce, softmax_kl
from .terms import DistillationLoss, InBatchDistillationLoss, LabelLoss, LossInputs, LossTerm, losses_from

DistillationKernel = Callable[..., Tensor]

#: Distillation losses by config name.
DISTILLATION_LOSSES: dict[str, DistillationKernel] = {
    "mse": pointwise_mse,
    "margin_mse": margin_mse,
    "kl": softmax_kl,
    "softmax_ce": softmax_ce,
    "rankdistil": rankdistil_pairwise,
    "m3se": m3se,
}

_COMMON_ARGS = ("student", "teacher", "labels", "mask")


def get_distillation_loss(name: str, **hyperparameters: Any) -> DistillationKernel:
    """Return the distillation loss registered as ``name``.

    Optional ``hyperparameters`` (e.g. ``temperature=2.0`` for "kl", ``top_k=10`` for
    "rankdistil") are bound with :func:`functools.partial` after checking that the loss
    accepts them. Raises ``ValueError`` listing the valid names / hyperparameters.
    """
    try:
        loss = DISTILLATION_LOSSES[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(DISTILLATION_LOSSES))
        raise ValueError(f"unknown distillation loss {name!r}; valid names: {valid} (and, as a model's "
                         "distillation_loss, kl_in_batch: InBatchDistillationLoss)") from None
    if not hyperparameters:
        return loss
    accepted = [p for p in inspect.signature(loss).parameters if p not in _COMMON_ARGS]
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ValueError(
            f"distillation loss {name!r} got unknown hyperparameter(s) {unknown}; "
            f"it accepts: {', '.join(accepted) or 'none'}"
        )
    return functools.partial(loss, **hyperparameters)


__all__ = [
    "DISTILLATION_LOSSES",
    "DistillationKernel",
    "DistillationLoss",
    "InBatchDistillationLoss",
    "LabelLoss",
    "LossInputs",
    "LossTerm",
    "losses_from",
    "get_distillation_loss",
    "in_batch_softmax_kl",
    "m3se",
    "margin_mse",
    "one_hot_ce",
    "pointwise_mse",
    "rankdistil_pairwise",
    "softmax_ce",
    "softmax_kl",
]
