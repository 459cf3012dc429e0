"""Retrieval evaluation at the end of every validation / test epoch, for the CA and the DE alike.

* **Re-rank**: the model scored every (query, candidate) pair of the DataModule's eval sets in its
  validation/test loop (sharded across DDP ranks by Lightning); this callback gathers the scores,
  turns them into a run, computes the metrics and writes a TREC run file. This is the paper's setting
  (re-ranking a fixed candidate list), so the teacher and the students are compared on the same
  candidates.
* **Full retrieval** (dual encoders only): encode the corpus (each rank its shard, then gathered),
  build a dense index (FAISS on GPU when faiss has GPUs, FAISS CPU otherwise, an exact torch search on
  the GPU when torch has a GPU but faiss does not), search the eval queries, compute the metrics, write
  the run.

Metrics are logged as ``{set}/{mode}/{metric}`` (set: ``val``, ``train_subset``, ``test``; mode:
``rerank`` or ``retrieval``) plus ``gap/{mode}/{metric}`` = train_subset − val (the overfitting gap).
During ``fit`` validation runs after every training epoch, so this is the end-of-epoch evaluation.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from rankers.distributed import all_gather_rows, gather_scored_pairs

log = logging.getLogger(__name__)


class RetrievalEvaluator(Callback):
    """Re-rank (CA and DE) and full-retrieval (DE) evaluation with TREC run files.

    Args:
        metrics: metric names ``name@k`` understood by :func:`rankers.evaluation.metrics.evaluate_run`.
        full_retrieval: also search the whole corpus with a DE (ignored for a CA).
        retrieval_depth: passages retrieved per query in full retrieval.
        search_backend: ``auto``, ``faiss-cpu``, ``faiss-gpu`` or ``torch``.
        index_type: ``flat`` (exact), ``ivf`` or ``hnsw``.
        encode_batch_size: texts per encoding batch.
        fp16_embeddings: encode the corpus into an fp16 matrix and build the index with fp16 storage
            (``DenseIndex.build(fp16=True)``): half the memory of float32. faiss-gpu: ``useFloat16``;
            torch on CUDA: float16; faiss-cpu with ``index_type: flat``: an exact fp16
            ``IndexScalarQuantizer`` (lossless: the embeddings are fp16 already). faiss-cpu's ivf / hnsw
            and the torch backend on the CPU still store float32.
        output_dir: where run files go (default: the trainer's log dir / ``runs``).
        write_runs: write TREC run files (rank 0 only).
        rerank_from_embeddings: for a dual encoder, compute the re-rank scores from embeddings of each
            distinct query and passage, each encoded once (the corpus embeddings of full retrieval when
            that runs), instead of scoring every (query, candidate) pair in the loop, which encodes a
            passage once per query that has it as a candidate (50 times per eval for 50-deep candidate
            lists of overlapping queries). Same scores; a cross-attention ranker always scores pairs.
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("mrr@10", "ndcg@10", "recall@100", "recall@1000"),
        full_retrieval: bool = True,
        retrieval_depth: int = 1000,
        search_backend: Literal["auto", "faiss-cpu", "faiss-gpu", "torch"] = "auto",
        index_type: Literal["flat", "ivf", "hnsw"] = "flat",
        encode_batch_size: int = 256,
        fp16_embeddings: bool = False,
        output_dir: str | None = None,
        write_runs: bool = True,
        rerank_from_embeddings: bool = True,
    ) -> None:
        self.metrics = tuple(metrics)
        self.full_retrieval = full_retrieval
        self.retrieval_depth = retrieval_depth
        self.search_backend = search_backend
        self.index_type = index_type
        self.encode_batch_size = encode_batch_size
        self.fp16_embeddings = fp16_embeddings
        self.output_dir = output_dir
        self.write_runs = write_runs
        self.rerank_from_embeddings = rerank_from_embeddings
        self._buffers: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.results: dict[str, dict[str, float]] = {}
        self.runs: dict[str, dict[str, dict[str, float]]] = {}
        self.index = None  # the last dense index built (NegativeRefresh mines with it)
        self.history: list[dict[str, dict[str, float]]] = []  # per validation epoch: {"{set}/{mode}": metrics}
        self._run_path: Path | None = None

    # --- Lightning's callback state: a resumed run keeps the per-epoch history --------------------
    def state_dict(self) -> dict[str, Any]:
        """The metric history and the last results (plain dicts of floats: loads with ``weights_only``).
        Runs and the index are not saved: they are rebuilt at the next evaluation."""
        return {"history": copy.deepcopy(self.history), "results": copy.deepcopy(self.results)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.results = dict(state_dict.get("results", {}))

    # --- collecting the loop's pair scores ----------------------------------------------------------
    def _embedding_rerank(self, pl_module) -> bool:
        return self.rerank_from_embeddings and getattr(pl_module, "is_dual_encoder", False)

    def _reset(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._buffers = {}
        # a DE's pairs are scored here from embeddings: the loop then only iterates its batches
        pl_module.score_pairs_in_loop = not self._embedding_rerank(pl_module)

    def _restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.score_pairs_in_loop = True

    on_validation_epoch_start = _reset
    on_test_epoch_start = _reset

    def _collect(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(outputs, dict) and "pair_index" in outputs:
            self._buffers.setdefault(dataloader_idx, []).append(
                (outputs["pair_index"].detach(), outputs["scores"].detach().float())
            )

    on_validation_batch_end = _collect
    on_test_batch_end = _collect

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore(trainer, pl_module)
        if trainer.sanity_checking:
            return
        self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore(trainer, pl_module)
        self._evaluate(trainer, pl_module, "test")

    # --- evaluation -----------------------------------------------------------------------------
    def _gathered(self, trainer: pl.Trainer, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """(pair index, score) of every pair scored on any rank, each pair once, sorted by pair index."""
        parts = self._buffers.get(idx, [])
        device = trainer.strategy.root_device
        if parts:
            pair_index = torch.cat([p for p, _ in parts]).to(device)
            scores = torch.cat([s for _, s in parts]).to(device)
        else:
            pair_index = torch.empty(0, dtype=torch.long, device=device)
            scores = torch.empty(0, device=device)
        return gather_scored_pairs(pair_index, scores)

    def _run_dir(self, trainer: pl.Trainer) -> Path:
        """Where run files go; call on every rank (``trainer.log_dir`` is a collective broadcast under DDP)."""
        base = self.output_dir or trainer.log_dir or trainer.default_root_dir
        return Path(base) / "runs"

    def _report(self, trainer, pl_module, name: str, mode: str, run, qrels) -> dict[str, float]:
        """Metrics of ``run`` logged (same values on every rank) and kept; the run file written by rank 0."""
        from datamodules.formats import write_run
        from rankers.evaluation.metrics import evaluate_run

        result = evaluate_run(run, qrels, self.metrics)
        values = {m: float(result[m]) for m in self.metrics}
        for metric, value in values.items():
            # every rank computed the same value: sync_dist averages equal numbers (and keeps Lightning quiet)
            pl_module.log(f"{name}/{mode}/{metric}", value, prog_bar=(metric == self.metrics[0] and name != "train_subset"),
                          sync_dist=True, rank_zero_only=False)
        self.results[f"{name}/{mode}"] = values
        self.runs[f"{name}/{mode}"] = run
        if self.write_runs and trainer.is_global_zero:
            path = self._run_path / f"{name}-{mode}-epoch{trainer.current_epoch}.trec"
            write_run(run, path, tag=f"rankers-{mode}")
        log.info("%s/%s: %s (%d queries)", name, mode,
                 ", ".join(f"{k}={v:.4f}" for k, v in values.items()), int(result.get("num_queries", len(qrels))))
        return values

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        names = dm.eval_names(stage)
        self._run_path = self._run_dir(trainer) if self.write_runs else None  # on every rank: a collective
        dual = getattr(pl_module, "is_dual_encoder", False)
        embeddings = self.encode_corpus(trainer, pl_module) if dual and self.full_retrieval else None
        needs_queries = self._embedding_rerank(pl_module) or embeddings is not None
        queries = {name: self._encode_queries(trainer, pl_module, dm.eval_sets[name]) for name in names} if needs_queries else {}
        for idx, name in enumerate(names):
            pairs = dm.eval_sets[name]
            if self._embedding_rerank(pl_module):
                scores = self._scores_from_embeddings(trainer, pl_module, pairs, queries[name], embeddings)
                pair_index = np.arange(len(pairs), dtype=np.int64)
            else:
                pair_index, scores = self._gathered(trainer, idx)
            self._report(trainer, pl_module, name, "rerank", pairs.to_run(pair_index, scores), pairs.qrels)
        if embeddings is not None:
            self._full_retrieval(trainer, pl_module, [(n, dm.eval_sets[n], queries[n]) for n in names], embeddings)
            del embeddings
        for mode in ("rerank", "retrieval"):
            train, val = self.results.get(f"train_subset/{mode}"), self.results.get(f"val/{mode}")
            if stage == "val" and "train_subset" in names and train and val:
                for metric in self.metrics:
                    pl_module.log(f"gap/{mode}/{metric}", train[metric] - val[metric], sync_dist=True,
                                  rank_zero_only=False)
        if stage == "val":
            self.history.append({k: dict(v) for k, v in self.results.items() if not k.startswith("test/")})

    def encode_corpus(self, trainer: pl.Trainer, pl_module) -> torch.Tensor:
        """Corpus embeddings in corpus order: each rank encodes its shard, then all ranks gather."""
        from rankers.retrieval.encode import encode_texts, shard_bounds

        corpus = trainer.datamodule.load().corpus
        start, end = shard_bounds(len(corpus), trainer.global_rank, trainer.world_size)
        dtype = torch.float16 if self.fp16_embeddings else torch.float32
        # a lazy Arrow column (datasets >= 4): encode_texts reads it batch by batch instead of holding
        # every passage as a Python string (about 1 GiB per million passages)
        shard = corpus if (start, end) == (0, len(corpus)) else corpus.select(range(start, end))
        with trainer.precision_plugin.forward_context():  # the trainer's autocast (bf16-mixed...), as in validation
            emb = encode_texts(pl_module, shard["text"], "passage", batch_size=self.encode_batch_size,
                               dtype=dtype, progress=trainer.is_global_zero, desc="encode corpus")
        if trainer.world_size == 1:
            return emb
        width = shard_bounds(len(corpus), 0, trainer.world_size)[1]  # rank 0's shard is the largest
        gathered = all_gather_rows(emb.to(trainer.strategy.root_device), width).cpu()  # [world * width, d]
        sizes = [b - a for a, b in (shard_bounds(len(corpus), r, trainer.world_size) for r in range(trainer.world_size))]
        return torch.cat([gathered[r * width : r * width + n] for r, n in enumerate(sizes)])

    def build_index(self, embeddings: torch.Tensor, ids: Sequence[str]):
        """The dense index of the corpus embeddings (``fp16_embeddings``: fp16 storage, see the class doc)."""
        from rankers.retrieval.dense import index_chunks

        # one chunk: the gathered embeddings; DenseIndex.add reads a datasets Column of ids in bulk
        return index_chunks([(embeddings, ids)], backend=self.search_backend, index_type=self.index_type,
                            fp16=self.fp16_embeddings)

    def _encode_queries(self, trainer, pl_module, pairs) -> tuple[list[str], torch.Tensor]:
        """Embeddings of an eval set's judged queries (qrels order), each encoded once."""
        from rankers.retrieval.encode import encode_texts

        data = trainer.datamodule.load()
        query_ids = list(pairs.qrels)
        rows = [trainer.datamodule.query_rows[q] for q in query_ids]
        texts = data.queries.select(rows)["text"] if rows else []
        with trainer.precision_plugin.forward_context():
            return query_ids, encode_texts(pl_module, texts, "query", batch_size=self.encode_batch_size)

    def _scores_from_embeddings(self, trainer, pl_module, pairs, queries, corpus: torch.Tensor | None) -> np.ndarray:
        """Every pair's score, query · passage / temperature (as the DE scores a pair), from embeddings of
        each distinct query and passage: the corpus embeddings when given, else the candidates', encoded once."""
        from rankers.retrieval.encode import dot_scores, encode_distinct

        query_ids, q_emb = queries
        local_query = {trainer.datamodule.query_rows[q]: k for k, q in enumerate(query_ids)}
        q_index = torch.as_tensor([local_query[int(r)] for r in pairs.query_row], dtype=torch.long)
        if corpus is None:  # encode only the candidates (no full retrieval, e.g. a large corpus)
            with trainer.precision_plugin.forward_context():
                corpus, p_index = encode_distinct(pl_module, trainer.datamodule.load().corpus, pairs.passage_row,
                                                  "passage", batch_size=self.encode_batch_size)
        else:
            p_index = torch.from_numpy(pairs.passage_row)
        return dot_scores(q_emb, q_index, corpus, p_index, getattr(pl_module, "temperature", 1.0))

    def _full_retrieval(self, trainer, pl_module, eval_sets, embeddings: torch.Tensor) -> None:
        data = trainer.datamodule.load()
        self.index = self.build_index(embeddings, data.corpus["id"])
        for name, pairs, (query_ids, q_emb) in eval_sets:
            run = self.index.search_run(query_ids, q_emb, self.retrieval_depth)
            self._report(trainer, pl_module, name, "retrieval", run, pairs.qrels)
