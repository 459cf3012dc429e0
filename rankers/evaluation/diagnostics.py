"""Score diagnostics behind the paper's argument: margins, teacher–student agreement, and their plots.

Pure functions over runs (``{query id: {passage id: score}}``) and qrels (``{query id: {passage id:
grade}}``); no Lightning, no logger. :class:`callbacks.score_diagnostics.ScoreDiagnostics` calls them at
the end of every validation epoch and ``python -m rankers capacity`` uses the agreement measures.

Definitions (per query, over its scored candidates; a passage is *positive* when its grade is > 0):

* **normalised margin** ``(s_pos − max s_neg) / (max s − min s)``, where ``s_pos`` is the score of the
  best-scored positive and ``max s_neg`` the score of the best-scored (hardest) negative; the
  denominator is the spread of all the query's candidate scores, so the margin lies in [−1, 1] and
  does not depend on the scale of the scores (a DE's dot products and a CA's logits compare). It is
  0 when all candidates score the same (``max s == min s``). Queries without a positive or without a
  negative among their candidates have no margin and are left out. A margin > 0 means a positive is
  ranked first.
* **normalised score** ``ŝ = (s − mean s) / (max s − min s)`` over the query's candidates (0 when
  they all score the same): removes the per-query offset and scale, so queries (and models) share one
  axis; the normalised margin is exactly ``ŝ_pos − ŝ_hardest negative``. The plots use it by default,
  since a DE's raw dot products often share a large common offset that hides the per-query picture.
* **Kendall τ** (τ-b, which corrects for ties) between the teacher's and the student's scores of the
  candidates both scored; queries with fewer than two common candidates, or where either side gives
  every candidate the same score (τ undefined), are left out of the mean.
* **top-1 agreement**: 1 when the student's first candidate is the teacher's first, else 0 (both
  rankings use :func:`rankers.evaluation.metrics.rank_passages`, so ties break the same way as in evaluation).

Plots use matplotlib's object-oriented API (``Figure`` + Agg canvas), never ``pyplot``: nothing global
changes, so it is safe inside training processes and headless machines.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rankers.evaluation.metrics import rank_passages

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


# --- scores and margins ------------------------------------------------------------------------------
def positives_of(qrels: Qrels, query_id: str) -> set[str]:
    """The passages judged relevant (grade > 0) for a query."""
    return {pid for pid, grade in qrels.get(query_id, {}).items() if grade > 0}


def split_scores(run: Run, qrels: Qrels) -> tuple[np.ndarray, np.ndarray]:
    """All candidate scores of the run's queries, split into (positives, negatives)."""
    pos: list[float] = []
    neg: list[float] = []
    for qid, candidates in run.items():
        relevant = positives_of(qrels, qid)
        for pid, score in candidates.items():
            (pos if pid in relevant else neg).append(float(score))
    return np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)


def normalised_margin(scores: Mapping[str, float], relevant: Iterable[str]) -> float | None:
    """``(s_pos − max s_neg) / (max s − min s)`` for one query (see the module docstring).

    ``s_pos`` is the best-scored positive. Returns None when the candidates hold no positive or no
    negative, and 0.0 when every candidate has the same score.
    """
    relevant = set(relevant)
    pos = [float(s) for pid, s in scores.items() if pid in relevant]
    neg = [float(s) for pid, s in scores.items() if pid not in relevant]
    if not pos or not neg:
        return None
    spread = max(max(pos), max(neg)) - min(min(pos), min(neg))
    if spread == 0:
        return 0.0
    return (max(pos) - max(neg)) / spread


def normalise_per_query(run: Run) -> dict[str, dict[str, float]]:
    """Each query's scores as ``(s − mean s) / (max s − min s)`` over its candidates (0 when constant)."""
    out = {}
    for qid, candidates in run.items():
        values = np.asarray(list(candidates.values()), dtype=np.float64)
        if not len(values):
            out[qid] = {}
            continue
        spread = float(values.max() - values.min())
        mean = float(values.mean())
        out[qid] = {pid: (float(s) - mean) / spread if spread > 0 else 0.0 for pid, s in candidates.items()}
    return out


def margins(run: Run, qrels: Qrels) -> dict[str, float]:
    """Normalised margin of each query of ``run`` that has both a positive and a negative candidate."""
    out = {}
    for qid, candidates in run.items():
        margin = normalised_margin(candidates, positives_of(qrels, qid))
        if margin is not None:
            out[qid] = margin
    return out


def hardest_negative_scores(run: Run, qrels: Qrels) -> np.ndarray:
    """Per query, the score of its best-scored negative (queries without a negative are left out)."""
    out = []
    for qid, candidates in run.items():
        relevant = positives_of(qrels, qid)
        neg = [float(s) for pid, s in candidates.items() if pid not in relevant]
        if neg:
            out.append(max(neg))
    return np.asarray(out, dtype=np.float64)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def _std(values: np.ndarray) -> float:
    return float(values.std()) if len(values) else math.nan


def score_summary(run: Run, qrels: Qrels) -> dict[str, float]:
    """Scalar summaries of a run's scores against qrels.

    Keys: ``pos_score_mean``, ``pos_score_std``, ``neg_score_mean``, ``neg_score_std`` (over all
    positive / negative candidates), ``hardneg_score_mean`` (mean over queries of the hardest
    negative's score), ``margin_mean``, ``margin_median``, ``margin_positive_frac`` (share of queries
    whose margin is > 0, i.e. a positive ranks first) and ``num_queries`` (queries with a margin).
    Empty groups give NaN.
    """
    pos, neg = split_scores(run, qrels)
    per_query = np.asarray(list(margins(run, qrels).values()), dtype=np.float64)
    return {
        "pos_score_mean": _mean(pos),
        "pos_score_std": _std(pos),
        "neg_score_mean": _mean(neg),
        "neg_score_std": _std(neg),
        "hardneg_score_mean": _mean(hardest_negative_scores(run, qrels)),
        "margin_mean": _mean(per_query),
        "margin_median": float(np.median(per_query)) if len(per_query) else math.nan,
        "margin_positive_frac": float((per_query > 0).mean()) if len(per_query) else math.nan,
        "num_queries": float(len(per_query)),
    }


# --- teacher–student agreement -----------------------------------------------------------------------
def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's τ-b between two aligned score vectors (``scipy.stats.kendalltau``, O(n log n)).

    NaN when fewer than two items or when either vector is constant.
    """
    from scipy.stats import kendalltau

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"kendall_tau: score vectors differ in length ({len(x)} vs {len(y)})")
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(kendalltau(x, y, variant="b").statistic)


def top1_agreement(teacher: Mapping[str, float], student: Mapping[str, float]) -> float:
    """1.0 when both rank the same candidate first among the candidates both scored, else 0.0.

    NaN when they share no candidate.
    """
    common = teacher.keys() & student.keys()
    if not common:
        return math.nan
    first_t = rank_passages({p: teacher[p] for p in common})[0]
    first_s = rank_passages({p: student[p] for p in common})[0]
    return float(first_t == first_s)


@dataclass
class Agreement:
    """Mean teacher–student agreement over queries, plus the per-query values."""

    kendall_tau: float
    top1: float
    num_queries: int
    per_query_tau: dict[str, float] = field(default_factory=dict)
    per_query_top1: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {"kendall_tau": self.kendall_tau, "top1": self.top1, "num_queries": float(self.num_queries)}


def agreement(teacher: Run, student: Run, min_candidates: int = 2) -> Agreement:
    """Per-query Kendall τ-b and top-1 agreement between teacher and student scores, averaged.

    Only queries of both runs are used, each over the candidates both scored, and only when there
    are at least ``min_candidates`` of them. τ is averaged over the queries where it is defined,
    top-1 over all used queries; ``num_queries`` counts the used queries.
    """
    taus: dict[str, float] = {}
    tops: dict[str, float] = {}
    for qid, t_scores in teacher.items():
        s_scores = student.get(qid)
        if not s_scores:
            continue
        common = sorted(t_scores.keys() & s_scores.keys())
        if len(common) < max(1, min_candidates):
            continue
        tau = kendall_tau([t_scores[p] for p in common], [s_scores[p] for p in common])
        if not math.isnan(tau):
            taus[qid] = tau
        tops[qid] = top1_agreement(t_scores, s_scores)
    return Agreement(
        kendall_tau=float(np.mean(list(taus.values()))) if taus else math.nan,
        top1=float(np.mean(list(tops.values()))) if tops else math.nan,
        num_queries=len(tops),
        per_query_tau=taus,
        per_query_top1=tops,
    )


# --- plots -------------------------------------------------------------------------------------------
POSITIVE_COLOR = "#2a9d8f"
NEGATIVE_COLOR = "#e76f51"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_score_histograms(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                          title: str = "", bins: int = 40, xlabel: str = "score") -> Path:
    """One panel per name: histograms (densities) of positive vs negative candidate scores.

    ``panels`` maps a set name (``val``, ``train_subset``) to ``(positive scores, negative scores)``;
    both sets share the bins so their ranges compare. Returns the written path.
    """
    if not panels:
        raise ValueError("plot_score_histograms: nothing to plot (no panels)")
    values = np.concatenate([np.concatenate([p, n]) for p, n in panels.values()])
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    fig = _figure(4.2 * len(panels), 3.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, (pos, neg)) in zip(axes, panels.items()):
        if len(neg):
            ax.hist(neg, bins=edges, density=True, alpha=0.55, color=NEGATIVE_COLOR, label=f"negatives ({len(neg)})")
        if len(pos):
            ax.hist(pos, bins=edges, density=True, alpha=0.55, color=POSITIVE_COLOR, label=f"positives ({len(pos)})")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8, frameon=False)
    axes[0].set_ylabel("density")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


@dataclass
class PairTrace:
    """Scores over epochs of one query's tracked positive and its tracked hard negative."""

    query_id: str
    positive_id: str
    negative_id: str
    epochs: list[int] = field(default_factory=list)
    positive: list[float] = field(default_factory=list)
    negative: list[float] = field(default_factory=list)

    def add(self, epoch: int, run: Run) -> None:
        """Append this epoch's scores of the pair from ``run`` (a missing score is skipped)."""
        scores = run.get(self.query_id, {})
        if self.positive_id in scores and self.negative_id in scores:
            self.epochs.append(int(epoch))
            self.positive.append(float(scores[self.positive_id]))
            self.negative.append(float(scores[self.negative_id]))


def plot_pair_evolution(traces: Mapping[str, Sequence[PairTrace]], path: str | Path, title: str = "",
                        ylabel: str = "score") -> Path:
    """One panel per set: each tracked query's positive (solid) and hard negative (dashed) over epochs.

    One colour per query; thick black lines are the means over the tracked queries. This is the
    picture of a DE's negatives rising together with its positives.
    """
    if not traces:
        raise ValueError("plot_pair_evolution: nothing to plot (no traces)")
    from matplotlib.lines import Line2D

    fig = _figure(4.2 * len(traces) + 1.3, 3.2)
    axes = fig.subplots(1, len(traces), squeeze=False, sharey=True)[0]
    colors = [f"C{i}" for i in range(10)]
    for ax, (name, pairs) in zip(axes, traces.items()):
        for i, tr in enumerate(pairs):
            ax.plot(tr.epochs, tr.positive, "-", color=colors[i % 10], lw=1.0, alpha=0.7, marker=".")
            ax.plot(tr.epochs, tr.negative, "--", color=colors[i % 10], lw=1.0, alpha=0.7, marker=".")
        full = [tr for tr in pairs if tr.epochs]
        if full:
            epochs = sorted(set(e for tr in full for e in tr.epochs))
            for attr, style in (("positive", "-"), ("negative", "--")):
                means = [np.mean([getattr(tr, attr)[tr.epochs.index(e)] for tr in full if e in tr.epochs]) for e in epochs]
                ax.plot(epochs, means, style, color="black", lw=2.2)
        ax.set_title(f"{name} ({len(pairs)} queries)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel(ylabel)
    handles = [Line2D([], [], color="grey", ls="-", label="positive"),
               Line2D([], [], color="grey", ls="--", label="hardest negative"),
               Line2D([], [], color="black", lw=2.2, label="mean")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_margin_evolution(history: Mapping[str, Sequence[tuple[int, float]]], path: str | Path,
                          title: str = "mean normalised margin") -> Path:
    """Mean normalised margin per epoch, one line per set (train vs held-out)."""
    if not history:
        raise ValueError("plot_margin_evolution: nothing to plot (no sets)")
    fig = _figure(4.2, 3.0)
    ax = fig.subplots()
    for name, points in history.items():
        if points:
            epochs, values = zip(*points)
            ax.plot(epochs, values, marker="o", label=name)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("margin")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_capacity(rows: Sequence[Mapping[str, object]], path: str | Path,
                  metrics: Sequence[str] = ("mrr@10", "kendall_tau", "top1"), title: str = "") -> Path:
    """Metric vs embedding size ``k`` (log₂ axis), one line per method; ``method == "teacher"`` rows
    (``k`` None) are drawn as a dashed horizontal reference."""
    if not rows:
        raise ValueError("plot_capacity: nothing to plot (no rows)")
    labels = {"mrr@10": "MRR@10", "kendall_tau": "Kendall τ", "top1": "top-1 agreement"}
    fig = _figure(3.4 * len(metrics), 3.0)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    methods = list(dict.fromkeys(str(r["method"]) for r in rows if r["method"] != "teacher"))
    for ax, metric in zip(axes, metrics):
        for i, method in enumerate(methods):
            points = sorted((int(r["k"]), float(r[metric])) for r in rows if r["method"] == method)
            ax.plot([k for k, _ in points], [v for _, v in points], marker="o", color=f"C{i}", label=method)
        for r in rows:
            if r["method"] == "teacher" and not math.isnan(float(r[metric])):
                ax.axhline(float(r[metric]), color="black", ls="--", lw=1.0, label="teacher")
        ax.set_xscale("log", base=2)
        ks = sorted({int(r["k"]) for r in rows if r["method"] != "teacher"})
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("embedding size k")
        ax.set_title(labels.get(metric, metric), fontsize=10)
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
    axes[0].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)
