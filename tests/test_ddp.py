"""DDP semantics on 2 CPU processes (gloo): data sharding, gathered in-batch negatives, retrieval eval.

One ``torchrun --nproc_per_node 2`` launch of this file (the ``__main__`` part below: Lightning's
``strategy="ddp"`` under torchelastic, the way multi-GPU jobs run) does three things on both ranks and
writes what it saw to a scratch folder; the tests compare that with one process:

* **data**: a full ``fit`` on the embedded data with Lightning's DistributedSampler, 0 and 2 dataloader
  workers -- every rank records the query ids (and drawn candidates) of its batches;
* **loss**: one training step on a fixed global batch of 5 queries split 3 | 2 over the ranks (unequal
  batch sizes and candidate-list widths, a query whose positive sits in the other rank's batch) -- the
  loss and the gradients after DDP's all-reduce, for label training with gathered in-batch negatives
  (and without gathering), and label + M3SE distillation;
* **eval**: ``validate`` with the :class:`RetrievalEvaluator` (re-rank and full retrieval) and its default
  run-file folder (``trainer.log_dir``, a collective under DDP);
* **collections**: a ``fit`` on the embedded data plus WikiQA (``extra_train``, ``../shared/data``) --
  every rank records the query ids of its batches (each global batch from one collection);
* **suite**: ``test`` with :class:`callbacks.SuiteEvaluator` (re-rank and full retrieval) -- every rank's
  numbers, which must equal one process's;
* **rerank**: ``python -m rankers rerank --devices 2`` (a ``predict`` loop with :class:`callbacks.RunWriter`)
  on a tiny cross-attention checkpoint -- each rank scores half of the pairs, rank 0 writes the whole run.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # beside the checkout (CI has it): WikiQA for the collections part
WORLD = 2
DATA_SPLIT_RUNS = {  # name -> DataModule overrides; 24 queries split evenly, 15 leave the sampler one to pad
    "even_workers0": {"max_train_queries": 24, "num_workers": 0},
    "odd_workers2": {"max_train_queries": 15, "num_workers": 2},
}
DATA_EPOCHS = 2
LOSS_RUNS = {  # name -> DualEncoderRanker overrides
    "label_gathered": {},
    "label_local": {"gather_negatives": False},
    "label_and_m3se": {"label_weight": 0.5, "distillation_loss": "m3se"},
    # KL over the gathered in-batch passages (teacher mass on each query's own candidates only), mixed with the
    # in-batch label term: both terms share the one gathered score matrix
    "kl_in_batch": {"label_weight": 0.5, "distillation_loss": "kl_in_batch"},
    # gradient caching (2 texts per chunk) under DDP: gathered in-batch negatives, re-encoding in backward
    "grad_cache": {"label_weight": 0.5, "distillation_loss": "m3se", "grad_cache_chunk_size": 2},
}
RANK_SPLIT = [[0, 1, 2], [3, 4]]  # global batch positions on each rank
EVAL_METRICS = ("mrr@10", "ndcg@10", "recall@100")
# an untrained BERT's CLS vectors are nearly equal (dot scores 127.98 +- 0.01): mean pooling and cosine spread
# the scores out, so the 1- and 2-process rankings do not hinge on float rounding
EVAL_MODEL = {"pooling": "mean", "similarity": "cos", "temperature": 0.05}


def _datamodule(**overrides: Any):
    from datamodules.datamodule import RankingDataModule

    kwargs = dict(embedded_scale=0.05, num_negatives=3, batch_size=4, eval_depth=9, max_eval_queries=9,
                  eval_batch_size=16, train_subset_size=0, seed=0)
    return RankingDataModule(**{**kwargs, **overrides})


def _model(**overrides: Any):
    """The tiny embedded DE, seeded, with dropout off (so 1- and 2-process gradients can agree)."""
    import lightning.pytorch as pl
    from torch import nn

    from rankers.models.dual_encoder import DualEncoderRanker

    pl.seed_everything(0, verbose=False)
    model = DualEncoderRanker(**{"backbone": "embedded", "passage_max_length": 64, "lr": 1e-3, **overrides})
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _trainer(devices: int, **overrides: Any):
    import lightning.pytorch as pl

    kwargs = dict(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  num_sanity_val_steps=0)
    return pl.Trainer(**{**kwargs, **overrides})


# ================================================================================================
# The 2-process side (run by torchrun: ``python -m torch.distributed.run ... tests/test_ddp.py OUT``)
# ================================================================================================
def _worker(out: Path) -> None:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    rank = int(os.environ["RANK"])

    class BatchRecorder(pl.Callback):
        """What this rank trains on: query ids and drawn candidates per batch, and the loader's set-up."""

        def __init__(self) -> None:
            self.batches: list[dict[str, Any]] = []
            self.loaders: list[dict[str, Any]] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            from torch.utils.data.distributed import DistributedSampler

            loader = trainer.train_dataloader
            sampler = loader.sampler
            shards = [sampler.num_replicas, sampler.rank] if isinstance(sampler, DistributedSampler) else None
            context = loader.multiprocessing_context
            self.loaders.append({"shards": shards, "num_workers": loader.num_workers,
                                 "start": context.get_start_method() if context is not None else None})

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.batches.append({"epoch": trainer.current_epoch, "query_ids": batch.query_ids,
                                 "passage_ids": batch.passage_ids})

    for name, overrides in DATA_SPLIT_RUNS.items():
        dm, recorder = _datamodule(**overrides), BatchRecorder()
        trainer = _trainer(WORLD, max_epochs=DATA_EPOCHS, reload_dataloaders_every_n_epochs=1,
                           limit_val_batches=0, callbacks=[recorder])
        pl.seed_everything(0, verbose=False)
        trainer.fit(_model(), datamodule=dm)
        (out / f"data-{name}-rank{rank}.json").write_text(json.dumps({
            "dataset": [ex.query_id for ex in dm.train_dataset.examples],
            "batches": recorder.batches, "loaders": recorder.loaders}))

    class GradRecorder(pl.Callback):
        """The loss of the one step and the gradients DDP leaves before the optimizer step."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.loss = float(outputs["loss"])

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}

    examples = json.loads((out / "loss_examples.json").read_text())
    for name, overrides in LOSS_RUNS.items():
        model, recorder = _model(**overrides), GradRecorder()
        local = [examples[i] for i in RANK_SPLIT[rank]]
        loader = DataLoader(local, batch_size=len(local), collate_fn=model.collator())
        trainer = _trainer(WORLD, max_steps=1, use_distributed_sampler=False, limit_val_batches=0,
                           callbacks=[recorder])
        trainer.fit(model, train_dataloaders=loader)
        torch.save({"loss": recorder.loss, "grads": recorder.grads}, out / f"loss-{name}-rank{rank}.pt")

    _worker_eval(out, rank)
    _worker_rerank(out, rank)
    _worker_collections(out, rank, recorder_class=BatchRecorder)
    _worker_suite(out, rank)


def _collections_datamodule():
    from datamodules.datamodule import TrainingCollection

    return _datamodule(max_train_queries=12, extra_train=[TrainingCollection(str(SHARED_DATA / "wikiqa"), weight=1.0,
                                                                             max_train_queries=8)])


def _worker_collections(out: Path, rank: int, recorder_class) -> None:
    import lightning.pytorch as pl

    dm, recorder = _collections_datamodule(), recorder_class()
    trainer = _trainer(WORLD, max_epochs=1, limit_val_batches=0, callbacks=[recorder])
    pl.seed_everything(0, verbose=False)
    trainer.fit(_model(), datamodule=dm)
    (out / f"collections-rank{rank}.json").write_text(json.dumps({
        "main": [ex.query_id for ex in dm.train_dataset.examples],
        "extra": [ex.query_id for ex in dm.extra_collections()[0].train_dataset.examples],
        "batches": recorder.batches}))


def _suite():
    from callbacks.suite_eval import SuiteEvaluator

    return SuiteEvaluator(["embedded"], embedded_scale=0.05, split="test", eval_depth=9, max_eval_queries=7,
                          metrics=list(EVAL_METRICS), batch_size=16, full_retrieval=True)


def _worker_suite(out: Path, rank: int) -> None:
    suite = _suite()
    trainer = _trainer(WORLD, default_root_dir=str(out / "suite2"), callbacks=[suite])
    trainer.test(_model(**EVAL_MODEL), datamodule=_datamodule())
    (out / f"suite-rank{rank}.json").write_text(json.dumps({"results": suite.results,
                                                            "retrieval": suite.retrieval_results}))


def _rerank_argv(out: Path, output: Path, devices: int) -> list[str]:
    return ["--ckpt_path", str(out / "ca.ckpt"), "--run", str(out / "candidates.trec"), "--data.dataset", "embedded",
            "--data.embedded_scale", "0.05", "--output", str(output), "--depth", "9", "--batch_size", "8",
            "--accelerator", "cpu", "--devices", str(devices)]


def _worker_rerank(out: Path, rank: int) -> None:
    from rankers.commands.serve import rerank_main

    run = rerank_main(_rerank_argv(out, out / "rerank2.trec", WORLD))
    (out / f"rerank-rank{rank}.json").write_text(json.dumps({"run": run}))


def _worker_eval(out: Path, rank: int) -> None:
    import datamodules.formats
    import rankers.retrieval.encode
    from callbacks.retrieval_eval import RetrievalEvaluator

    writes: list[str] = []
    encoded: list[tuple[str, int]] = []
    write_run, encode_texts = datamodules.formats.write_run, rankers.retrieval.encode.encode_texts

    def spy_write_run(run, path, **kwargs):
        writes.append(str(path))
        return write_run(run, path, **kwargs)

    def spy_encode_texts(model, texts, side, **kwargs):
        encoded.append((side, len(texts)))
        return encode_texts(model, texts, side, **kwargs)

    datamodules.formats.write_run, rankers.retrieval.encode.encode_texts = spy_write_run, spy_encode_texts
    # the pair loop (what a CA always uses) is what is sharded and gathered: score the DE's pairs there too
    evaluator = RetrievalEvaluator(metrics=EVAL_METRICS, retrieval_depth=100, encode_batch_size=16,
                                   rerank_from_embeddings=False)
    scored: list[int] = []
    evaluator_collect = evaluator._collect

    def collect(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        scored.extend(outputs["pair_index"].tolist())
        return evaluator_collect(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    evaluator.on_validation_batch_end = collect
    trainer = _trainer(WORLD, default_root_dir=str(out / "eval2"), callbacks=[evaluator])
    trainer.validate(_model(**EVAL_MODEL), datamodule=_datamodule())
    (out / f"eval-rank{rank}.json").write_text(json.dumps({
        "results": evaluator.results, "runs": evaluator.runs, "writes": writes, "encoded": encoded,
        "scored_pairs": scored}))


# ================================================================================================
# The pytest side
# ================================================================================================
def _loss_examples() -> list[dict[str, Any]]:
    """5 training examples of the embedded data with teacher scores; query 3 (rank 1) also gets query 0's
    positive as a candidate (a positive of a rank-0 query that only rank 1 encodes), and query 4 keeps
    one negative (the ranks' candidate lists differ in width)."""
    dm = _datamodule()
    dm.prepare_data()
    dm.setup("fit")
    examples = [dict(dm.train_dataset[i]) for i in range(5)]
    moved = examples[0]["passage_ids"][0]
    assert moved in examples[0]["positive_ids"] and moved not in examples[3]["positive_ids"]
    examples[3]["passage_ids"] = [*examples[3]["passage_ids"], moved]
    examples[3]["passages"] = [*examples[3]["passages"], examples[0]["passages"][0]]
    examples[3]["labels"] = [*examples[3]["labels"], 0.0]
    for key in ("passage_ids", "passages", "labels"):
        examples[4][key] = examples[4][key][:2]
    rng = random.Random(0)
    for ex in examples:
        ex["teacher_scores"] = [rng.uniform(-3.0, 3.0) for _ in ex["passage_ids"]]
    return examples


def _rerank_inputs(out: Path) -> None:
    """A tiny CA checkpoint and a candidate run (BM25 top 12 of 9 val queries, one of them with 5) to re-rank."""
    import lightning.pytorch as pl

    from datamodules.formats import write_run
    from rankers.models.cross_encoder import CrossAttentionRanker

    pl.seed_everything(0, verbose=False)
    trainer = _trainer(1)
    trainer.strategy.connect(CrossAttentionRanker(backbone="embedded", max_length=64))
    trainer.save_checkpoint(out / "ca.ckpt")
    dm = _datamodule(eval_depth=12)
    dm.prepare_data()
    dm.setup("validate")
    run = dm.split_candidate_run(dm.val_split, list(dm.eval_sets["val"].qrels))
    first = next(iter(run))
    run[first] = dict(list(run[first].items())[:5])
    write_run(run, out / "candidates.trec", tag="bm25")


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    """Prepare the data here (so the ranks only read caches), then run the 2-process worker once."""
    out = tmp_path_factory.mktemp("ddp")
    (out / "loss_examples.json").write_text(json.dumps(_loss_examples()))
    _model()  # builds the embedded backbone once, here, rather than in both ranks at once
    for overrides in DATA_SPLIT_RUNS.values():
        _datamodule(**overrides).prepare_data()
    _rerank_inputs(out)
    _collections_datamodule().prepare_data()
    suite = _suite()
    suite.pairs(0)  # the suite's BM25 candidates cached here, not by both ranks at once
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", str(WORLD), str(Path(__file__).resolve()), str(out)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    except subprocess.TimeoutExpired as err:  # a collective called on one rank only hangs forever
        pytest.fail(f"the 2-process run hung (timeout); output tail:\n{str(err.stdout)[-4000:]}\n{str(err.stderr)[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"the 2-process run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return out


def _rank_json(out: Path, stem: str) -> list[dict[str, Any]]:
    return [json.loads((out / f"{stem}-rank{r}.json").read_text()) for r in range(WORLD)]


# --- data ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(DATA_SPLIT_RUNS))
def test_each_epoch_is_split_over_ranks_and_workers_without_overlap(ddp_out, name):
    ranks = _rank_json(ddp_out, f"data-{name}")
    dataset = ranks[0]["dataset"]
    assert ranks[1]["dataset"] == dataset and len(dataset) == DATA_SPLIT_RUNS[name]["max_train_queries"]
    workers = DATA_SPLIT_RUNS[name]["num_workers"]
    for r, rank in enumerate(ranks):  # a DistributedSampler (Lightning's, or the DataModule's own) shards; workers used
        # workers of a DDP rank start from a forkserver, not by forking a process that runs gloo threads
        start = "forkserver" if workers else None
        assert rank["loaders"] == [{"shards": [WORLD, r], "num_workers": workers, "start": start}] * DATA_EPOCHS
    per_rank = -(-len(dataset) // WORLD)  # the sampler pads to equal shards by repeating examples
    orders = []
    for epoch in range(DATA_EPOCHS):
        seen = [[q for b in rank["batches"] if b["epoch"] == epoch for q in b["query_ids"]] for rank in ranks]
        for ids in seen:  # within a rank (all of its workers together) no example twice
            assert len(ids) == per_rank and len(set(ids)) == per_rank
        union = seen[0] + seen[1]
        assert set(union) == set(dataset)  # every example is trained on in every epoch
        assert len(union) - len(set(union)) == WORLD * per_rank - len(dataset)  # 0 if even, else the padding
        orders.append(union)
    assert orders[0] != orders[1]  # DistributedSampler.set_epoch reshuffles every epoch


def test_drawn_negatives_do_not_depend_on_the_rank_layout(ddp_out):
    name = "odd_workers2"
    dm = _datamodule(**DATA_SPLIT_RUNS[name])
    dm.setup("fit")
    position = {ex.query_id: i for i, ex in enumerate(dm.train_dataset.examples)}
    checked = 0
    for rank in _rank_json(ddp_out, f"data-{name}"):
        for batch in rank["batches"]:
            dm.train_dataset.epoch = batch["epoch"]
            for qid, candidates in zip(batch["query_ids"], batch["passage_ids"]):
                assert candidates == dm.train_dataset.draw(position[qid])[1]  # what 1 process draws
                checked += 1
    assert checked == DATA_EPOCHS * WORLD * 8


# --- loss and gradients -------------------------------------------------------------------------
def _one_process(name: str, examples: list[dict[str, Any]], positions: list[int]):
    """Loss and gradients of one process on the given examples (``loss.backward()``, no DDP)."""
    model = _model(**LOSS_RUNS[name]).train()
    loss, _ = model.listwise_loss(model.collator()([examples[i] for i in positions]))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _ddp_step(out: Path, name: str):
    import torch

    ranks = [torch.load(out / f"loss-{name}-rank{r}.pt") for r in range(WORLD)]
    for n, g in ranks[0]["grads"].items():  # DDP leaves the same averaged gradient on every rank
        assert torch.equal(g, ranks[1]["grads"][n]), n
    return sum(r["loss"] for r in ranks) / WORLD, ranks[0]["grads"]


def _assert_grads_close(actual, expected) -> None:
    """Per parameter: ``|a - e| <= 5e-3 |e| + 1e-6 |e_all|`` (L2 norms). Summation order differs between one
    batch of 5 and two of 3 | 2, which moves a few gradients by ~1e-3 relative (LayerNorm biases; the
    attention key biases, whose true gradient is 0, are pure rounding: hence the floor); a wrong gradient
    (see the no-gathering control) is off by 10-30 %."""
    import torch

    assert set(actual) == set(expected) and len(actual) > 10
    assert not any("pooler" in n for n in actual)  # frozen: DDP fails on parameters without gradient
    scale = torch.cat([g.reshape(-1) for g in expected.values()]).norm().item()
    for n, g in expected.items():
        error = (actual[n] - g).norm().item()
        assert error <= 5e-3 * g.norm().item() + 1e-6 * scale, f"{n}: |diff| {error:.3e} vs |grad| {g.norm().item():.3e}"


def _relative_difference(a, b) -> float:
    import torch

    flat = [(a[n] - b[n]).reshape(-1) for n in b]
    return (torch.cat(flat).norm() / torch.cat([g.reshape(-1) for g in b.values()]).norm()).item()


@pytest.mark.parametrize("name", ["label_gathered", "label_and_m3se", "kl_in_batch", "grad_cache"])
def test_two_processes_give_the_loss_and_gradients_of_one_process_on_the_global_batch(ddp_out, name):
    examples = json.loads((ddp_out / "loss_examples.json").read_text())
    loss, grads = _one_process(name, examples, [0, 1, 2, 3, 4])
    ddp_loss, ddp_grads = _ddp_step(ddp_out, name)
    assert abs(ddp_loss - loss.item()) < 1e-5 * max(1.0, abs(loss.item()))
    _assert_grads_close(ddp_grads, grads)
    # the test can tell: training each rank on its own batch (no gathering) is a different gradient
    local = [_one_process(name, examples, positions)[1] for positions in RANK_SPLIT]
    sizes = [len(p) for p in RANK_SPLIT]
    no_gathering = {n: sum(s * g[n] for s, g in zip(sizes, local)) / sum(sizes) for n in grads}
    agreement, control = _relative_difference(ddp_grads, grads), _relative_difference(no_gathering, grads)
    print(f"{name}: |ddp - one process| / |grad| = {agreement:.2e}; without gathering {control:.2e}")
    assert agreement < 1e-3 and control > max(5e-3, 10 * agreement)


def test_without_gathering_each_rank_uses_its_own_in_batch_negatives(ddp_out):
    examples = json.loads((ddp_out / "loss_examples.json").read_text())
    sizes = [len(p) for p in RANK_SPLIT]
    runs = [_one_process("label_local", examples, positions) for positions in RANK_SPLIT]
    # the global-mean weighting still holds: rank r's mean counts |batch_r| / |global batch|
    expected = {n: sum(s * run[1][n] for s, run in zip(sizes, runs)) / sum(sizes) for n in runs[0][1]}
    ddp_loss, ddp_grads = _ddp_step(ddp_out, "label_local")
    assert abs(ddp_loss - sum(s * run[0].item() for s, run in zip(sizes, runs)) / sum(sizes)) < 1e-5
    _assert_grads_close(ddp_grads, expected)
    assert _relative_difference(_ddp_step(ddp_out, "label_gathered")[1], ddp_grads) > 5e-2


def test_keyed_collator_labels_match_the_collators_in_batch_labels():
    """The id-key label matrix used across ranks equals the collator's own, on one process."""
    import torch

    from rankers import distributed

    examples = _loss_examples()
    batch = _model().collator()(examples)
    labels = distributed.key_labels(batch.positive_keys, batch.positive_mask,
                                    batch.passage_keys.reshape(-1), batch.mask.reshape(-1))
    assert torch.equal(labels, batch.in_batch_labels)
    assert labels[0].sum() >= 2  # query 0's positive in its own list and in query 3's
    assert distributed.id_keys(["p1", "p1", "p2"]).tolist()[0] == distributed.id_keys(["p1"]).item()


# --- retrieval evaluation -----------------------------------------------------------------------
def test_retrieval_eval_on_two_processes_matches_one_process(ddp_out, tmp_path):
    from callbacks.retrieval_eval import RetrievalEvaluator
    from datamodules.formats import read_run

    dm = _datamodule()
    evaluator = RetrievalEvaluator(metrics=EVAL_METRICS, retrieval_depth=100, encode_batch_size=16)
    _trainer(1, default_root_dir=str(tmp_path), callbacks=[evaluator]).validate(_model(**EVAL_MODEL), datamodule=dm)
    ranks = _rank_json(ddp_out, "eval")
    n_pairs, n_corpus = len(dm.eval_sets["val"]), len(dm.load().corpus)
    assert n_pairs % WORLD == 1  # odd: the val sampler repeats one pair, which must be counted once

    # each rank scored about half of the pairs, together all of them; each encoded half of the corpus
    scored = [set(r["scored_pairs"]) for r in ranks]
    assert scored[0] | scored[1] == set(range(n_pairs)) and len(scored[0]) == len(scored[1]) == n_pairs // 2 + 1
    shards = [[n for side, n in r["encoded"] if side == "passage"] for r in ranks]
    assert shards == [[n_corpus // 2], [n_corpus - n_corpus // 2]]

    assert set(evaluator.results) == {"val/rerank", "val/retrieval"}
    for r in ranks:  # every rank logs the same metrics, equal to one process's
        assert set(r["results"]) == set(evaluator.results)
        for key, values in evaluator.results.items():
            assert r["results"][key] == pytest.approx(values, abs=1e-6), key
            assert set(r["runs"][key]) == set(evaluator.runs[key])
            for qid, scores in evaluator.runs[key].items():
                assert r["runs"][key][qid] == pytest.approx(scores, rel=1e-5, abs=1e-6)
    assert 0 < evaluator.results["val/retrieval"]["recall@100"]

    # run files: written by rank 0 only, once per (set, mode), into the trainer's log dir
    run_dir = ddp_out / "eval2" / "runs"
    assert sorted(ranks[0]["writes"]) == [str(run_dir / f"val-{m}-epoch0.trec") for m in ("rerank", "retrieval")]
    assert ranks[1]["writes"] == []
    for mode in ("rerank", "retrieval"):
        two, one = read_run(run_dir / f"val-{mode}-epoch0.trec"), read_run(tmp_path / "runs" / f"val-{mode}-epoch0.trec")
        assert list(two) == list(one)
        for qid, ranking in two.items():  # same passages, same order up to swaps of float-rounding ties
            assert set(ranking) == set(one[qid])
            in_one = [one[qid][pid] for pid in ranking]
            assert all(a >= b - 1e-6 * abs(b) for a, b in zip(in_one, in_one[1:])), (mode, qid)


# --- several training collections and the suite ---------------------------------------------------
def test_two_collections_under_ddp_keep_each_global_batch_in_one_collection(ddp_out):
    ranks = _rank_json(ddp_out, "collections")
    main, extra = set(ranks[0]["main"]), set(ranks[0]["extra"])
    assert len(main) == 12 and len(extra) == 8 and not main & extra
    assert all(set(r["main"]) == main and set(r["extra"]) == extra for r in ranks)
    steps = [r["batches"] for r in ranks]
    assert len(steps[0]) == len(steps[1]) == 2 + 1  # global batches of 2 ranks x 4 queries: ceil(12 / 8) + 8 / 8
    seen = {"main": [], "extra": []}
    for step in zip(*steps):  # the two ranks' halves of one global batch: from one collection
        ids = [q for half in step for q in half["query_ids"]]
        side = "main" if set(ids) <= main else "extra"
        assert set(ids) <= (main if side == "main" else extra), step
        assert len(ids) == 2 * 4
        seen[side] += ids
    assert set(seen["main"]) == main and set(seen["extra"]) == extra  # one pass over each, the last batch completed


def test_suite_evaluator_on_two_processes_matches_one_process(ddp_out, tmp_path):
    suite = _suite()
    _trainer(1, default_root_dir=str(tmp_path), callbacks=[suite]).test(_model(**EVAL_MODEL), datamodule=_datamodule())
    assert suite.results["embedded"]["num_queries"] == 7 and suite.retrieval_results
    for rank in _rank_json(ddp_out, "suite"):
        assert set(rank["results"]) == set(suite.results)
        for name, values in suite.results.items():
            assert rank["results"][name] == pytest.approx(values, abs=1e-6), name
        for name, values in suite.retrieval_results.items():
            assert rank["retrieval"][name] == pytest.approx(values, abs=1e-6), name
    assert (ddp_out / "suite2" / "suite.md").is_file()


# --- rerank -------------------------------------------------------------------------------------
def test_rerank_on_two_processes_writes_the_run_of_one_process(ddp_out, tmp_path):
    from datamodules.formats import read_candidates, read_run
    from rankers.commands.serve import rerank_main
    from rankers.evaluation.metrics import rank_passages

    one = rerank_main(_rerank_argv(ddp_out, tmp_path / "rerank1.trec", 1))
    candidates = read_candidates(ddp_out / "candidates.trec")
    # every query of the run, its top 9 candidates (depth), the 5-candidate query whole
    assert {q: set(c) for q, c in one.items()} == {q: set(rank_passages(c)[:9]) for q, c in candidates.items()}
    assert sorted(len(c) for c in one.values())[0] == 5
    two = read_run(ddp_out / "rerank2.trec")  # written by rank 0 from both ranks' scores
    assert set(two) == set(one)
    for qid, scores in one.items():
        assert two[qid] == pytest.approx(scores, rel=1e-5, abs=1e-6)
    for rank in _rank_json(ddp_out, "rerank"):  # every rank returns the whole gathered run
        assert set(rank["run"]) == set(one)
    assert len(set(round(s, 4) for c in one.values() for s in c.values())) > 1  # scores that can disagree


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _worker(Path(sys.argv[1]))
