"""The LightningCLI end to end on the embedded default (tiny scale): fit → predict → distill → test."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datamodules.formats import read_teacher_scores
from rankers.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--config", "configs/overlays/cpu_smoke.yaml", "--trainer.enable_model_summary", "false",
         "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    shutil.copytree(ROOT / "configs", work / "configs")
    return work


def _cli(workdir: Path, monkeypatch, *args: str):
    monkeypatch.chdir(workdir)
    return main(list(args))


def test_teacher_fit_predict_then_distill_and_test(workdir, monkeypatch):
    cli = _cli(workdir, monkeypatch, "fit", "--config", "configs/ca_teacher.yaml", *SMOKE)
    assert (workdir / "runs/ca_teacher/checkpoints/best.ckpt").exists()
    assert "val/rerank/mrr@10" in cli.trainer.callback_metrics
    assert list((workdir / "runs/ca_teacher/runs").glob("val-rerank-epoch0.trec"))

    _cli(workdir, monkeypatch, "predict", "--config", "configs/ca_teacher.yaml", *SMOKE,
         "--ckpt_path", "runs/ca_teacher/checkpoints/best.ckpt")
    scores = read_teacher_scores(workdir / "runs/ca_teacher/teacher_scores.trec")
    dm = cli.datamodule
    dm.setup("fit")
    for ex in dm.train_dataset.examples:  # every positive and pooled negative is scored
        assert set(ex.positives) | set(ex.negatives) <= set(scores[ex.query_id])

    cli = _cli(workdir, monkeypatch, "fit", "--config", "configs/de_distill.yaml", *SMOKE)
    metrics = cli.trainer.callback_metrics
    assert "train/distill_loss" in metrics and "val/retrieval/mrr@10" in metrics and "gap/rerank/mrr@10" in metrics

    cli = _cli(workdir, monkeypatch, "test", "--config", "configs/de_distill.yaml", *SMOKE,
               "--ckpt_path", "runs/de_distill/checkpoints/best.ckpt")
    assert {"test/rerank/mrr@10", "test/retrieval/recall@100"} <= set(cli.trainer.callback_metrics)
    assert (workdir / "runs/de_distill/runs/test-retrieval-epoch0.trec").exists()

    cli = _cli(workdir, monkeypatch, "validate", "--config", "configs/de_baseline.yaml", *SMOKE)
    assert "val/rerank/mrr@10" in cli.trainer.callback_metrics


def test_published_score_and_negative_files_drive_fit(workdir, monkeypatch, tmp_path):
    """Issue 13: the teacher's scores as Hofstätter et al.'s score-pair TSV (gzipped) or a parquet run, and its
    pools as sentence-transformers' hard-negatives JSONL, each through `fit` on the real CLI."""
    import gzip
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from datamodules.datamodule import RankingDataModule

    trec = workdir / "runs/ca_teacher/teacher_scores.trec"
    if not trec.exists():  # run alone: make the teacher and its scores first
        _cli(workdir, monkeypatch, "fit", "--config", "configs/ca_teacher.yaml", *SMOKE)
        _cli(workdir, monkeypatch, "predict", "--config", "configs/ca_teacher.yaml", *SMOKE,
             "--ckpt_path", "runs/ca_teacher/checkpoints/best.ckpt")
    scores = read_teacher_scores(trec)
    qrels = RankingDataModule(embedded_scale=0.1).load().qrels["train"]
    pairs, hard = [], []
    for qid, pool in scores.items():
        positives = [p for p in pool if qrels[qid].get(p, 0) > 0]
        negatives = sorted((p for p in pool if p not in positives), key=pool.get, reverse=True)
        for pos in positives:
            pairs += [f"{pool[pos]!r}\t{pool[neg]!r}\t{qid}\t{pos}\t{neg}\n" for neg in negatives]
        hard.append(json.dumps({"qid": qid, "pos": positives, "neg": {"ce": negatives, "bm25": negatives[::-1]}}) + "\n")
    (tmp_path / "pairs.tsv.gz").write_bytes(gzip.compress("".join(pairs).encode()))
    (tmp_path / "hard-negatives.jsonl.gz").write_bytes(gzip.compress("".join(hard).encode()))
    rows = [(q, p, v) for q, pool in scores.items() for p, v in pool.items()]
    pq.write_table(pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows],
                             "score": [r[2] for r in rows]}), tmp_path / "scores.parquet")

    # score pairs as the targets, the hard-negatives file as the pools, in one distillation run
    cli = _cli(workdir, monkeypatch, "fit", "--config", "configs/de_distill.yaml", *SMOKE,
               "--data.teacher_scores", str(tmp_path / "pairs.tsv.gz"),
               "--data.negatives", "run", "--data.negatives_run", str(tmp_path / "hard-negatives.jsonl.gz"))
    assert "train/distill_loss" in cli.trainer.callback_metrics
    train = cli.datamodule.train_dataset
    for ex in train.examples:
        assert set(ex.negatives) <= set(scores[ex.query_id]) - set(qrels[ex.query_id])  # from the file's pools
        assert all(train.teacher_scores[ex.query_id][p] == scores[ex.query_id][p]  # the file's scores are the targets
                   for p in (*ex.positives, *ex.negatives))
    # a parquet run as the targets (one training step, no validation: the loading is what is tested)
    cli = _cli(workdir, monkeypatch, "fit", "--config", "configs/de_distill.yaml", *SMOKE,
               "--data.teacher_scores", str(tmp_path / "scores.parquet"),
               "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "0")
    train = cli.datamodule.train_dataset
    assert "train/distill_loss" in cli.trainer.callback_metrics
    assert all(train.teacher_scores[ex.query_id][p] == scores[ex.query_id][p]
               for ex in train.examples for p in (*ex.positives, *ex.negatives))


def test_a_checkpoint_of_a_model_built_in_python_tests_through_the_cli(workdir, monkeypatch, tmp_path):
    """reproduce and the API build models in Python, not through the LightningCLI: their checkpoints must
    still rebuild the right class under `rankers test --ckpt_path` (not the RankerModule base class)."""
    import lightning.pytorch as pl

    from rankers.models.dual_encoder import DualEncoderRanker

    model = DualEncoderRanker(backbone="tiny", similarity="dot", temperature=1.0)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "python.ckpt")
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("rankers.cli").addHandler(handler)
    try:
        cli = _cli(workdir, monkeypatch, "test", "--config", "configs/de_baseline.yaml", *SMOKE,
                   "--ckpt_path", str(tmp_path / "python.ckpt"))
    finally:
        logging.getLogger("rankers.cli").removeHandler(handler)
    assert type(cli.model).__name__ == "DualEncoderRanker" and cli.model.similarity == "dot"
    assert "test/rerank/mrr@10" in cli.trainer.callback_metrics
    assert [r.getMessage() for r in records] == [
        f"outputs: run directory runs/de_baseline; checkpoint tested {tmp_path / 'python.ckpt'}"]


def test_distill_without_score_file_names_the_command(workdir, monkeypatch):
    with pytest.raises(FileNotFoundError, match="rankers predict --config configs/ca_teacher.yaml"):
        _cli(workdir, monkeypatch, "fit", "--config", "configs/de_distill.yaml", *SMOKE,
             "--data.teacher_scores", "runs/nowhere/teacher_scores.trec")


def test_switching_dataset_and_backbone_by_flag(workdir, monkeypatch, shared_data, minilm_path):
    """--data.dataset a BEIR dir and --model.backbone a local model dir, same flags as every config."""
    # re-rank only: encoding all 5,183 abstracts with MiniLM on 2 CPU cores would take a minute
    (workdir / "rerank_only.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: callbacks.RetrievalEvaluator\n"
        "      init_args: {full_retrieval: false, write_runs: false}\n")
    cli = _cli(workdir, monkeypatch, "validate", "--config", "configs/de_baseline.yaml", *SMOKE,
               "--config", "rerank_only.yaml",
               "--data.dataset", str(shared_data / "scifact"), "--data.val_split", "test",
               "--data.max_eval_queries", "8", "--data.eval_depth", "10",
               "--model.backbone", minilm_path, "--model.pooling", "mean")
    assert cli.model.query_encoder.config.hidden_size == 384
    # a real pretrained encoder re-ranking BM25's top-10 of SciFact finds relevant abstracts
    assert cli.trainer.callback_metrics["val/rerank/mrr@10"] > 0.3


def test_fit_on_two_training_collections_from_the_command_line(shared_data, tmp_path):
    """--data.extra_train: a typed list LightningCLI parses (YAML / JSON), mixed into the training batches."""
    from rankers.cli import main

    configs = Path(__file__).resolve().parents[1] / "configs"
    extra = f'[{{dataset: {shared_data / "wikiqa"}, weight: 0.5, max_train_queries: 16}}]'
    main(["fit", "--config", str(configs / "de_baseline.yaml"), "--config", str(configs / "overlays" / "cpu_smoke.yaml"),
          "--data.extra_train", extra, "--data.cache_dir", str(tmp_path / "cache"), "--trainer.accelerator", "cpu",
          "--trainer.default_root_dir", str(tmp_path / "run")])
    import torch

    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (extra,) = ckpt["datamodule_hyper_parameters"]["extra_train"]  # plain data: loads with weights_only=True
    assert extra["dataset"] == str(shared_data / "wikiqa") and extra["weight"] == 0.5
