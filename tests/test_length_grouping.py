"""Length-grouped training order (issue 15): ``ResumableSampler(lengths=...)`` and the DataModule's
``length_group_batches`` -- the same items per epoch and rank share as the plain shuffle, batches of similar
length, deterministic, sharded and resumable."""
from __future__ import annotations

import random

import numpy as np
import pytest

from datamodules.sampler import ResumableSampler, resumable_train_loader

_RNG = random.Random(7)
LENGTHS = [_RNG.randrange(10, 500) for _ in range(203)]  # 203 items: the shards need padding


def _order(**kw) -> list[int]:
    return list(ResumableSampler(list(range(len(LENGTHS))), seed=3, **kw))


def _spread(order: list[int], batch: int) -> float:
    """Mean (longest - shortest) within consecutive batches: what padding costs."""
    spans = [order[i:i + batch] for i in range(0, len(order), batch)]
    return float(np.mean([max(LENGTHS[j] for j in s) - min(LENGTHS[j] for j in s) for s in spans]))


@pytest.mark.parametrize("num_replicas", [1, 2])
def test_grouped_order_holds_the_plain_orders_items_sorted_within_each_group(num_replicas):
    kw = dict(epoch=1, num_replicas=num_replicas)
    plain = [_order(rank=r, **kw) for r in range(num_replicas)]
    grouped = [_order(rank=r, lengths=LENGTHS, batch_size=4, group_batches=5, **kw) for r in range(num_replicas)]
    assert sorted(i for g in grouped for i in g) == sorted(i for p in plain for i in p)  # same items, same padding
    assert [len(g) for g in grouped] == [len(p) for p in plain]
    # interleave the ranks back into the global order: within each group of 5 global batches, longest first
    width = 4 * num_replicas * 5
    merged = [grouped[r][k] for k in range(len(grouped[0])) for r in range(num_replicas)]
    for lo in range(0, len(merged), width):
        group = [LENGTHS[i] for i in merged[lo:lo + width]]
        assert group == sorted(group, reverse=True)
    # a group holds the same items as that stretch of the plain shuffle (only their order changes)
    plain_merged = [plain[r][k] for k in range(len(plain[0])) for r in range(num_replicas)]
    assert sorted(merged[:width]) == sorted(plain_merged[:width])
    for r in range(num_replicas):  # each rank's batches pad far less than the plain shuffle's
        assert _spread(grouped[r], 4) < 0.5 * _spread(plain[r], 4)


def test_grouped_order_is_seeded_per_epoch_and_resumes_mid_epoch():
    kw = dict(lengths=LENGTHS, batch_size=4, group_batches=5, num_replicas=2, rank=1)
    first = _order(epoch=0, **kw)
    assert first == _order(epoch=0, **kw) and first != _order(epoch=1, **kw)
    sampler = ResumableSampler(list(range(len(LENGTHS))), seed=3, epoch=0, **kw)
    sampler.start_at(0, 12)
    assert list(sampler) == first[12:]
    assert list(sampler) == first  # the offset applied to one pass only


def test_loader_state_round_trip_with_length_grouping():
    data = list(range(len(LENGTHS)))
    make = lambda: resumable_train_loader(data, batch_size=4, seed=3, epoch=0, lengths=LENGTHS, group_batches=5)
    loader = make()
    batches = [b.tolist() for b in loader]
    it = iter(loader)
    for _ in range(7):
        next(it)
    resumed = make()
    resumed.load_state_dict(loader.state_dict())
    assert [b.tolist() for b in resumed] == batches[7:]


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="3 lengths for 203 items"):
        ResumableSampler(list(range(203)), lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="group_batches"):
        ResumableSampler(list(range(203)), lengths=LENGTHS, group_batches=0)


def test_datamodule_groups_training_batches_by_length(tmp_path):
    from datamodules.datamodule import RankingDataModule
    from stubs import StubTrainer

    def batches(groups: int):
        dm = RankingDataModule(dataset="embedded", embedded_scale=0.1, num_negatives=3, batch_size=4, max_train_queries=64,
                               eval_depth=10, train_subset_size=0, max_eval_queries=5, seed=0,
                               length_group_batches=groups, cache_dir=str(tmp_path / "cache"))
        dm.trainer = StubTrainer()  # its collator hands the items through
        dm.prepare_data()
        dm.setup("fit")
        out = [[(item["query_id"], len(item["query"]) + max(len(p) for p in item["passages"])) for item in batch]
               for batch in dm.train_dataloader()]
        return out, dm

    plain, dm = batches(0)
    grouped, _ = batches(4)
    assert sorted(q for b in grouped for q, _ in b) == sorted(q for b in plain for q, _ in b)
    # the lengths the sampler sorts by are the lengths of the items the loader hands out
    lengths = dm.train_item_lengths()
    index = {ex.query_id: i for i, ex in enumerate(dm.train_dataset.examples)}
    assert all(lengths[index[q]] == n for b in grouped for q, n in b)
    spread = lambda bs: np.mean([max(n for _, n in b) - min(n for _, n in b) for b in bs])
    assert spread(grouped) < 0.5 * spread(plain)
    with pytest.raises(ValueError, match="length_group_batches"):
        RankingDataModule(dataset="embedded", length_group_batches=-1)
