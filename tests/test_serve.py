"""`python -m rankers index | search | rerank` reproduce what the RetrievalEvaluator reports through the
LightningCLI for the same checkpoints and data; an interrupted index build resumes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest

import rankers.retrieval.encode
from callbacks.retrieval_eval import RetrievalEvaluator
from datamodules.formats import read_run, write_run
from rankers import api
from rankers.cli import lightning_cli, main
from rankers.models.cross_encoder import CrossAttentionRanker
from rankers.export import export_model
from rankers.evaluation.metrics import evaluate_run
from rankers.commands.serve import load_data

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--config", "configs/overlays/cpu_smoke.yaml", "--trainer.enable_model_summary", "false",
         "--trainer.enable_progress_bar", "false"]
DATA = ["--data.dataset", "embedded", "--data.embedded_scale", "0.1"]  # what cpu_smoke.yaml selects
# the test DE: configs/de_baseline.yaml with mean pooling, a projection and cosine similarity
DE_FLAGS = ["--model.pooling=mean", "--model.embedding_dim=16", "--model.similarity=cos"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    shutil.copytree(ROOT / "configs", work / "configs")
    return work


def cli_checkpoint(workdir: Path, config: str, path: Path, *flags: str) -> Path:
    """The checkpoint the LightningCLI would write for ``config`` + ``flags``, before any training."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        cli = lightning_cli(["--config", config, *SMOKE, *flags], run=False)
    cli.trainer.strategy.connect(cli.model)
    cli.trainer.save_checkpoint(path)
    return path


def _cli_test(workdir: Path, config: str, ckpt: Path, *flags: str):
    """`python -m rankers test` on the smoke config; returns (evaluator results, test qrels, test pairs)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        cli = main(["test", "--config", config, *SMOKE, "--ckpt_path", str(ckpt), *flags])
    evaluator = next(cb for cb in cli.trainer.callbacks if isinstance(cb, RetrievalEvaluator))
    pairs = cli.datamodule.eval_sets["test"]
    return evaluator.results, pairs.qrels, pairs


@pytest.fixture(scope="module")
def de_case(workdir):
    ckpt = cli_checkpoint(workdir, "configs/de_baseline.yaml", workdir / "de.ckpt", *DE_FLAGS)
    results, qrels, pairs = _cli_test(workdir, "configs/de_baseline.yaml", ckpt, *DE_FLAGS)
    return ckpt, results, qrels, pairs


@pytest.fixture(scope="module")
def eval_queries(workdir, de_case):
    """The evaluator's test queries (qrels order) as a BEIR queries.jsonl."""
    _, _, qrels, _ = de_case
    data = load_data("embedded", embedded_scale=0.1)
    path = workdir / "test_queries.jsonl"
    path.write_text("".join(json.dumps({"_id": q, "text": data.query_text(q)}) + "\n" for q in qrels))
    return path


def _assert_same_run(a: dict, b: dict, atol: float) -> None:
    assert list(a) == list(b)
    for qid in a:
        assert set(a[qid]) == set(b[qid]), qid
        assert max(abs(a[qid][p] - b[qid][p]) for p in a[qid]) <= atol, qid


def _candidates(pairs, path: Path) -> Path:
    """The evaluator's re-rank candidates (BM25 order) as a TREC run file."""
    run = pairs.to_run(np.arange(len(pairs)), -np.arange(len(pairs), dtype=np.float64))
    write_run(run, path, tag="bm25")
    return path


def test_index_then_search_reproduces_the_evaluators_retrieval_metrics(workdir, de_case, eval_queries):
    ckpt, results, qrels, _ = de_case
    index_dir = workdir / "index"
    main(["index", "--ckpt_path", str(ckpt), *DATA, "--output", str(index_dir)])
    assert not (index_dir / "chunks").exists()
    run = main(["search", "--index", str(index_dir), "--queries", str(eval_queries), "--output", str(workdir / "de.run")])
    assert read_run(workdir / "de.run") == run
    expected = results["test/retrieval"]
    got = evaluate_run(read_run(workdir / "de.run"), qrels, list(expected))
    assert {m: got[m] for m in expected} == pytest.approx(expected, abs=1e-9)
    assert 0 < expected["mrr@10"] < 1

    # the same through the Python API, with the exported model
    student = api.load_ranker(export_model(api.load_ranker(ckpt).module, workdir / "de_export"))
    index = api.build_index(student, load_data("embedded", embedded_scale=0.1), workdir / "index_api")
    queries = {q: t for q, t in (json.loads(line).values() for line in eval_queries.open())}
    api_run = api.search(student, index, queries, k=1000)
    _assert_same_run(api_run, run, atol=1e-6)
    # --split: every judged test query of the dataset the index was built from
    split_run = main(["search", "--index", str(index_dir), "--split", "test", "--output", str(workdir / "split.run")])
    assert set(qrels) <= set(split_run)


def test_index_and_search_under_bf16_autocast_agree_with_fp32(workdir, de_case, eval_queries):
    """--precision bf16-mixed really runs bf16 (scores differ from fp32) and ranks as fp32 does."""
    ckpt, _, qrels, _ = de_case
    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        index_dir = workdir / f"index-{precision}"
        main(["index", "--ckpt_path", str(ckpt), *DATA, "--output", str(index_dir), "--precision", precision])
        runs[precision] = main(["search", "--index", str(index_dir), "--queries", str(eval_queries), "--depth", "10",
                                "--output", str(workdir / f"{precision}.run"), "--precision", precision])
    fp32, bf16 = runs["32-true"], runs["bf16-mixed"]
    assert any(fp32[q][p] != bf16[q].get(p) for q in fp32 for p in fp32[q])
    overlap = np.mean([len(set(fp32[q]) & set(bf16[q])) / len(fp32[q]) for q in fp32])
    assert overlap >= 0.8
    metrics = ["ndcg@10", "mrr@10"]
    a, b = evaluate_run(fp32, qrels, metrics), evaluate_run(bf16, qrels, metrics)
    assert all(abs(a[m] - b[m]) <= 0.05 for m in metrics), (a, b)


def test_rerank_reproduces_the_evaluators_rerank_metrics(workdir, de_case):
    ca_ckpt = cli_checkpoint(workdir, "configs/ca_teacher.yaml", workdir / "ca.ckpt")
    results, qrels, pairs = _cli_test(workdir, "configs/ca_teacher.yaml", ca_ckpt)
    candidates = _candidates(pairs, workdir / "candidates.run")
    main(["rerank", "--ckpt_path", str(ca_ckpt), "--run", str(candidates), *DATA, "--output", str(workdir / "ca.run")])
    reranked = read_run(workdir / "ca.run")
    assert {q: set(c) for q, c in reranked.items()} == {q: set(c) for q, c in read_run(candidates).items()}
    expected = results["test/rerank"]
    got = evaluate_run(reranked, qrels, list(expected))
    assert {m: got[m] for m in expected} == pytest.approx(expected, abs=1e-9)
    assert got["mrr@10"] != pytest.approx(evaluate_run(read_run(candidates), qrels, ["mrr@10"])["mrr@10"])

    # a DE re-ranks too (scores: similarity / temperature)
    de_ckpt, de_results, _, _ = de_case
    student = api.load_ranker(de_ckpt)
    de_run = api.rerank(student, read_run(candidates), load_data("embedded", embedded_scale=0.1))
    got = evaluate_run(de_run, qrels, list(expected))
    assert {m: got[m] for m in expected} == pytest.approx(de_results["test/rerank"], abs=1e-6)


def test_interrupted_index_build_resumes_at_the_missing_chunks(workdir, de_case, monkeypatch):
    ckpt = de_case[0]
    args = ["index", "--ckpt_path", str(ckpt), *DATA, "--chunk_size", "64", "--keep_chunks"]
    real_encode = rankers.retrieval.encode.encode_texts
    encoded: list[int] = []

    def encode_then_fail(model, texts, side, **kwargs):
        if encoded:
            raise RuntimeError("simulated interruption while encoding chunk 2")
        encoded.append(len(texts))
        return real_encode(model, texts, side, **kwargs)

    monkeypatch.setattr(rankers.retrieval.encode, "encode_texts", encode_then_fail)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        main([*args, "--output", str(workdir / "resumed")])
    chunks = workdir / "resumed" / "chunks"
    assert sorted(p.name for p in chunks.iterdir()) == ["chunk-000000.npy", "manifest.json"]
    with pytest.raises(ValueError, match="field 'chunk_size' is 64 but this run has 100"):
        main([*args[:-3], "--chunk_size", "100", "--output", str(workdir / "resumed")])

    def counting_encode(model, texts, side, **kwargs):
        encoded.append(len(texts))
        return real_encode(model, texts, side, **kwargs)

    monkeypatch.setattr(rankers.retrieval.encode, "encode_texts", counting_encode)
    index = main([*args, "--output", str(workdir / "resumed")])
    assert encoded == [64, 64, 64, 64, 44]  # chunk 1 once, then chunks 2-5 only (300 passages)
    fresh = main([*args, "--output", str(workdir / "fresh")])
    for name in (f"chunk-{i:06d}.npy" for i in range(5)):
        assert np.array_equal(np.load(chunks / name), np.load(workdir / "fresh" / "chunks" / name))
    assert index.ids == fresh.ids and index.ntotal == 300

    with pytest.raises(ValueError, match="an index is already built there; pass --overwrite"):
        main([*args, "--output", str(workdir / "resumed")])


def test_bad_inputs_are_clear_errors(workdir, de_case, tmp_path):
    ca = tmp_path / "ca.ckpt"
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(CrossAttentionRanker(backbone="embedded"))
    trainer.save_checkpoint(ca)  # a plain Trainer's checkpoint: the class comes from the state-dict keys
    with pytest.raises(ValueError, match="index needs a dual encoder"):
        main(["index", "--ckpt_path", str(ca), *DATA, "--output", str(tmp_path / "nope")])
    bad_run = tmp_path / "bad.run"
    bad_run.write_text("test-q00000 Q0 p00001 1 2.0 x\ntest-q00000 Q0 no-such-passage 2 1.0 x\n")
    with pytest.raises(ValueError, match=r"bad.run:2: field 'pid': unknown passage id 'no-such-passage'"):
        main(["rerank", "--ckpt_path", str(de_case[0]), "--run", str(bad_run), *DATA, "--output", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="rankers_index.json: not found"):
        main(["search", "--index", str(tmp_path), "--queries", "x.jsonl", "--output", str(tmp_path / "o")])
    (tmp_path / "rankers_index.json").write_text('{"model": "nowhere.ckpt", "dataset": null}')
    queries = tmp_path / "queries.txt"
    queries.write_text("q1 hello\n")
    with pytest.raises(ValueError, match="queries.txt: unknown queries file type"):
        main(["search", "--index", str(tmp_path), "--queries", str(queries), "--output", str(tmp_path / "o")])
