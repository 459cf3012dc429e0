"""Loss terms: the functional kernels of :mod:`rankers.losses` as small configurable objects.

A model takes a weighted list of terms and adds them up::

    L = Σ_i weight_i · term_i(batch)

so "DE on labels" is ``[LabelLoss()]``, the paper's M3SE student ``[DistillationLoss("m3se")]`` and label
mixing ``[LabelLoss(weight=0.5), DistillationLoss("kl", temperature=2.0)]``. In a config::

    model:
      class_path: rankers.DualEncoderRanker
      init_args:
        losses:
          - class_path: rankers.losses.LabelLoss
            init_args: {weight: 0.5}
          - class_path: rankers.losses.DistillationLoss
            init_args: {name: kl, temperature: 2.0}

A term reads what it needs from :class:`LossInputs` (the student's scores of each query's own
candidates, labels, mask; the in-batch label loss and the teacher's scores are computed only when a
term asks for them), and says which queries it averages over (``counts``: ``"label"`` -- every query;
``"distill"`` -- queries with a positive and a negative among their own candidates), which the model
needs to weight it under DDP (:func:`rankers.distributed.rank_weights`).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Literal, NamedTuple

import torch
from torch import Tensor

from .in_batch_kl import in_batch_softmax_kl
from .one_hot_ce import one_hot_ce

__all__ = ["InBatchScores", "LossInputs", "LossTerm", "LabelLoss", "DistillationLoss", "InBatchDistillationLoss",
           "losses_from"]

#: The flat-argument name (``distillation_loss``, ``reproduce --losses``) of :class:`InBatchDistillationLoss`.
IN_BATCH_KL = "kl_in_batch"


class InBatchScores(NamedTuple):
    """Each query against every passage of the batch (or of the global batch under DDP).

    ``scores`` ``[B, M]``; ``valid`` ``[B, M]`` bool: a real passage that is not a second copy of one of the
    query's own candidates (the same passage id in another query's list); ``own`` ``[B, N]`` int64: the column
    of each of the query's own candidates (aligned with ``LossInputs.student``).
    """

    scores: Tensor
    valid: Tensor
    own: Tensor


class LossInputs:
    """What a batch offers the loss terms.

    Args:
        student: ``[B, N]`` student scores of each query's own candidates.
        labels / mask: ``[B, N]`` bool, judged positive / real (not padding) candidate.
        in_batch_label_loss: computes the one-hot CE over the in-batch passages (every query against
            every candidate of the batch, or of the global batch under DDP).
        teacher: computes the ``[B, N]`` teacher scores aligned with ``student``.
        in_batch_scores: computes the :class:`InBatchScores` (for in-batch distillation); None where the model
            has no in-batch passages (a cross-encoder).
    """

    def __init__(self, student: Tensor, labels: Tensor, mask: Tensor, in_batch_label_loss: Callable[[], Tensor],
                 teacher: Callable[[], Tensor], in_batch_scores: Callable[[], InBatchScores] | None = None) -> None:
        self.student, self.labels, self.mask = student, labels, mask
        self._in_batch, self._teacher, self._in_batch_scores = in_batch_label_loss, teacher, in_batch_scores
        self._cache: dict[str, Any] = {}

    def in_batch_scores(self) -> InBatchScores:
        if self._in_batch_scores is None:
            raise ValueError("this model has no in-batch passages: in-batch distillation (kl_in_batch) needs a "
                             "dual encoder")
        if "in_batch_scores" not in self._cache:
            self._cache["in_batch_scores"] = self._in_batch_scores()
        return self._cache["in_batch_scores"]

    def in_batch_label_loss(self) -> Tensor:
        if "in_batch" not in self._cache:
            self._cache["in_batch"] = self._in_batch()
        return self._cache["in_batch"]

    def teacher(self) -> Tensor:
        if "teacher" not in self._cache:
            self._cache["teacher"] = self._teacher().to(self.student.device)
        return self._cache["teacher"]


class LossTerm:
    """One weighted term of a model's loss; subclasses implement :meth:`forward`.

    Args:
        weight: the term's factor in the sum.
    """

    #: which queries the term averages over: "label" (every query) or "distill" (queries with a positive and a
    #: negative among their own candidates); the model weights each kind under DDP.
    counts: Literal["label", "distill"] = "label"
    #: the key under which the model logs the term's value.
    log_name: str = "loss"
    #: the term needs teacher scores.
    needs_teacher: bool = False

    def __init__(self, weight: float = 1.0) -> None:
        if not weight > 0:
            raise ValueError(f"{type(self).__name__}: weight must be > 0, got {weight}")
        self.weight = float(weight)

    def forward(self, inputs: LossInputs) -> Tensor:
        raise NotImplementedError

    def __call__(self, inputs: LossInputs) -> Tensor:
        return self.forward(inputs)

    def __repr__(self) -> str:
        params = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return f"{type(self).__name__}({', '.join(f'{p}={getattr(self, p)!r}' for p in params)})"


class LabelLoss(LossTerm):
    """Listwise one-hot cross-entropy on the judged labels (:func:`rankers.losses.one_hot_ce`): the "DE on
    labels" of Menon et al. (2022).

    Args:
        weight: the term's factor.
        in_batch: score each query against every passage of the batch (in-batch negatives; a judged positive
            of the query is a positive wherever it appears) instead of its own candidates only.
    """

    counts = "label"
    log_name = "label_loss"

    def __init__(self, weight: float = 1.0, in_batch: bool = True) -> None:
        super().__init__(weight)
        self.in_batch = in_batch

    def forward(self, inputs: LossInputs) -> Tensor:
        if self.in_batch:
            return inputs.in_batch_label_loss()
        return one_hot_ce(inputs.student, None, inputs.labels, inputs.mask)


class DistillationLoss(LossTerm):
    """A distillation kernel of :data:`rankers.losses.DISTILLATION_LOSSES` against the teacher's scores of
    each query's own candidates (its formula and source are in the kernel's docstring).

    Args:
        name: ``m3se`` (the paper's), ``margin_mse``, ``kl``, ``softmax_ce``, ``mse`` or ``rankdistil``.
        weight: the term's factor.
        temperature: temperature T of the softmax kernels (``kl``, ``softmax_ce``): both score lists divided
            by T, the loss times T² (Hinton et al., 2015); ignored by the others.
    """

    counts = "distill"
    log_name = "distill_loss"
    needs_teacher = True

    def __init__(self, name: str = "kl", weight: float = 1.0, temperature: float = 1.0) -> None:
        from . import get_distillation_loss

        super().__init__(weight)
        self.name, self.temperature = name, float(temperature)
        kernel = get_distillation_loss(name)  # unknown names fail here, listing the valid ones
        self._kwargs: dict[str, Any] = {}
        if "temperature" in inspect.signature(kernel).parameters:
            self._kwargs["temperature"] = self.temperature
        self._kernel = kernel

    def forward(self, inputs: LossInputs) -> Tensor:
        return self._kernel(inputs.student, inputs.teacher(), inputs.labels, inputs.mask, **self._kwargs)


class InBatchDistillationLoss(LossTerm):
    """Softmax distillation over every passage of the batch (:func:`rankers.losses.in_batch_softmax_kl`): the
    student's softmax runs over the in-batch passages, as the in-batch label loss's does, and its target is the
    teacher's softmax over the query's own candidates (zero mass on the other queries' passages) instead of
    the one-hot label. The student gets the in-batch negatives that keep its full-retrieval geometry without
    the labels' false negatives and slips. Flat name: ``distillation_loss: kl_in_batch``.

    Args:
        weight: the term's factor.
        temperature: both score lists divided by T, the loss times T² (Hinton et al., 2015).
    """

    counts = "distill"
    log_name = "distill_loss"
    needs_teacher = True

    def __init__(self, weight: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__(weight)
        self.temperature = float(temperature)

    def forward(self, inputs: LossInputs) -> Tensor:
        in_batch = inputs.in_batch_scores()
        teacher = inputs.teacher().to(in_batch.scores.dtype)
        own, mask = in_batch.own.to(in_batch.scores.device), inputs.mask.to(in_batch.scores.device)
        targets = torch.zeros_like(in_batch.scores).scatter(1, own, teacher.where(mask, teacher.new_zeros(())))
        support = torch.zeros_like(in_batch.valid).scatter(1, own, mask)
        return in_batch_softmax_kl(in_batch.scores, targets, support, in_batch.valid, temperature=self.temperature)


def losses_from(label_weight: float, distillation_loss: str | None, distillation_temperature: float = 1.0,
                in_batch_negatives: bool = True) -> list[LossTerm]:
    """The term list of the flat arguments (``label_weight``, ``distillation_loss``, ...) models also accept:
    a label term when ``label_weight > 0``, a distillation term when ``distillation_loss`` is set
    (``kl_in_batch``: :class:`InBatchDistillationLoss`; any other name: :class:`DistillationLoss`)."""
    terms: list[LossTerm] = []
    if label_weight > 0:
        terms.append(LabelLoss(weight=label_weight, in_batch=in_batch_negatives))
    if distillation_loss == IN_BATCH_KL:
        terms.append(InBatchDistillationLoss(temperature=distillation_temperature))
    elif distillation_loss:
        terms.append(DistillationLoss(distillation_loss, temperature=distillation_temperature))
    return terms
