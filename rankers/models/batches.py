"""Typed batches: what a collator hands a model, as dataclasses instead of dicts of string keys.

Two kinds flow through the Lightning loops:

* :class:`ListwiseBatch` -- training (and the validation loss): ``B`` queries, each with its ``N``
  candidates (the positive and hard negatives), padded to the widest list;
* :class:`PairBatch` -- re-rank evaluation and teacher-score prediction: one row per (query, candidate).

Both carry the raw ids and texts (for error messages and the eval callbacks) and the tokenized inputs the
model needs: ``pair_inputs`` for a cross-attention (CA) model, ``query_inputs`` / ``passage_inputs`` for a
dual encoder (DE). Lightning moves the tensor fields (also inside the input dicts) to the device: its
``apply_to_collection`` rebuilds dataclasses field by field.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

Inputs = dict[str, torch.Tensor]


@dataclass
class ListwiseBatch:
    """``B`` queries with ``N`` candidates each (row ``i``'s candidates are flat rows ``i*N .. i*N+N-1``).

    Fields: ``labels`` ``[B, N]`` graded judgments (0 = not relevant); ``mask`` ``[B, N]`` (False = padding);
    ``in_batch_labels`` ``[B, B*N]`` -- flat passage ``j`` is a judged positive of query ``i``;
    ``teacher_scores`` ``[B, N]`` when the batch carries offline teacher scores. Under DDP the DE's collator
    adds ``passage_keys`` ``[B, N]``, ``positive_keys`` / ``positive_mask`` ``[B, P]`` (int64 id keys, for the
    label matrix against passages gathered from other ranks).
    """

    query_ids: list[str]
    queries: list[str]
    passage_ids: list[list[str]]
    passages: list[str]
    labels: torch.Tensor
    mask: torch.Tensor
    in_batch_labels: torch.Tensor
    teacher_scores: Optional[torch.Tensor] = None
    pair_inputs: Optional[Inputs] = None
    query_inputs: Optional[Inputs] = None
    passage_inputs: Optional[Inputs] = None
    teacher_inputs: Optional[Inputs] = None
    passage_keys: Optional[torch.Tensor] = None
    positive_keys: Optional[torch.Tensor] = None
    positive_mask: Optional[torch.Tensor] = None

    @property
    def size(self) -> int:
        """Number of queries ``B``."""
        return len(self.query_ids)

    @property
    def width(self) -> int:
        """Candidates per query ``N`` (padded)."""
        return int(self.mask.shape[1])

    def repeated_queries(self) -> list[str]:
        """Each query once per candidate slot, aligned with :attr:`passages` (for CA pair rows)."""
        return [q for q in self.queries for _ in range(self.width)]


@dataclass
class PairBatch:
    """One row per (query, candidate) pair; ``pair_index`` ``[n]`` says which pair of the eval set each row is."""

    pair_index: torch.Tensor
    query_ids: list[str]
    passage_ids: list[str]
    queries: list[str]
    passages: list[str]
    pair_inputs: Optional[Inputs] = None
    query_inputs: Optional[Inputs] = None
    passage_inputs: Optional[Inputs] = None

    @property
    def size(self) -> int:
        return len(self.query_ids)


__all__ = ["Inputs", "ListwiseBatch", "PairBatch"]
