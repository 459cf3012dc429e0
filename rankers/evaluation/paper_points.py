"""The paper's three points, each judged on one run's own numbers (Menon et al., ICML 2022).

``reproduce`` exists to show them; :func:`paper_points` says, for each, whether this run shows it, by a
criterion fixed here (not tuned to any run) and with the numbers it rests on:

1. **Capacity** — a DE of large enough embedding size can represent the CA's scores: the capacity probe's
   fitted size-k embeddings reproduce the teacher's top passage on at least :data:`CAPACITY_TOP1` of the
   queries at some probed k (the smallest such k is reported).
2. **Overfitting, not capacity** — the DE trained on labels overfits more than the CA: its training-subset
   minus validation MRR@10 gap is larger than the CA teacher's.
3. **Distillation closes the gap** — the best distilled DE lies between the DE on labels and the CA on
   test re-rank MRR@10, its difference from the DE on labels is significant (the run's paired test, after
   the correction for the number of comparisons), and the share of the gap it closes is reported (the
   paper: 65% on MS MARCO).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CAPACITY_TOP1 = 0.9


def _capacity(capacity_rows: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    point = {"point": "capacity", "claim": "a DE of large enough size can represent the CA's scores"}
    if not capacity_rows:
        return {**point, "shown": None, "evidence": "capacity probe not run (--capacity_dims '')"}
    reached = sorted((row["k"], row["method"], row["top1"]) for row in capacity_rows if row["top1"] >= CAPACITY_TOP1)
    best = max(capacity_rows, key=lambda row: (row["top1"], -row["k"]))
    if reached:
        k, method, top1 = reached[0]
        evidence = (f"size-{k} embeddings ({method} fit) put the teacher's top passage first on {top1:.0%} of the "
                    f"queries (criterion ≥ {CAPACITY_TOP1:.0%} at some probed k)")
        return {**point, "shown": True, "evidence": evidence, "k": k}
    evidence = (f"no probed size reaches {CAPACITY_TOP1:.0%} top-1 agreement; best {best['top1']:.0%} at "
                f"k = {best['k']} ({best['method']})")
    return {**point, "shown": False, "evidence": evidence}


def _overfitting(gaps: Mapping[str, Mapping[str, float] | None]) -> dict[str, Any]:
    point = {"point": "overfitting", "claim": "the DE on labels overfits more than the CA (train-subset − val MRR@10)"}
    de, ca = gaps.get("DE labels"), gaps.get("CA teacher")
    if not de or not ca:
        return {**point, "shown": None, "evidence": "no train-subset / validation gap measured for both models"}
    de_gap, ca_gap = de["train_subset"] - de["val"], ca["train_subset"] - ca["val"]
    evidence = f"gap DE labels {de_gap:+.3f} vs CA {ca_gap:+.3f}"
    return {**point, "shown": de_gap > ca_gap, "evidence": evidence, "de_gap": de_gap, "ca_gap": ca_gap}


def _distillation(rerank: Mapping[str, float], significance: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    point = {"point": "distillation", "claim": "a DE distilled from the CA beats the DE on labels and closes part of the gap"}
    students = {name: value for name, value in rerank.items() if name not in ("CA teacher", "DE labels")}
    if "CA teacher" not in rerank or "DE labels" not in rerank or not students:
        return {**point, "shown": None, "evidence": "needs the CA, the DE on labels and at least one distilled DE"}
    ca, labels = rerank["CA teacher"], rerank["DE labels"]
    name, best = max(students.items(), key=lambda item: item[1])
    closed = (best - labels) / (ca - labels) if ca > labels else None  # no gap to close when the CA is not ahead
    test = next((row for row in significance or [] if row["system"] == name and row["baseline"] == "DE labels"), None)
    significant = bool(test and test["significant"])
    ordered = ca > best > labels
    p_text = f", p = {test['p_corrected']:.3g} ({test['correction']})" if test else ", no paired test"
    closed_text = (f"gap closed {closed:.0%} (the paper: 65%)" if closed is not None
                   else "the CA is not above the DE on labels: no gap to close")
    evidence = f"{name} {best:.3f} vs DE labels {labels:.3f} (Δ {best - labels:+.3f}{p_text}), CA {ca:.3f}; {closed_text}"
    return {**point, "shown": ordered and significant, "evidence": evidence, "best": name, "gap_closed": closed,
            "ordered": ordered, "significant": significant}


def paper_points(rerank_mrr: Mapping[str, float], gaps: Mapping[str, Mapping[str, float] | None],
                 significance: Sequence[Mapping[str, Any]] | None = None,
                 capacity_rows: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The three points, each ``{"point", "claim", "shown": True | False | None (not measured), "evidence"}``.

    Args:
        rerank_mrr: test re-rank MRR@10 per model name (``"CA teacher"``, ``"DE labels"``, ``"DE <loss>"``).
        gaps: per model, ``{"train_subset": MRR@10, "val": MRR@10}`` at the last epoch.
        significance: :func:`rankers.evaluation.significance.compare_systems` rows against ``"DE labels"``.
        capacity_rows: the capacity probe's rows (``method``, ``k``, ``top1`` ...).
    """
    return [_capacity(capacity_rows), _overfitting(gaps), _distillation(rerank_mrr, significance)]


def paper_points_markdown(points: Sequence[Mapping[str, Any]]) -> str:
    """One line per point: ``1. **capacity** — shown: <evidence>``."""
    verdict = {True: "shown", False: "**not shown**", None: "not measured"}
    return "\n".join(f"{i}. **{p['point']}** ({p['claim']}) — {verdict[p['shown']]}: {p['evidence']}"
                     for i, p in enumerate(points, start=1))
