"""A PROTOTYPE of a faster ``rankers.retrieval.encode.encode_texts``, kept in ``bench/`` to measure a proposal.

Not product code: ``python bench/eval_loop.py --proposed`` times it beside the real ``encode_texts``
so the proposed change to ``rankers/retrieval/encode.py`` comes with a number. Same inputs, same outputs
(embeddings in input order, on the CPU, ``dtype``); three differences:

1. tokenization of batch i+1.. runs in a background thread while the model encodes batch i
   (Hugging Face fast tokenizers release the GIL), instead of serially before each forward;
2. on CUDA the token tensors are pinned and copied with ``non_blocking=True``;
3. the embeddings are gathered in a device tensor and copied to the CPU once at the end, instead of
   one blocking device-to-host copy per batch.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Sequence

import torch


def encode_texts_pipelined(
    model,
    texts: Sequence[str],
    side: Literal["query", "passage"],
    *,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    prefetch: int = 2,
) -> torch.Tensor:
    """Embeddings ``[len(texts), d]`` (CPU, ``dtype``), tokenization overlapped with encoding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    encode = model.encode_query_inputs if side == "query" else model.encode_passage_inputs
    device = model.device
    pin = device.type == "cuda"

    def tokenize(idx: list[int]) -> dict[str, torch.Tensor]:
        inputs = model.tokenize([texts[i] for i in idx], side)
        return {k: v.pin_memory() for k, v in inputs.items()} if pin else inputs

    out: torch.Tensor | None = None
    with ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode():
        pending = deque(pool.submit(tokenize, b) for b in batches[:prefetch])
        for i, idx in enumerate(batches):
            inputs = pending.popleft().result()
            if i + prefetch < len(batches):
                pending.append(pool.submit(tokenize, batches[i + prefetch]))
            emb = encode({k: v.to(device, non_blocking=True) for k, v in inputs.items()})
            if out is None:
                out = torch.empty(len(texts), emb.shape[1], dtype=dtype, device=device)
            out[torch.as_tensor(idx, device=device)] = emb.to(dtype)
    if out is None:
        return torch.empty(0, 0, dtype=dtype)
    return out.cpu()
