"""IR evaluation of a run against qrels, built on ``torchmetrics.functional.retrieval``.

The metric formulas are torchmetrics'; this module only decides *where* each judged passage sits
in the ranking and hands torchmetrics one ``(preds, target)`` pair per query:

* Ranking follows trec_eval: passages are sorted by score descending, ties broken by passage id
  **descending** (string comparison, the same as trec_eval's ``strcmp`` on UTF-8 ids). See
  :func:`rank_passages`.
* For a cutoff ``k``, each query becomes a target vector whose position ``i`` holds the grade of
  the passage at 0-based rank ``i`` when it is relevant (zeros elsewhere: non-relevant retrieved
  passages and padding look the same to every metric). Relevant passages that the run did not
  retrieve, or ranked at 0-based rank >= ``k``, are appended *after* position ``k`` (the "score -inf,
  then truncate at k" of trec_eval): they count in the recall and ideal-DCG denominators but are
  never inside the cutoff.
* A metric value depends only on the relevant passages inside the cutoff and the multiset of all
  grades, and that key repeats a lot across queries, so values are memoised per key; torchmetrics
  still computes every distinct value (7k queries x 1000 candidates evaluates in about a second).
* ``preds`` is a strictly decreasing positive vector, so torchmetrics reproduces exactly that
  order (torchmetrics also drops ``preds <= 0`` from MRR and recall numerators, which is why raw
  scores, which may be negative for dense retrievers, are never passed through).
* Relevance: graded (trec_eval's linear gain, negative grades clamped to 0) for nDCG, binary
  (grade > 0) for MRR, recall and precision.

Queries of ``qrels`` without any positive are skipped and counted; queries of ``qrels`` that the
run lacks score 0 on every metric; queries of the run that ``qrels`` lacks are ignored.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.retrieval import (
    retrieval_normalized_dcg,
    retrieval_precision,
    retrieval_recall,
    retrieval_reciprocal_rank,
)

log = logging.getLogger(__name__)

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_METRICS: tuple[str, ...] = ("mrr@10", "ndcg@10", "recall@100", "recall@1000")

# name -> (torchmetrics function, uses graded relevance)
_METRIC_FUNCTIONS: dict[str, tuple[Callable[..., Tensor], bool]] = {
    "mrr": (retrieval_reciprocal_rank, False),
    "ndcg": (retrieval_normalized_dcg, True),
    "recall": (retrieval_recall, False),
    "precision": (retrieval_precision, False),
}
_METRIC_RE = re.compile(r"^([a-z_]+)@([0-9]+)$")


@dataclass(frozen=True)
class MetricSpec:
    """A parsed metric name such as ``ndcg@10``."""

    name: str
    k: int

    def __str__(self) -> str:
        return f"{self.name}@{self.k}"


def parse_metric(metric: str) -> MetricSpec:
    """Parse ``name@k`` (e.g. ``"mrr@10"``) into a :class:`MetricSpec`.

    Raises:
        ValueError: for an unknown name, a missing/invalid cutoff or a cutoff < 1.
    """
    match = _METRIC_RE.match(metric.strip().lower()) if isinstance(metric, str) else None
    from rankers.evaluation.trec_measures import TREC_MEASURES

    known = ", ".join([f"{name}@k" for name in _METRIC_FUNCTIONS] + list(TREC_MEASURES))
    if match is None:
        raise ValueError(f"metric {metric!r}: expected 'name@k' with k a positive integer, one of {known}")
    name, k = match.group(1), int(match.group(2))
    if name not in _METRIC_FUNCTIONS:
        raise ValueError(f"metric {metric!r}: unknown metric name {name!r}; known: {known}")
    if k < 1:
        raise ValueError(f"metric {metric!r}: cutoff k must be >= 1, got {k}")
    return MetricSpec(name, k)


def metric_name(metric: str) -> str:
    """The canonical (result-key) name of any metric :func:`evaluate_run` takes; raises ValueError for unknown ones."""
    from rankers.evaluation.trec_measures import check_trec_measure, is_trec_measure

    return check_trec_measure(metric) if is_trec_measure(metric) else str(parse_metric(metric))


def rank_passages(candidates: Mapping[str, float]) -> list[str]:
    """Passage ids of one query's candidates in rank order.

    Order: score descending, ties by passage id descending (trec_eval's convention). This is the
    single ranking convention of the project (metrics and negative mining both use it).
    """
    # Two stable sorts: first the tie-breaker, then the primary key.
    by_id = sorted(candidates, reverse=True)
    return sorted(by_id, key=lambda pid: candidates[pid], reverse=True)


def _relevant_ranks(query_id: str, candidates: Mapping[str, float] | None, relevant: Iterable[str]) -> list[int | None]:
    """0-based rank of each relevant passage in ``candidates`` (``None`` when not retrieved)."""
    if not candidates:
        return [None for _ in relevant]
    scores = np.fromiter(candidates.values(), dtype=np.float64, count=len(candidates))
    if np.isnan(scores).any():
        bad = next(pid for pid, s in candidates.items() if s != s)
        raise ValueError(f"run: query {query_id!r}, passage {bad!r}: score is NaN")
    passage_ids: list[str] | None = None
    ranks: list[int | None] = []
    for pid in relevant:
        score = candidates.get(pid)
        if score is None:
            ranks.append(None)
            continue
        rank = int(np.count_nonzero(scores > score))
        tied = np.flatnonzero(scores == score)
        if len(tied) > 1:
            if passage_ids is None:
                passage_ids = list(candidates)
            rank += sum(1 for i in tied if passage_ids[i] > pid)
        ranks.append(rank)
    return ranks


def _placements(
    query_id: str, candidates: Mapping[str, float] | None, judgements: Mapping[str, int]
) -> list[tuple[int | None, int]]:
    """``(0-based rank or None, grade)`` of every positive judgement of one query."""
    positives = {pid: int(rel) for pid, rel in judgements.items() if rel > 0}
    ranks = _relevant_ranks(query_id, candidates, positives)
    return list(zip(ranks, positives.values()))


def _metric_key(placements: list[tuple[int | None, int]], k: int, graded: bool) -> tuple:
    """What a cutoff-``k`` metric value can depend on: the relevant passages inside the cutoff
    (rank, grade) and the multiset of all grades (recall / ideal-DCG denominators)."""
    inside: list[tuple[int, int]] = []
    outside: list[int] = []
    for rank, grade in placements:
        grade = grade if graded else 1
        if rank is not None and rank < k:
            inside.append((rank, grade))
        else:
            outside.append(grade)
    return tuple(sorted(inside)), tuple(sorted(outside))


def _torchmetrics_value(spec: MetricSpec, key: tuple) -> float:
    """Run the torchmetrics function on the canonical ``(preds, target)`` of one key: relevant
    passages inside the cutoff at their ranks, the others appended after position ``k``."""
    inside, outside = key
    function, graded = _METRIC_FUNCTIONS[spec.name]
    length = spec.k + len(outside)
    target = torch.zeros(length, dtype=torch.long)
    for rank, grade in inside:
        target[rank] = grade
    for offset, grade in enumerate(outside):
        target[spec.k + offset] = grade
    preds = torch.arange(length, 0, -1, dtype=torch.float32)
    with _float64_default():
        return float(function(preds, target if graded else target > 0, top_k=spec.k))


@contextmanager
def _float64_default() -> Iterator[None]:
    """torchmetrics builds nDCG's discounts with the default dtype and differences their cumsum;
    in float32 that loses ~1e-6 at a cutoff of 100, so the (few, memoised) calls run in float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def evaluate_run(
    run: Run,
    qrels: Qrels,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    per_query: bool = False,
) -> dict:
    """Mean of each metric over the queries of ``qrels`` with at least one positive.

    Args:
        run: query id -> {passage id: score}; higher scores rank first.
        qrels: query id -> {passage id: relevance grade}; grade > 0 means relevant.
        metrics: names ``name@k`` with name in mrr, ndcg, recall, precision (torchmetrics), or ``map``,
            ``map@k``, ``r-prec``, ``judged@k`` (ir-measures, :mod:`rankers.evaluation.trec_measures`);
            case-insensitive, result keys use the lower-case form.
        per_query: also return ``"per_query": {query id: {metric: value}}``.

    Returns:
        ``{metric: mean, ..., "num_queries": int, "num_skipped": int}`` (+ ``"per_query"``).

    Raises:
        ValueError: unknown metric name, NaN score in the run, or no query with a positive.
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise ValueError("evaluate_run: metrics is empty")
    from rankers.evaluation.trec_measures import is_trec_measure, trec_measure_values

    trec_names = [m for m in names if is_trec_measure(m)]  # MAP, R-prec, judged@k: ir-measures
    specs = [parse_metric(m) for m in names if not is_trec_measure(m)]

    evaluated = [qid for qid, judged in qrels.items() if any(rel > 0 for rel in judged.values())]
    num_skipped = len(qrels) - len(evaluated)
    if num_skipped:
        log.warning("evaluate_run: skipped %d of %d qrels queries without a positive judgement", num_skipped, len(qrels))
    if not evaluated:
        raise ValueError(f"evaluate_run: none of the {len(qrels)} qrels queries has a positive judgement")

    # A metric value only depends on _metric_key, which repeats a lot across queries (relevant
    # passages at the same ranks): memoising it keeps 7k queries x 1000 candidates ~1 s.
    cache: dict[tuple, float] = {}
    values: dict[str, list[float]] = {str(spec): [] for spec in specs}
    for qid in evaluated:
        placements = _placements(qid, run.get(qid), qrels[qid])
        for spec in specs:
            key = (spec, *_metric_key(placements, spec.k, _METRIC_FUNCTIONS[spec.name][1]))
            value = cache.get(key)
            if value is None:
                value = cache[key] = _torchmetrics_value(spec, key[1:])
            values[str(spec)].append(value)

    if trec_names:
        values.update(trec_measure_values(run, qrels, trec_names, evaluated))
    result: dict = {name: math.fsum(vals) / len(vals) for name, vals in values.items()}
    result["num_queries"] = len(evaluated)
    result["num_skipped"] = num_skipped
    if per_query:
        result["per_query"] = {
            qid: {name: values[name][i] for name in values} for i, qid in enumerate(evaluated)
        }
    return result


def format_metrics(result: Mapping[str, object], digits: int = 4) -> str:
    """One-line human summary of :func:`evaluate_run`'s result, e.g. for logs."""
    parts = [
        f"{name}={value:.{digits}f}"
        for name, value in result.items()
        if isinstance(value, float) and not math.isnan(value)
    ]
    parts.append(f"queries={result.get('num_queries')} skipped={result.get('num_skipped')}")
    return " ".join(parts)
