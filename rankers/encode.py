"""Encoding texts with a dual encoder outside the training loop: corpus and query embeddings.

Used by the retrieval-eval callback, dense mining and the ``index`` command -- one implementation.
Texts are processed in length-sorted batches (less padding), under ``inference_mode``, and the
embeddings are returned in the input order. ``shard`` lets each DDP rank encode its own slice.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from tqdm.auto import tqdm


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous slice [start, end) of n items owned by ``rank`` (sizes differ by at most one)."""
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return start, start + per + (1 if rank < extra else 0)


@torch.inference_mode()
def encode_texts(
    model,
    texts: Sequence[str],
    side: Literal["query", "passage"],
    *,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    desc: str | None = None,
) -> torch.Tensor:
    """Embeddings ``[len(texts), d]`` (on CPU, ``dtype``) of ``texts`` with a DualEncoderRanker."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    encode = model.encode_query_inputs if side == "query" else model.encode_passage_inputs
    out: torch.Tensor | None = None
    device = model.device
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc or f"encode {side}s", disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        inputs = model.tokenize([texts[i] for i in idx], side)
        emb = encode({k: v.to(device, non_blocking=True) for k, v in inputs.items()}).to("cpu", dtype)
        if out is None:
            out = torch.empty(len(texts), emb.shape[1], dtype=dtype)
        out[torch.as_tensor(idx)] = emb
    if out is None:
        return torch.empty(0, 0, dtype=dtype)
    return out
