"""Score diagnostics at the end of every validation epoch: what the paper's argument looks like in training.

Menon et al. (2022) argue that a dual encoder (DE) lags a cross-attention (CA) ranker not for lack of
capacity but because it *overfits*: on training queries its positives pull away from the negatives,
on held-out queries the hardest negatives rise together with the positives; distillation from the
CA's scores regularises it. :class:`callbacks.RetrievalEvaluator` already logs the overfitting gap of
the metrics (``train_subset/…``, ``val/…``, ``gap/…``); this callback looks at the *scores* behind
them, on a fixed set of queries of each eval set (``val`` and, when the DataModule has it,
``train_subset``) and their re-rank candidates:

* ``diag/{set}/…`` scalars (:func:`rankers.evaluation.diagnostics.score_summary`): positive / negative score mean
  and std, the hardest negative's mean score, the per-query normalised margin
  ``(s_pos − max s_neg) / (max s − min s)`` (s_pos = best-scored positive; 0 when max s == min s) —
  mean, median, share > 0 — and ``diag/gap/margin_mean`` = train_subset − val;
* ``agree/{set}/kendall_tau`` and ``agree/{set}/top1``: per-query Kendall τ-b and top-1 agreement
  between the teacher's and the model's scores over the same candidates, when teacher scores exist:
  a TREC score file (``teacher_scores``; e.g. the CA's ``predict`` on the val pairs), else the model's
  online teacher (``pl_module.teacher``, scored once since it is frozen);
* PNGs under ``plot_dir``: ``scores_epoch{E}.png`` (positive vs negative score histograms, one panel
  per set), ``pairs.png`` (the scores over epochs of ``track_pairs`` fixed (query, positive) and
  (query, hardest negative) pairs per set), ``margins.png`` (mean margin per epoch per set);
* with a W&B logger: histograms of the positive / negative scores, the PNGs, and a table of a few
  example queries with their top-5 candidates, scores and teacher scores.

The tracked pair of a query is its first judged positive and its *hardest negative*, fixed once: the
first non-relevant passage of its candidate list (BM25's top-ranked negative with BM25 candidates).
That choice does not depend on the model, so the CA's and the DE's pictures show the same pairs.

Scores come from ``RetrievalEvaluator.runs`` (the re-rank run of the epoch), so nothing is scored
twice; the evaluator must run first (a ScoreDiagnostics listed before it is moved after it, with a
warning). Under DDP every rank holds the gathered run, computes the same numbers and logs them; only
rank 0 writes files and talks to W&B.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback

from rankers.evaluation.diagnostics import (
    PairTrace,
    agreement,
    normalise_per_query,
    plot_margin_evolution,
    plot_pair_evolution,
    plot_score_histograms,
    positives_of,
    score_summary,
    split_scores,
)

log = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]


@dataclass
class _SetState:
    """What is fixed for one eval set at its first diagnostics epoch, and what accumulates."""

    query_ids: list[str]
    traces: list[PairTrace]
    margins: list[tuple[int, float]] = field(default_factory=list)
    teacher: Run | None = None
    teacher_checked: bool = False


class ScoreDiagnostics(Callback):
    """Score distributions, margins, tracked pairs and teacher agreement per validation epoch.

    Args:
        num_queries: queries per eval set to diagnose (the first ones of the set, in qrels order, that
            have a positive and a negative among their candidates); fixed for the whole run.
        track_pairs: queries per set whose (positive, hardest negative) scores are followed over epochs.
        plot_dir: where PNGs go (default: the trainer's log dir / ``plots``).
        log_histograms: send score histograms and the PNGs to a W&B logger when one is attached.
        teacher_scores: a TREC score file with the teacher's scores of the eval candidates (else the
            model's online ``teacher``, if any) for the agreement metrics.
        sets: eval sets to diagnose (those the DataModule has).
        table_queries: example queries in the W&B table (0 = no table); table_depth: candidates each.
        plots: write PNGs (False: none).
        plot_scores: ``"normalised"`` (per query ``(s − mean) / (max − min)``, see
            :func:`rankers.evaluation.diagnostics.normalise_per_query`) or ``"raw"`` scores in the histograms and
            pair plots; the logged scalars are always raw (the margin is normalised by definition).
    """

    def __init__(
        self,
        num_queries: int = 50,
        track_pairs: int = 8,
        plot_dir: str | None = None,
        log_histograms: bool = True,
        teacher_scores: str | None = None,
        sets: Sequence[str] = ("val", "train_subset"),
        table_queries: int = 3,
        table_depth: int = 5,
        plots: bool = True,
        plot_scores: Literal["normalised", "raw"] = "normalised",
    ) -> None:
        if num_queries < 1:
            raise ValueError(f"ScoreDiagnostics: num_queries must be >= 1, got {num_queries}")
        if plot_scores not in ("normalised", "raw"):
            raise ValueError(f"ScoreDiagnostics: plot_scores must be 'normalised' or 'raw', got {plot_scores!r}")
        if track_pairs < 0 or table_queries < 0 or table_depth < 1:
            raise ValueError("ScoreDiagnostics: track_pairs and table_queries must be >= 0, table_depth >= 1")
        self.num_queries = num_queries
        self.track_pairs = track_pairs
        self.plot_dir = plot_dir
        self.log_histograms = log_histograms
        self.teacher_scores = teacher_scores
        self.sets = tuple(sets)
        self.table_queries = table_queries
        self.table_depth = table_depth
        self.plots = plots
        self.plot_scores = plot_scores
        self.states: dict[str, _SetState] = {}
        self.history: dict[str, list[dict[str, float]]] = {}  # set -> per-epoch summaries (incl. agreement)
        self._teacher_file: Run | None = None
        self._plot_path: Path | None = Path(plot_dir) if plot_dir else None
        self.last_panels: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # set -> (positive, negative) scores
        self.last_examples: dict[str, tuple[Run, Run | None]] = {}  # set -> (model run, teacher run)
        self.warned: set[str] = set()  # keys of the warnings given (each is given once)

    # --- Lightning's callback state: a resumed run keeps its history and tracked pairs ------------
    def state_dict(self) -> dict[str, Any]:
        """History, per-set tracked pairs and margins, and the warnings given, as plain Python values
        (checkpoints load with ``weights_only=True``). The teacher file run is re-read when needed."""
        return {"history": copy.deepcopy(self.history), "warned": sorted(self.warned),
                "states": {name: {"query_ids": list(st.query_ids), "margins": [list(m) for m in st.margins],
                                  "traces": [dataclasses.asdict(t) for t in st.traces],
                                  "teacher": copy.deepcopy(st.teacher), "teacher_checked": st.teacher_checked}
                           for name, st in self.states.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state_dict.get("history", {}).items()}
        self.warned = set(state_dict.get("warned", []))
        self.states = {name: _SetState(query_ids=list(st["query_ids"]),
                                       traces=[PairTrace(**t) for t in st["traces"]],
                                       margins=[(int(e), float(m)) for e, m in st["margins"]],
                                       teacher=st.get("teacher"), teacher_checked=bool(st.get("teacher_checked")))
                       for name, st in state_dict.get("states", {}).items()}

    # --- wiring ------------------------------------------------------------------------------------
    @staticmethod
    def evaluator(trainer: pl.Trainer):
        from callbacks.retrieval_eval import RetrievalEvaluator

        found = [cb for cb in trainer.callbacks if isinstance(cb, RetrievalEvaluator)]
        if not found:
            raise ValueError("ScoreDiagnostics reads the re-rank scores of callbacks.RetrievalEvaluator: "
                             "add a RetrievalEvaluator to the trainer's callbacks (before ScoreDiagnostics)")
        return found[0]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):  # the diagnostics run at validation epoch ends only
            return
        evaluator = self.evaluator(trainer)
        callbacks = trainer.callbacks
        if callbacks.index(self) < callbacks.index(evaluator):
            log.warning("ScoreDiagnostics is listed before RetrievalEvaluator; moving it after, so it reads "
                        "this epoch's scores")
            callbacks.remove(self)
            callbacks.insert(callbacks.index(evaluator) + 1, self)
        if self.plots and self.plot_dir is None:  # trainer.log_dir broadcasts: every rank must call it
            self._plot_path = Path(trainer.log_dir or trainer.default_root_dir) / "plots"
        self.teacher_file_run()  # a missing or malformed score file fails here, not after an epoch

    def teacher_file_run(self) -> Run | None:
        """The teacher score file's run (read once), or None without ``teacher_scores``."""
        if self.teacher_scores and self._teacher_file is None:
            from datamodules.formats import read_teacher_scores

            if not Path(self.teacher_scores).exists():
                raise FileNotFoundError(
                    f"ScoreDiagnostics: teacher score file {self.teacher_scores} does not exist; write the "
                    f"teacher's scores of the val candidates with `python -m rankers predict` on the val split")
            self._teacher_file = read_teacher_scores(self.teacher_scores)
        return self._teacher_file

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message, *args)

    # --- fixing the queries and pairs -------------------------------------------------------------
    @staticmethod
    def candidate_order(dm, pairs, query_ids: list[str]) -> dict[str, list[str]]:
        """Each query's candidates in the order of the eval set's candidate list (its rank order)."""
        rows = np.asarray([dm.query_rows[q] for q in query_ids], dtype=np.int64)
        index = np.flatnonzero(np.isin(pairs.query_row, rows))
        if not len(index):
            return {}
        run = pairs.to_run(index, -np.arange(len(index), dtype=np.float64))
        return {q: list(run[q]) for q in query_ids if q in run}

    def _new_state(self, dm, pairs, run: Run) -> _SetState:
        chosen = []
        for qid in pairs.qrels:
            scores = run.get(qid)
            if not scores:
                continue
            relevant = positives_of(pairs.qrels, qid)
            if relevant & scores.keys() and scores.keys() - relevant:
                chosen.append(qid)
            if len(chosen) == self.num_queries:
                break
        traces = []
        order = self.candidate_order(dm, pairs, chosen[: self.track_pairs])
        for qid in chosen[: self.track_pairs]:
            relevant = positives_of(pairs.qrels, qid)
            candidates = order.get(qid, [])
            pos = next((p for p in candidates if p in relevant), None)
            neg = next((p for p in candidates if p not in relevant), None)
            if pos is not None and neg is not None:
                traces.append(PairTrace(qid, pos, neg))
        return _SetState(chosen, traces)

    # --- teacher scores --------------------------------------------------------------------------
    def _teacher_run(self, name: str, state: _SetState, dm, online_teacher, run: Run) -> Run | None:
        if state.teacher_checked:
            return state.teacher
        state.teacher_checked = True
        teacher_file = self.teacher_file_run()
        if teacher_file is not None:
            state.teacher = {q: teacher_file[q] for q in state.query_ids if q in teacher_file}
            if not state.teacher:
                self._warn_once(f"teacher:{name}", "%s has no teacher scores for the '%s' queries: no agreement "
                                "metrics for that set (score its candidates with the teacher's predict)",
                                self.teacher_scores, name)
        elif online_teacher is not None:
            state.teacher = self._score_with(online_teacher, dm, {q: run[q] for q in state.query_ids})
        return state.teacher or None

    @staticmethod
    def _score_with(teacher, dm, run: Run) -> Run:
        """The online teacher's scores of the given queries' candidates."""
        data = dm.load()
        queries, passages, keys = [], [], []
        for qid, candidates in run.items():
            qtext = data.queries[dm.query_rows[qid]]["text"]
            rows = [dm.corpus_rows[p] for p in candidates]
            texts = data.corpus.select_columns(["text"])[rows]["text"]
            queries += [qtext] * len(rows)
            passages += texts
            keys += [(qid, p) for p in candidates]
        scores = teacher.score(queries, passages).tolist() if keys else []
        out: Run = {}
        for (qid, pid), score in zip(keys, scores):
            out.setdefault(qid, {})[pid] = float(score)
        return out

    # --- the epoch end ---------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        evaluator = self.evaluator(trainer)
        dm = trainer.datamodule
        runs = {name: evaluator.runs.get(f"{name}/rerank") for name in dm.eval_names("val")}
        logged = self.update(trainer.current_epoch, runs, dm, online_teacher=getattr(pl_module, "teacher", None))
        self._log(pl_module, logged)
        if not self.last_panels or not trainer.is_global_zero:
            return
        written = self.write_plots(trainer.current_epoch, title=type(pl_module).__name__)
        self._log_wandb(trainer, written, dm)

    def update(self, epoch: int, runs: dict[str, Run | None], dm, online_teacher=None) -> dict[str, float]:
        """Diagnose one epoch's re-rank runs (``{set name: run}``) of the DataModule ``dm``'s eval sets.

        Fixes the queries and pairs of a set the first time it is seen, appends to the history and the
        tracked pairs, keeps this epoch's score panels for :meth:`write_plots`, and returns the scalars
        to log. Usable without a trainer (e.g. on the TREC runs a finished training wrote).
        """
        self.last_panels, self.last_examples = {}, {}
        logged_all: dict[str, float] = {}
        for name, run in runs.items():
            if name not in self.sets or not run:
                continue
            pairs = dm.eval_sets[name]
            if name not in self.states:
                self.states[name] = self._new_state(dm, pairs, run)
            state = self.states[name]
            sub = {q: run[q] for q in state.query_ids if q in run}
            values = score_summary(sub, pairs.qrels)
            state.margins.append((epoch, values["margin_mean"]))
            plotted = normalise_per_query(sub) if self.plot_scores == "normalised" else sub
            for trace in state.traces:
                trace.add(epoch, plotted)
            teacher = self._teacher_run(name, state, dm, online_teacher, run)
            logged = {f"diag/{name}/{k}": v for k, v in values.items()}
            if teacher:
                agree = agreement(teacher, sub)
                logged[f"agree/{name}/kendall_tau"] = agree.kendall_tau
                logged[f"agree/{name}/top1"] = agree.top1
            self.history.setdefault(name, []).append({"epoch": float(epoch), **logged})
            self.last_panels[name] = split_scores(plotted, pairs.qrels)
            self.last_examples[name] = (sub, teacher)
            logged_all.update(logged)
        if "val" in self.last_panels and "train_subset" in self.last_panels:
            gap = self.states["train_subset"].margins[-1][1] - self.states["val"].margins[-1][1]
            logged_all["diag/gap/margin_mean"] = gap
        return logged_all

    @staticmethod
    def _log(pl_module: pl.LightningModule, values: dict[str, float]) -> None:
        for key, value in values.items():
            if not math.isnan(value):
                pl_module.log(key, float(value), sync_dist=False, rank_zero_only=False)

    def write_plots(self, epoch: int, title: str = "") -> dict[str, Path]:
        """Write this epoch's score histograms and the (rewritten) pair and margin evolution PNGs."""
        if not self.plots or self._plot_path is None or not self.last_panels:
            return {}
        unit = "normalised score" if self.plot_scores == "normalised" else "score"
        prefix = f"{title}: " if title else ""
        written = {
            "scores": plot_score_histograms(self.last_panels, self._plot_path / f"scores_epoch{epoch:02d}.png",
                                            title=f"{prefix}candidate {unit}s, epoch {epoch}", xlabel=unit),
            "margins": plot_margin_evolution({n: s.margins for n, s in self.states.items()},
                                             self._plot_path / "margins.png", title=f"{prefix}mean normalised margin"),
        }
        traces = {n: s.traces for n, s in self.states.items() if s.traces}
        if traces:
            written["pairs"] = plot_pair_evolution(traces, self._plot_path / "pairs.png", ylabel=unit,
                                                   title=f"{prefix}tracked positive vs hardest negative")
        return written

    # --- W&B -------------------------------------------------------------------------------------
    def _log_wandb(self, trainer, written: dict[str, Path], dm) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not (self.log_histograms or self.table_queries):
            return
        try:
            import wandb

            for logger in loggers:
                media: dict[str, Any] = {}
                if self.log_histograms:
                    for name, (pos, neg) in self.last_panels.items():
                        if len(pos):
                            media[f"diag/{name}/pos_scores"] = wandb.Histogram(pos)
                        if len(neg):
                            media[f"diag/{name}/neg_scores"] = wandb.Histogram(neg)
                    for key, path in written.items():
                        media[f"diag/plots/{key}"] = wandb.Image(str(path))
                if self.table_queries:
                    for name, (run, teacher) in self.last_examples.items():
                        columns, rows = self.example_table(dm, name, run, teacher, trainer.current_epoch)
                        media[f"diag/{name}/examples"] = wandb.Table(columns=columns, data=rows)
                if media:
                    logger.log_metrics(media, step=trainer.global_step)
        except Exception as err:  # noqa: BLE001 - diagnostics must never stop training
            self._warn_once("wandb", "ScoreDiagnostics: W&B logging failed (%s: %s); continuing without it",
                            type(err).__name__, err)

    def example_table(self, dm, name: str, run: Run, teacher: Run | None, epoch: int) -> tuple[list[str], list[list]]:
        """Rows (epoch, query, rank, passage, relevant, score, teacher score) of the first example queries'
        top ``table_depth`` candidates by the model's score."""
        from rankers.evaluation.metrics import rank_passages

        data = dm.load()
        qrels = dm.eval_sets[name].qrels
        columns = ["epoch", "query_id", "query", "rank", "passage_id", "passage", "relevant", "score", "teacher_score"]
        rows = []
        for qid in self.states[name].query_ids[: self.table_queries]:
            if qid not in run:
                continue
            qtext = data.queries[dm.query_rows[qid]]["text"]
            for rank, pid in enumerate(rank_passages(run[qid])[: self.table_depth], start=1):
                text = data.corpus[dm.corpus_rows[pid]]["text"]
                t = (teacher or {}).get(qid, {}).get(pid)
                rows.append([epoch, qid, qtext, rank, pid, text[:200], int(qrels[qid].get(pid, 0) > 0),
                             float(run[qid][pid]), None if t is None else float(t)])
        return columns, rows
