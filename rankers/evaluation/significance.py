"""Paired significance tests between IR systems evaluated on the same queries.

One job: given per-query values of a metric for two (or more) systems over the *same* queries,
say whether the differences of their means are statistically significant.

* :func:`per_query_scores` — per-query values of one metric, from
  :func:`rankers.evaluation.metrics.evaluate_run` itself (``per_query=True``), so the means of the tests are
  exactly the numbers of the paper table: queries of the qrels without a positive judgement are
  skipped, queries of the qrels that the run lacks score 0, queries of the run outside the qrels
  are ignored.
* :func:`paired_test` — one two-sided paired test between two systems:

  - ``"t-test"``: Student's paired t-test (``scipy.stats.ttest_rel``); the statistic is
    ``mean(d) / (sd(d) / sqrt(n))`` with ``d = a - b`` and the sample sd, the p-value
    ``2 * t.sf(|t|, n - 1)`` (Student 1908; Smucker, Allan & Carterette, CIKM 2007, who find it
    agrees with the randomisation test on IR metrics).
  - ``"wilcoxon"``: the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences
    dropped: ``zero_method="wilcox"``; exact or normal approximation chosen by scipy) (Wilcoxon 1945).
  - ``"permutation"``: the paired randomisation (permutation) test of the mean difference
    (``scipy.stats.permutation_test`` with ``permutation_type="samples"``: each query's two values
    are swapped or not; exact when ``2**n <= n_resamples``, else ``n_resamples`` seeded random
    sign flips) (Fisher 1935; Smucker et al. 2007).

  When every difference is 0 the two systems are identical on these queries: p = 1.0 for every
  test (scipy would return NaN with a warning for the t-test and the signed-rank test).
* :func:`compare_systems` — every system against one baseline, with the p-values corrected for the
  number of comparisons (Holm 1979, "A simple sequentially rejective multiple test procedure",
  Scand. J. Statist. 6:65-70, by default; Bonferroni; or none). :func:`adjust_p_values` does the
  correction and :func:`significance_markdown` prints the rows as a markdown table.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from rankers.evaluation.metrics import Qrels, Run, evaluate_run, metric_name

Test = Literal["t-test", "wilcoxon", "permutation"]
Correction = Literal["holm", "bonferroni", "none"]

TESTS: tuple[str, ...] = ("t-test", "wilcoxon", "permutation")
CORRECTIONS: tuple[str, ...] = ("holm", "bonferroni", "none")


# ----------------------------------------------------------------------------- per-query values
def per_query_scores(run: Run, qrels: Qrels, metric: str = "mrr@10") -> dict[str, float]:
    """``{query id: value of metric}`` over the queries :func:`rankers.evaluation.metrics.evaluate_run` averages.

    The values are ``evaluate_run(run, qrels, [metric], per_query=True)["per_query"]``: their mean is
    exactly ``evaluate_run``'s mean. Queries of ``qrels`` without a positive judgement are skipped;
    queries of ``qrels`` that ``run`` lacks score 0; queries of ``run`` outside ``qrels`` are ignored.
    So two runs evaluated against the same qrels always cover the same queries.
    """
    name = metric_name(metric)
    result = evaluate_run(run, qrels, [name], per_query=True)
    return {qid: values[name] for qid, values in result["per_query"].items()}


# ----------------------------------------------------------------------------- one paired test
def _aligned(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The common query ids (sorted) and both systems' values in that order; ValueError when the
    query sets differ, are empty, or hold a non-finite value."""
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    if only_a or only_b:
        def some(ids: set[str]) -> str:
            shown = sorted(ids)[:5]
            return ", ".join(map(repr, shown)) + (", ..." if len(ids) > 5 else "")

        parts = []
        if only_a:
            parts.append(f"{len(only_a)} only in a ({some(only_a)})")
        if only_b:
            parts.append(f"{len(only_b)} only in b ({some(only_b)})")
        raise ValueError(f"paired_test: the two systems must be scored on the same queries; {'; '.join(parts)}")
    if not a:
        raise ValueError("paired_test: no queries")
    qids = sorted(a)
    x = np.array([a[q] for q in qids], dtype=np.float64)
    y = np.array([b[q] for q in qids], dtype=np.float64)
    for side, values in (("a", x), ("b", y)):
        if not np.isfinite(values).all():
            bad = qids[int(np.flatnonzero(~np.isfinite(values))[0])]
            raise ValueError(f"paired_test: system {side}, query {bad!r}: value is not finite")
    return qids, x, y


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def _permutation_kwargs(seed: int) -> dict[str, Any]:
    """``rng=`` (scipy >= 1.15) or ``random_state=`` (older scipy) for ``permutation_test``."""
    from scipy import stats

    generator = np.random.default_rng(seed)
    if "rng" in inspect.signature(stats.permutation_test).parameters:
        return {"rng": generator}
    return {"random_state": generator}


def paired_test(
    a: Mapping[str, float],
    b: Mapping[str, float],
    test: Test = "t-test",
    n_resamples: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Two-sided paired test of ``mean(a) == mean(b)`` over the queries of ``a`` and ``b``.

    Args:
        a, b: ``{query id: metric value}`` of two systems (e.g. :func:`per_query_scores`); both
            must hold exactly the same query ids.
        test: ``"t-test"`` (Student's paired t-test, ``scipy.stats.ttest_rel``), ``"wilcoxon"``
            (signed-rank test, ``scipy.stats.wilcoxon``, zero differences dropped) or
            ``"permutation"`` (paired randomisation test of the mean difference,
            ``scipy.stats.permutation_test(permutation_type="samples")``).
        n_resamples: random sign-flip resamples of the permutation test (exact when
            ``2**n_queries <= n_resamples``).
        seed: seed of the permutation test's resamples.

    Returns:
        ``{"test", "n_queries", "mean_a", "mean_b", "mean_diff" (mean_a - mean_b), "statistic",
        "p_value"}``. Means are ``math.fsum / n``, the same arithmetic as ``evaluate_run``. When all
        differences are 0: ``statistic`` 0.0 and ``p_value`` 1.0. A t-test on a constant non-zero
        difference (equal up to rounding) has ``statistic`` ±inf and ``p_value`` 0.0.

    Raises:
        ValueError: unknown ``test``, different query sets, no queries, a non-finite value, or a
            t-test on a single query whose difference is not 0.
    """
    if test not in TESTS:
        raise ValueError(f"paired_test: test {test!r}: expected one of {', '.join(TESTS)}")
    _, x, y = _aligned(a, b)
    n = len(x)
    d = x - y
    result: dict[str, Any] = {
        "test": test,
        "n_queries": n,
        "mean_a": math.fsum(x) / n,
        "mean_b": math.fsum(y) / n,
    }
    result["mean_diff"] = result["mean_a"] - result["mean_b"]

    from scipy import stats

    if not d.any():  # identical systems on these queries: nothing to test
        statistic, p_value = 0.0, 1.0
    elif test == "t-test":
        if n < 2:
            raise ValueError("paired_test: the t-test needs at least 2 queries")
        mean_d = float(np.mean(d))
        if np.max(np.abs(d - mean_d)) <= 10 * np.finfo(np.float64).eps * abs(mean_d):
            # constant non-zero difference (up to rounding: scipy's own "catastrophic cancellation"
            # threshold): sd 0, |t| infinite
            statistic, p_value = math.copysign(math.inf, mean_d), 0.0
        else:
            res = stats.ttest_rel(x, y, alternative="two-sided")
            statistic, p_value = float(res.statistic), float(res.pvalue)
    elif test == "wilcoxon":
        res = stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
        statistic, p_value = float(res.statistic), float(res.pvalue)
    else:
        if n_resamples < 1:
            raise ValueError(f"paired_test: n_resamples must be >= 1, got {n_resamples}")
        res = stats.permutation_test(
            (x, y), _mean_difference, permutation_type="samples", vectorized=True,
            n_resamples=n_resamples, alternative="two-sided", **_permutation_kwargs(seed),
        )
        statistic, p_value = float(res.statistic), float(res.pvalue)
    result["statistic"] = statistic
    result["p_value"] = min(1.0, p_value)
    return result


# ----------------------------------------------------------------------------- multiple comparisons
def adjust_p_values(p_values: Sequence[float], correction: Correction = "holm") -> list[float]:
    """p-values corrected for ``len(p_values)`` comparisons, in the input order.

    * ``"holm"``: Holm–Bonferroni step-down (Holm 1979). With ``p_(1) <= ... <= p_(m)`` sorted,
      ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting ``p~ <= alpha`` controls the
      family-wise error rate at ``alpha`` and is never less powerful than Bonferroni.
    * ``"bonferroni"``: ``min(1, m p)``.
    * ``"none"``: unchanged.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"adjust_p_values: correction {correction!r}: expected one of {', '.join(CORRECTIONS)}")
    p = [float(v) for v in p_values]
    if any(not (0.0 <= v <= 1.0) for v in p):
        raise ValueError(f"adjust_p_values: p-values must lie in [0, 1], got {p}")
    m = len(p)
    if correction == "none":
        return p
    if correction == "bonferroni":
        return [min(1.0, m * v) for v in p]
    adjusted = [0.0] * m
    running = 0.0
    for i, index in enumerate(sorted(range(m), key=lambda j: p[j])):  # stable: ties keep their order
        running = max(running, min(1.0, (m - i) * p[index]))
        adjusted[index] = running
    return adjusted


def compare_systems(
    runs: Mapping[str, Run],
    qrels: Qrels,
    metric: str = "mrr@10",
    *,
    baseline: str,
    test: Test = "t-test",
    alpha: float = 0.05,
    correction: Correction = "holm",
    n_resamples: int = 10000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every system of ``runs`` but ``baseline`` against ``baseline``, on ``metric``'s per-query values.

    Each system's per-query values come from :func:`per_query_scores` (``evaluate_run``'s queries
    and values), each comparison from :func:`paired_test` (two-sided; ``test`` as there), and the
    p-values of the ``len(runs) - 1`` comparisons are corrected together by :func:`adjust_p_values`
    (Holm 1979 by default). ``significant`` is ``p_corrected <= alpha``.

    Returns:
        One dict per non-baseline system, in ``runs`` order: ``system``, ``baseline``, ``metric``,
        ``test``, ``correction``, ``alpha``, ``n_queries``, ``mean``, ``baseline_mean``, ``delta``
        (mean - baseline_mean), ``statistic``, ``p_value`` (raw), ``p_corrected``, ``significant``.

    Raises:
        ValueError: ``baseline`` not in ``runs``, an unknown test / correction / metric, alpha
            outside (0, 1), or what :func:`paired_test` / ``evaluate_run`` raise.
    """
    if baseline not in runs:
        raise ValueError(f"compare_systems: baseline {baseline!r} is not one of the runs: {', '.join(map(repr, runs))}")
    if test not in TESTS:
        raise ValueError(f"compare_systems: test {test!r}: expected one of {', '.join(TESTS)}")
    if correction not in CORRECTIONS:
        raise ValueError(f"compare_systems: correction {correction!r}: expected one of {', '.join(CORRECTIONS)}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"compare_systems: alpha must lie in (0, 1), got {alpha}")
    name = metric_name(metric)
    base = per_query_scores(runs[baseline], qrels, name)
    rows: list[dict[str, Any]] = []
    for system, run in runs.items():
        if system == baseline:
            continue
        res = paired_test(per_query_scores(run, qrels, name), base, test=test, n_resamples=n_resamples, seed=seed)
        rows.append({
            "system": system, "baseline": baseline, "metric": name, "test": test, "correction": correction,
            "alpha": alpha, "n_queries": res["n_queries"], "mean": res["mean_a"], "baseline_mean": res["mean_b"],
            "delta": res["mean_diff"], "statistic": res["statistic"], "p_value": res["p_value"],
        })
    for row, corrected in zip(rows, adjust_p_values([r["p_value"] for r in rows], correction)):
        row["p_corrected"] = corrected
        row["significant"] = bool(corrected <= alpha)
    return rows


# ----------------------------------------------------------------------------- formatting
def _p(value: float) -> str:
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def significance_markdown(rows: Sequence[Mapping[str, Any]], digits: int = 4) -> str:
    """:func:`compare_systems`' rows as a markdown table::

        | system | vs | mean | baseline mean | Δ | p (t-test) | p (holm) | significant |

    The p columns are named after the rows' test and correction (all rows must share them); "mean"
    is the rows' metric (callers name it in a caption). p-values under 1e-4 print as ``1.2e-05``.
    With no rows, only the header (with ``test`` / ``correction`` placeholders) is returned.
    """
    tests = {r["test"] for r in rows}
    corrections = {r["correction"] for r in rows}
    if len(tests) > 1 or len(corrections) > 1:
        raise ValueError(f"significance_markdown: rows mix tests {sorted(tests)} / corrections {sorted(corrections)}")
    test = next(iter(tests), "test")
    correction = next(iter(corrections), "correction")
    lines = [f"| system | vs | mean | baseline mean | Δ | p ({test}) | p ({correction}) | significant |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['baseline']} | {r['mean']:.{digits}f} | {r['baseline_mean']:.{digits}f} | "
            f"{r['delta']:+.{digits}f} | {_p(r['p_value'])} | {_p(r['p_corrected'])} | "
            f"{'yes' if r['significant'] else 'no'} |"
        )
    return "\n".join(lines)
