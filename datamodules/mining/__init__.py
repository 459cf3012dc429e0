"""Hard-negative mining, the DataModule's supplier of training pools (no model class imported: a dense
miner or a teacher is passed in).

* :mod:`.bm25` -- BM25 runs over a corpus with ``bm25s``;
* :mod:`.pools` -- negative pools from a run (rank window minus positives) and teacher-score denoising;
* :mod:`.dense` -- dense runs with a dual encoder through the one encode -> index -> search path;
* :mod:`.cache` -- the mined-negatives cache keyed by everything that made them.
"""
from datamodules.mining.bm25 import BM25Retriever, bm25_run
from datamodules.mining.cache import MinedNegatives, MiningSpec, NegativeCache, file_digest
from datamodules.mining.dense import dense_run, estimate_dense_memory
from datamodules.mining.pools import denoise, negative_pool

__all__ = ["BM25Retriever", "bm25_run", "negative_pool", "denoise", "dense_run", "estimate_dense_memory",
           "MiningSpec", "MinedNegatives", "NegativeCache", "file_digest"]
