"""The shared DataModule on real data (SciFact, WikiQA) and on the embedded default."""
from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.datamodule import RankingDataModule
from stubs import StubTrainer
from datamodules.formats import write_run




def _dm(tmp_path: Path, **kw) -> RankingDataModule:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    dm = RankingDataModule(**kw)
    dm.trainer = StubTrainer()
    dm.prepare_data()
    return dm


@pytest.fixture(scope="module")
def scifact(shared_data, tmp_path_factory):
    dm = _dm(tmp_path_factory.mktemp("scifact"), dataset=str(shared_data / "scifact"), val_split="test",
             num_negatives=4, negative_window=(5, 40), max_train_queries=120, train_subset_size=20,
             max_eval_queries=30, eval_depth=50)
    dm.setup("fit")
    return dm


def test_bm25_negatives_exclude_positives_and_come_from_the_window(scifact):
    from rankers.evaluation.metrics import rank_passages

    qrels = scifact.load().qrels["train"]
    run = scifact._bm25("train", [e.query_id for e in scifact.train_dataset.examples], 100)
    for ex in scifact.train_dataset.examples:
        window = set(rank_passages(run[ex.query_id])[5:40])
        positives = {p for p, r in qrels[ex.query_id].items() if r > 0}
        assert ex.negatives and set(ex.negatives) <= window
        assert not positives & set(ex.negatives)


def test_training_examples_are_deterministic_per_epoch_and_change_across_epochs(scifact):
    ds = scifact.train_dataset
    ds.epoch = 0
    first = [ds[i]["passage_ids"] for i in range(10)]
    assert first == [ds[i]["passage_ids"] for i in range(10)]
    ds.epoch = 1
    second = [ds[i]["passage_ids"] for i in range(10)]
    ds.epoch = 0
    assert first != second
    item = ds[0]
    assert item["labels"][0] == 1.0 and len(item["passages"]) == 5
    assert item["passage_ids"][0] in item["positive_ids"]
    assert item["query"] and all(item["passages"])


def test_eval_pairs_and_train_subset(scifact):
    val, sub = scifact.eval_sets["val"], scifact.eval_sets["train_subset"]
    assert len(val.qrels) == 30 and len(sub.qrels) == 20
    assert len(val) == 30 * 50
    assert set(sub.qrels) <= set(scifact.load().qrels["train"])
    loaders = scifact.val_dataloader()
    assert len(loaders) == 2
    batch = next(iter(loaders[0]))
    pair = batch[0]
    assert pair["query_id"] in val.qrels and pair["passage"]


def test_teacher_score_coverage_is_checked(scifact, tmp_path):
    ex = scifact.train_dataset.examples[0]
    run = {e.query_id: {pid: 1.0 for pid in (*e.positives, *e.negatives)} for e in scifact.train_dataset.examples}
    del run[ex.query_id][ex.negatives[0]]
    path = tmp_path / "scores.trec"
    write_run(run, path)
    dm = _dm(tmp_path, dataset=str(scifact.dataset), val_split="test", num_negatives=4, negative_window=(5, 40),
             max_train_queries=120, train_subset_size=0, teacher_scores=str(path), cache_dir=scifact.cache_dir)
    with pytest.raises(ValueError, match=f"no teacher score for training query '{ex.query_id}', passage '{ex.negatives[0]}'"):
        dm.setup("fit")


def test_negatives_from_a_run_file_and_collection_candidates(shared_data, tmp_path):
    wikiqa = shared_data / "wikiqa"
    dm = _dm(tmp_path, dataset=str(wikiqa), negatives="run", negatives_run=str(wikiqa / "candidates_train.run"),
             num_negatives=3, train_subset_size=0, max_eval_queries=20)
    dm.setup("fit")
    from datamodules.formats import read_run

    candidates = read_run(wikiqa / "candidates_train.run")
    for ex in dm.train_dataset.examples:
        assert set(ex.negatives) <= set(candidates[ex.query_id]) - set(ex.positives)
    # WikiQA ships official candidates: re-rank evaluation uses them, not BM25
    val = dm.eval_sets["val"]
    dev = read_run(wikiqa / "candidates_dev.run")
    qid = next(iter(val.qrels))
    assert dm._eval_run_source("dev") == "collection"
    assert len(dev[qid]) == sum(1 for i in range(len(val)) if val.ids(i)[0] == qid)


def test_unknown_split_is_a_clear_error(shared_data, tmp_path):
    dm = RankingDataModule(dataset=str(shared_data / "scifact"), cache_dir=str(tmp_path))  # val_split="dev"
    with pytest.raises(ValueError, match=r"split 'dev' has no qrels .*available: \['test', 'train'\]"):
        dm.prepare_data()


def test_embedded_default_is_generated_and_loads(tmp_path):
    dm = _dm(tmp_path, embedded_scale=0.05, train_subset_size=5, max_eval_queries=10)
    dm.setup("fit")
    data = dm.load()
    assert data.layout == "beir" and set(data.qrels) >= {"train", "dev", "test"}
    assert len(dm.train_dataset) > 0 and len(dm.eval_sets["val"].qrels) == 10


def _old_state_digest(model) -> str:
    """The digest before it hashed whole tensors: the first 4 KiB and the sum of each."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
        h.update(str(float(tensor.detach().float().sum())).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_state_digest_sees_one_element_deep_inside_a_large_tensor(dtype):
    import copy

    import torch

    from datamodules.datamodule import _state_digest

    dtype = getattr(torch, dtype)
    model = torch.nn.Sequential(torch.nn.Linear(512, 256), torch.nn.LayerNorm(256)).to(dtype)
    with torch.no_grad():  # small integers: every sum is exact, in any order and dtype
        model[0].weight.copy_((torch.arange(256 * 512).reshape(256, 512) % 7 - 3).to(dtype))
    same = copy.deepcopy(model)
    assert _state_digest(same) == _state_digest(model) and len(_state_digest(model)) == 16
    changed = copy.deepcopy(model)
    with torch.no_grad():  # swap two elements far past the first 4 KiB: the sum does not change
        w = changed[0].weight
        a, b = w[200, 300].clone(), w[250, 511].clone()
        assert a != b
        w[200, 300], w[250, 511] = b, a
    assert _old_state_digest(changed) == _old_state_digest(model)  # what the old digest missed
    assert _state_digest(changed) != _state_digest(model)
    with torch.no_grad():  # one element changed by one ulp, deep inside
        nudged = copy.deepcopy(model)
        nudged[0].weight[255, 500] = torch.nextafter(nudged[0].weight[255, 500], torch.tensor(10.0, dtype=dtype))
    assert _state_digest(nudged) != _state_digest(model)
    # same values, another dtype or shape: another state
    assert _state_digest(copy.deepcopy(model).float() if dtype != torch.float32 else copy.deepcopy(model).double()) \
        != _state_digest(model)


def test_cross_fit_folds_split_fit_and_predict_queries(shared_data, tmp_path):
    """cross_fit=(k, K): fit on the queries outside fold k, predict (teacher scoring) only the ones inside;
    the folds are disjoint, cover every training query, and each query's negatives are its own."""
    from datamodules.datamodule import fold_query_ids

    common = dict(dataset=str(shared_data / "scifact"), val_split="test", num_negatives=4, negative_window=(0, 30),
                  max_train_queries=60, train_subset_size=10, max_eval_queries=10, eval_depth=30)
    whole = _dm(tmp_path, **common)
    everyone = whole.training_query_ids()
    folds = fold_query_ids(everyone, 3, seed=0)
    assert sorted(q for f in folds for q in f) == sorted(everyone) and {len(f) for f in folds} == {20}
    assert fold_query_ids(everyone, 3, seed=0) == folds and fold_query_ids(everyone, 3, seed=1) != folds
    whole.setup("fit")
    pools = {ex.query_id: ex.negatives for ex in whole.train_dataset.examples}
    predicted: list[str] = []
    for k in range(3):
        dm = _dm(tmp_path, cross_fit=(k, 3), **common)
        dm.setup("fit")
        fitted = {ex.query_id for ex in dm.train_dataset.examples}
        assert fitted == set(everyone) - set(folds[k]) - {q for q in everyone if q not in pools}
        assert set(dm.eval_sets["train_subset"].qrels) <= fitted
        dm.setup("predict")
        scored = dm.predict_pairs()
        assert set(scored.qrels) <= set(folds[k]) or not scored.qrels
        for ex in dm.train_dataset.examples:
            assert ex.query_id in folds[k] and ex.negatives == pools[ex.query_id]
        predicted += [ex.query_id for ex in dm.train_dataset.examples]
    assert sorted(predicted) == sorted(pools)
    with pytest.raises(ValueError, match=r"cross_fit=\(3, 3\): expected \(fold, num_folds\)"):
        RankingDataModule(dataset=common["dataset"], cross_fit=(3, 3))


def test_collection_batches_stay_in_one_collection_weighted_sharded_and_resumable():
    from datamodules.sampler import CollectionBatchSampler

    sampler = CollectionBatchSampler([5, 3], [1.0, 2.0], batch_size=2, seed=0, epoch=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 3
    for batch in batches:
        assert all(i < 5 for i in batch) or all(5 <= i < 8 for i in batch)
    drawn = sorted(i for b in batches for i in b)
    assert sum(i < 5 for i in drawn) == 6 and {i for i in drawn if i < 5} == set(range(5))  # last batch completed
    assert sum(5 <= i for i in drawn) == 6 and {drawn.count(i) for i in range(5, 8)} == {2}  # weight 2: twice each
    assert batches == list(CollectionBatchSampler([5, 3], [1.0, 2.0], batch_size=2, seed=0, epoch=0))
    assert batches != list(CollectionBatchSampler([5, 3], [1.0, 2.0], batch_size=2, seed=0, epoch=1))
    ranks = [list(CollectionBatchSampler([8, 8], [1.0, 0.5], batch_size=2, seed=0, epoch=0, num_replicas=2, rank=r))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2 + 1
    for a, b in zip(*ranks):  # the two ranks' batches of a step: one global batch, one collection, no overlap
        assert (max(a + b) < 8 or min(a + b) >= 8) and not set(a) & set(b)
    assert sorted(i for r in ranks for b in r for i in b if i < 8) == list(range(8))
    sampler.start_at(0, 4)
    assert list(sampler) == batches[4:] and list(sampler) == batches  # the offset applies to one pass
    with pytest.raises(ValueError, match="weights must be > 0"):
        CollectionBatchSampler([5], [0.0], batch_size=2)


def test_training_on_two_collections_mixes_whole_batches(shared_data, tmp_path):
    """extra_train: WikiQA's training queries beside SciFact's, each batch from one, each with its own pools."""
    from datamodules.datamodule import TrainingCollection

    dm = _dm(tmp_path, dataset=str(shared_data / "scifact"), val_split="test", num_negatives=3,
             negative_window=(0, 20), max_train_queries=24, train_subset_size=0, max_eval_queries=5, eval_depth=20,
             batch_size=4, extra_train=[TrainingCollection(str(shared_data / "wikiqa"), weight=0.5, max_train_queries=16)])
    dm.setup("fit")
    loader = dm.train_dataloader()
    scifact = {ex.query_id for ex in dm.train_dataset.examples}
    wikiqa = {ex.query_id for ex in dm.extra_collections()[0].train_dataset.examples}
    assert len(scifact) == 24 and len(wikiqa) == 16 and not scifact & wikiqa
    seen = {"scifact": 0, "wikiqa": 0}
    for batch in loader:
        ids = {item["query_id"] for item in batch}
        assert ids <= scifact or ids <= wikiqa
        seen["scifact" if ids <= scifact else "wikiqa"] += len(batch)
    assert seen == {"scifact": 24, "wikiqa": 8}  # weight 0.5: half of WikiQA's queries per epoch
    assert loader.state_dict()["batches"] == len(loader) == 6 + 2
    # resume mid-epoch: a fresh loader given the state after 3 batches hands out exactly the remaining ones
    order = [[item["query_id"] for item in batch] for batch in dm.train_dataloader()]
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": 3, "num_replicas": 1}
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    assert [[item["query_id"] for item in batch] for batch in resumed] == order[3:]
    assert dm.hparams["extra_train"][0]["weight"] == 0.5
