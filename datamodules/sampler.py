"""A training order that survives a crash: resume mid-epoch exactly where the checkpoint was taken.

Lightning (2.3+) saves ``state_dict()`` of every train dataloader that has ``state_dict`` /
``load_state_dict`` into each checkpoint and hands it back to ``load_state_dict`` on resume
(``fit(ckpt_path=...)``); a plain ``torch.utils.data.DataLoader`` has neither, so a run resumed from a
mid-epoch checkpoint starts the epoch's data from the beginning again while Lightning still counts the
batches already done: the first batches are trained twice and the last ones never (Lightning warns
"your dataloader is not resumable").

* :class:`ResumableSampler` -- one epoch's order: ``torch.randperm`` seeded by ``seed + epoch``, sharded
  over ``num_replicas`` DDP ranks, exactly as ``DistributedSampler(seed=seed)`` after ``set_epoch(epoch)``
  (it *is* one, so Lightning leaves it in place instead of swapping in its own); it can start a pass at
  an offset into this rank's shard.
* :class:`ResumableDataLoader` -- a ``DataLoader`` that counts the samples it handed out in the current
  pass (``state_dict``) and, after ``load_state_dict``, starts its next pass where that count ended,
  without loading the skipped items.

Restoring the position is exact only if the epoch's items are a function of the epoch and the index,
as for :class:`datamodules.examples.ListwiseTrainDataset` (negatives drawn from ``(seed, epoch, query
id)``). The state is plain ints, so checkpoints still load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

log = logging.getLogger(__name__)

__all__ = ["ResumableSampler", "ResumableDataLoader", "resumable_train_loader", "CollectionBatchSampler",
           "BatchedDataset", "CollectionDataLoader"]


class ResumableSampler(DistributedSampler):
    """Seeded shuffle of one epoch, sharded over ranks, that can begin part-way through this rank's shard.

    Args:
        dataset: the map-style dataset (only its length is used).
        seed, epoch: the permutation is ``torch.randperm(len(dataset), generator=manual_seed(seed + epoch))``.
        shuffle: False keeps dataset order.
        num_replicas, rank: DDP world size and this process's rank (1 and 0 in one process).
        drop_last: as in ``DistributedSampler`` (False pads shards to equal size by repeating items).
        lengths / batch_size / group_batches: length grouping (off when ``lengths`` is None): the shuffled
            order is cut into groups of ``group_batches`` global batches (``batch_size * num_replicas`` items)
            and each group sorted by ``lengths`` (longest first, ties in shuffled order) before sharding, so
            the items of one step -- on every rank -- have similar lengths and pad little (as
            ``transformers``' ``LengthGroupedSampler``, but sharded and resumable). Which items an epoch
            holds, and each rank's share of them, do not change.
    """

    def __init__(self, dataset: Dataset, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = False, lengths: Any = None,
                 batch_size: int = 1, group_batches: int = 50) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        if lengths is not None and len(lengths) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"ResumableSampler: {len(lengths)} lengths for {len(dataset)} items")  # type: ignore[arg-type]
        if batch_size < 1 or group_batches < 1:
            raise ValueError(f"ResumableSampler: batch_size and group_batches must be >= 1, got {batch_size}, "
                             f"{group_batches}")
        self.lengths = None if lengths is None else [int(x) for x in lengths]
        self.batch_size, self.group_batches = int(batch_size), int(group_batches)
        self.set_epoch(epoch)
        self._start: tuple[int, int] | None = None  # (epoch, samples of the shard to skip) for the next pass

    def _length_grouped(self) -> list[int]:
        """DistributedSampler's order with each group of global batches sorted by length, then sharded."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        else:
            indices = list(range(len(self.dataset)))  # type: ignore[arg-type]
        if not self.drop_last:  # pad as DistributedSampler does
            padding = self.total_size - len(indices)
            indices += (indices * -(-padding // max(1, len(indices))))[:padding]
        else:
            indices = indices[: self.total_size]
        width = self.batch_size * self.num_replicas * self.group_batches
        lengths = self.lengths
        grouped: list[int] = []
        for lo in range(0, len(indices), width):
            grouped += sorted(indices[lo:lo + width], key=lambda i: -lengths[i])  # stable: ties keep the shuffle
        return grouped[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        start = self.pending_start()
        self._start = None  # a resume offset applies to one pass only
        indices = self._length_grouped() if self.lengths is not None else list(super().__iter__())
        return iter(indices[start:])

    def start_at(self, epoch: int, samples: int) -> None:
        """Make the next pass over ``epoch`` begin after the first ``samples`` items of this rank's shard."""
        if samples < 0:
            raise ValueError(f"ResumableSampler.start_at: samples must be >= 0, got {samples}")
        self._start = (int(epoch), int(samples))

    def pending_start(self) -> int:
        """Items the next pass will skip (0 unless :meth:`start_at` was called for the current epoch)."""
        if self._start is None or self._start[0] != self.epoch:
            return 0
        return min(self._start[1], self.num_samples)



class _CheckpointedPosition:
    """The in-epoch position of a training ``DataLoader`` as Lightning checkpoints it: what the loader handed
    out in the current pass (``unit``: ``"samples"`` or ``"batches"``), the epoch and the number of processes;
    after ``load_state_dict`` the order's next pass starts where that count ended. The order (``_order()``)
    has ``epoch``, ``num_replicas``, ``start_at(epoch, n)`` and ``pending_start()``."""

    unit = "samples"

    def _order(self):
        raise NotImplementedError

    def _step(self) -> int:
        """What one batch adds to the count."""
        raise NotImplementedError

    def _reset_position(self) -> None:
        self._position = {"epoch": self._order().epoch, self.unit: self._order().pending_start()}

    def __iter__(self) -> Iterator[Any]:
        # A generator: the order's resume offset is read at the first batch, not when ``iter()`` is
        # called, so a state loaded after the iterator was created (Lightning builds the train loader
        # early to estimate the number of steps) still takes effect.
        self._reset_position()
        position, step = self._position, self._step()
        for batch in super().__iter__():  # type: ignore[misc]
            position[self.unit] += step
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._position["epoch"]), self.unit: int(self._position[self.unit]),
                "num_replicas": int(self._order().num_replicas)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        order = self._order()
        if state.get("num_replicas", order.num_replicas) != order.num_replicas:
            log.warning("the checkpoint's data position was saved with %s processes, this run has %s: the "
                        "interrupted epoch cannot be continued in the same order, its remaining steps take "
                        "batches from the start of a fresh pass", state.get("num_replicas"), order.num_replicas)
            return
        if state.get("epoch") != order.epoch:  # e.g. checkpoint taken on the epoch's last batch
            return
        order.start_at(state["epoch"], state.get(self.unit, 0))
        self._reset_position()


class ResumableDataLoader(_CheckpointedPosition, DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` whose in-epoch position is checkpointed.

    Same constructor as ``DataLoader`` (so Lightning can re-instantiate it); ``sampler`` must be a
    :class:`ResumableSampler` and ``batch_size`` an int. ``state_dict()`` is
    ``{"epoch", "samples", "num_replicas"}``: samples of this rank's shard handed out so far in the
    current pass (a multiple of the batch size until the last, partial batch).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(f"ResumableDataLoader needs a ResumableSampler, got {type(self.sampler).__name__}")
        if self.batch_size is None:
            raise TypeError("ResumableDataLoader needs an int batch_size (no custom batch_sampler)")
        self._position = {"epoch": self.sampler.epoch, "samples": 0}

    def _order(self) -> ResumableSampler:
        return self.sampler  # type: ignore[return-value]

    def _step(self) -> int:
        return int(self.batch_size)


def resumable_train_loader(dataset: Dataset, *, batch_size: int, seed: int, epoch: int, num_replicas: int = 1,
                           rank: int = 0, lengths: Any = None, group_batches: int = 50,
                           **kwargs: Any) -> ResumableDataLoader:
    """The training ``DataLoader`` of one epoch: shuffled by ``seed + epoch``, sharded, resumable; with
    ``lengths``, grouped by length (:class:`ResumableSampler`).

    ``kwargs`` go to ``DataLoader`` (``num_workers``, ``collate_fn``, ``pin_memory`` ...). The loader's
    ``generator`` (it seeds dataloader workers) is seeded too, so no global RNG is consumed.
    """
    sampler = ResumableSampler(dataset, seed=seed, epoch=epoch, num_replicas=num_replicas, rank=rank,
                               lengths=lengths, batch_size=batch_size, group_batches=group_batches)
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed + epoch))
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)


class CollectionBatchSampler(DistributedSampler):
    """Batches over several training collections concatenated (a ``ConcatDataset``), each batch from one.

    It yields whole batches (lists of indices) and is used as a DataLoader's ``sampler`` with
    ``batch_size=None`` over a :class:`BatchedDataset`; it *is* a ``DistributedSampler`` (sharding is its own,
    below) so that Lightning leaves it in place under DDP -- Lightning refuses a custom ``batch_sampler``
    there unless ``use_distributed_sampler=False``.

    Per epoch, collection ``c`` (``sizes[c]`` items, starting at the sum of the sizes before it) contributes
    ``round(weights[c] * sizes[c])`` draws -- a seeded permutation of its items, cycled when the weight is above
    1 --, cut into *global* batches of ``batch_size * num_replicas`` (the last one completed by cycling); the
    global batches are shuffled (seeded by ``seed + epoch``) and rank ``r`` takes the ``r``-th ``batch_size``
    slice of each, so under DDP the passages gathered as in-batch negatives all come from one collection too.
    Deterministic and the same on every rank; resumable like :class:`ResumableSampler` (:meth:`start_at`,
    counted in batches).
    """

    def __init__(self, sizes: list[int], weights: list[float], *, batch_size: int, seed: int = 0, epoch: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError(f"CollectionBatchSampler: {len(sizes)} collection sizes but {len(weights)} weights")
        bad = [w for w in weights if not w > 0]
        if bad:
            raise ValueError(f"CollectionBatchSampler: weights must be > 0, got {weights}")
        Sampler.__init__(self)  # not DistributedSampler's: no process group is needed to build one
        self.sizes, self.weights = list(sizes), list(weights)
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.drop_last = True, False
        self._start: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[tuple[int, list[int]]]:
        """``(collection, item indices)`` of every global batch of the epoch, in training order."""
        width = self.batch_size * self.num_replicas
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches: list[tuple[int, list[int]]] = []
        offset = 0
        for c, (size, weight) in enumerate(zip(self.sizes, self.weights)):
            if size:
                draws = max(1, round(weight * size))
                rounds = -(-(draws + width) // size)  # enough for the draws and for completing the last batch
                order = torch.cat([torch.randperm(size, generator=generator) for _ in range(rounds)]).tolist()
                drawn = [offset + i for i in order[:draws]]
                for lo in range(0, draws, width):
                    chunk = drawn[lo:lo + width]
                    if len(chunk) < width:  # complete the last global batch from the collection's next draws
                        chunk += [offset + i for i in order[draws:draws + width - len(chunk)]]
                    batches.append((c, chunk))
            offset += size
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled]

    def start_at(self, epoch: int, batches: int) -> None:
        self._start = (int(epoch), int(batches))

    def pending_start(self) -> int:
        if self._start is None or self._start[0] != self.epoch:
            return 0
        return min(self._start[1], len(self))

    def __len__(self) -> int:
        width = self.batch_size * self.num_replicas
        return sum(-(-max(1, round(w * s)) // width) for s, w in zip(self.sizes, self.weights) if s)

    def __iter__(self) -> Iterator[list[int]]:
        start = self.pending_start()
        self._start = None
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return iter([items[lo:hi] for _, items in self.global_batches()[start:]])


class BatchedDataset(Dataset):
    """A map-style dataset indexed by a list of indices: ``data[[i, j]] == [base[i], base[j]]`` (one fetch per
    batch, for a sampler that yields whole batches)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, indices: list[int]) -> list[Any]:
        return [self.base[i] for i in indices]


class CollectionDataLoader(_CheckpointedPosition, DataLoader):
    """A ``DataLoader`` over a :class:`BatchedDataset` with a :class:`CollectionBatchSampler` as its
    ``sampler`` (``batch_size=None``: each sampled item is a batch, given to ``collate_fn`` whole), whose
    in-epoch position (in batches) is checkpointed, as :class:`ResumableDataLoader` does for one collection."""

    unit = "batches"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, CollectionBatchSampler) or self.batch_size is not None:
            raise TypeError("CollectionDataLoader needs a CollectionBatchSampler as sampler and batch_size=None")
        self._position = {"epoch": self.sampler.epoch, "batches": 0}

    def _order(self) -> CollectionBatchSampler:
        return self.sampler  # type: ignore[return-value]

    def _step(self) -> int:
        return 1
