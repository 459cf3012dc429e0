"""Encode a padded batch as a few length-sorted sub-batches, each padded only to its own longest row.

A training step's passages (or a CA's query-passage pairs) come padded to the longest row of the
whole batch; on the embedded default a passage is 32 word pieces on average and the longest of a
step about 45, so about a third of every encoder matmul is padding. Sorting the rows by length,
cutting them into ``num_buckets`` groups and trimming each group's all-padding columns removes most
of it. The groups run through the encoder inside one autograd graph (one backward, as before) and
their outputs are put back in the original row order, so the result equals the one padded forward up
to floating-point rounding: masked tokens never reach a real token's attention or the pooling.

Only right-padded batches (BERT's default) are trimmed; a left-padded one runs as one batch.
"""
from __future__ import annotations

from typing import Callable

import torch


def forward_by_length(forward: Callable[[dict[str, torch.Tensor]], torch.Tensor], inputs: dict[str, torch.Tensor],
                      num_buckets: int) -> torch.Tensor:
    """``forward(inputs)`` computed per length bucket: rows sorted by length into ``num_buckets`` groups,
    each cut to its longest row; the per-row outputs (first dimension) come back in the input order."""
    rows = inputs["attention_mask"].shape[0]
    if num_buckets <= 1 or rows < 2 * num_buckets:
        return forward(inputs)
    mask = inputs["attention_mask"].detach().cpu()  # the bucketing decisions: one device transfer, no per-bucket syncs
    lengths = mask.sum(dim=-1)
    if not _right_padded(mask) or int(lengths.min()) == mask.shape[1]:  # left padding, or nothing to trim
        return forward(inputs)
    order = torch.argsort(lengths, stable=True)
    device = inputs["attention_mask"].device
    outputs = []
    for group in order.chunk(num_buckets):
        width = int(lengths[group].max())
        index = group.to(device)
        outputs.append(forward({k: v[index, :width] for k, v in inputs.items()}))
    return torch.cat(outputs)[torch.argsort(order).to(device)]


def _right_padded(mask: torch.Tensor) -> bool:
    """Every row is ones then zeros (no zero before a one)."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())
