"""Re-rank evaluation on a suite of extra datasets after ``test`` (and, if asked, after each validation).

Each dataset (``embedded``, a BEIR / MS MARCO directory, a hub name: whatever ``--data.dataset`` takes) is
loaded by its own :class:`datamodules.datamodule.RankingDataModule`, so its candidates are what the main
evaluation would use: the collection's own runs where it ships them (WikiQA), else BM25 top-``eval_depth``.
The model scores every (query, candidate) pair of the dataset's ``split`` under the trainer's precision (a
dual encoder from one embedding per distinct query and passage, a CA pair by pair), and the callback logs ``suite/<name>/<metric>`` for each dataset and
``suite/mean/<metric>`` over them, writes one TREC run per dataset to ``<run dir>/runs/suite-<name>-<split>.trec``
and the table to ``<run dir>/suite.md``. With ``full_retrieval`` a dual encoder also retrieves from each dataset's
whole corpus (the one encode -> index -> search path, :func:`datamodules.mining.dense.dense_run`), logged as
``suite/<name>/retrieval/<metric>`` with its own run file and table. Every rank computes the same numbers (a suite is small; nothing is
sharded), rank zero writes the files.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

__all__ = ["SuiteEvaluator"]


def _slug(dataset: str) -> str:
    name = Path(dataset).name if Path(dataset).exists() else dataset
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "dataset"


class SuiteEvaluator(Callback):
    """Re-rank metrics of the model on extra datasets, each and their mean.

    Args:
        datasets: the suite: dataset arguments as ``--data.dataset`` takes them.
        names: a display name per dataset (default: the directory or dataset name).
        split: the qrels split evaluated in every dataset.
        eval_depth: BM25 candidates per query where a dataset ships no candidate runs.
        max_eval_queries: the first N judged queries of each dataset (None: all).
        metrics: names :func:`rankers.evaluation.metrics.evaluate_run` takes; the first is the table's headline.
        batch_size: pairs per model batch.
        on_validation: also evaluate the suite after every validation (default: after ``test`` only).
        full_retrieval: a dual encoder also retrieves the top ``retrieval_depth`` from each dataset's corpus
            through a dense index (ignored for a CA).
        embedded_scale / cache_dir: as the DataModule's, for ``embedded`` and the Arrow caches.
        output_dir: where ``runs/`` and ``suite.md`` go (default: the trainer's log dir).
    """

    def __init__(
        self,
        datasets: Sequence[str],
        names: Sequence[str] | None = None,
        split: str = "test",
        eval_depth: int = 100,
        max_eval_queries: int | None = None,
        metrics: Sequence[str] = ("ndcg@10", "mrr@10", "recall@100"),
        batch_size: int = 128,
        on_validation: bool = False,
        full_retrieval: bool = False,
        retrieval_depth: int = 100,
        embedded_scale: float = 1.0,
        cache_dir: str | None = None,
        output_dir: str | None = None,
    ) -> None:
        if not datasets:
            raise ValueError("SuiteEvaluator: datasets is empty")
        if names is not None and len(names) != len(datasets):
            raise ValueError(f"SuiteEvaluator: {len(names)} names for {len(datasets)} datasets")
        self.datasets = list(datasets)
        self.names = list(names) if names is not None else [_slug(d) for d in self.datasets]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"SuiteEvaluator: dataset names must differ, got {self.names}; pass names=[...]")
        self.split, self.eval_depth, self.max_eval_queries = split, eval_depth, max_eval_queries
        self.metrics, self.batch_size, self.on_validation = tuple(metrics), batch_size, on_validation
        self.embedded_scale, self.cache_dir, self.output_dir = embedded_scale, cache_dir, output_dir
        self.full_retrieval, self.retrieval_depth = full_retrieval, retrieval_depth
        self.results: dict[str, dict[str, float]] = {}
        self.retrieval_results: dict[str, dict[str, float]] = {}
        self._pairs: dict[str, Any] = {}
        self._modules: dict[str, Any] = {}

    # --- Lightning hooks ----------------------------------------------------------------------
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluate(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_validation and not trainer.sanity_checking:
            self.evaluate(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"results": self.results, "retrieval_results": self.retrieval_results}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = dict(state_dict.get("results", {}))
        self.retrieval_results = dict(state_dict.get("retrieval_results", {}))

    # --- the work -------------------------------------------------------------------------------
    def pairs(self, index: int):
        """The (query, candidate) pairs of dataset ``index``'s split, loaded once."""
        name = self.names[index]
        if name not in self._pairs:
            from datamodules.datamodule import RankingDataModule

            dm = RankingDataModule(dataset=self.datasets[index], embedded_scale=self.embedded_scale,
                                   train_split=self.split, val_split=self.split, test_split=self.split,
                                   eval_depth=self.eval_depth,
                                   max_eval_queries=self.max_eval_queries, train_subset_size=0, cache_dir=self.cache_dir)
            dm.prepare_data()
            dm.setup("test")
            self._pairs[name], self._modules[name] = dm.eval_sets["test"], dm
        return self._pairs[name]

    @torch.no_grad()
    def _scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule, pairs) -> tuple[np.ndarray, np.ndarray]:
        """(pair index, score) of every pair: a dual encoder from one embedding per distinct text, a CA per pair."""
        if hasattr(pl_module, "encode_passage_inputs"):
            from rankers.retrieval.encode import embedding_pair_scores

            was_training = pl_module.training
            pl_module.eval()
            try:
                with trainer.precision_plugin.forward_context():
                    scores = embedding_pair_scores(pl_module, pairs.queries, pairs.corpus, pairs.query_row,
                                                   pairs.passage_row, batch_size=self.batch_size)
            finally:
                pl_module.train(was_training)
            return np.arange(len(pairs)), scores
        loader = torch.utils.data.DataLoader(pairs, batch_size=self.batch_size, shuffle=False,
                                             collate_fn=pl_module.collator())
        index, scores = [], []
        was_training = pl_module.training
        pl_module.eval()
        try:
            with trainer.precision_plugin.forward_context():
                for batch in loader:
                    batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                    scores.append(pl_module.pair_scores(batch).float().cpu())
                    index.append(batch.pair_index.cpu())
        finally:
            pl_module.train(was_training)
        return torch.cat(index).numpy(), torch.cat(scores).numpy()

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, dict[str, float]]:
        from datamodules.formats import write_run
        from rankers.evaluation.metrics import evaluate_run

        base = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        results: dict[str, dict[str, float]] = {}
        for i, name in enumerate(self.names):
            pairs = self.pairs(i)
            run = pairs.to_run(*self._scores(trainer, pl_module, pairs))
            result = evaluate_run(run, pairs.qrels, self.metrics)
            results[name] = {m: float(result[m]) for m in self.metrics}
            results[name]["num_queries"] = int(result["num_queries"])
            if trainer.is_global_zero:
                write_run(run, base / "runs" / f"suite-{name}-{self.split}.trec", tag=f"rankers-suite-{name}")
            log.info("suite/%s: %s (%d queries)", name, ", ".join(f"{m}={results[name][m]:.4f}" for m in self.metrics),
                     results[name]["num_queries"])
        if self.full_retrieval and hasattr(pl_module, "encode_passage_inputs"):
            self._retrieve(trainer, pl_module, base)
        mean = {m: float(np.mean([results[n][m] for n in self.names])) for m in self.metrics}
        for name, values in [*results.items(), ("mean", mean)]:
            for metric in self.metrics:
                pl_module.log(f"suite/{name}/{metric}", values[metric], sync_dist=True, rank_zero_only=False)
        log.info("suite/mean over %d datasets: %s", len(self.names), ", ".join(f"{m}={v:.4f}" for m, v in mean.items()))
        self.results = {**results, "mean": mean}
        if trainer.is_global_zero:
            from rankers.io.atomic import atomic_write

            with atomic_write(base / "suite.md") as handle:
                handle.write(self.markdown())
        return self.results

    @torch.no_grad()
    def _retrieve(self, trainer: pl.Trainer, pl_module: pl.LightningModule, base: Path) -> None:
        """Full retrieval from each dataset's corpus with the dual encoder; fills ``retrieval_results``."""
        from datamodules.formats import write_run
        from datamodules.mining.dense import dense_run
        from rankers.evaluation.metrics import evaluate_run

        for i, name in enumerate(self.names):
            pairs, dm = self.pairs(i), self._modules[self.names[i]]
            data = dm.load()
            queries = data.queries.select([dm.query_rows[q] for q in pairs.qrels])
            with trainer.precision_plugin.forward_context():
                run = dense_run(pl_module, data.corpus, queries, depth=self.retrieval_depth,
                                batch_size=self.batch_size, progress=trainer.is_global_zero)
            result = evaluate_run(run, pairs.qrels, self.metrics)
            self.retrieval_results[name] = {m: float(result[m]) for m in self.metrics}
            self.retrieval_results[name]["num_queries"] = int(result["num_queries"])
            if trainer.is_global_zero:
                write_run(run, base / "runs" / f"suite-{name}-{self.split}-retrieval.trec",
                          tag=f"rankers-suite-{name}-retrieval")
            log.info("suite/%s/retrieval: %s", name, ", ".join(f"{m}={self.retrieval_results[name][m]:.4f}"
                                                               for m in self.metrics))
        mean = {m: float(np.mean([self.retrieval_results[n][m] for n in self.names])) for m in self.metrics}
        self.retrieval_results["mean"] = mean
        for name, values in self.retrieval_results.items():
            for metric in self.metrics:
                pl_module.log(f"suite/{name}/retrieval/{metric}", values[metric], sync_dist=True, rank_zero_only=False)

    def markdown(self) -> str:
        """The suite table (re-rank, ``split``) of the last evaluation, then the full-retrieval one if run."""
        header = "| dataset | queries | " + " | ".join(self.metrics) + " |"
        lines = [header, "|---|---|" + "---|" * len(self.metrics)]
        for name in self.names:
            values = self.results[name]
            lines.append(f"| {name} | {values['num_queries']} | " + " | ".join(f"{values[m]:.4f}" for m in self.metrics) + " |")
        mean = self.results["mean"]
        lines.append("| **mean** | | " + " | ".join(f"{mean[m]:.4f}" for m in self.metrics) + " |")
        if self.retrieval_results:
            lines += ["", f"Full retrieval (top {self.retrieval_depth} from each corpus, dense index):", "", header,
                      lines[1]]
            for name in self.names:
                values = self.retrieval_results[name]
                lines.append(f"| {name} | {values['num_queries']} | "
                             + " | ".join(f"{values[m]:.4f}" for m in self.metrics) + " |")
            mean = self.retrieval_results["mean"]
            lines.append("| **mean** | | " + " | ".join(f"{mean[m]:.4f}" for m in self.metrics) + " |")
        return "\n".join(lines) + "\n"
