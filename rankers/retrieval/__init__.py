"""Dense retrieval: batched, length-sorted encoding (:mod:`.encode`), the ``DenseIndex`` over faiss or
torch (:mod:`.search`) and the one encode → index → search path built on them (:mod:`.dense`). Knows
nothing of Lightning, data modules or callbacks."""
from rankers.retrieval.dense import index_chunks, search_queries

__all__ = ["index_chunks", "search_queries"]
