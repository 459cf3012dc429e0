"""The in-memory view of a retrieval dataset: Arrow corpus and queries, qrels and candidate runs."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import datasets

__all__ = ["RetrievalData"]


def _id_index(dataset: datasets.Dataset) -> dict[str, int]:
    ids = dataset.with_format("arrow")["id"].to_pylist()
    return dict(zip(ids, range(len(ids))))


@dataclass
class RetrievalData:
    """A retrieval dataset.

    Attributes:
        corpus: passages, Arrow-backed ``Dataset`` with string columns ``id`` and ``text``.
        queries: queries of all splits, ``Dataset`` with string columns ``id`` and ``text``.
        qrels: split -> ``{query id: {passage id: grade}}``.
        candidates: split -> TREC run of candidate passages (may be empty).
        source: where the data came from (directory or hub name).
        layout: ``"beir"``, ``"msmarco"`` or ``"hf"``.
        source_fingerprint: hash of the source files (set by the loaders); see :meth:`fingerprint`.
    """

    corpus: datasets.Dataset
    queries: datasets.Dataset
    qrels: dict[str, dict[str, dict[str, int]]]
    candidates: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    source: str = ""
    layout: str = "beir"
    source_fingerprint: str | None = field(default=None, repr=False)
    _corpus_index: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)
    _query_index: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def splits(self) -> list[str]:
        """Split names, in qrels order."""
        return list(self.qrels)

    def _split_qrels(self, split: str) -> dict[str, dict[str, int]]:
        if split not in self.qrels:
            raise ValueError(f"unknown split {split!r} for {self.source or 'this dataset'}; available: {', '.join(self.qrels) or 'none'}")
        return self.qrels[split]

    def corpus_index(self) -> dict[str, int]:
        """Passage id -> row of :attr:`corpus` (built once, then cached)."""
        if self._corpus_index is None:
            self._corpus_index = _id_index(self.corpus)
        return self._corpus_index

    def query_index(self) -> dict[str, int]:
        """Query id -> row of :attr:`queries` (built once, then cached)."""
        if self._query_index is None:
            self._query_index = _id_index(self.queries)
        return self._query_index

    def split_queries(self, split: str) -> datasets.Dataset:
        """Queries judged in ``split``'s qrels, in the order of the qrels file."""
        index = self.query_index()
        return self.queries.select([index[qid] for qid in self._split_qrels(split)])

    def queries_without_positive(self, split: str) -> list[str]:
        """Ids of ``split``'s queries whose grades are all <= 0 (evaluation skips them)."""
        return [qid for qid, judged in self._split_qrels(split).items() if max(judged.values()) <= 0]

    def query_text(self, qid: str) -> str:
        """Text of query ``qid`` (``KeyError`` if unknown)."""
        return self.queries[self.query_index()[qid]]["text"]

    def passage_text(self, pid: str) -> str:
        """Text of passage ``pid`` (``KeyError`` if unknown)."""
        return self.corpus[self.corpus_index()[pid]]["text"]

    def fingerprint(self) -> str:
        """Stable hash identifying this data, for caches (indexes, embeddings, teacher scores).

        Loaders set it from the source files' paths, sizes and mtimes (or the hub
        datasets' fingerprints); for hand-built instances it hashes the contents.
        """
        if self.source_fingerprint is not None:
            return self.source_fingerprint
        digest = hashlib.sha256()
        digest.update(json.dumps([self.corpus._fingerprint, self.queries._fingerprint, self.layout]).encode())
        digest.update(json.dumps([self.qrels, self.candidates], sort_keys=True).encode())
        return digest.hexdigest()[:32]
