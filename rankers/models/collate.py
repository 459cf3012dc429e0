"""Batch collation: turn the DataModule's raw examples into tokenized tensors for one model type.

The DataModule is shared by the cross-attention (CA) teacher and the dual-encoder (DE) student, so it
yields raw text; each model hands the DataModule a collator (picklable, so it runs inside dataloader
workers) that tokenizes the way that model needs:

* CA: ``[CLS] query [SEP] passage [SEP]`` pairs, one row per (query, candidate);
* DE: a batch of queries and a batch of passages, tokenized separately (optionally also teacher
  pairs, when the DE scores batches with an online CA teacher).

Two example kinds flow into a collator (the DataModule's datasets yield them as dicts):

* listwise training examples ``{"query_id", "query", "passage_ids", "passages", "labels",
  "teacher_scores"?, "positive_ids"}`` -- a query with its positive and hard negatives;
* pair examples ``{"pair_index", "query_id", "query", "passage_id", "passage"}`` -- one
  (query, candidate) pair for re-ranking evaluation and teacher-score prediction.
and come out as the typed batches of :mod:`rankers.models.batches` (:class:`ListwiseBatch`,
:class:`PairBatch`). Padding is dynamic (to the longest sequence in the batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rankers.models.batches import ListwiseBatch, PairBatch


def _pad_lists(examples: list[dict[str, Any]]) -> tuple[int, torch.Tensor]:
    width = max(len(ex["passage_ids"]) for ex in examples)
    mask = torch.zeros(len(examples), width, dtype=torch.bool)
    for i, ex in enumerate(examples):
        mask[i, : len(ex["passage_ids"])] = True
    return width, mask


def collate_listwise(examples: list[dict[str, Any]]) -> ListwiseBatch:
    """Untokenized part of a listwise batch: ids, flat padded passage texts, labels, mask, teacher scores."""
    width, mask = _pad_lists(examples)
    labels = torch.zeros(len(examples), width)
    teacher = None
    if examples[0].get("teacher_scores") is not None:
        teacher = torch.zeros(len(examples), width)
    passages: list[str] = []
    passage_ids: list[list[str]] = []
    for i, ex in enumerate(examples):
        n = len(ex["passage_ids"])
        labels[i, :n] = torch.as_tensor(ex["labels"], dtype=torch.float32)
        if teacher is not None:
            teacher[i, :n] = torch.as_tensor(ex["teacher_scores"], dtype=torch.float32)
        passages.extend(list(ex["passages"]) + [""] * (width - n))
        passage_ids.append(list(ex["passage_ids"]))
    # in_batch_labels[i, j]: flat passage j (any query's candidate) is a judged positive of query i.
    flat_ids = [pid for ids in passage_ids for pid in ids + [None] * (width - len(ids))]
    in_batch_labels = torch.tensor(
        [[pid is not None and pid in positives for pid in flat_ids]
         for positives in (set(ex["positive_ids"]) for ex in examples)],
        dtype=torch.bool,
    )
    return ListwiseBatch(
        query_ids=[ex["query_id"] for ex in examples],
        queries=[ex["query"] for ex in examples],
        passage_ids=passage_ids,
        passages=passages,
        labels=labels,
        mask=mask,
        in_batch_labels=in_batch_labels,
        teacher_scores=teacher,
    )


def collate_pairs(examples: list[dict[str, Any]]) -> PairBatch:
    """Untokenized part of a pair batch (re-rank evaluation / teacher-score prediction)."""
    return PairBatch(
        pair_index=torch.as_tensor([ex["pair_index"] for ex in examples], dtype=torch.long),
        query_ids=[ex["query_id"] for ex in examples],
        passage_ids=[ex["passage_id"] for ex in examples],
        queries=[ex["query"] for ex in examples],
        passages=[ex["passage"] for ex in examples],
    )


def is_listwise(examples: list[dict[str, Any]]) -> bool:
    return "passages" in examples[0]


@dataclass
class PairCollator:
    """Cross-attention collator: every (query, passage) becomes one ``[CLS] q [SEP] p [SEP]`` row."""

    tokenizer: Any
    max_length: int = 256

    def tokenize(self, queries: list[str], passages: list[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(queries, passages, padding=True, truncation="longest_first",
                           max_length=self.max_length, return_tensors="pt")
        )

    def __call__(self, examples: list[dict[str, Any]]) -> ListwiseBatch | PairBatch:
        if is_listwise(examples):
            batch = collate_listwise(examples)
            batch.pair_inputs = self.tokenize(batch.repeated_queries(), batch.passages)
            return batch
        pairs = collate_pairs(examples)
        pairs.pair_inputs = self.tokenize(pairs.queries, pairs.passages)
        return pairs


@dataclass
class DualCollator:
    """Dual-encoder collator: queries and passages tokenized separately (plus teacher pairs if asked)."""

    query_tokenizer: Any
    passage_tokenizer: Any
    query_max_length: int = 32
    passage_max_length: int = 180
    teacher: PairCollator | None = None

    def _tok(self, tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

    def __call__(self, examples: list[dict[str, Any]]) -> ListwiseBatch | PairBatch:
        batch = collate_listwise(examples) if is_listwise(examples) else collate_pairs(examples)
        batch.query_inputs = self._tok(self.query_tokenizer, batch.queries, self.query_max_length)
        batch.passage_inputs = self._tok(self.passage_tokenizer, batch.passages, self.passage_max_length)
        if self.teacher is not None and isinstance(batch, ListwiseBatch):
            batch.teacher_inputs = self.teacher.tokenize(batch.repeated_queries(), batch.passages)
        return batch
