"""Gradient caching for a dual encoder: a large batch's contrastive loss with the activation memory of a
small one, and exactly the gradients of the uncached step (Gao, Zhang, Han & Callan, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup", RepL4NLP 2021; Tevatron's GradCache,
sentence-transformers' ``CachedMultipleNegativesRankingLoss``).

The loss of a dual encoder depends on the encoders only through the embeddings. So:

1. every text is embedded without a graph, ``chunk_size`` texts at a time (the CPU / CUDA random state
   before each chunk is kept, so dropout can be replayed);
2. the loss is computed from those embeddings as usual (in-batch negatives over the whole batch, teacher
   terms, DDP gathering) — autograd gives the loss's gradient with respect to each embedding;
3. in the backward pass each chunk is embedded again, with a graph, under the same random state and
   autocast, and ``torch.autograd.grad(chunk_embeddings, parameters, embedding_gradient)`` adds that chunk's
   share of the parameter gradient; the graph is freed before the next chunk.

Step 3 runs inside :class:`_CachedEmbeddings`' backward, which returns the summed parameter gradients as the
gradients of its parameter inputs: autograd accumulates each parameter's gradient once, so Lightning's
automatic optimisation, gradient clipping, precision plugins and DDP's gradient all-reduce (one hook per
parameter per step) work unchanged. Peak activation memory is one chunk's forward and backward instead of
the whole batch's; the price is a second forward pass.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["cached_embeddings", "chunk_bounds"]

EncodeFn = Callable[[str, int, int], torch.Tensor]  # (side, lo, hi) -> embeddings of rows lo:hi of that side


def chunk_bounds(rows: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + chunk_size, rows)) for lo in range(0, rows, chunk_size)]


class _RandomState:
    """The CPU (and CUDA, on a CUDA device) generator state, to replay a chunk's dropout masks."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    def restore(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)


class _CachedEmbeddings(torch.autograd.Function):
    @staticmethod
    def forward(ctx, encode: EncodeFn, plan: dict[str, Any], query: torch.Tensor, passage: torch.Tensor,
                *params: torch.Tensor):
        ctx.encode, ctx.plan = encode, plan
        ctx.param_count = len(params)
        ctx.save_for_backward(*params)
        return query.clone(), passage.clone()

    @staticmethod
    def backward(ctx, grad_query: torch.Tensor, grad_passage: torch.Tensor):
        params = ctx.saved_tensors
        plan = ctx.plan
        totals: list[torch.Tensor | None] = [None] * len(params)
        device = plan["device"]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for side, grad in (("query", grad_query), ("passage", grad_passage)):
                if grad is None:
                    continue
                for (lo, hi), state in zip(plan[side]["bounds"], plan[side]["states"]):
                    state.restore()
                    with torch.enable_grad(), torch.autocast(device.type, dtype=plan["autocast_dtype"],
                                                             enabled=plan["autocast"]):
                        emb = ctx.encode(side, lo, hi)
                    parts = torch.autograd.grad(emb, params, grad[lo:hi].to(emb.dtype), allow_unused=True)
                    for i, part in enumerate(parts):
                        if part is not None:
                            totals[i] = part if totals[i] is None else totals[i] + part
        return (None, None, None, None, *totals)


def cached_embeddings(encode: EncodeFn, rows: dict[str, int], chunk_size: int,
                      params: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and passage embeddings (``rows["query"]``, ``rows["passage"]`` texts) that carry gradient to
    ``params`` through chunked re-encoding in the backward pass (see the module docstring).

    ``encode(side, lo, hi)`` embeds rows ``lo:hi`` of one side; it is called once per chunk without a graph
    now and once per chunk with a graph in the backward pass, under the random state and autocast of the
    first call.
    """
    if chunk_size < 1:
        raise ValueError(f"grad cache chunk size must be >= 1, got {chunk_size}")
    autocast = torch.is_autocast_enabled(device.type)
    plan: dict[str, Any] = {"device": device, "autocast": autocast,
                            "autocast_dtype": torch.get_autocast_dtype(device.type) if autocast else torch.float32}
    embedded = {}
    for side in ("query", "passage"):
        bounds = chunk_bounds(rows[side], chunk_size)
        states, chunks = [], []
        with torch.no_grad():
            for lo, hi in bounds:
                states.append(_RandomState(device))
                chunks.append(encode(side, lo, hi))
        plan[side] = {"bounds": bounds, "states": states}
        embedded[side] = torch.cat(chunks)
    trainable = [p for p in params if p.requires_grad]
    return _CachedEmbeddings.apply(encode, plan, embedded["query"], embedded["passage"], *trainable)
