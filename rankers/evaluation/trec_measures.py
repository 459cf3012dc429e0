"""The measures torchmetrics lacks -- MAP, R-precision, judged@k -- from ir-measures (trec_eval's C code through
its pytrec_eval provider; judged@k from its own), on the same queries and conventions as
:func:`rankers.evaluation.metrics.evaluate_run`: every qrels query with a positive counts, a query the run
lacks scores 0, ties break as in trec_eval (score, then passage id descending).

Names (case-insensitive): ``map`` (average precision over the whole run), ``map@k`` (AP of the top k, trec_eval's
``map_cut``), ``r-prec`` (precision at R, the query's number of relevant passages) and ``judged@k`` (the share
of the top k that has any judgment: how far to trust a metric on sparse qrels, Sakai 2007).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = ["TREC_MEASURES", "is_trec_measure", "check_trec_measure", "trec_measure_values"]

_NAMES = re.compile(r"^(map|r-prec|judged)(?:@([0-9]+))?$")
TREC_MEASURES = ("map", "map@k", "r-prec", "judged@k")


def _parse(name: str) -> tuple[str, int | None] | None:
    match = _NAMES.match(name.strip().lower()) if isinstance(name, str) else None
    if match is None:
        return None
    measure, k = match.group(1), match.group(2)
    return measure, (int(k) if k is not None else None)


def is_trec_measure(name: str) -> bool:
    return _parse(name) is not None


def check_trec_measure(name: str) -> str:
    """The canonical (lower-case) name of a measure of this module; ValueError for a bad cutoff."""
    _measure(name)
    return name.strip().lower()


def _measure(name: str):
    import ir_measures

    measure, k = _parse(name)  # type: ignore[misc]
    if measure == "r-prec":
        if k is not None:
            raise ValueError(f"metric {name!r}: r-prec takes no cutoff (it is precision at R)")
        return ir_measures.Rprec
    if measure == "judged":
        if k is None or k < 1:
            raise ValueError(f"metric {name!r}: judged needs a cutoff k >= 1 (judged@10)")
        return ir_measures.Judged @ k
    if k is not None and k < 1:
        raise ValueError(f"metric {name!r}: cutoff k must be >= 1")
    return ir_measures.AP if k is None else ir_measures.AP @ k


def trec_measure_values(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                        names: Sequence[str], query_ids: Sequence[str]) -> dict[str, list[float]]:
    """Per-query values of ``names`` for ``query_ids`` (in that order; 0 where the run has no candidates)."""
    import ir_measures

    measures = {name.strip().lower(): _measure(name) for name in names}
    wanted = set(query_ids)
    sub_qrels = {q: {p: int(g) for p, g in qrels[q].items()} for q in query_ids}
    sub_run = {q: {p: float(s) for p, s in run[q].items()} for q in wanted if run.get(q)}
    found: dict[tuple[str, str], float] = {}
    if sub_run:
        by_measure = {str(m): name for name, m in measures.items()}
        for metric in ir_measures.iter_calc(list(measures.values()), sub_qrels, sub_run):
            found[by_measure[str(metric.measure)], metric.query_id] = float(metric.value)
    return {name: [found.get((name, q), 0.0) for q in query_ids] for name in measures}
