"""Loading retrieval data in every supported layout, and TREC run round-trips.

Expected counts were computed independently (plain ``json``/``csv`` over the files).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
from pathlib import Path

import datasets
import pytest

from datamodules.formats import (
    DataFormatError,
    RetrievalData,
    check_qrels_ids,
    check_run_ids,
    load_retrieval_data,
    read_qrels,
    read_run,
    read_teacher_scores,
    write_run,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def arrow_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("arrow_cache")


@pytest.fixture(scope="module")
def scifact(shared_data, arrow_cache) -> RetrievalData:
    return load_retrieval_data(shared_data / "scifact", cache_dir=arrow_cache)


def _pairs(qrels) -> int:
    return sum(len(judged) for judged in qrels.values())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------- BEIR


def test_scifact_counts_and_texts(scifact, shared_data):
    assert scifact.layout == "beir"
    assert scifact.corpus.num_rows == 5183
    assert scifact.queries.num_rows == 1109
    assert set(scifact.qrels) == {"train", "test"}
    assert (len(scifact.qrels["train"]), _pairs(scifact.qrels["train"])) == (809, 919)
    assert (len(scifact.qrels["test"]), _pairs(scifact.qrels["test"])) == (300, 339)
    assert scifact.candidates == {}
    assert scifact.corpus.column_names == ["id", "text"] and scifact.queries.column_names == ["id", "text"]

    first = _jsonl(shared_data / "scifact" / "corpus.jsonl")[0]
    assert scifact.corpus[0]["id"] == first["_id"] == "4983"
    assert scifact.passage_text("4983") == f"{first['title']} {first['text']}"
    assert scifact.query_text("0") == "0-dimensional biomaterials lack inductive properties."
    assert scifact.queries_without_positive("test") == []


def test_split_queries_follow_qrels_order(scifact, shared_data):
    lines = (shared_data / "scifact" / "qrels" / "test.tsv").read_text().splitlines()[1:]
    expected = list(dict.fromkeys(line.split("\t")[0] for line in lines))
    test = scifact.split_queries("test")
    assert list(test["id"]) == expected
    assert test[0]["text"] == scifact.query_text(expected[0])
    with pytest.raises(ValueError, match="unknown split 'dev'.*train"):
        scifact.split_queries("dev")


def test_corpus_is_memory_mapped_arrow(scifact):
    for table in (scifact.corpus, scifact.queries):
        assert isinstance(table, datasets.Dataset)
        assert isinstance(table.data, datasets.table.MemoryMappedTable)  # not keep_in_memory
        assert table.cache_files and Path(table.cache_files[0]["filename"]).is_file()
    index = scifact.corpus_index()
    assert index is scifact.corpus_index()  # cached
    assert len(index) == 5183 and scifact.corpus[index["4983"]]["id"] == "4983"


def test_wikiqa_with_candidate_runs(shared_data, arrow_cache):
    data = load_retrieval_data(shared_data / "wikiqa", cache_dir=arrow_cache)
    assert (data.corpus.num_rows, data.queries.num_rows) == (11406, 1242)
    sizes = {split: (len(q), _pairs(q)) for split, q in data.qrels.items()}
    assert sizes == {"dev": (126, 140), "test": (243, 293), "train": (873, 1040)}
    assert {"dev", "test"} <= set(data.candidates)
    cands = {split: (len(run), _pairs(run)) for split, run in data.candidates.items()}
    assert cands == {"dev": (126, 1130), "test": (243, 2350), "train": (873, 8672)}
    assert data.candidates["dev"]["dev-2"]["s8316"] == 0.0
    assert data.candidates["dev"]["dev-2"]["s8317"] == -1.0
    assert data.passage_text("s0") == "a partly submerged glacier cave on perito moreno glacier ."


def test_queries_without_positive_are_kept(arrow_cache):
    data = load_retrieval_data(FIXTURES / "tiny_beir", cache_dir=arrow_cache)
    assert data.qrels["test"] == {"q3": {"d4": 1}, "q4": {"d5": 0}}
    assert data.queries_without_positive("test") == ["q4"]
    assert list(data.split_queries("test")["id"]) == ["q3", "q4"]
    assert data.passage_text("d2") == "Ice caves contain year-round ice."  # empty title: no leading space
    assert data.passage_text("d5") == "Houston is the most populous city in Texas."  # no title key
    assert data.candidates == {"test": {"q3": {"d4": 2.5, "d1": 0.75}, "q4": {"d2": 1.0, "d5": -0.5}}}


# ----------------------------------------------------------------------------- Arrow cache


def _arrow_file(table: datasets.Dataset) -> Path:
    return Path(table.cache_files[0]["filename"])


def test_arrow_cache_reused_then_invalidated(tmp_path):
    root = tmp_path / "tiny"
    shutil.copytree(FIXTURES / "tiny_beir", root)
    cache = tmp_path / "cache"
    first = load_retrieval_data(root, cache_dir=cache)
    arrow = _arrow_file(first.corpus)
    built = arrow.stat().st_mtime_ns

    second = load_retrieval_data(root, cache_dir=cache)
    assert _arrow_file(second.corpus) == arrow and arrow.stat().st_mtime_ns == built  # not rebuilt
    assert second.fingerprint() == first.fingerprint()

    corpus = root / "corpus.jsonl"
    with open(corpus, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "d6", "title": "", "text": "A new passage."}) + "\n")
    os.utime(corpus, ns=(built + 10**9, built + 10**9))  # distinct mtime even on coarse clocks
    third = load_retrieval_data(root, cache_dir=cache)
    assert third.corpus.num_rows == 6 and third.passage_text("d6") == "A new passage."
    assert _arrow_file(third.corpus) != arrow
    assert third.fingerprint() != first.fingerprint()
    assert _arrow_file(third.queries) == _arrow_file(first.queries)  # queries file unchanged


# ----------------------------------------------------------------------------- MS MARCO layout


@pytest.fixture(scope="module")
def msmarco_dir(scifact, tmp_path_factory) -> tuple[Path, dict, dict]:
    """MS MARCO layout built from a slice of scifact: 12 test + 8 train queries, their passages + 30 more."""
    root = tmp_path_factory.mktemp("msmarco")
    test = dict(list(scifact.qrels["test"].items())[:12])
    train = dict(list(scifact.qrels["train"].items())[:8])
    pids = list(dict.fromkeys([p for q in (test, train) for judged in q.values() for p in judged]))
    pids += [pid for pid in scifact.corpus.with_format("arrow")["id"].to_pylist()[:30] if pid not in pids]
    with open(root / "collection.tsv", "w", encoding="utf-8") as out:
        for pid in pids:
            out.write(f"{pid}\t{scifact.passage_text(pid)}\n")
    for split, qrels in (("test", test), ("train", train)):
        with open(root / f"queries.{split}.tsv", "w", encoding="utf-8") as out:
            out.writelines(f"{qid}\t{scifact.query_text(qid)}\n" for qid in qrels)
        with open(root / f"qrels.{split}.tsv", "w", encoding="utf-8") as out:
            for i, (qid, judged) in enumerate(qrels.items()):
                sep = "\t" if i % 2 else " "  # TREC qrels, tab or space separated
                out.writelines(f"{qid}{sep}0{sep}{pid}{sep}{rel}\n" for pid, rel in judged.items())
    # queries.test.small.tsv repeats some test queries verbatim, like MS MARCO's dev.small
    with open(root / "queries.test.small.tsv", "w", encoding="utf-8") as out:
        out.writelines(f"{qid}\t{scifact.query_text(qid)}\n" for qid in list(test)[:3])
    # a TREC run for test and a top1000 file (no scores) for train
    rng = random.Random(0)
    run = {qid: {pid: round(rng.uniform(-5, 5), 3) for pid in rng.sample(pids, 5)} for qid in test}
    write_run(run, root / "run.test.trec", tag="bm25")
    top = {qid: rng.sample(pids, 4) for qid in train}
    with open(root / "top1000.train", "w", encoding="utf-8") as out:
        for qid, ranked in top.items():
            out.writelines(f"{qid}\t{pid}\t{scifact.query_text(qid)}\t{scifact.passage_text(pid)}\n" for pid in ranked)
    (root / "top1000.test.tar.gz").write_bytes(b"\x1f\x8b\x08 not extracted")  # archives are ignored
    return root, run, top


def test_msmarco_layout(msmarco_dir, scifact, arrow_cache):
    root, run, top = msmarco_dir
    data = load_retrieval_data(root, cache_dir=arrow_cache)
    assert data.layout == "msmarco"
    assert set(data.qrels) == {"test", "train"}
    assert data.qrels["test"] == dict(list(scifact.qrels["test"].items())[:12])
    assert data.qrels["train"] == dict(list(scifact.qrels["train"].items())[:8])
    assert data.queries.num_rows == 20  # the 3 repeated queries are not duplicated
    assert data.corpus.num_rows == len((root / "collection.tsv").read_text().splitlines())
    for pid in data.corpus.with_format("arrow")["id"].to_pylist():
        assert data.passage_text(pid) == scifact.passage_text(pid)
    assert [r["text"] for r in data.split_queries("train")] == [scifact.query_text(q) for q in data.qrels["train"]]
    assert data.candidates["test"] == run
    assert data.candidates["train"] == {qid: {pid: -float(i) for i, pid in enumerate(pids)} for qid, pids in top.items()}


# ----------------------------------------------------------------------------- Hugging Face hub schema


def _write_hub_dir(root: Path, scifact: RetrievalData, fmt: str) -> tuple[dict, dict]:
    """A local copy of a BEIR hub dataset (BeIR/scifact layout) from a few scifact rows."""
    root.mkdir()
    qrels = {"test": dict(list(scifact.qrels["test"].items())[:4]), "train": dict(list(scifact.qrels["train"].items())[:3])}
    pids = sorted({p for q in qrels.values() for judged in q.values() for p in judged})
    raw = {r["_id"]: r for r in _jsonl(Path(scifact.source) / "corpus.jsonl") if r["_id"] in pids}
    corpus = [raw[pid] for pid in pids]
    queries = [{"_id": q, "text": scifact.query_text(q), "metadata": {"split": s}} for s, split in qrels.items() for q in split]
    configs = ["---", "configs:"]
    for name, rows in (("corpus", corpus), ("queries", queries)):
        if fmt == "parquet":
            datasets.Dataset.from_list(rows).to_parquet(root / f"{name}.parquet")
        else:
            (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        configs += [f"- config_name: {name}", "  data_files:", f"  - split: {name}", f"    path: {name}.{fmt}"]
    (root / "README.md").write_text("\n".join(configs + ["---", "# scifact slice", ""]), encoding="utf-8")
    qrels_dir = root.parent / f"{root.name}-qrels"
    qrels_dir.mkdir()
    for split, judged in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{p}\t{g}" for q, d in judged.items() for p, g in d.items()]
        (qrels_dir / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return qrels, {r["_id"]: f"{r['title']} {r['text']}" for r in corpus}


@pytest.fixture
def no_network(monkeypatch):
    """Turn the hub's offline switches off and make any socket use fail: loads must stay local."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_hub_schema_local_directory(tmp_path, scifact, fmt, no_network):
    root = tmp_path / "scifact-hub"
    qrels, texts = _write_hub_dir(root, scifact, fmt)
    data = load_retrieval_data(root, cache_dir=tmp_path / "cache")
    assert data.layout == "hf"
    assert data.qrels == qrels
    assert data.corpus.num_rows == len(texts) and data.queries.num_rows == 7
    assert {pid: data.passage_text(pid) for pid in texts} == texts
    assert data.query_text("1") == scifact.query_text("1")
    assert isinstance(data.corpus.data, datasets.table.MemoryMappedTable)
    assert data.candidates == {}
    assert data.fingerprint() == load_retrieval_data(root, cache_dir=tmp_path / "cache").fingerprint()


def test_nanobeir_style_directory_with_its_own_qrels_config(tmp_path, scifact, no_network):
    """NanoBEIR (zeta-alpha-ai/Nano*): qrels are a 'qrels' config of the same repository, without a score
    column (every listed pair is relevant, grade 1), and its one split is named 'train'."""
    root = tmp_path / "NanoSciFact"
    qrels, texts = _write_hub_dir(root, scifact, "parquet")
    shutil.rmtree(root.parent / f"{root.name}-qrels")
    judged = [{"query-id": q, "corpus-id": p} for q, d in qrels["test"].items() for p, g in d.items() if g > 0]
    datasets.Dataset.from_list(judged).to_parquet(root / "qrels.parquet")
    readme = (root / "README.md").read_text().replace(
        "---\n# scifact slice", "- config_name: qrels\n  data_files:\n  - split: train\n    path: qrels.parquet\n---\n# slice")
    (root / "README.md").write_text(readme)
    data = load_retrieval_data(root, cache_dir=tmp_path / "cache")
    assert data.qrels == {"train": {q: {p: 1 for p, g in d.items() if g > 0} for q, d in qrels["test"].items()}}
    assert {pid: data.passage_text(pid) for pid in texts} == texts
    # a pair naming an unknown passage is reported against the qrels config, row by row
    datasets.Dataset.from_list(judged + [{"query-id": judged[0]["query-id"], "corpus-id": "no-such-doc"}]).to_parquet(
        root / "qrels.parquet")
    with pytest.raises(DataFormatError, match=r"NanoSciFact\[qrels\]\[train\].*no-such-doc"):
        load_retrieval_data(root, cache_dir=tmp_path / "cache2")


def test_unknown_dataset_name_lists_attempts(tmp_path):
    name = "no-such-org/no-such-dataset-xyz"
    with pytest.raises(DataFormatError) as info:
        load_retrieval_data(name, cache_dir=tmp_path)
    message = str(info.value)
    assert "does not exist" in message and f"datasets.load_dataset('{name}', 'corpus')" in message


def test_unrecognised_directory_names_expected_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(DataFormatError, match="unrecognised dataset layout") as info:
        load_retrieval_data(tmp_path)
    for expected in ("corpus.jsonl", "collection.tsv", "qrels/{split}.tsv", "README.md", "notes.txt"):
        assert expected in str(info.value)


# ----------------------------------------------------------------------------- qrels and runs


def test_read_qrels_beir_and_trec_agree(shared_data, tmp_path):
    beir = read_qrels(shared_data / "scifact" / "qrels" / "test.tsv")
    trec = tmp_path / "qrels.test.tsv"
    trec.write_text("".join(f"{q} 0 {p} {g}\n" for q, d in beir.items() for p, g in d.items()))
    assert read_qrels(trec) == read_qrels(trec, fmt="trec") == beir
    headerless = tmp_path / "headerless.tsv"
    headerless.write_text("q1\td1\t2\nq1\td2\t-1\n")
    assert read_qrels(headerless, fmt="beir") == {"q1": {"d1": 2, "d2": -1}}

    ir_measures = pytest.importorskip("ir_measures")
    independent: dict[str, dict[str, int]] = {}
    for row in ir_measures.read_trec_qrels(str(trec)):
        independent.setdefault(row.query_id, {})[row.doc_id] = row.relevance
    assert independent == beir


def test_write_run_format_ties_and_depth(tmp_path):
    path = tmp_path / "runs" / "dev.run"
    run = {"q2": {"b": 1.0, "a": 1.0, "c": 2.5, "d": -0.125}, "q1": {"x": 0.1}}
    write_run(run, path, tag="ce")
    assert path.read_text().splitlines() == [
        "q2 Q0 c 1 2.5 ce",
        "q2 Q0 a 2 1.0 ce",
        "q2 Q0 b 3 1.0 ce",
        "q2 Q0 d 4 -0.125 ce",
        "q1 Q0 x 1 0.1 ce",
    ]
    write_run(run, path, depth=2)  # replaces the file
    assert path.read_text().splitlines() == ["q2 Q0 c 1 2.5 rankers", "q2 Q0 a 2 1.0 rankers", "q1 Q0 x 1 0.1 rankers"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["dev.run"]  # no temporary file left
    with pytest.raises(ValueError, match="non-finite"):
        write_run({"q": {"d": float("nan")}}, tmp_path / "nan.run")
    with pytest.raises(ValueError, match="whitespace"):
        write_run({"q 1": {"d": 1.0}}, tmp_path / "space.run")
    assert not (tmp_path / "nan.run").exists()


def test_run_round_trip(tmp_path):
    rng = random.Random(13)
    run = {
        f"q{q}": {f"d{rng.randrange(1000)}": rng.choice([rng.gauss(0, 3), 1.0, 0.0, -2.5e-7, 1e30]) for _ in range(25)}
        for q in range(40)
    }
    path = tmp_path / "round.run"
    write_run(run, path)
    back = read_run(path)
    assert back == run  # exact floats, same queries and passages
    assert list(back) == list(run)
    assert read_teacher_scores(path) == run

    ir_measures = pytest.importorskip("ir_measures")
    independent: dict[str, dict[str, float]] = {}
    for row in ir_measures.read_trec_run(str(path)):
        independent.setdefault(row.query_id, {})[row.doc_id] = row.score
    assert independent == run


def test_read_run_allows_non_finite_when_asked(tmp_path):
    path = tmp_path / "scores.run"
    path.write_text("q1 Q0 d1 1 nan t\nq1 Q0 d2 2 -inf t\n")
    run = read_run(path, require_finite=False)
    assert run["q1"]["d2"] == float("-inf") and run["q1"]["d1"] != run["q1"]["d1"]


def test_check_ids_accept_known_and_name_unknown(tmp_path):
    run = {"q1": {"d1": 1.0, "d2": 0.5}}
    check_run_ids(run, {"q1"}, {"d1", "d2"})
    check_qrels_ids({"q1": {"d1": 1}}, {"q1": 0}, {"d1": 0})
    with pytest.raises(DataFormatError, match="unknown passage id 'd2'") as info:
        check_run_ids(run, {"q1"}, {"d1"})
    assert info.value.line is None and info.value.field == "pid"
