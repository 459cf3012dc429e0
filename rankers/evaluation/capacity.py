"""``python -m rankers capacity``: can a dual encoder with k-dimensional embeddings hold the teacher's ranking?

The paper's first claim (Menon et al., 2022, section 3): a DE scores ``s(q, p) = ⟨u_q, v_p⟩``, so the
scores it can produce over Q queries × P passages are exactly the matrices of rank ≤ k; with k large
enough it can represent any teacher's scores. This probe takes the teacher's score matrix (a TREC
score file, e.g. ``runs/ca_teacher/teacher_scores.trec`` written by ``predict``) and fits *free*
embeddings — one vector per query and per passage, no encoder, no text — of each size k, then
measures how much of the teacher's ranking survives. What the free embeddings cannot fit, no encoder
of that size can; what they can fit, an encoder might still fail to *learn* or to *generalise* (the
paper's second claim, see :mod:`callbacks.score_diagnostics`).

The matrix. Each query has only its scored candidates (a few hundred of all passages), so the dense
Q × P matrix over the union of candidates comes with a mask of observed entries. Only observed
entries are ever evaluated: rankings are compared per query over its own candidates.

Methods:

* ``svd`` — rows are centred first (each query's mean over its observed candidates is subtracted: a
  per-query offset changes no ranking and would cost a DE a dimension), unobserved entries are then
  filled with 0 (that is, with the row mean), and the truncated SVD gives the best rank-k
  approximation of that filled matrix in Frobenius norm (Eckart–Young). One SVD serves every k. With
  most entries unobserved the zero fill drags the fit toward 0; ``--svd-iters N`` refines it by
  hard-impute (refill the unobserved entries with the rank-k reconstruction, N SVDs per k), toward the
  best rank-k least-squares fit of the observed entries alone.
* ``gradient`` — Adam on free ``U ∈ R^{Q×k}``, ``V ∈ R^{P×k}`` (seeded), full batch, minimising the
  listwise softmax cross-entropy (:func:`rankers.losses.softmax_ce`) between the teacher's softmax and
  the softmax of ``U Vᵀ`` over each query's *observed* candidates only — the distillation objective,
  with no imputation. Teacher scores are standardised per query (zero mean, unit variance) before the
  softmax so the target distribution does not depend on the teacher's score scale.

Metrics per (method, k): MRR@10 of the fitted scores against labels — the teacher's top-1 candidate per
query, or ``--qrels`` when given (then a ``teacher`` row gives the ceiling) —, mean Kendall τ-b and
top-1 agreement with the teacher (:mod:`rankers.evaluation.diagnostics`). Outputs: a markdown table on stdout,
``capacity.json``, ``capacity.md`` and ``capacity.png`` in ``--output_dir``.
"""
from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

Run = Mapping[str, Mapping[str, float]]

METHODS = ("svd", "gradient")
METRICS = ("mrr@10", "kendall_tau", "top1")
#: refuse dense matrices above this many entries (float64: 8 bytes each); sample queries instead.
MAX_DENSE_ENTRIES = 50_000_000


@dataclass
class ScoreMatrix:
    """A run as a dense Q × P matrix over the union of candidates, with the mask of observed entries.

    ``candidates[i]`` holds the column indices of query i's scored passages (in the run's order);
    ``scores`` is 0 where unobserved.
    """

    query_ids: list[str]
    passage_ids: list[str]
    scores: np.ndarray  # [Q, P] float64
    mask: np.ndarray  # [Q, P] bool
    candidates: list[np.ndarray]

    @classmethod
    def from_run(cls, run: Run) -> "ScoreMatrix":
        query_ids = [q for q, c in run.items() if c]
        if not query_ids:
            raise ValueError("capacity: the score run has no query with a scored candidate")
        columns: dict[str, int] = {}
        candidates = []
        for qid in query_ids:
            candidates.append(np.asarray([columns.setdefault(p, len(columns)) for p in run[qid]], dtype=np.int64))
        q, p = len(query_ids), len(columns)
        if q * p > MAX_DENSE_ENTRIES:
            raise ValueError(f"capacity: the dense score matrix would be {q} queries × {p} passages "
                             f"(> {MAX_DENSE_ENTRIES:,} entries); sample queries with --max-queries")
        scores = np.zeros((q, p), dtype=np.float64)
        mask = np.zeros((q, p), dtype=bool)
        for i, qid in enumerate(query_ids):
            scores[i, candidates[i]] = [float(run[qid][pid]) for pid in run[qid]]
            mask[i, candidates[i]] = True
        return cls(query_ids, list(columns), scores, mask, candidates)

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape

    def row_centred(self) -> np.ndarray:
        """Scores minus each query's mean over its observed candidates; 0 where unobserved."""
        counts = self.mask.sum(1, keepdims=True)
        means = (self.scores * self.mask).sum(1, keepdims=True) / np.maximum(counts, 1)
        return np.where(self.mask, self.scores - means, 0.0)

    def to_run(self, matrix: np.ndarray | torch.Tensor) -> dict[str, dict[str, float]]:
        """The observed entries of a [Q, P] matrix, as a run."""
        matrix = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
        return {qid: {self.passage_ids[j]: float(matrix[i, j]) for j in self.candidates[i]}
                for i, qid in enumerate(self.query_ids)}

    def padded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(column index [Q, N], teacher score [Q, N], valid mask [Q, N]) padded to the longest list."""
        width = max(len(c) for c in self.candidates)
        index = torch.zeros(len(self.candidates), width, dtype=torch.long)
        valid = torch.zeros(len(self.candidates), width, dtype=torch.bool)
        for i, cols in enumerate(self.candidates):
            index[i, : len(cols)] = torch.from_numpy(cols)
            valid[i, : len(cols)] = True
        teacher = torch.from_numpy(self.scores).gather(1, index).masked_fill(~valid, 0.0)
        return index, teacher, valid


# --- fits --------------------------------------------------------------------------------------------
def svd_fits(matrix: ScoreMatrix, dims: Sequence[int], iters: int = 1) -> dict[int, np.ndarray]:
    """Best rank-k approximations (Frobenius) of the row-centred matrix, unobserved entries filled, per k.

    ``iters == 1``: unobserved entries are 0 (the row mean) and one SVD serves every k. ``iters > 1``
    refines each k by *hard-impute* (Mazumder et al., 2010): refill the unobserved entries with the
    current rank-k reconstruction and take the SVD again, ``iters`` SVDs in all; this moves the fit
    toward the best rank-k fit of the observed entries alone, which the zero fill biases when most
    entries are unobserved. A k above ``min(Q, P)`` uses every component.
    """
    if iters < 1:
        raise ValueError(f"svd_fits: iters must be >= 1, got {iters}")
    centred = torch.from_numpy(matrix.row_centred())
    observed = torch.from_numpy(matrix.mask)
    u, s, vh = torch.linalg.svd(centred, full_matrices=False)
    fits = {}
    for k in dims:
        low_rank = (u[:, :k] * s[:k]) @ vh[:k]
        for _ in range(iters - 1):
            uk, sk, vhk = torch.linalg.svd(torch.where(observed, centred, low_rank), full_matrices=False)
            low_rank = (uk[:, :k] * sk[:k]) @ vhk[:k]
        fits[k] = low_rank.numpy()
    return fits


def standardise_rows(teacher: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row: (x − mean) / std over the valid entries (std 0 → 1); padding stays 0."""
    n = valid.sum(1, keepdim=True).clamp_min(1)
    mean = (teacher * valid).sum(1, keepdim=True) / n
    var = (((teacher - mean) * valid) ** 2).sum(1, keepdim=True) / n
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return ((teacher - mean) / std).masked_fill(~valid, 0.0)


def gradient_fit(matrix: ScoreMatrix, k: int, steps: int = 300, lr: float = 0.05, seed: int = 0,
                 temperature: float = 1.0, init_scale: float = 0.1) -> np.ndarray:
    """Free embeddings U [Q, k], V [P, k] fitted with Adam to the teacher's per-query softmax.

    Full batch, ``steps`` Adam steps at ``lr``, initialised N(0, init_scale²) from a generator seeded
    with ``seed``; the loss is :func:`rankers.losses.softmax_ce` over each query's observed candidates
    against the per-query standardised teacher scores. Returns ``U Vᵀ`` [Q, P].
    """
    from rankers.losses import softmax_ce

    if k < 1:
        raise ValueError(f"gradient_fit: embedding size k must be >= 1, got {k}")
    index, teacher, valid = matrix.padded()
    teacher = standardise_rows(teacher, valid).float()
    gen = torch.Generator().manual_seed(seed)
    q, p = matrix.shape
    u = (torch.randn(q, k, generator=gen) * init_scale).requires_grad_()
    v = (torch.randn(p, k, generator=gen) * init_scale).requires_grad_()
    opt = torch.optim.Adam([u, v], lr=lr)
    labels = torch.zeros_like(valid)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        student = torch.einsum("qk,qnk->qn", u, v[index])
        loss = softmax_ce(student, teacher, labels, valid, temperature=temperature)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (u @ v.T).double().numpy()


# --- evaluation --------------------------------------------------------------------------------------
def teacher_top1_qrels(teacher: Run) -> dict[str, dict[str, int]]:
    """Labels from the teacher itself: its top-ranked candidate of each query is the relevant one."""
    from rankers.evaluation.metrics import rank_passages

    return {qid: {rank_passages(c)[0]: 1} for qid, c in teacher.items() if c}


def ranking_metrics(teacher: Run, student: Run, qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """MRR@10 of ``student`` against ``qrels`` and its Kendall τ / top-1 agreement with ``teacher``."""
    from rankers.evaluation.diagnostics import agreement
    from rankers.evaluation.metrics import evaluate_run

    mrr = float(evaluate_run(student, qrels, ["mrr@10"])["mrr@10"])
    agree = agreement(teacher, student)
    return {"mrr@10": mrr, "kendall_tau": agree.kendall_tau, "top1": agree.top1}


def sample_queries(run: Run, max_queries: int | None, seed: int) -> dict[str, dict[str, float]]:
    """At most ``max_queries`` queries of the run (a seeded sample, in the run's order)."""
    ids = [q for q, c in run.items() if c]
    if max_queries is not None and max_queries < len(ids):
        keep = set(random.Random(seed).sample(ids, max_queries))
        ids = [q for q in ids if q in keep]
    return {q: dict(run[q]) for q in ids}


def capacity_probe(scores: Run, dims: Sequence[int], methods: Sequence[str] = METHODS, seed: int = 0,
                   qrels: Mapping[str, Mapping[str, int]] | None = None, steps: int = 300,
                   lr: float = 0.05, svd_iters: int = 1) -> list[dict]:
    """Fit free k-dimensional query/passage embeddings to the teacher's scores, for each k and method.

    Args:
        scores: the teacher's run ``{query id: {passage id: score}}``.
        dims: embedding sizes to try (positive integers).
        methods: any of ``svd``, ``gradient`` (see the module docstring).
        seed: seeds the gradient fit.
        qrels: labels for MRR@10; by default the teacher's top-1 candidate per query. With qrels, a
            first row ``{"method": "teacher", "k": None, ...}`` gives the teacher's own metrics.
        steps, lr: Adam steps and learning rate of the gradient fit.
        svd_iters: SVDs per k of the svd method (1: zero fill; more: hard-impute, see :func:`svd_fits`).

    Returns:
        one dict per (method, k): ``method``, ``k``, ``mrr@10``, ``kendall_tau``, ``top1``.
    """
    dims = [int(k) for k in dims]
    if not dims or any(k < 1 for k in dims):
        raise ValueError(f"capacity_probe: dims must be positive integers, got {list(dims)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"capacity_probe: unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    matrix = ScoreMatrix.from_run(scores)
    teacher = matrix.to_run(matrix.scores)
    if qrels is not None:
        labels = {q: dict(qrels[q]) for q in matrix.query_ids if q in qrels}
        if not labels:
            raise ValueError("capacity_probe: the qrels share no query with the teacher scores")
    else:
        labels = teacher_top1_qrels(teacher)
    q, p = matrix.shape
    log.info("capacity: %d queries × %d passages, %d observed scores (%.1f%%)", q, p, int(matrix.mask.sum()),
             100.0 * matrix.mask.mean())
    rows: list[dict] = []
    if qrels is not None:
        rows.append({"method": "teacher", "k": None, **ranking_metrics(teacher, teacher, labels)})
    for method in methods:
        fits = svd_fits(matrix, dims, iters=svd_iters) if method == "svd" else None
        for k in dims:
            fitted = fits[k] if fits is not None else gradient_fit(matrix, k, steps=steps, lr=lr, seed=seed)
            rows.append({"method": method, "k": k, **ranking_metrics(teacher, matrix.to_run(fitted), labels)})
            log.info("capacity: %s k=%d: %s", method, k,
                     ", ".join(f"{m}={rows[-1][m]:.4f}" for m in METRICS))
    return rows


# --- reporting ---------------------------------------------------------------------------------------
def markdown_table(rows: Sequence[Mapping[str, object]]) -> str:
    """The rows as a markdown table (method, k, MRR@10, Kendall τ, top-1)."""
    lines = ["| method | k | MRR@10 | Kendall τ | top-1 |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        k = "—" if r["k"] is None else str(r["k"])
        values = " | ".join("nan" if math.isnan(float(r[m])) else f"{float(r[m]):.4f}" for m in METRICS)
        lines.append(f"| {r['method']} | {k} | {values} |")
    return "\n".join(lines)


def write_report(rows: Sequence[Mapping[str, object]], output_dir: Path, meta: Mapping[str, object]) -> dict[str, Path]:
    """Write ``capacity.json``, ``capacity.md`` and ``capacity.png``; return their paths."""
    from rankers.evaluation.diagnostics import plot_capacity

    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "capacity.json", "md": output_dir / "capacity.md", "png": output_dir / "capacity.png"}
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    paths["json"].write_text(json.dumps({**meta, "rows": clean}, indent=2) + "\n")
    header = (f"Capacity probe on `{meta['teacher_scores']}`: {meta['num_queries']} queries × "
              f"{meta['num_passages']} passages ({meta['observed']} observed scores); labels: {meta['labels']}; "
              f"svd: {meta['svd_iters']} SVD(s) per k; gradient: {meta['steps']} Adam steps at lr {meta['lr']}, "
              f"seed {meta['seed']}.\n\n")
    paths["md"].write_text(header + markdown_table(rows) + "\n")
    plot_capacity(rows, paths["png"], title=(f"free k-dim embeddings fitted to the teacher's scores ({meta['num_queries']} "
                                             f"queries × {meta['num_passages']} passages; MRR labels: {meta['labels']})"))
    return paths
