"""Old import path, kept for one release: the mined-negatives code lives in :mod:`datamodules.mining`
(:mod:`~datamodules.mining.cache`, :mod:`~datamodules.mining.dense`, :mod:`~datamodules.mining.pools`)."""
from datamodules.mining.cache import CACHE_VERSION, MinedNegatives, MiningSpec, NegativeCache, file_digest  # noqa: F401
from datamodules.mining.dense import dense_run, estimate_dense_memory  # noqa: F401
from datamodules.mining.pools import denoise  # noqa: F401

__all__ = ["CACHE_VERSION", "MinedNegatives", "MiningSpec", "NegativeCache", "file_digest", "dense_run",
           "estimate_dense_memory", "denoise"]
