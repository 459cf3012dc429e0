"""rankers.evaluation.significance: paired tests against hand computations and ranx, Holm by hand, edge cases."""
from __future__ import annotations

import math
import random
import statistics
import warnings

import pytest
from scipy import stats

from rankers.evaluation.metrics import evaluate_run
from rankers.evaluation.significance import (
    adjust_p_values,
    compare_systems,
    paired_test,
    per_query_scores,
    significance_markdown,
)

# d = a - b = [0.1, 0.3, 0.2, 0.4, 0.0]: mean 0.2, sample sd sqrt(0.025), t = 0.2 / (sd / sqrt 5) = 2 sqrt 2
A = {f"q{i}": v for i, v in enumerate([0.6, 0.8, 0.5, 0.9, 0.3])}
B = {f"q{i}": v for i, v in enumerate([0.5, 0.5, 0.3, 0.5, 0.3])}


def test_t_test_matches_hand_computation():
    d = [A[q] - B[q] for q in sorted(A)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    assert t == pytest.approx(2 * math.sqrt(2), rel=1e-12)
    p = 2 * stats.t.sf(abs(t), n - 1)

    res = paired_test(A, B, "t-test")
    assert res["test"] == "t-test" and res["n_queries"] == 5
    assert res["mean_a"] == pytest.approx(0.62) and res["mean_b"] == pytest.approx(0.42)
    assert res["mean_diff"] == pytest.approx(0.2)
    assert res["statistic"] == pytest.approx(t, rel=1e-9)
    assert res["p_value"] == pytest.approx(p, rel=1e-9)
    # two-sided: swapping the systems flips the sign, not the p-value
    swapped = paired_test(B, A, "t-test")
    assert swapped["statistic"] == pytest.approx(-t, rel=1e-9)
    assert swapped["p_value"] == pytest.approx(p, rel=1e-9)


def test_wilcoxon_and_permutation_by_hand():
    # Wilcoxon: the zero difference is dropped; 4 positive differences, W- = 0, exact p = 2 / 2**4
    wil = paired_test(A, B, "wilcoxon")
    assert wil["statistic"] == 0.0
    assert wil["p_value"] == pytest.approx(2 / 16)
    # permutation: 2**5 = 32 sign patterns (exact); |mean| >= 0.2 only for all-positive / all-negative
    # nonzero differences, each with 2 signs of the zero: 4 / 32
    perm = paired_test(A, B, "permutation", n_resamples=10000)
    assert perm["statistic"] == pytest.approx(0.2)
    assert perm["p_value"] == pytest.approx(4 / 32)


def test_permutation_randomised_is_seeded():
    rng = random.Random(3)
    a = {f"q{i}": rng.random() for i in range(40)}
    b = {q: v + rng.gauss(0.05, 0.2) for q, v in a.items()}
    one = paired_test(a, b, "permutation", n_resamples=2000, seed=1)
    assert one == paired_test(a, b, "permutation", n_resamples=2000, seed=1)
    t = paired_test(a, b, "t-test")
    assert abs(one["p_value"] - t["p_value"]) < 0.05  # Smucker et al. 2007: the two agree on such data


def _synthetic(n_queries: int = 40, n_passages: int = 30, seed: int = 0):
    """qrels with 1-2 positives per query and three runs with distinct scores (no ties)."""
    rng = random.Random(seed)
    qrels, runs = {}, {"base": {}, "better": {}, "noise": {}}
    for q in range(n_queries):
        qid = f"q{q}"
        pids = [f"p{q}_{j}" for j in range(n_passages)]
        positives = rng.sample(pids, rng.choice([1, 2]))
        qrels[qid] = {pid: 1 for pid in positives}
        qrels[qid][pids[0] if pids[0] not in positives else pids[1]] = 0  # a judged negative too
        for name, boost in (("base", 0.0), ("better", 0.6), ("noise", 0.05)):
            scores = rng.sample(range(10**6), n_passages)  # distinct
            runs[name][qid] = {pid: s / 10**6 + (boost if pid in positives and rng.random() < 0.6 else 0.0)
                               for pid, s in zip(pids, scores)}
    return qrels, runs


def test_t_test_agrees_with_ranx_compare():
    ranx = pytest.importorskip("ranx")
    qrels, runs = _synthetic()
    rows = compare_systems(runs, qrels, "mrr@10", baseline="base", test="t-test", correction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's type-safety warnings
        report = ranx.compare(ranx.Qrels(qrels), [ranx.Run(run, name=name) for name, run in runs.items()],
                              ["mrr@10"], stat_test="student", max_p=0.05)
    for row in rows:
        ranx_p = float(report.comparisons[("base", row["system"])]["mrr@10"]["p_value"])
        assert row["p_value"] == pytest.approx(ranx_p, abs=1e-6)
        assert row["mean"] == pytest.approx(report.results[row["system"]]["mrr@10"], abs=1e-9)
        assert row["baseline_mean"] == pytest.approx(report.results["base"]["mrr@10"], abs=1e-9)
    assert rows[0]["p_value"] < 0.01  # "better" is better: the example does test something


def test_per_query_scores_average_to_evaluate_run():
    qrels, runs = _synthetic()
    qrels["unjudged"] = {"x": 0}  # no positive: skipped, as evaluate_run does
    qrels["missing"] = {"y": 1}  # not in the run: scores 0
    values = per_query_scores(runs["base"], qrels, "MRR@10")
    assert "unjudged" not in values and values["missing"] == 0.0
    assert math.fsum(values.values()) / len(values) == evaluate_run(runs["base"], qrels, ["mrr@10"])["mrr@10"]
    rows = compare_systems(runs, qrels, "ndcg@10", baseline="base")
    means = {name: evaluate_run(run, qrels, ["ndcg@10"])["ndcg@10"] for name, run in runs.items()}
    for row in rows:
        assert row["mean"] == means[row["system"]] and row["baseline_mean"] == means["base"]
        assert row["n_queries"] == len(values)


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert adjust_p_values(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust_p_values(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert adjust_p_values(p, "none") == p
    assert adjust_p_values([0.5, 0.6], "holm") == [1.0, 1.0]  # capped at 1, monotone
    assert adjust_p_values([], "holm") == []
    with pytest.raises(ValueError, match="correction"):
        adjust_p_values(p, "fdr")


def test_compare_systems_holm_and_significance():
    qrels, runs = _synthetic()
    runs["copy"] = dict(runs["base"])
    raw = compare_systems(runs, qrels, baseline="base", correction="none")
    holm = compare_systems(runs, qrels, baseline="base", correction="holm", alpha=0.05)
    assert [r["system"] for r in holm] == ["better", "noise", "copy"]
    assert [r["p_corrected"] for r in holm] == pytest.approx(adjust_p_values([r["p_value"] for r in raw], "holm"))
    assert [r["p_value"] for r in holm] == [r["p_value"] for r in raw]
    copy = holm[2]
    assert copy["p_value"] == 1.0 and copy["delta"] == 0.0 and not copy["significant"]
    assert holm[0]["significant"] and holm[0]["delta"] > 0
    for r in holm:
        assert r["significant"] == (r["p_corrected"] <= 0.05)
    table = significance_markdown(holm)
    lines = table.splitlines()
    assert lines[0] == "| system | vs | mean | baseline mean | Δ | p (t-test) | p (holm) | significant |"
    assert len(lines) == 2 + len(holm)
    assert lines[-1].startswith("| copy | base |") and lines[-1].endswith("| 1.0000 | 1.0000 | no |")
    with pytest.raises(ValueError, match="baseline"):
        compare_systems(runs, qrels, baseline="nope")


@pytest.mark.parametrize("test", ["t-test", "wilcoxon", "permutation"])
def test_all_equal_differences_give_p_one(test):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scipy RuntimeWarning / NaN
        res = paired_test(A, dict(A), test)
    assert res["p_value"] == 1.0 and res["mean_diff"] == 0.0 and res["statistic"] == 0.0


def test_constant_nonzero_difference_t_test():
    base = dict(B)
    shifted = {q: v + 0.25 for q, v in base.items()}  # differences equal up to rounding
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = paired_test(shifted, base, "t-test")
    assert res["p_value"] < 1e-6 and res["statistic"] > 0


def test_mismatched_queries_raise():
    b = dict(B)
    b.pop("q0")
    b["q9"] = 0.1
    with pytest.raises(ValueError, match=r"same queries.*1 only in a \('q0'\).*1 only in b \('q9'\)"):
        paired_test(A, b)
    with pytest.raises(ValueError, match="test"):
        paired_test(A, B, "sign")
    with pytest.raises(ValueError, match="no queries"):
        paired_test({}, {})
    with pytest.raises(ValueError, match="not finite"):
        paired_test({"q": float("nan")}, {"q": 0.0})
    with pytest.raises(ValueError, match="at least 2"):
        paired_test({"q": 1.0}, {"q": 0.0})


def test_sample_sd_definition_used():
    # the hand formula above uses the sample sd (n - 1), as ttest_rel does
    d = [A[q] - B[q] for q in sorted(A)]
    assert statistics.stdev(d) == pytest.approx(math.sqrt(0.025))
