"""Dense mining: :func:`dense_run` streams the corpus through a dual encoder in chunks (fp16 storage), adds
each chunk to a dense index and searches the queries -- the one encode -> index -> search path of
:mod:`rankers.retrieval.dense`, with a memory estimate logged first. An index that already covers the corpus
(the retrieval-eval callback's) is reused. The model is passed in: this package imports no model class."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]


def estimate_dense_memory(num_passages: int, dim: int, fp16: bool = True) -> str:
    bytes_ = num_passages * dim * (2 if fp16 else 4)
    return f"{num_passages:,} passages × {dim} dims × {'fp16' if fp16 else 'fp32'} = {bytes_ / 2**30:.2f} GiB of embeddings"


def dense_run(model, corpus, queries, *, depth: int, index=None, batch_size: int = 256, chunk_size: int = 65536,
              backend: str = "auto", fp16: bool = True, progress: bool = True) -> Run:
    """Top-``depth`` passages per query with a dual encoder (``DualEncoderRanker``).

    ``corpus`` / ``queries`` are Arrow datasets (``id``, ``text``). The corpus is read and encoded
    ``chunk_size`` passages at a time and added to the index chunk by chunk, so peak memory is the
    index plus one chunk. ``index`` (a :class:`rankers.retrieval.search.DenseIndex` over this corpus, in corpus
    order, built by the same model) is reused instead of re-encoding.
    """
    import torch

    from rankers.retrieval.encode import encode_texts
    from rankers.retrieval.dense import index_chunks, search_queries

    def encoded_chunks():
        for start in range(0, len(corpus), chunk_size):
            chunk = corpus[start : start + chunk_size]
            emb = encode_texts(model, chunk["text"], "passage", batch_size=batch_size,
                               dtype=torch.float16 if fp16 else torch.float32, progress=progress,
                               desc=f"encode corpus {start:,}+")
            yield emb.float(), chunk["id"]

    was_training = model.training
    model.eval()
    try:
        if index is None or index.ntotal != len(corpus):
            dim = getattr(getattr(model, "query_encoder", None), "config", None)
            dim = model.hparams.get("embedding_dim") or (dim.hidden_size if dim is not None else 0)
            log.info("dense mining: %s", estimate_dense_memory(len(corpus), dim, fp16))
            index = index_chunks(encoded_chunks(), backend=backend)
        else:
            log.info("dense mining: reusing the eval callback's index (%d passages)", index.ntotal)
        return search_queries(model, index, queries["id"], queries["text"], depth=depth, batch_size=batch_size)
    finally:
        model.train(was_training)
