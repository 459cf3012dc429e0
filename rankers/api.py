"""A small Python API over the ``export`` / ``index`` / ``search`` / ``rerank`` commands.

::

    from rankers.api import load_ranker, build_index, load_index, search, rerank

    student = load_ranker("runs/de_distill/checkpoints/best.ckpt")   # or an exported directory
    index = build_index(student, "../shared/data/scifact", "indexes/scifact")
    run = search(student, index, {"q1": "what causes scurvy?"}, k=100)
    teacher = load_ranker("runs/ca_teacher/checkpoints/best.ckpt")
    reranked = rerank(teacher, run, corpus="../shared/data/scifact", queries={"q1": "what causes scurvy?"})

Every function is a thin wrapper over :mod:`rankers.commands.serve` / :mod:`rankers.export` (the same code the
commands run). Runs are ``{query id: {passage id: score}}``.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import torch

from rankers.commands import serve
from rankers.retrieval.search import DenseIndex

__all__ = ["Ranker", "load_ranker", "build_index", "load_index", "search", "rerank"]


class Ranker:
    """A loaded ranker: a DualEncoderRanker (``encode_*`` and ``score``) or a CrossAttentionRanker (``score``).

    Attributes:
        module: the rankers LightningModule (eval mode).
        source: the checkpoint / export it was loaded from (None for a module wrapped directly).
    """

    def __init__(self, module, source: str | None = None) -> None:
        self.module = module.eval()
        self.source = source

    @property
    def is_dual_encoder(self) -> bool:
        return bool(getattr(self.module, "is_dual_encoder", False))

    def _encode(self, texts: list[str], side: str, batch_size: int) -> torch.Tensor:
        from rankers.retrieval.encode import encode_texts

        serve.require_dual_encoder(self.module, f"encode_{side}s")
        return encode_texts(self.module, list(texts), side, batch_size=batch_size)

    def encode_queries(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Query embeddings ``[n, d]`` (float32, CPU); dual encoders only."""
        return self._encode(texts, "query", batch_size)

    def encode_passages(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Passage embeddings ``[n, d]`` (float32, CPU); dual encoders only."""
        return self._encode(texts, "passage", batch_size)

    def score(self, queries: list[str], passages: list[str], batch_size: int = 128) -> torch.Tensor:
        """Scores ``[n]`` of aligned (query, passage) pairs: CA logit or DE similarity / temperature."""
        return serve.score_pairs(self.module, list(queries), list(passages), batch_size=batch_size)

    def __repr__(self) -> str:
        return f"Ranker({type(self.module).__name__}, source={self.source!r})"


def load_ranker(path: str | Path, device: str | None = None) -> Ranker:
    """Load a rankers checkpoint or a directory written by ``python -m rankers export``."""
    return Ranker(serve.load_model_on(str(path), device), source=str(Path(path).resolve()))


def _as_ranker(ranker: Ranker | Any) -> Ranker:
    return ranker if isinstance(ranker, Ranker) else Ranker(ranker)


def _corpus(corpus_or_dataset) -> tuple[datasets.Dataset, str | None, dict[str, Any]]:
    """(corpus Dataset, fingerprint, data spec) of a dataset name / directory, RetrievalData or Dataset."""
    if isinstance(corpus_or_dataset, (str, Path)):
        data = serve.load_data(str(corpus_or_dataset))
        return data.corpus, data.fingerprint(), {"dataset": str(corpus_or_dataset)}
    if isinstance(corpus_or_dataset, datasets.Dataset):
        return corpus_or_dataset, None, {}
    if hasattr(corpus_or_dataset, "corpus") and hasattr(corpus_or_dataset, "fingerprint"):
        return corpus_or_dataset.corpus, corpus_or_dataset.fingerprint(), {}
    raise TypeError(f"corpus_or_dataset: expected a dataset name/directory, RetrievalData or an id/text Dataset, "
                    f"got {type(corpus_or_dataset).__name__}")


def build_index(ranker: Ranker, corpus_or_dataset, output: str | Path, **kwargs: Any) -> DenseIndex:
    """Encode a corpus (dataset name / directory, RetrievalData, or ``id``/``text`` Dataset) into a saved index.

    ``kwargs`` go to :func:`rankers.commands.serve.build_index` (``batch_size``, ``chunk_size``, ``index_type``,
    ``backend``, ``fp16``, ``keep_chunks``, ``progress``). Resumable like the ``index`` command.
    """
    ranker = _as_ranker(ranker)
    corpus, fingerprint, meta = _corpus(corpus_or_dataset)
    return serve.build_index(ranker.module, corpus, output, source=ranker.source, fingerprint=fingerprint,
                             meta=meta, **kwargs)


def load_index(directory: str | Path, backend: str = "auto") -> DenseIndex:
    """A saved index (``build_index`` / the ``index`` command); the model it was built with is
    ``rankers.commands.serve.read_index_meta(directory)["model"]``."""
    serve.read_index_meta(directory)
    return DenseIndex.load(directory, backend=backend)


def search(ranker: Ranker, index: DenseIndex, queries: Mapping[str, str] | datasets.Dataset, k: int = 1000,
           batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Top-``k`` passages per query (``{id: text}`` or an ``id``/``text`` Dataset) as a run."""
    return serve.search_run(_as_ranker(ranker).module, index, queries, depth=k, batch_size=batch_size)


def rerank(ranker: Ranker, run: Mapping[str, Mapping[str, float]], corpus, queries=None, depth: int = 100,
           batch_size: int = 128) -> dict[str, dict[str, float]]:
    """Re-score the top ``depth`` candidates of each query of ``run``.

    ``corpus``: ``{id: text}``, an ``id``/``text`` Dataset, RetrievalData or a dataset name / directory;
    ``queries``: ``{id: text}`` or an ``id``/``text`` Dataset (default for RetrievalData / a dataset: its queries).
    """
    query_rows = passage_rows = None
    if isinstance(corpus, (str, Path)):
        corpus = serve.load_data(str(corpus))
    if hasattr(corpus, "corpus") and hasattr(corpus, "query_index"):  # RetrievalData
        data = corpus
        corpus, passage_rows = data.corpus, data.corpus_index()
        if queries is None:
            queries, query_rows = data.queries, data.query_index()
    if queries is None:
        raise ValueError("rerank: pass queries ({id: text} or an id/text Dataset)")
    return serve.rerank_run(_as_ranker(ranker).module, run, queries, corpus, depth=depth, batch_size=batch_size,
                            query_rows=query_rows, passage_rows=passage_rows)
