"""rankers.evaluation.metrics.evaluate_run against ranx, ir_measures (pytrec_eval provider) and hand values."""
from __future__ import annotations

import csv
import json
import logging
import math

import numpy as np
import pytest

from rankers.evaluation.metrics import evaluate_run, parse_metric, rank_passages

ranx = pytest.importorskip("ranx")
ir_measures = pytest.importorskip("ir_measures")

TOL = 1e-6
METRICS = ("mrr@10", "ndcg@10", "ndcg@100", "recall@10", "recall@100", "recall@1000", "precision@10")


# ----------------------------------------------------------------------------- references
def _ir_measures_per_query(run, qrels, metrics):
    """Per-query values from ir_measures' pytrec_eval provider (trec_eval's C code).

    trec_eval has no cutoff for reciprocal rank, so RR@k is trec_eval's RR on the run truncated
    to its top k (score desc, passage id desc: trec_eval's own order).
    """
    names = {"ndcg": ir_measures.nDCG, "recall": ir_measures.R, "precision": ir_measures.P}
    provider = ir_measures.providers.registry["pytrec_eval"]
    assert provider.is_available()
    out: dict[str, dict[str, float]] = {}

    def collect(measures, some_run):
        for row in provider.evaluator(list(measures), qrels).iter_calc(some_run):
            out.setdefault(row.query_id, {})[measures[row.measure]] = row.value

    cutoff_measures = {}
    for metric in metrics:
        spec = parse_metric(metric)
        if spec.name == "mrr":
            top_k = {
                q: dict(sorted(c.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[: spec.k])
                for q, c in run.items()
            }
            collect({ir_measures.RR: metric}, top_k)
        else:
            cutoff_measures[names[spec.name] @ spec.k] = metric
    collect(cutoff_measures, run)
    return out


def _ranx_per_query(run, qrels, metrics, query_ids):
    """Per-query values from ranx (numba implementation, linear-gain nDCG)."""
    ranx_qrels = ranx.Qrels({q: dict(qrels[q]) for q in query_ids})
    ranx_run = ranx.Run({q: dict(run[q]) for q in query_ids if run.get(q)})
    scores = ranx.evaluate(ranx_qrels, ranx_run, list(metrics), return_mean=False, make_comparable=True)
    order = list(ranx_qrels.keys())
    return {q: {m: float(scores[m][i]) for m in metrics} for i, q in enumerate(order)}


# ----------------------------------------------------------------------------- scifact fixture
def _read_qrels(path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        for qid, pid, rel in reader:
            qrels.setdefault(qid, {})[pid] = int(rel)
    return qrels


@pytest.fixture(scope="module")
def scifact_case(shared_data):
    """A random tie-free run over scifact test qrels with graded relevance, judged negatives,
    relevant passages missing from the run, queries missing from the run and one query without
    any positive."""
    rng = np.random.default_rng(1234)
    with open(shared_data / "scifact" / "corpus.jsonl") as f:
        passage_ids = [json.loads(line)["_id"] for line in f]
    binary = _read_qrels(shared_data / "scifact" / "qrels" / "test.tsv")
    graded = {q: {p: int(rng.integers(1, 4)) for p in rels} for q, rels in binary.items()}
    query_ids = sorted(binary)
    for qid in query_ids[:20]:  # judged non-relevant passages (grade 0)
        graded[qid][passage_ids[int(rng.integers(len(passage_ids)))]] = 0
    graded["no-positive"] = {passage_ids[0]: 0}

    run: dict[str, dict[str, float]] = {}
    for i, qid in enumerate(query_ids):
        if i % 25 == 0:
            continue  # query absent from the run
        chosen = set(rng.choice(len(passage_ids), size=300, replace=False).tolist())
        candidates = {passage_ids[j] for j in chosen}
        for pid in binary[qid]:
            if rng.random() < 0.7:  # ~30% of the relevant passages are not retrieved
                candidates.add(pid)
        scores = rng.permutation(len(candidates)).astype(float) / 7.0 - 5.0  # distinct, some negative
        run[qid] = {pid: float(s) for pid, s in zip(sorted(candidates), scores)}
    return run, binary, graded


@pytest.mark.parametrize("relevance", ["binary", "graded"])
def test_matches_ir_measures_and_ranx_on_scifact(scifact_case, relevance, caplog):
    run, binary, graded = scifact_case
    qrels = binary if relevance == "binary" else graded
    with caplog.at_level(logging.WARNING, logger="rankers.evaluation.metrics"):
        result = evaluate_run(run, qrels, METRICS, per_query=True)
    evaluated = [q for q, rels in qrels.items() if any(r > 0 for r in rels.values())]
    assert result["num_queries"] == len(evaluated) == len(binary)
    assert result["num_skipped"] == (1 if relevance == "graded" else 0)
    assert set(result["per_query"]) == set(evaluated)
    assert any(q not in run for q in evaluated)

    trec = _ir_measures_per_query(run, qrels, METRICS)
    rx = _ranx_per_query(run, qrels, METRICS, evaluated)
    for qid in evaluated:
        for metric in METRICS:
            mine = result["per_query"][qid][metric]
            assert mine == pytest.approx(trec.get(qid, {}).get(metric, 0.0), abs=TOL), (qid, metric)
            assert mine == pytest.approx(rx[qid][metric], abs=TOL), (qid, metric)
    for metric in METRICS:
        mean = np.mean([trec.get(q, {}).get(metric, 0.0) for q in evaluated])
        assert result[metric] == pytest.approx(mean, abs=TOL)
    # Sanity: the case is not degenerate.
    assert 0.0 < result["recall@1000"] < 1.0
    assert result["ndcg@10"] > 0.0


# ----------------------------------------------------------------------------- hand cases
def test_mrr_first_relevant_at_rank_3():
    run = {"q": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}}
    qrels = {"q": {"c": 1, "d": 1}}
    result = evaluate_run(run, qrels, ["mrr@10", "mrr@2"])
    assert result["mrr@10"] == pytest.approx(1 / 3, abs=TOL)
    assert result["mrr@2"] == 0.0


def test_recall_counts_unretrieved_relevant():
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    qrels = {"q": {"a": 1, "c": 1, "missing": 1, "judged-not-relevant": 0}}
    result = evaluate_run(run, qrels, ["recall@1", "recall@2", "recall@3", "recall@1000", "precision@2"])
    assert result["recall@1"] == pytest.approx(1 / 3, abs=TOL)
    assert result["recall@2"] == pytest.approx(1 / 3, abs=TOL)
    assert result["recall@3"] == pytest.approx(2 / 3, abs=TOL)
    assert result["recall@1000"] == pytest.approx(2 / 3, abs=TOL)
    assert result["precision@2"] == pytest.approx(1 / 2, abs=TOL)


def test_graded_ndcg_by_hand():
    # ranking: x (non-relevant), a (grade 2), b (grade 1); z (grade 1) is not retrieved.
    run = {"q": {"a": 0.5, "x": 0.9, "b": 0.1}}
    qrels = {"q": {"a": 2, "b": 1, "z": 1}}
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    ideal = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    ideal_at_2 = 2 / math.log2(2) + 1 / math.log2(3)
    result = evaluate_run(run, qrels, ["ndcg@10", "ndcg@2", "ndcg@1"])
    assert result["ndcg@10"] == pytest.approx(dcg / ideal, abs=TOL)
    assert result["ndcg@2"] == pytest.approx((2 / math.log2(3)) / ideal_at_2, abs=TOL)
    assert result["ndcg@1"] == 0.0


def test_unretrieved_relevant_never_enters_the_cutoff_of_a_short_run():
    run = {"q": {"a": 1.0, "b": 0.5}}
    qrels = {"q": {"missing": 3}}
    result = evaluate_run(run, qrels, ["ndcg@10", "mrr@10", "recall@10"])
    assert result["ndcg@10"] == result["mrr@10"] == result["recall@10"] == 0.0


def test_query_absent_from_run_scores_zero_and_counts():
    run = {"q1": {"a": 1.0}, "not-in-qrels": {"a": 1.0}}
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    result = evaluate_run(run, qrels, ["mrr@10", "recall@100"], per_query=True)
    assert result["num_queries"] == 2
    assert result["mrr@10"] == pytest.approx(0.5, abs=TOL)
    assert result["per_query"]["q2"] == {"mrr@10": 0.0, "recall@100": 0.0}
    assert "not-in-qrels" not in result["per_query"]


def test_queries_without_positive_are_skipped_with_one_warning(caplog):
    run = {"q1": {"a": 1.0}, "q2": {"a": 1.0}}
    qrels = {"q1": {"a": 1}, "q2": {"a": 0}, "q3": {}}
    with caplog.at_level(logging.WARNING, logger="rankers.evaluation.metrics"):
        result = evaluate_run(run, qrels, ["mrr@10"])
    assert result == {"mrr@10": 1.0, "num_queries": 1, "num_skipped": 2}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2" in warnings[0].getMessage()


def test_ties_are_broken_by_passage_id_descending_like_trec_eval():
    """Documented behaviour: score desc, then passage id desc (trec_eval / pytrec_eval)."""
    run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0, "d": 2.0}}
    assert rank_passages(run["q"]) == ["d", "c", "b", "a"]
    for relevant, expected_rr in [("d", 1.0), ("c", 1 / 2), ("b", 1 / 3), ("a", 1 / 4)]:
        qrels = {"q": {relevant: 1}}
        result = evaluate_run(run, qrels, ["mrr@10", "ndcg@10"])
        assert result["mrr@10"] == pytest.approx(expected_rr, abs=TOL)
        trec = _ir_measures_per_query(run, qrels, ["mrr@10", "ndcg@10"])["q"]
        assert result["mrr@10"] == pytest.approx(trec["mrr@10"], abs=TOL)
        assert result["ndcg@10"] == pytest.approx(trec["ndcg@10"], abs=TOL)


@pytest.mark.parametrize("name", ["mrr", "mapp@10", "ndcg@0", "recall@-1", "ndcg@ten", "", "mrr@10@2", "map@0"])
def test_unknown_or_malformed_metric_names_raise(name):
    with pytest.raises(ValueError, match="metric"):
        evaluate_run({"q": {"a": 1.0}}, {"q": {"a": 1}}, [name])


def test_parse_metric_is_case_insensitive():
    spec = parse_metric("nDCG@10")
    assert (spec.name, spec.k, str(spec)) == ("ndcg", 10, "ndcg@10")


def test_nan_score_raises_naming_query_and_passage():
    with pytest.raises(ValueError, match=r"'q'.*'b'.*NaN"):
        evaluate_run({"q": {"a": 1.0, "b": float("nan")}}, {"q": {"a": 1}})


def test_no_query_with_positive_raises():
    with pytest.raises(ValueError, match="positive"):
        evaluate_run({"q": {"a": 1.0}}, {"q": {"a": 0}})


# ----------------------------------------------------------------------------- MAP, R-prec, judged@k (ir-measures)
def test_map_rprec_and_judged_by_hand():
    """a (grade 1), x (unjudged), c (grade 2), b (judged 0): AP = (1/1 + 2/3) / 2, R-prec = P@2 = 1/2,
    AP@2 = (1/1) / 2 (trec_eval's map_cut divides by R), judged@2 = 1/2 (x has no judgment)."""
    run = {"q1": {"a": 0.9, "x": 0.8, "c": 0.7, "b": 0.1}}
    qrels = {"q1": {"a": 1, "b": 0, "c": 2}, "q2": {"d": 1}, "q3": {"e": 0}}  # q2: not in the run; q3: no positive
    result = evaluate_run(run, qrels, ["MAP", "map@2", "r-prec", "judged@2", "mrr@10"], per_query=True)
    assert result["per_query"]["q1"] == pytest.approx(
        {"map": (1 + 2 / 3) / 2, "map@2": 0.5, "r-prec": 0.5, "judged@2": 0.5, "mrr@10": 1.0}, abs=TOL)
    assert result["per_query"]["q2"] == {"map": 0.0, "map@2": 0.0, "r-prec": 0.0, "judged@2": 0.0, "mrr@10": 0.0}
    assert result["map"] == pytest.approx((1 + 2 / 3) / 4, abs=TOL) and result["num_skipped"] == 1
    for bad, says in (("r-prec@5", "takes no cutoff"), ("judged", "needs a cutoff"), ("mapp@3", "unknown metric")):
        with pytest.raises(ValueError, match=says):
            evaluate_run(run, qrels, [bad])


def test_map_and_rprec_match_ranx_on_scifact(scifact_case):
    run, binary, _ = scifact_case
    result = evaluate_run(run, binary, ["map", "map@100", "r-prec"], per_query=True)
    evaluated = list(result["per_query"])
    rx = _ranx_per_query(run, binary, ["map", "map@100", "r-precision"], evaluated)
    for qid in evaluated:
        mine = result["per_query"][qid]
        assert mine["map"] == pytest.approx(rx[qid]["map"], abs=TOL), qid
        assert mine["map@100"] == pytest.approx(rx[qid]["map@100"], abs=TOL), qid
        assert mine["r-prec"] == pytest.approx(rx[qid]["r-precision"], abs=TOL), qid
    assert 0.0 < result["map"] < 1.0 and 0.0 < result["r-prec"] < 1.0
