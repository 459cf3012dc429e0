"""BM25 candidate retrieval with ``bm25s``: :class:`BM25Retriever` / :func:`bm25_run` index a corpus
``Dataset`` (``id``, ``text``) with bm25s' own tokenizer, streaming the texts from Arrow in batches, and
retrieve a run ``{query id: {passage id: score}}``."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import bm25s
import datasets
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]


# ----------------------------------------------------------------------------- validation
def _string_column(data: datasets.Dataset, column: str, what: str) -> pa.ChunkedArray:
    """``data[column]`` as Arrow (no copy without an indices mapping), checked: present, string
    typed, no nulls."""
    if column not in data.column_names:
        raise ValueError(f"{what}: missing column {column!r} (columns: {data.column_names})")
    values = data.select_columns([column]).with_format("arrow")[:][column]
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise ValueError(f"{what}: column {column!r} has type {values.type}, expected string")
    if values.null_count:
        row = pc.index(pc.is_null(values), True).as_py()
        raise ValueError(f"{what}: row {row + 1} (1-based): field {column!r} is null")
    return values


def _check_unique(ids: pa.Array, what: str) -> None:
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        duplicate = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        first, second = pc.indices_nonzero(pc.equal(ids, duplicate))[:2].to_pylist()
        raise ValueError(f"{what}: row {second + 1} (1-based): field 'id' {duplicate!r} repeats row {first + 1}")


def _texts(data: datasets.Dataset, batch_size: int) -> Iterator[str]:
    """Stream the ``text`` column from Arrow, ``batch_size`` rows at a time."""
    for batch in data.select_columns(["text"]).iter(batch_size=batch_size):
        yield from batch["text"]


# ----------------------------------------------------------------------------- BM25
class BM25Retriever:
    """A bm25s index over a corpus ``Dataset``; :meth:`run` retrieves for any queries ``Dataset``."""

    def __init__(self, retriever: bm25s.BM25, tokenizer: bm25s.tokenization.Tokenizer, passage_ids: pa.Array):
        """Use :meth:`index`. ``passage_ids[i]`` is the id of bm25s document ``i``."""
        self.retriever, self.tokenizer, self.passage_ids = retriever, tokenizer, passage_ids

    @classmethod
    def index(
        cls,
        corpus: datasets.Dataset,
        *,
        k1: float = 0.9,
        b: float = 0.4,
        method: str = "lucene",
        stopwords: str | Sequence[str] | None = "en",
        stemmer: Callable[[str], str] | None = None,
        batch_size: int = 10_000,
    ) -> BM25Retriever:
        """Tokenize ``corpus["text"]`` (streamed) with bm25s' tokenizer and build the index.

        ``k1=0.9, b=0.4`` are Anserini's defaults; ``stemmer`` is any ``str -> str`` callable
        (e.g. ``Stemmer.Stemmer("english").stemWord`` from PyStemmer), none by default.
        """
        passage_ids = _string_column(corpus, "id", "corpus").combine_chunks()
        _string_column(corpus, "text", "corpus")
        if len(passage_ids) == 0:
            raise ValueError("corpus: no passages")
        _check_unique(passage_ids, "corpus")
        tokenizer = bm25s.tokenization.Tokenizer(stopwords=stopwords or None, stemmer=stemmer)
        token_ids = tokenizer.tokenize(
            _texts(corpus, batch_size), length=len(corpus), update_vocab=True, return_as="ids", show_progress=False
        )
        retriever = bm25s.BM25(k1=k1, b=b, method=method)
        retriever.index(tokenizer.to_tokenized_tuple(token_ids), show_progress=False)
        log.info("BM25 index: %d passages, vocabulary of %d terms", len(passage_ids), len(tokenizer.word_to_id))
        return cls(retriever, tokenizer, passage_ids)

    @property
    def num_passages(self) -> int:
        return len(self.passage_ids)

    def run(self, queries: datasets.Dataset, *, k: int = 100, batch_size: int = 1024, n_threads: int = 0) -> Run:
        """Top-``k`` passages per query (``k`` clipped to the corpus size).

        Passages with score 0 (no query term in common) are left out, so a query can get fewer
        than ``k`` candidates (none when none of its terms is in the corpus vocabulary).
        """
        if k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        query_ids = _string_column(queries, "id", "queries").combine_chunks()
        _string_column(queries, "text", "queries")
        _check_unique(query_ids, "queries")
        k = min(k, self.num_passages)
        run: Run = {}
        start = 0
        for batch in queries.select_columns(["text"]).iter(batch_size=batch_size):
            tokens = self.tokenizer.tokenize(batch["text"], update_vocab=False, return_as="ids", show_progress=False)
            documents, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=n_threads)
            for row, (doc_rows, doc_scores) in enumerate(zip(documents, scores)):
                keep = doc_scores > 0
                pids = self.passage_ids.take(pa.array(doc_rows[keep])).to_pylist()
                run[query_ids[start + row].as_py()] = dict(zip(pids, doc_scores[keep].astype(float).tolist()))
            start += len(batch["text"])
        return run


def bm25_run(
    corpus: datasets.Dataset,
    queries: datasets.Dataset,
    *,
    k: int = 100,
    k1: float = 0.9,
    b: float = 0.4,
    stopwords: str | Sequence[str] | None = "en",
    stemmer: Callable[[str], str] | None = None,
    batch_size: int = 10_000,
) -> Run:
    """BM25 run ``{query id: {passage id: score}}`` of ``queries`` over ``corpus`` (see
    :meth:`BM25Retriever.index` and :meth:`BM25Retriever.run`)."""
    retriever = BM25Retriever.index(corpus, k1=k1, b=b, stopwords=stopwords, stemmer=stemmer, batch_size=batch_size)
    return retriever.run(queries, k=k, batch_size=min(batch_size, 4096))
