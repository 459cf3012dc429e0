"""``--data.dataset irds:<id>``: ir_datasets ids, on a dataset registered from small local files (no network)."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

ir_datasets = pytest.importorskip("ir_datasets")

from datamodules.formats import UnknownDatasetError, load_retrieval_data  # noqa: E402

_counter = itertools.count()


def _register(root: Path, *, bad_qrels: bool = False, scored: bool = True) -> str:
    """Register ``rankers-test/tinyN`` (docs) with ``/train`` and ``/test`` (queries, qrels; test also scored
    docs) from TSV files under ``root``; returns the id."""
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import TrecQrels, TrecScoredDocs, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    root.mkdir(parents=True, exist_ok=True)
    (root / "docs.tsv").write_text("".join(f"d{i}\tpassage number {i} about topic {i % 3}\n" for i in range(12)))
    (root / "train.tsv").write_text("q1\ttopic one\nq2\ttopic two\n")
    (root / "test.tsv").write_text("q3\ttopic zero\nq4\tnumber five\n")
    (root / "train.qrels").write_text("q1 0 d1 1\nq2 0 d2 1\nq2 0 d5 2\n")
    (root / "test.qrels").write_text("q3 0 d0 1\n" + ("q4 0 d99 1\n" if bad_qrels else "q4 0 d5 1\n"))
    (root / "test.run").write_text("".join(f"q3 Q0 d{i} {i + 1} {10 - i}.0 bm25\n" for i in range(5))
                                   + "q4 Q0 d5 1 3.0 bm25\nq4 Q0 d4 2 2.0 bm25\n")
    ident = f"rankers-test/tiny{next(_counter)}"
    docs = TsvDocs(LocalDownload(root / "docs.tsv"))
    defs = {0: "not relevant", 1: "relevant", 2: "highly relevant"}
    ir_datasets.registry.register(ident, Dataset(docs))
    ir_datasets.registry.register(f"{ident}/train", Dataset(docs, TsvQueries(LocalDownload(root / "train.tsv")),
                                                             TrecQrels(LocalDownload(root / "train.qrels"), defs)))
    test_parts = [docs, TsvQueries(LocalDownload(root / "test.tsv")), TrecQrels(LocalDownload(root / "test.qrels"), defs)]
    if scored:
        test_parts.append(TrecScoredDocs(LocalDownload(root / "test.run")))
    ir_datasets.registry.register(f"{ident}/test", Dataset(*test_parts))
    return ident


def test_an_irds_id_loads_corpus_queries_qrels_and_scored_docs(tmp_path):
    ident = _register(tmp_path / "src")
    data = load_retrieval_data(f"irds:{ident}", cache_dir=tmp_path / "cache")
    assert data.layout == "irds" and sorted(data.qrels) == ["test", "train"]
    assert data.qrels["train"] == {"q1": {"d1": 1}, "q2": {"d2": 1, "d5": 2}}
    assert len(data.corpus) == 12 and data.corpus[3] == {"id": "d3", "text": "passage number 3 about topic 0"}
    assert sorted(data.queries["id"]) == ["q1", "q2", "q3", "q4"]
    assert data.candidates["test"]["q3"]["d0"] == 10.0 and set(data.candidates) == {"test"}
    assert data.corpus.cache_files  # memory-mapped Arrow, not an in-memory table
    one = load_retrieval_data(f"irds:{ident}/test", cache_dir=tmp_path / "cache")  # a leaf id: one split
    assert list(one.qrels) == ["test"] and one.qrels["test"] == data.qrels["test"]


def test_irds_errors_are_one_clear_line(tmp_path):
    with pytest.raises(UnknownDatasetError, match=r"irds:rankers-test/no-such-id: not an ir_datasets id"):
        load_retrieval_data("irds:rankers-test/no-such-id", cache_dir=tmp_path / "cache")
    bad = _register(tmp_path / "bad", bad_qrels=True)
    with pytest.raises(Exception, match=rf"irds:{bad}/test \(qrels\).*d99"):
        load_retrieval_data(f"irds:{bad}", cache_dir=tmp_path / "cache")
    missing = _register(tmp_path / "gone", scored=False)
    (tmp_path / "gone" / "docs.tsv").unlink()  # as if the download had never happened
    with pytest.raises(UnknownDatasetError, match=rf"irds:{missing}: ir_datasets could not read its docs .*"
                                                  rf"ir_datasets export {missing} docs"):
        load_retrieval_data(f"irds:{missing}", cache_dir=tmp_path / "cache")


def test_the_datamodule_trains_from_an_irds_id(tmp_path):
    from datamodules.datamodule import RankingDataModule
    from stubs import StubTrainer

    ident = _register(tmp_path / "src")
    dm = RankingDataModule(dataset=f"irds:{ident}", val_split="test", num_negatives=2, negative_window=(0, 10),
                           eval_depth=5, train_subset_size=0, cache_dir=str(tmp_path / "cache"))
    dm.trainer = StubTrainer()
    dm.prepare_data()
    dm.setup("fit")
    assert {ex.query_id for ex in dm.train_dataset.examples} == {"q1", "q2"}
    assert dm.eval_sets["val"].qrels == {"q3": {"d0": 1}, "q4": {"d5": 1}}  # re-ranks the scored docs
    assert dm.split_candidate_run("test", ["q4"]) == {"q4": {"d5": 3.0, "d4": 2.0}}


def test_fit_and_test_through_the_cli_on_an_irds_id(tmp_path):
    from rankers.cli import main

    ident = _register(tmp_path / "src")
    configs = Path(__file__).resolve().parents[1] / "configs"
    common = ["--config", str(configs / "de_baseline.yaml"), "--config", str(configs / "overlays" / "cpu_smoke.yaml"),
              "--data.dataset", f"irds:{ident}", "--data.val_split", "test", "--data.negative_window", "[0, 10]",
              "--data.eval_depth", "5", "--data.cache_dir", str(tmp_path / "cache"),
              "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.accelerator", "cpu"]
    main(["fit", *common])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    main(["test", *common, "--ckpt_path", str(ckpt)])
    assert list((tmp_path / "run" / "runs").glob("test-rerank-*.trec"))


def test_reproduce_on_an_irds_id(tmp_path):
    from rankers.cli import main

    ident = _register(tmp_path / "src")
    payload = main(["reproduce", "--output_dir", str(tmp_path / "out"), "--dataset", f"irds:{ident}",
                    "--val_split", "test", "--teacher_backbone", "tiny", "--student_backbone", "tiny",
                    "--teacher_epochs", "1", "--student_epochs", "1", "--losses", "kl", "--capacity_dims", "",
                    "--negative_window", "0,10", "--eval_depth", "5", "--train_subset", "2", "--similarity", "dot",
                    "--temperature", "1", "--max_train_queries", "0", "--accelerator", "cpu", "--precision", "32-true",
                    "--isolate_stages", "false"])  # the registered dataset exists in this process only
    models = {row["model"] for row in payload["rows"]}
    assert {"BM25 candidates", "CA teacher", "DE labels", "DE kl"} <= models
    assert f"Dataset: irds:{ident}" in (tmp_path / "out" / "paper_table.md").read_text()


def test_distil_from_published_score_pairs_through_the_cli(tmp_path):
    """Hofstaetter et al.'s pair TSV (pos_score neg_score qid pid_pos pid_neg) as both the negatives and the
    teacher scores of `fit`, on an irds: dataset, from the command line."""
    from rankers.cli import main

    ident = _register(tmp_path / "src")
    pairs = tmp_path / "bert_cat_ensemble_scores.tsv"
    pairs.write_text("6.5\t1.0\tq1\td1\td3\n6.5\t-0.5\tq1\td1\td4\n5.0\t2.0\tq2\td2\td6\n4.5\t0.5\tq2\td5\td7\n")
    configs = Path(__file__).resolve().parents[1] / "configs"
    main(["fit", "--config", str(configs / "de_distill.yaml"), "--config", str(configs / "overlays" / "cpu_smoke.yaml"),
          "--data.dataset", f"irds:{ident}", "--data.val_split", "test", "--data.negatives", "run",
          "--data.negatives_run", str(pairs), "--data.teacher_scores", str(pairs), "--data.negative_window", "[0, 10]",
          "--data.eval_depth", "5", "--data.cache_dir", str(tmp_path / "cache"), "--trainer.accelerator", "cpu",
          "--trainer.default_root_dir", str(tmp_path / "run")])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_a_query_id_with_two_texts_across_splits_is_an_error(tmp_path):
    ident = _register(tmp_path / "src")
    (tmp_path / "src" / "test.tsv").write_text("q1\tanother question\nq4\tnumber five\n")  # q1 is also in train
    (tmp_path / "src" / "test.qrels").write_text("q1 0 d0 1\n")
    with pytest.raises(Exception, match=rf"irds:{ident} \(queries\):3: field 'text': id 'q1' has another text on record 1"):
        load_retrieval_data(f"irds:{ident}", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("kind", ["hard_negatives.jsonl.gz", "rank_distillm.parquet"])
def test_published_negatives_and_parquet_scores_through_the_cli(tmp_path, kind):
    """sentence-transformers' hard negatives (as the negatives) and a parquet run with scores (as the negatives
    and the teacher scores) in `fit`, from the command line."""
    import gzip
    import json

    from rankers.cli import main

    ident = _register(tmp_path / "src")
    path = tmp_path / kind
    extra: list[str] = []
    if kind.endswith(".jsonl.gz"):
        records = [{"qid": "q1", "pos": ["d1"], "neg": {"bm25": ["d3", "d4"], "ce": ["d6"]}},
                   {"qid": "q2", "pos": ["d2"], "neg": {"bm25": ["d6", "d7"]}}]
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
        config = "de_baseline.yaml"
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [("q1", "d1", 6.5), ("q1", "d3", 1.0), ("q1", "d4", -0.5), ("q2", "d2", 5.0), ("q2", "d5", 4.5),
                ("q2", "d6", 2.0), ("q2", "d7", 0.5)]
        pq.write_table(pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows],
                                 "score": [r[2] for r in rows]}), path)
        config, extra = "de_distill.yaml", ["--data.teacher_scores", str(path)]
    configs = Path(__file__).resolve().parents[1] / "configs"
    main(["fit", "--config", str(configs / config), "--config", str(configs / "overlays" / "cpu_smoke.yaml"),
          "--data.dataset", f"irds:{ident}", "--data.val_split", "test", "--data.negatives", "run",
          "--data.negatives_run", str(path), *extra, "--data.negative_window", "[0, 10]", "--data.eval_depth", "5",
          "--data.cache_dir", str(tmp_path / "cache"), "--trainer.accelerator", "cpu",
          "--trainer.default_root_dir", str(tmp_path / "run")])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
