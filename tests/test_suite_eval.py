"""callbacks.SuiteEvaluator (issue 13): `test` re-ranks a suite of datasets from one config overlay, logs each
and the mean, writes a run per dataset -- and on the dataset the main evaluation uses it reproduces it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datamodules.formats import read_run
from rankers.cli import lightning_cli, main
from rankers.evaluation.metrics import evaluate_run

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--config", "configs/overlays/cpu_smoke.yaml", "--trainer.enable_model_summary", "false",
         "--trainer.enable_progress_bar", "false"]


def test_a_suite_from_one_overlay(tmp_path, monkeypatch, shared_data):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    cli = lightning_cli(["--config", "configs/de_baseline.yaml", *SMOKE], run=False)  # an untrained tiny DE
    cli.trainer.strategy.connect(cli.model)
    cli.trainer.save_checkpoint(tmp_path / "de.ckpt")
    # the shipped overlay, with ../shared/data resolved from here and the suite kept small
    overlay = (ROOT / "configs" / "overlays" / "suite.yaml").read_text()
    overlay = overlay.replace("../shared/data", str(shared_data)).replace("eval_depth: 100", (
        "eval_depth: 20\n        max_eval_queries: 20\n        embedded_scale: 0.1\n        full_retrieval: true"))
    (tmp_path / "suite.yaml").write_text(overlay)
    cli = main(["test", "--config", "configs/de_baseline.yaml", *SMOKE, "--config", "suite.yaml",
                "--data.eval_depth", "20", "--ckpt_path", str(tmp_path / "de.ckpt")])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    names = ["embedded", "scifact", "wikiqa"]
    for name in names:
        assert 0.0 <= metrics[f"suite/{name}/ndcg@10"] <= 1.0, name
    assert metrics["suite/mean/ndcg@10"] == pytest.approx(sum(metrics[f"suite/{n}/ndcg@10"] for n in names) / 3)
    # the embedded default at the main evaluation's settings: the suite re-ranks exactly what `test` re-ranked
    assert metrics["suite/embedded/ndcg@10"] == pytest.approx(metrics["test/rerank/ndcg@10"], abs=1e-5)
    run_dir = tmp_path / "runs" / "de_baseline"
    suite = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "SuiteEvaluator")
    for name in names:
        run = read_run(run_dir / "runs" / f"suite-{name}-test.trec")
        qrels = suite.pairs(names.index(name)).qrels
        assert evaluate_run(run, qrels, ["ndcg@10"])["ndcg@10"] == pytest.approx(metrics[f"suite/{name}/ndcg@10"], abs=1e-6)
    # WikiQA ships candidate runs: its suite pairs are those, not BM25
    wikiqa = read_run(shared_data / "wikiqa" / "candidates_test.run")
    assert all(set(c) <= set(wikiqa[q]) for q, c in read_run(run_dir / "runs" / "suite-wikiqa-test.trec").items())
    table = (run_dir / "suite.md").read_text()
    assert "| scifact | 20 |" in table and "| **mean** |" in table
    # full retrieval: on the embedded default the suite's dense search finds what the main evaluation's did
    assert metrics["suite/embedded/retrieval/ndcg@10"] == pytest.approx(metrics["test/retrieval/ndcg@10"], abs=2e-3)
    for name in names:
        run = read_run(run_dir / "runs" / f"suite-{name}-test-retrieval.trec")
        assert evaluate_run(run, suite.pairs(names.index(name)).qrels, ["ndcg@10"])["ndcg@10"] == pytest.approx(
            metrics[f"suite/{name}/retrieval/ndcg@10"], abs=1e-6)
    assert "Full retrieval (top 100" in table


def test_suite_arguments_are_checked(tmp_path):
    from callbacks.suite_eval import SuiteEvaluator

    with pytest.raises(ValueError, match="datasets is empty"):
        SuiteEvaluator([])
    for side in "ab":
        (tmp_path / side / "scifact").mkdir(parents=True)
    with pytest.raises(ValueError, match="names must differ"):  # two local directories named alike
        SuiteEvaluator([str(tmp_path / "a" / "scifact"), str(tmp_path / "b" / "scifact")])
    assert SuiteEvaluator(["BeIR/scifact", str(tmp_path / "a" / "scifact")]).names == ["BeIR_scifact", "scifact"]
    with pytest.raises(ValueError, match="2 names for 1 datasets"):
        SuiteEvaluator(["embedded"], names=["x", "y"])


def test_a_cross_encoder_suite_scores_pair_by_pair(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    cli = lightning_cli(["--config", "configs/ca_teacher.yaml", *SMOKE], run=False)
    cli.trainer.strategy.connect(cli.model)
    cli.trainer.save_checkpoint(tmp_path / "ca.ckpt")
    (tmp_path / "suite.yaml").write_text(
        "trainer:\n  callbacks+:\n    - class_path: callbacks.SuiteEvaluator\n      init_args:\n"
        "        datasets: [embedded]\n        eval_depth: 20\n        max_eval_queries: 20\n        embedded_scale: 0.1\n")
    cli = main(["test", "--config", "configs/ca_teacher.yaml", *SMOKE, "--config", "suite.yaml",
                "--data.eval_depth", "20", "--ckpt_path", str(tmp_path / "ca.ckpt")])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert metrics["suite/embedded/mrr@10"] == pytest.approx(metrics["test/rerank/mrr@10"], abs=1e-5)
    assert metrics["suite/mean/mrr@10"] == metrics["suite/embedded/mrr@10"]
