"""Hard negatives as a first-class, cached, reproducible artifact.

* :func:`dense_run` -- mine with a dual encoder: stream the corpus through the encoder in chunks
  (fp16 storage), add each chunk to a dense index, search the queries in chunks; prints a memory
  estimate before it starts. An index that already covers the corpus (the retrieval-eval callback's)
  can be passed in and is reused.
* :func:`denoise` -- RocketQA-style false-negative filtering with teacher scores: drop candidates the
  teacher scores above ``threshold`` or within ``margin`` of the query's best positive.
* :class:`MiningSpec` / :class:`NegativeCache` -- what made a set of negatives (miner, model checkpoint
  hash, depth, window, filters, seed, dataset fingerprint) and a cache keyed by it: the pools (and the
  teacher scores computed for denoising, which the distilled student then reuses) are written once as
  Parquet with a JSON provenance record beside them; any changed input gives a different key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
CACHE_VERSION = 1


def file_digest(path: str | os.PathLike | None, chunk: int = 1 << 20) -> str | None:
    """SHA-256 of a file (a model checkpoint), or None."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class MiningSpec:
    """Everything that determines a set of mined negatives; its :meth:`key` names the cache entry."""

    miner: str  # "bm25" | "dense" | "run"
    dataset_fingerprint: str
    split: str
    depth: int
    window: tuple[int, int]
    seed: int
    model_digest: str | None = None  # dense miner checkpoint (or "in-training@epoch N")
    run_digest: str | None = None  # negatives from a run file
    teacher_digest: str | None = None  # teacher used for denoising / scores
    denoise_threshold: float | None = None
    denoise_margin: float | None = None
    num_queries: int = 0
    queries_digest: str | None = None  # which queries (two sets of one size, e.g. cross-fitting folds, differ)
    version: int = CACHE_VERSION

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class MinedNegatives:
    """Per query: the ordered negative pool, optional teacher scores of positives+pool, drop counts."""

    pools: dict[str, list[str]]
    teacher_scores: Run | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        sizes = sorted(len(p) for p in self.pools.values()) or [0]
        dropped = sorted(self.dropped.values()) or [0]
        return {
            "queries": len(self.pools),
            "pool_size_median": sizes[len(sizes) // 2],
            "empty_pools": sum(1 for p in self.pools.values() if not p),
            "dropped_total": int(sum(dropped)),
            "dropped_per_query_mean": sum(dropped) / max(1, len(self.pools)),
            "dropped_per_query_max": dropped[-1],
        }


class NegativeCache:
    """Mined negatives on disk: ``{root}/{key}/negatives.parquet`` + ``provenance.json``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, spec: MiningSpec) -> Path:
        return self.root / spec.key()

    def load(self, spec: MiningSpec) -> MinedNegatives | None:
        import pyarrow.parquet as pq

        folder = self.path(spec)
        if not (folder / "provenance.json").exists():
            return None
        provenance = json.loads((folder / "provenance.json").read_text())
        if provenance.get("spec") != json.loads(json.dumps(dataclasses.asdict(spec), default=list)):
            return None
        table = pq.read_table(folder / "negatives.parquet").to_pydict()
        pools = dict(zip(table["query_id"], table["negatives"]))
        dropped = dict(zip(table["query_id"], table["dropped"]))
        scores = None
        if "scored_ids" in table:
            scores = {q: dict(zip(ids, sc)) for q, ids, sc in zip(table["query_id"], table["scored_ids"], table["scores"])}
        log.debug("mined negatives: cache hit %s (%s)", folder, provenance.get("summary"))
        return MinedNegatives(pools, scores, dropped)

    def save(self, spec: MiningSpec, mined: MinedNegatives) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = self.path(spec)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        qids = list(mined.pools)
        columns: dict[str, Any] = {
            "query_id": qids,
            "negatives": [mined.pools[q] for q in qids],
            "dropped": [int(mined.dropped.get(q, 0)) for q in qids],
        }
        if mined.teacher_scores is not None:
            columns["scored_ids"] = [list(mined.teacher_scores.get(q, {})) for q in qids]
            columns["scores"] = [list(mined.teacher_scores.get(q, {}).values()) for q in qids]
        pq.write_table(pa.table(columns), tmp / "negatives.parquet")
        provenance = {"spec": dataclasses.asdict(spec), "key": spec.key(), "summary": mined.summary()}
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2, default=list))
        if folder.exists():  # another rank / process got there first with the same inputs
            import shutil

            shutil.rmtree(tmp)
        else:
            tmp.rename(folder)
        log.info("mined negatives: cached in %s (%s)", folder, mined.summary())
        return folder


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


def estimate_dense_memory(num_passages: int, dim: int, fp16: bool = True) -> str:
    bytes_ = num_passages * dim * (2 if fp16 else 4)
    return f"{num_passages:,} passages × {dim} dims × {'fp16' if fp16 else 'fp32'} = {bytes_ / 2**30:.2f} GiB of embeddings"


def dense_run(model, corpus, queries, *, depth: int, index=None, batch_size: int = 256, chunk_size: int = 65536,
              backend: str = "auto", fp16: bool = True, progress: bool = True) -> Run:
    """Top-``depth`` passages per query with a dual encoder (``DualEncoderRanker``).

    ``corpus`` / ``queries`` are Arrow datasets (``id``, ``text``). The corpus is read and encoded
    ``chunk_size`` passages at a time and added to the index chunk by chunk, so peak memory is the
    index plus one chunk. ``index`` (a :class:`rankers.retrieval.search.DenseIndex` over this corpus, in corpus
    order, built by the same model) is reused instead of re-encoding.
    """
    import torch

    from rankers.retrieval.encode import encode_texts
    from rankers.retrieval.dense import index_chunks, search_queries

    def encoded_chunks():
        for start in range(0, len(corpus), chunk_size):
            chunk = corpus[start : start + chunk_size]
            emb = encode_texts(model, chunk["text"], "passage", batch_size=batch_size,
                               dtype=torch.float16 if fp16 else torch.float32, progress=progress,
                               desc=f"encode corpus {start:,}+")
            yield emb.float(), chunk["id"]

    was_training = model.training
    model.eval()
    try:
        if index is None or index.ntotal != len(corpus):
            dim = getattr(getattr(model, "query_encoder", None), "config", None)
            dim = model.hparams.get("embedding_dim") or (dim.hidden_size if dim is not None else 0)
            log.info("dense mining: %s", estimate_dense_memory(len(corpus), dim, fp16))
            index = index_chunks(encoded_chunks(), backend=backend)
        else:
            log.info("dense mining: reusing the eval callback's index (%d passages)", index.ntotal)
        return search_queries(model, index, queries["id"], queries["text"], depth=depth, batch_size=batch_size)
    finally:
        model.train(was_training)
