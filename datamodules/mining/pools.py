"""Negative pools from a run: :func:`negative_pool` keeps, per qrels query, the run's passages inside a rank
window minus the judged positives, in rank order (score desc, ties by passage id desc, as in
:func:`rankers.evaluation.metrics.rank_passages`); :func:`denoise` drops likely false negatives by their
teacher scores (RocketQA). Each training step samples from a pool itself (:mod:`datamodules.examples`)."""
from __future__ import annotations

from collections.abc import Mapping

from rankers.evaluation.metrics import rank_passages

Run = dict[str, dict[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def _check_window(window: tuple[int, int]) -> tuple[int, int]:
    try:
        start, end = (int(w) for w in window)
    except (TypeError, ValueError) as err:
        raise ValueError(f"window {window!r}: expected (start, end) ranks") from err
    if not 0 <= start < end:
        raise ValueError(f"window {window!r}: expected 0 <= start < end (0-based ranks, end excluded)")
    return start, end


def negative_pool(run: Mapping[str, Mapping[str, float]], qrels: Qrels, *, window: tuple[int, int] = (0, 100)) -> dict[str, list[str]]:
    """Per qrels query: its run passages at 0-based ranks ``[start, end)``, minus the judged
    positives (relevance > 0), in rank order. Queries absent from the run get ``[]``."""
    start, end = _check_window(window)
    pools: dict[str, list[str]] = {}
    for qid, judged in qrels.items():
        positives = {pid for pid, rel in judged.items() if rel > 0}
        ranked = rank_passages(run.get(qid) or {})[start:end]
        pools[qid] = [pid for pid in ranked if pid not in positives]
    return pools


def denoise(pools: dict[str, list[str]], teacher_scores: Run, positives: dict[str, list[str]], *,
            threshold: float | None = None, margin: float | None = None) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Drop likely false negatives (RocketQA, Qu et al. 2021): teacher score > ``threshold``, or
    ≥ (best positive's teacher score − ``margin``). Returns the filtered pools and per-query drop counts."""
    kept, dropped = {}, {}
    for qid, pool in pools.items():
        scores = teacher_scores[qid]
        best_positive = max((scores[p] for p in positives.get(qid, ()) if p in scores), default=None)

        def false_negative(pid: str) -> bool:
            if threshold is not None and scores[pid] > threshold:
                return True
            return margin is not None and best_positive is not None and scores[pid] >= best_positive - margin

        kept[qid] = [pid for pid in pool if not false_negative(pid)]
        dropped[qid] = len(pool) - len(kept[qid])
    return kept, dropped
