"""Hard negatives: dense mining, in-training refresh, teacher denoising, cached provenance, `mine`."""
from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest

from datamodules.datamodule import RankingDataModule
from stubs import StubTrainer
from datamodules.formats import read_run, write_run
from datamodules.mining.pools import denoise
from rankers.evaluation.metrics import rank_passages
from rankers.models.checkpoints import load_checkpoint




def _dm(**kw) -> RankingDataModule:
    dm = RankingDataModule(**kw)
    dm.trainer = StubTrainer()
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def scifact_kw(shared_data, tmp_path_factory):
    return dict(dataset=str(shared_data / "scifact"), val_split="test", max_train_queries=40, max_eval_queries=10,
                train_subset_size=0, negative_window=(0, 30), cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_cache_hit_skips_mining_and_a_changed_input_misses(scifact_kw, monkeypatch):
    first = _dm(**scifact_kw)
    pools = {ex.query_id: ex.negatives for ex in first.train_dataset.examples}
    calls = []
    original = RankingDataModule.candidate_run
    monkeypatch.setattr(RankingDataModule, "candidate_run", lambda self, q: calls.append(1) or original(self, q))
    again = _dm(**scifact_kw)
    assert calls == [] and {ex.query_id: ex.negatives for ex in again.train_dataset.examples} == pools
    changed = _dm(**{**scifact_kw, "negative_window": (5, 30)})
    assert calls == [1]
    assert all(not set(ex.negatives) - set(pools[ex.query_id]) for ex in changed.train_dataset.examples)
    provenance = json.loads((changed.negative_cache().path(changed.mining_spec(
        [e.query_id for e in changed.train_dataset.examples])) / "provenance.json").read_text())
    assert provenance["spec"]["window"] == [5, 30] and provenance["spec"]["miner"] == "bm25"
    assert provenance["spec"]["dataset_fingerprint"] == changed.load().fingerprint()


def test_denoising_drops_planted_false_negatives(scifact_kw, tmp_path):
    base = _dm(**scifact_kw)
    scores, planted = {}, {}
    for ex in base.train_dataset.examples:
        planted[ex.query_id] = set(ex.negatives[:2])  # unjudged but "relevant" per the teacher
        scores[ex.query_id] = {p: 5.0 for p in ex.positives}
        scores[ex.query_id].update({p: (4.9 if p in planted[ex.query_id] else 0.0) for p in ex.negatives})
    path = tmp_path / "teacher.trec"
    write_run(scores, path)
    dm = _dm(**scifact_kw, teacher_scores=str(path), denoise_margin=0.5)
    for ex in dm.train_dataset.examples:
        original = next(e for e in base.train_dataset.examples if e.query_id == ex.query_id)
        assert set(ex.negatives) == set(original.negatives) - planted[ex.query_id]
    mined = dm.mined([e.query_id for e in dm.train_dataset.examples])
    assert mined.summary()["dropped_total"] == sum(len(p) for p in planted.values())
    # the threshold form finds the same ones
    kept, dropped = denoise({"q": ["a", "b", "c"]}, {"q": {"p": 5.0, "a": 4.9, "b": 0.0, "c": 3.0}}, {"q": ["p"]},
                            threshold=4.0)
    assert kept == {"q": ["b", "c"]} and dropped == {"q": 1}


def _save(model, path):
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def embedded_kw(tmp_path_factory):
    return dict(embedded_scale=0.05, max_eval_queries=10, train_subset_size=0, batch_size=8, num_negatives=3,
                negative_window=(2, 20), cache_dir=str(tmp_path_factory.mktemp("emb-cache")))


def test_dense_mining_excludes_positives_and_uses_the_window(embedded_kw, tmp_path):
    from datamodules.mining.dense import dense_run
    from rankers.models.dual_encoder import DualEncoderRanker

    pl.seed_everything(0)
    # mean pooling + cosine: an untrained BERT's CLS dot products are all ~128 ± 0.01 (rankings by rounding)
    de = DualEncoderRanker(backbone="embedded", passage_max_length=64, pooling="mean", similarity="cos").eval()
    dm = _dm(**embedded_kw, negatives="dense", miner_checkpoint=_save(de, tmp_path / "de.ckpt"), model_loader=load_checkpoint)
    qids = [ex.query_id for ex in dm.train_dataset.examples]
    rows = dm.load().query_index()
    run = dense_run(de, dm.load().corpus, dm.load().queries.select([rows[q] for q in qids]), depth=20, progress=False)
    for ex in dm.train_dataset.examples:
        window = rank_passages(run[ex.query_id])[2:20]
        assert ex.negatives == [p for p in window if p not in ex.positives]
        assert not set(ex.negatives) & set(ex.positives)


def test_teacher_scores_are_computed_once_and_reused(embedded_kw, tmp_path, monkeypatch):
    from rankers.models.cross_encoder import CrossAttentionRanker

    pl.seed_everything(0)
    ckpt = _save(CrossAttentionRanker(backbone="embedded", max_length=64), tmp_path / "ca.ckpt")
    kw = {**embedded_kw, "mining_teacher": ckpt, "denoise_threshold": 1e9, "model_loader": load_checkpoint}
    dm = _dm(**kw)
    ds = dm.train_dataset
    assert ds.teacher_scores is not None
    ex = ds.examples[0]
    assert set(ds.teacher_scores[ex.query_id]) == set(ex.positives) | set(ex.negatives)
    monkeypatch.setattr(RankingDataModule, "score_with_teacher", lambda *a, **k: pytest.fail("re-scored"))
    again = _dm(**kw)
    assert again.train_dataset.teacher_scores == ds.teacher_scores


def test_refresh_during_training_changes_negatives_and_training_continues(embedded_kw, tmp_path, monkeypatch):
    from callbacks.negative_refresh import NegativeRefresh
    from datamodules.mining import dense as negatives
    from rankers.models.dual_encoder import DualEncoderRanker

    pl.seed_everything(0)
    de = DualEncoderRanker(backbone="embedded", passage_max_length=64, lr=1e-3)
    dm = RankingDataModule(**embedded_kw)
    seen, searched = {}, []
    original = negatives.dense_run
    monkeypatch.setattr(negatives, "dense_run", lambda *a, **k: searched.append(k.get("index")) or original(*a, **k))

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen[trainer.current_epoch] = {e.query_id: list(e.negatives) for e in trainer.datamodule.train_dataset.examples}

    refresh = NegativeRefresh(every_n_epochs=1, write_runs=False)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0, enable_progress_bar=False,
                         callbacks=[refresh, Record()], default_root_dir=tmp_path)
    trainer.fit(de, datamodule=dm)
    assert trainer.state.finished and trainer.current_epoch == 3
    assert seen[0] != seen[1] and seen[1] != seen[2]  # BM25 pools, then the DE's own, re-mined again
    # refreshed before epochs 1 and 2 (not after the last one), each time searching the index the
    # end-of-epoch evaluation had just built with the same weights (no second corpus encode)
    assert len(searched) == 2 and all(ix is not None and ix.ntotal == len(dm.load().corpus) for ix in searched)
    assert dm.refreshed is not None and dm.refreshed["miner"] == "dense-refresh"
    assert dm.state_dict()["refreshed"]["model_digest"].startswith("epoch2:")
    assert refresh.state_dict()["refreshed_for_epoch"] == 2 and "history" in refresh.state_dict()
    for ex in dm.train_dataset.examples:
        assert not set(ex.negatives) & set(ex.positives)


def test_refresh_needs_a_dual_encoder_and_reloaded_dataloaders(embedded_kw, tmp_path):
    from callbacks.negative_refresh import NegativeRefresh
    from rankers.models.cross_encoder import CrossAttentionRanker
    from rankers.models.dual_encoder import DualEncoderRanker

    def fit(model, reload):
        trainer = pl.Trainer(max_epochs=2, limit_train_batches=1, accelerator="cpu", logger=False,
                             enable_checkpointing=False, reload_dataloaders_every_n_epochs=reload,
                             num_sanity_val_steps=0, enable_progress_bar=False, default_root_dir=tmp_path,
                             callbacks=[NegativeRefresh(write_runs=False)])
        trainer.fit(model, datamodule=RankingDataModule(**embedded_kw))

    with pytest.raises(ValueError, match="must be a DualEncoderRanker"):
        fit(CrossAttentionRanker(backbone="embedded", max_length=64), 1)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=1"):
        fit(DualEncoderRanker(backbone="embedded", passage_max_length=64), 0)
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        NegativeRefresh(every_n_epochs=0)


def test_checkpoint_arguments_need_the_injected_loader(embedded_kw, tmp_path):
    """The DataModule imports no model code: without model_loader a checkpoint argument is a clear error."""
    dm = RankingDataModule(**embedded_kw, negatives="dense", miner_checkpoint=str(tmp_path / "de.ckpt"))
    dm.trainer = StubTrainer()
    with pytest.raises(ValueError, match=r"miner_checkpoint=.*de\.ckpt.*model_loader=rankers\.load_checkpoint"):
        dm.candidate_run(["q"])


def test_broken_score_files_fail_clearly(scifact_kw, tmp_path):
    path = tmp_path / "nan.trec"
    path.write_text("1 Q0 31715818 1 nan teacher\n")
    with pytest.raises(ValueError, match=r"nan.trec:1.*score"):
        _dm(**scifact_kw, teacher_scores=str(path))


def test_mine_command_writes_run_scores_and_provenance(embedded_kw, tmp_path):
    from rankers.cli import main

    out = tmp_path / "mined"
    main(["mine", "--data.embedded_scale", "0.05", "--data.negative_window", "[0, 10]",
          "--data.cache_dir", embedded_kw["cache_dir"], "--data.train_subset_size", "0", "--output", str(out)])
    run = read_run(out / "negatives.trec")
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["spec"]["window"] == [0, 10] and provenance["summary"]["queries"] >= len(run)
    assert all(len(c) <= 10 for c in run.values())


def test_mining_teacher_does_not_clash_with_the_students_online_teacher_hparam():
    """Lightning merges model and DataModule hparams for loggers: equal names with different values fail."""
    import inspect

    from rankers.models.dual_encoder import DualEncoderRanker

    data_args = set(inspect.signature(RankingDataModule.__init__).parameters) - {"self"}
    model_args = set(inspect.signature(DualEncoderRanker.__init__).parameters) - {"self"}
    assert not data_args & model_args, data_args & model_args


def test_a_run_resumed_after_a_refresh_trains_on_the_refreshed_negatives(embedded_kw, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from callbacks.negative_refresh import NegativeRefresh
    from rankers.models.dual_encoder import DualEncoderRanker

    def trainer(seen, **kw):
        class Record(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                seen[trainer.current_epoch] = {e.query_id: list(e.negatives)
                                               for e in trainer.datamodule.train_dataset.examples}

        return pl.Trainer(max_epochs=2, limit_train_batches=2, accelerator="cpu", logger=False,
                          reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0, enable_progress_bar=False,
                          default_root_dir=tmp_path, callbacks=[NegativeRefresh(write_runs=False), Record(), *kw.get("extra", [])])

    pl.seed_everything(0)
    first: dict = {}
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    trainer(first, extra=[ckpt]).fit(DualEncoderRanker(backbone="embedded", passage_max_length=64, lr=1e-3),
                                     datamodule=RankingDataModule(**embedded_kw))
    assert first[0] != first[1]
    resumed: dict = {}
    pl.seed_everything(0)
    dm = RankingDataModule(**embedded_kw)
    trainer(resumed).fit(DualEncoderRanker(backbone="embedded", passage_max_length=64, lr=1e-3), datamodule=dm,
                         ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt"), weights_only=False)
    assert list(resumed) == [1] and resumed[1] == first[1]  # epoch 1 again, on the pools mined after epoch 0
