"""datamodules.mining: BM25 runs with bm25s and negative sampling from a run."""
from __future__ import annotations

import csv
import json

import datasets
import pytest

from datamodules.mining import BM25Retriever, bm25_run, negative_pool
from rankers.evaluation.metrics import evaluate_run, rank_passages


# ----------------------------------------------------------------------------- scifact fixtures
def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def scifact(shared_data):
    """Minimal scifact loader (the project's readers live elsewhere): corpus, test queries, qrels."""
    root = shared_data / "scifact"
    corpus = datasets.Dataset.from_list(
        [{"id": r["_id"], "text": f"{r['title']} {r['text']}" if r.get("title") else r["text"]} for r in _jsonl(root / "corpus.jsonl")]
    )
    qrels: dict[str, dict[str, int]] = {}
    with open(root / "qrels" / "test.tsv", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        for qid, pid, rel in reader:
            qrels.setdefault(qid, {})[pid] = int(rel)
    queries = datasets.Dataset.from_list([{"id": q["_id"], "text": q["text"]} for q in _jsonl(root / "queries.jsonl") if q["_id"] in qrels])
    return corpus, queries, qrels


@pytest.fixture(scope="module")
def scifact_bm25(scifact):
    corpus, queries, qrels = scifact
    retriever = BM25Retriever.index(corpus, batch_size=1000)
    return retriever, retriever.run(queries, k=100, batch_size=64)


def test_bm25_recall_on_scifact(scifact, scifact_bm25):
    corpus, queries, qrels = scifact
    retriever, run = scifact_bm25
    assert retriever.num_passages == len(corpus)
    assert set(run) == set(queries["id"])
    assert all(0 < len(c) <= 100 for c in run.values())
    assert all(isinstance(s, float) and s > 0 for c in run.values() for s in c.values())
    result = evaluate_run(run, qrels, ["recall@100", "ndcg@10"])
    assert result["num_queries"] == len(qrels)
    assert result["recall@100"] > 0.7
    assert result["ndcg@10"] > 0.5


def test_bm25_run_function_matches_retriever(scifact, scifact_bm25):
    corpus, queries, _ = scifact
    small = queries.select(range(10))
    run = bm25_run(corpus, small, k=20)
    _, full = scifact_bm25
    for qid, candidates in run.items():
        assert rank_passages(candidates) == rank_passages(full[qid])[:20]


def test_negative_pool_excludes_positives_and_respects_window(scifact, scifact_bm25):
    _, _, qrels = scifact
    _, run = scifact_bm25
    window = (5, 40)
    pools = negative_pool(run, qrels, window=window)
    assert set(pools) == set(qrels)
    for qid, pool in pools.items():
        ranks = {pid: r for r, pid in enumerate(rank_passages(run[qid]))}
        positives = {p for p, rel in qrels[qid].items() if rel > 0}
        assert len(set(pool)) == len(pool) and not positives & set(pool)
        assert all(window[0] <= ranks[pid] < window[1] for pid in pool)
        assert [ranks[p] for p in pool] == sorted(ranks[p] for p in pool)  # rank order
        positives_in_window = sum(1 for p in rank_passages(run[qid])[window[0]:window[1]] if p in positives)
        assert len(pool) == len(rank_passages(run[qid])[window[0]:window[1]]) - positives_in_window


# ----------------------------------------------------------------------------- hand-built cases
def test_negative_pool_by_hand():
    run = {
        "q1": {"a": 5.0, "b": 4.0, "c": 4.0, "d": 3.0, "e": 2.0, "f": 1.0},
        "q2": {"x": 1.0},
    }
    qrels = {"q1": {"c": 1, "e": 2, "f": 0}, "q2": {"x": 1}, "q3": {"y": 1}}
    # rank order q1: a, c, b (tie by id desc), d, e, f
    assert negative_pool(run, qrels, window=(0, 100)) == {"q1": ["a", "b", "d", "f"], "q2": [], "q3": []}
    assert negative_pool(run, qrels, window=(1, 4)) == {"q1": ["b", "d"], "q2": [], "q3": []}


@pytest.mark.parametrize("window", [(5, 5), (-1, 3), (4, 2), ("a", 3), (1,)])
def test_bad_window_raises(window):
    with pytest.raises(ValueError, match="window"):
        negative_pool({"q": {"a": 1.0}}, {"q": {"b": 1}}, window=window)



def _tiny_corpus():
    return datasets.Dataset.from_list(
        [
            {"id": "d1", "text": "the cat sat on the mat"},
            {"id": "d2", "text": "dogs chase cats in the garden"},
            {"id": "d3", "text": "a treatise on quantum chromodynamics"},
        ]
    )


def test_k_larger_than_corpus_and_zero_scores_dropped():
    queries = datasets.Dataset.from_list(
        [{"id": "q1", "text": "cat on a mat"}, {"id": "q2", "text": "zebra"}, {"id": "q3", "text": "the"}]
    )
    run = bm25_run(_tiny_corpus(), queries, k=10)
    assert rank_passages(run["q1"])[0] == "d1"
    assert "d2" not in run["q1"]  # "cats" is not "cat" without a stemmer: no shared term, score 0
    assert run["q2"] == {} and run["q3"] == {}  # unknown word; stopword only


def test_stemmer_is_used_when_given():
    queries = datasets.Dataset.from_list([{"id": "q", "text": "cat"}])
    stem = lambda word: word[:-1] if word.endswith("s") else word  # noqa: E731 - toy stemmer
    run = bm25_run(_tiny_corpus(), queries, k=3, stemmer=stem)
    assert set(run["q"]) == {"d1", "d2"}


def test_corpus_and_query_errors():
    queries = datasets.Dataset.from_list([{"id": "q", "text": "cat"}])
    with pytest.raises(ValueError, match="corpus: missing column 'text'"):
        bm25_run(datasets.Dataset.from_list([{"id": "d", "body": "x"}]), queries)
    with pytest.raises(ValueError, match=r"corpus: row 3 \(1-based\): field 'id' 'd1' repeats row 1"):
        bm25_run(datasets.Dataset.from_list([{"id": "d1", "text": "a"}, {"id": "d2", "text": "b"}, {"id": "d1", "text": "c"}]), queries)
    with pytest.raises(ValueError, match=r"corpus: row 2 \(1-based\): field 'text' is null"):
        bm25_run(datasets.Dataset.from_list([{"id": "d1", "text": "a"}, {"id": "d2", "text": None}]), queries)
    with pytest.raises(ValueError, match="queries: missing column 'id'"):
        bm25_run(_tiny_corpus(), datasets.Dataset.from_list([{"qid": "q", "text": "cat"}]))
    with pytest.raises(ValueError, match="k"):
        BM25Retriever.index(_tiny_corpus()).run(queries, k=0)
