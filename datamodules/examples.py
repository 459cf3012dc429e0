"""Map-style torch datasets over the Arrow corpus: listwise training examples and (query, passage) pairs.

Texts stay in the memory-mapped Arrow tables of :class:`datamodules.formats.RetrievalData`; these
datasets hold only ids / row numbers and fetch texts per item, so they pickle cheaply into dataloader
workers and DDP processes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TrainingQuery:
    """One training query: its judged positives and the pool its hard negatives are drawn from."""

    query_id: str
    positives: list[str]
    negatives: list[str]


@dataclass
class ListwiseTrainDataset(torch.utils.data.Dataset):
    """Item i = (query, 1 positive, ``num_negatives`` hard negatives, optional teacher scores).

    Which positive and which negatives are drawn depends only on ``(seed, epoch, query id)``, so an
    epoch's examples are the same whatever the worker/rank layout and on resume. ``epoch`` is set by
    the DataModule each time it builds the train dataloader. A query whose pool holds fewer than
    ``num_negatives`` passages gets all of them (the collator pads and masks).
    """

    queries: Any  # datasets.Dataset with id, text
    query_rows: dict[str, int]
    corpus: Any  # datasets.Dataset with id, text
    corpus_rows: dict[str, int]
    examples: list[TrainingQuery]
    num_negatives: int
    seed: int = 0
    teacher_scores: dict[str, dict[str, float]] | None = None
    epoch: int = field(default=0)

    def __len__(self) -> int:
        return len(self.examples)

    def draw(self, index: int) -> tuple[TrainingQuery, list[str]]:
        ex = self.examples[index]
        rng = random.Random(f"{self.seed}:{self.epoch}:{ex.query_id}")
        positive = ex.positives[rng.randrange(len(ex.positives))]
        k = min(self.num_negatives, len(ex.negatives))
        negatives = rng.sample(ex.negatives, k)
        return ex, [positive, *negatives]

    def item_lengths(self, query_lengths: np.ndarray, passage_lengths: np.ndarray) -> np.ndarray:
        """Per item of this epoch: the characters of its query plus the longest of its drawn passages (what
        pads a batch), from per-row text lengths (``query_lengths[query row]``, ``passage_lengths[corpus
        row]``); the draws are :meth:`draw`'s, so no text is read."""
        out = np.empty(len(self.examples), dtype=np.int64)
        for i in range(len(self.examples)):
            ex, passage_ids = self.draw(i)
            longest = max((int(passage_lengths[self.corpus_rows[p]]) for p in passage_ids), default=0)
            out[i] = int(query_lengths[self.query_rows[ex.query_id]]) + longest
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex, passage_ids = self.draw(index)
        rows = [self.corpus_rows[pid] for pid in passage_ids]
        passages = self.corpus[rows]["text"]
        item = {
            "query_id": ex.query_id,
            "query": self.queries[self.query_rows[ex.query_id]]["text"],
            "passage_ids": passage_ids,
            "passages": passages,
            "labels": [1.0] + [0.0] * (len(passage_ids) - 1),
            "positive_ids": ex.positives,
            "teacher_scores": None,
        }
        if self.teacher_scores is not None:
            scores = self.teacher_scores[ex.query_id]
            item["teacher_scores"] = [scores[pid] for pid in passage_ids]
        return item


class PairDataset(torch.utils.data.Dataset):
    """(query, candidate passage) pairs, addressed by ``pair_index`` so scores can be mapped back.

    Built from a run (query id -> candidate ids); stores two int arrays, not the strings.
    """

    def __init__(self, queries, query_rows: dict[str, int], corpus, corpus_rows: dict[str, int],
                 run: dict[str, list[str]] | dict[str, dict[str, float]]) -> None:
        self.queries, self.corpus = queries, corpus
        qrows, prows = [], []
        self.query_ids: list[str] = []
        for qid, candidates in run.items():
            q = query_rows[qid]
            for pid in candidates:
                qrows.append(q)
                prows.append(corpus_rows[pid])
            self.query_ids.append(qid)
        self.query_row = np.asarray(qrows, dtype=np.int64)
        self.passage_row = np.asarray(prows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.query_row)

    def ids(self, index: int) -> tuple[str, str]:
        return self.queries[int(self.query_row[index])]["id"], self.corpus[int(self.passage_row[index])]["id"]

    def to_run(self, pair_index: np.ndarray, scores: np.ndarray) -> dict[str, dict[str, float]]:
        """Turn scored pairs back into a run (query id -> {passage id: score})."""
        qids = self.queries.select_columns(["id"])[self.query_row[pair_index]]["id"] if len(pair_index) else []
        pids = self.corpus.select_columns(["id"])[self.passage_row[pair_index]]["id"] if len(pair_index) else []
        run: dict[str, dict[str, float]] = {}
        for qid, pid, score in zip(qids, pids, scores.tolist()):
            run.setdefault(qid, {})[pid] = float(score)
        return run

    def __getitem__(self, index: int) -> dict[str, Any]:
        q = self.queries[int(self.query_row[index])]
        p = self.corpus[int(self.passage_row[index])]
        return {"pair_index": index, "query_id": q["id"], "query": q["text"], "passage_id": p["id"], "passage": p["text"]}
