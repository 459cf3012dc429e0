"""Cross-rank helpers for DDP training of the dual encoder: gathers with gradients, id keys, loss weights.

* :func:`all_gather_rows` -- gather a ``[n, ...]`` tensor from every rank when the ranks' ``n`` differ
  (the last batch, dynamic padding of candidate lists): each rank pads to the largest ``n``; with
  ``with_grad=True`` the backward pass sums every rank's gradient for this rank's rows (so the in-batch
  negatives a rank contributes get the gradient of every rank's queries, not only its own);
* :func:`id_keys` / :func:`key_labels` -- passage ids as int64 keys (a 64-bit BLAKE2b hash, the same in
  every process) so a query's judged positives can be matched against passages gathered from other ranks
  without sending strings;
* :func:`rank_weights` -- per-rank loss weights that make DDP's gradient *average* equal the gradient of
  one process over the concatenated global batch (exact also when the ranks' batch sizes differ).

Every function is a no-op (or returns the local value) when ``torch.distributed`` is not initialised or
has one process, so single-process code paths need no special casing.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of processes of the default process group (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default process group (0 without ``torch.distributed``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _AllGatherWithGrad(torch.autograd.Function):
    """``all_gather`` of equally shaped tensors, stacked ``[world, ...]``; backward: sum over ranks, keep ours.

    Rank r's loss depends on every rank's slice, so the gradient of slice r is the sum of every rank's
    gradient for it: an ``all_reduce`` (works on every backend, gloo included), then this rank's slice.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


def max_rows(n: int, device: torch.device | str = "cpu") -> int:
    """The largest ``n`` over all ranks (``n`` itself in a single process)."""
    if world_size() == 1:
        return n
    value = torch.tensor([n], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def all_gather_rows(tensor: Tensor, rows: int | None = None, *, with_grad: bool = False) -> Tensor:
    """Every rank's ``tensor`` (shape ``[n_r, ...]``), each padded with zeros / False to ``rows``, concatenated.

    The result has ``world_size() * rows`` rows; rank r's rows are ``[r * rows, r * rows + n_r)``, the rest
    is padding the caller masks out (gather a validity mask the same way: its padding is False).
    ``rows`` defaults to :func:`max_rows` (one extra collective). With ``with_grad`` the result carries the
    gradient back to this rank's ``tensor`` summed over the ranks' losses (see :class:`_AllGatherWithGrad`);
    without it the result is detached. Every rank must call this in the same order (a collective).
    """
    if world_size() == 1:
        return tensor if with_grad else tensor.detach()
    n = tensor.shape[0]
    rows = max_rows(n, tensor.device) if rows is None else rows
    if rows < n:
        raise ValueError(f"all_gather_rows: rows={rows} is smaller than this rank's {n} rows")
    is_bool = tensor.dtype == torch.bool
    local = tensor.to(torch.uint8) if is_bool else tensor  # bool collectives are not on every backend
    if rows > n:
        local = torch.cat([local, local.new_zeros((rows - n, *local.shape[1:]))])
    if with_grad:
        if is_bool:
            raise ValueError("all_gather_rows: with_grad needs a floating-point tensor, got bool")
        gathered = _AllGatherWithGrad.apply(local)
    else:
        local = local.detach().contiguous()
        parts = [torch.empty_like(local) for _ in range(world_size())]
        dist.all_gather(parts, local)
        gathered = torch.stack(parts)
    gathered = gathered.reshape(-1, *local.shape[1:])
    return gathered.bool() if is_bool else gathered


def gather_scored_pairs(pair_index: Tensor, scores: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(pair index, score) of every pair scored on any rank, each pair once, sorted by pair index.

    Ranks may hold different numbers of pairs (Lightning's predict sampler does not pad; its eval sampler
    repeats a few pairs to give every rank as many): the rows are gathered padded, the padding dropped, and
    the first score of a repeated pair kept. Every rank must call this (a collective under DDP).
    """
    if world_size() > 1:
        rows = max_rows(len(pair_index), pair_index.device)
        valid = all_gather_rows(torch.ones_like(pair_index, dtype=torch.bool), rows)
        pair_index, scores = all_gather_rows(pair_index, rows)[valid], all_gather_rows(scores, rows)[valid]
    pair_index, scores = pair_index.detach().cpu().numpy(), scores.detach().float().cpu().numpy()
    _, first = np.unique(pair_index, return_index=True)
    return pair_index[first], scores[first]


def rank_weights(local_counts: Tensor) -> Tensor:
    """``world_size · local / global`` per count (0 where the global count is 0); ones in one process.

    A loss that is a mean over this rank's ``local`` queries, multiplied by this weight, becomes
    ``world_size · (sum over local queries) / (global number of queries)``; DDP averages gradients over the
    ranks, so the update equals the gradient of the mean over the concatenated global batch.
    """
    if world_size() == 1:
        return torch.ones_like(local_counts, dtype=torch.float32)
    counts = local_counts.detach().to(torch.float32).clone()
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return world_size() * local_counts.to(torch.float32) / counts.clamp(min=1)


def id_keys(ids: Sequence[str]) -> Tensor:
    """Int64 keys of string ids (64-bit BLAKE2b, identical in every process, unlike ``hash()``)."""
    return torch.tensor(
        [int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
         for i in ids],
        dtype=torch.long,
    )


def key_labels(positive_keys: Tensor, positive_mask: Tensor, passage_keys: Tensor, passage_valid: Tensor) -> Tensor:
    """``labels[i, j]``: valid passage j is one of query i's judged positives (matched by key).

    ``positive_keys`` / ``positive_mask``: ``[B, P]`` (padding False); ``passage_keys`` / ``passage_valid``:
    ``[M]``. Returns bool ``[B, M]``.
    """
    hits = (positive_keys.unsqueeze(-1) == passage_keys.view(1, 1, -1)) & positive_mask.unsqueeze(-1)
    return hits.any(dim=1) & passage_valid.view(1, -1)
