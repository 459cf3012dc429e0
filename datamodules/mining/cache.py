"""Mined negatives as a cached, reproducible artifact: :class:`MiningSpec` is everything that made a set of
negatives (miner, model checkpoint hash, depth, window, filters, seed, dataset fingerprint, the query ids);
:class:`NegativeCache` stores the pools (and the teacher scores computed for denoising, which the distilled
student then reuses) once as Parquet with a JSON provenance record beside them, keyed by the spec: any
changed input gives a different key."""
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
