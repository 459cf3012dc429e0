"""The one encode → index → search path of a dual encoder.

Every dense search in rankers goes through these two functions: the eval callback's full retrieval,
dense negative mining (:func:`datamodules.mining.dense.dense_run`) and the ``index`` / ``search``
commands. Where the passage embeddings come from differs (sharded over DDP ranks, encoded chunk by
chunk in memory, or resumable chunk files on disk), so the corpus side takes an iterable of
``(vectors, ids)`` chunks; :func:`rankers.retrieval.encode.encode_texts` does all the encoding.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rankers.retrieval.encode import encode_texts
from rankers.retrieval.search import DenseIndex

__all__ = ["index_chunks", "search_queries"]

Run = dict[str, dict[str, float]]


def index_chunks(chunks: Iterable[tuple[Any, Sequence[str]]], **index_kwargs: Any) -> DenseIndex:
    """A :class:`DenseIndex` of the ``(vectors, ids)`` chunks, added in order (``index_kwargs`` go to
    :meth:`DenseIndex.build`: backend, index_type, metric, fp16 ...). Peak memory: the index plus one chunk."""
    index = None
    for vectors, ids in chunks:
        if index is None:
            index = DenseIndex.build(vectors, ids, **index_kwargs)
        else:
            index.add(vectors, ids)
    if index is None:
        raise ValueError("index_chunks: no chunks (an empty corpus)")
    return index


def search_queries(model, index: DenseIndex, query_ids: Sequence[str], texts: Sequence[str], *, depth: int,
                   batch_size: int = 256, progress: bool = False) -> Run:
    """Encode the query texts with ``model``'s query tower and return the top-``depth`` run of ``index``."""
    if not len(texts):
        return {}
    embeddings = encode_texts(model, texts, "query", batch_size=batch_size, progress=progress, desc="encode queries")
    return index.search_run(list(query_ids), embeddings, depth)
