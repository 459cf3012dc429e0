"""Dense (embedding) search: one place for the eval callback and the ``index`` / ``search`` commands.

Backends (:func:`select_backend`):

* ``faiss-gpu``: faiss moved to the GPU (``index_cpu_to_gpu``); only when ``faiss.get_num_gpus() > 0``.
* ``torch``: exact search, chunked ``topk`` of ``q @ X.T`` on a torch device (CUDA when available,
  CPU otherwise); used automatically when CUDA is there but the faiss build has no GPU support.
* ``faiss-cpu``: faiss on the CPU.

Scores are always similarities, higher is better: inner product for ``metric="ip"``, cosine for
``metric="cos"`` (vectors L2-normalised, then inner product) and the *negated* squared L2
distance for ``metric="l2"``. Passage ids are strings, kept beside the index in insertion order.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal, Union

try:  # faiss is a dependency, but a GPU box may lack a build for its CUDA: exact torch search then
    import faiss
except ImportError:  # pragma: no cover - exercised on machines without faiss
    faiss = None
import numpy as np
import torch
from torch import Tensor

from rankers.devices import pick_device
from rankers.io.metadata import read_json
from rankers.retrieval.encode import as_list, is_datasets_column

log = logging.getLogger(__name__)

Array = Union[Tensor, np.ndarray]
Run = dict[str, dict[str, float]]
BACKENDS = ("faiss-gpu", "faiss-cpu", "torch")
INDEX_TYPES = ("flat", "ivf", "hnsw")
METRICS = ("ip", "cos", "l2")
META_FILE, IDS_FILE, FAISS_FILE, NPY_FILE = "meta.json", "ids.json", "index.faiss", "embeddings.npy"
FORMAT_VERSION = 1
# Bound on the [queries x passages] float32 score block held at once by the torch backend
# (elements): 256 MiB on the CPU, 1 GiB on a GPU.
_MAX_SCORE_ELEMENTS = 1 << 26
_MAX_SCORE_ELEMENTS_CUDA = 1 << 28
# The torch backend packs the blocks given to add() into blocks of up to this many rows before
# searching (many small chunks would otherwise mean many small matmuls).
_BLOCK_ROWS = 1 << 20
# DenseIndex.add converts, checks and adds this many rows at a time (bounds the float32 and boolean
# temporaries: a whole 1M x 384 matrix would need 1.4 GiB + 0.36 GiB of them at once).
_ADD_CHUNK_ROWS = 1 << 16
# From this many queries on, an fp16 flat index on faiss-cpu is searched block by block with BLAS
# (decode to float32, faiss.knn) instead of faiss's pair-by-pair IndexScalarQuantizer scan. Measured
# at 200k x 384, k=100, 2 threads (2026-12-01): block / scan time 6.4 at 1 query, 1.41 at 16, 0.96 at 64;
# at 1000 queries the scan takes 14x IndexFlatIP's time and the block search 1.18x.
_FP16_BLOCKWISE_MIN_QUERIES = 64


# ----------------------------------------------------------------------------- backend choice
def faiss_num_gpus() -> int:
    """GPUs visible to faiss (0 on CPU-only builds)."""
    if faiss is None:
        return 0
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def select_backend(preference: str = "auto") -> str:
    """Resolve ``"auto"`` (or check an explicit choice) to one of :data:`BACKENDS`.

    Logs one INFO line naming the backend and why.

    Raises:
        ValueError: unknown preference, or ``"faiss-gpu"`` without a GPU-enabled faiss.
    """
    if preference not in ("auto", *BACKENDS):
        raise ValueError(f"search backend {preference!r}: expected one of auto, {', '.join(BACKENDS)}")
    gpus, cuda = faiss_num_gpus(), torch.cuda.is_available()
    if preference.startswith("faiss") and faiss is None:
        raise ValueError(f"search backend {preference!r}: faiss is not installed (pip install faiss-cpu, or a GPU build)")
    if preference == "faiss-gpu" and gpus == 0:
        raise ValueError("search backend 'faiss-gpu': faiss.get_num_gpus() is 0 (CPU-only faiss build or no GPU)")
    if preference != "auto":
        backend, why = preference, "requested"
    elif gpus > 0:
        backend, why = "faiss-gpu", f"faiss sees {gpus} GPU(s)"
    elif faiss is None:
        backend, why = "torch", f"faiss is not installed: exact torch search on {'cuda' if cuda else 'cpu'}"
    elif cuda:
        backend, why = "torch", "CUDA is available but this faiss build has no GPU support: exact torch search on cuda"
    else:
        backend, why = "faiss-cpu", "no GPU available"
    log.info("dense search backend: %s (%s)", backend, why)
    return backend


@lru_cache(maxsize=1)
def _gpu_resources():  # pragma: no cover - needs a GPU build of faiss
    """One ``StandardGpuResources`` per process (it owns scratch GPU memory)."""
    return faiss.StandardGpuResources()


# ----------------------------------------------------------------------------- array helpers
def _check_matrix(shape: tuple[int, ...], what: str, dim: int | None) -> None:
    if len(shape) != 2:
        raise ValueError(f"{what}: expected a 2-D [n, dim] matrix, got shape {tuple(shape)}")
    if dim is not None and shape[1] != dim:
        raise ValueError(f"{what}: dimension {shape[1]} does not match the index dimension {dim}")


def _nonfinite_error(what: str, row: int, ids: Sequence[str] | None) -> ValueError:
    where = f"row {row} (0-based)" if ids is None else f"row {row} (0-based, id {ids[row]!r})"
    return ValueError(f"{what}: {where} has a NaN or infinite value")


def _first_nonfinite_row(x: Array) -> int | None:
    """Index of the first row of a 2-D matrix that holds a NaN or an infinity, or None."""
    if isinstance(x, Tensor) and x.device.type == "cpu":
        # numpy's isfinite is several times faster than torch's on the CPU (1M x 384: 0.5 s vs 2.5 s)
        x = x.float().numpy() if x.dtype == torch.bfloat16 else x.numpy()
    if isinstance(x, Tensor):
        bad = torch.nonzero(~torch.isfinite(x).all(dim=1))
        return int(bad[0, 0]) if len(bad) else None
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    return int(bad[0]) if len(bad) else None


def _check_finite(x: Array, what: str, offset: int = 0, ids: Sequence[str] | None = None) -> None:
    """Raise if a row of ``x`` (rows ``offset...`` of the caller's matrix) is not finite once in float32.

    float16 / bfloat16 / float32 rows are checked as they are (converting them to float32 keeps every
    value, finite or not); wider floats are converted first (beyond float32's range they become inf).
    """
    if isinstance(x, Tensor):
        x = x.detach()
        if not (x.is_floating_point() or x.is_complex()):
            return
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            x = x.to(torch.float32)
    else:
        x = np.asarray(x)
        if x.dtype.kind in "biu":
            return
        if x.dtype not in (np.float16, np.float32):
            x = np.asarray(x, dtype=np.float32)
    row = _first_nonfinite_row(x)
    if row is not None:
        raise _nonfinite_error(what, offset + row, ids)


def _as_float32_matrix(
    x: Array, what: str, dim: int | None = None, *, offset: int = 0, ids: Sequence[str] | None = None,
    check_finite: bool = True,
) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``[n, d]`` numpy array; clear errors on bad shapes / values.

    ``offset`` / ``ids``: ``x`` is rows ``offset...`` of a matrix whose rows are the passages ``ids``
    (only used to name a bad row in the error). ``check_finite=False``: the caller has checked already.
    """
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    _check_matrix(x.shape, what, dim)
    row = _first_nonfinite_row(x) if check_finite else None
    if row is not None:
        raise _nonfinite_error(what, offset + row, ids)
    return x


def _as_float32_tensor(
    x: Array, what: str, dim: int | None, device: torch.device, *, offset: int = 0, ids: Sequence[str] | None = None,
    check_finite: bool = True,
) -> Tensor:
    """``x`` as a float32 ``[n, d]`` tensor on ``device`` (no host round trip for device tensors)."""
    x = x.detach() if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    x = x.to(device=device, dtype=torch.float32)
    _check_matrix(tuple(x.shape), what, dim)
    row = _first_nonfinite_row(x) if check_finite else None
    if row is not None:
        raise _nonfinite_error(what, offset + row, ids)
    return x


def _id_list(ids: Sequence[str]) -> list[str]:
    """Passage ids as a list of ``str``.

    Arrow-backed sequences are converted in bulk: a ``datasets`` Column (iterating one costs ~30 µs per
    row: 25-75 s for a million passages) and pyarrow arrays. Anything else is iterated as before.
    """
    if is_datasets_column(ids):
        ids = ids[:]  # one Arrow -> Python conversion of the whole column (indices mappings included)
    return [pid if type(pid) is str else str(pid) for pid in as_list(ids)]


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# ----------------------------------------------------------------------------- faiss helpers
def _flat_index(dim: int, metric: str) -> faiss.Index:
    """Exact float32 index: ``IndexFlatL2`` for ``l2``, ``IndexFlatIP`` otherwise (``cos``: normalised rows)."""
    return faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)


def _fp16_flat_index(dim: int, metric: str) -> faiss.Index:
    """Exact (exhaustive) search over vectors stored in fp16, 2 bytes per value: faiss-cpu's
    ``IndexScalarQuantizer`` with ``QT_fp16``. Lossless for vectors whose values are fp16 already;
    other values are rounded to fp16 (for ``cos``: after normalisation)."""
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss_metric)


def _is_fp16_flat(index: faiss.Index) -> bool:
    return isinstance(index, faiss.IndexScalarQuantizer) and index.sq.qtype == faiss.ScalarQuantizer.QT_fp16


def _reserve_codes(index: faiss.Index, n: int) -> None:
    """Give a flat CPU index (``IndexFlat``: float32 codes; fp16 ``IndexScalarQuantizer``: 2-byte codes)
    room for ``n`` more rows before they are added chunk by chunk.

    Such an index keeps its vectors in one growable byte vector (``codes``, ``code_size`` bytes per row).
    Added chunk by chunk, it is re-allocated and copied each time it doubles, holding the old and the
    new buffer at once: up to about twice the final size for a moment (1.05M x 384 float32 in
    65,536-row chunks: ~3 GiB for the final 1.5 GiB).
    Resizing it to the final size and back leaves that capacity reserved (``std::vector``), so the
    chunks are then written in place. Skipped where the storage is not such a vector.
    """
    flat = getattr(faiss, "IndexFlatCodes", None)
    codes = getattr(index, "codes", None)
    if n <= 0 or flat is None or not isinstance(index, flat) or not hasattr(codes, "resize"):
        return
    if not getattr(codes, "is_owned", True):  # a view (memory-mapped index): faiss cannot grow it
        return
    size = int(codes.size())
    if size != index.ntotal * index.code_size:
        return
    codes.resize(size + n * index.code_size)
    codes.resize(size)


def _copy_vectors(src: faiss.Index, dst: faiss.Index) -> faiss.Index:
    """``dst`` (empty; same dimension and metric) given ``src``'s vectors, ``_ADD_CHUNK_ROWS`` at a time
    (no float32 copy of the whole matrix beside the two indexes). Returns ``dst``."""
    n = int(src.ntotal)
    _reserve_codes(dst, n)
    for start in range(0, n, _ADD_CHUNK_ROWS):
        dst.add(src.reconstruct_n(start, min(_ADD_CHUNK_ROWS, n - start)))
    return dst


# ----------------------------------------------------------------------------- stores
class _FaissStore:
    """A faiss index (CPU or GPU) returning (similarities, row labels)."""

    def __init__(self, index: faiss.Index, metric: str, on_gpu: bool):
        self.index, self.metric, self.on_gpu = index, metric, on_gpu

    def prepare(self, x: Array, what: str, dim: int | None, *, offset: int = 0, ids: Sequence[str] | None = None,
                check_finite: bool = True) -> np.ndarray:
        """Validated float32 numpy rows, L2-normalised for the cosine metric."""
        x = _as_float32_matrix(x, what, dim, offset=offset, ids=ids, check_finite=check_finite)
        return _l2_normalise(x) if self.metric == "cos" else x

    @classmethod
    def create(cls, dim: int, index_type: str, metric: str, *, gpu: bool, fp16: bool, nlist: int, hnsw_m: int) -> _FaissStore:
        """An empty index. ``fp16`` with ``index_type="flat"``: on a GPU an ``IndexFlat`` cloned with
        ``useFloat16``; on the CPU an fp16 ``IndexScalarQuantizer`` (:func:`_fp16_flat_index`). The ivf
        and hnsw indexes store float32 on the CPU whatever ``fp16`` says."""
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if index_type == "flat":
            # for a GPU the float32 IndexFlat is what gets cloned (GpuIndexFlat with useFloat16)
            index = _fp16_flat_index(dim, metric) if fp16 and not gpu else _flat_index(dim, metric)
        elif index_type == "ivf":
            index = faiss.IndexIVFFlat(_flat_index(dim, metric), dim, nlist, faiss_metric)
        else:
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss_metric)
        return cls.from_cpu(index, metric, gpu=gpu, fp16=fp16)

    @classmethod
    def from_cpu(cls, index: faiss.Index, metric: str, *, gpu: bool, fp16: bool) -> _FaissStore:
        """Wrap a CPU index (new or read from disk), cloned to the GPU for ``gpu``.

        ``fp16``, on a GPU: faiss-gpu's ``useFloat16`` storage. An fp16 flat index (saved from faiss-cpu)
        is turned into a float32 ``IndexFlat`` first and cloned with ``useFloat16`` whatever ``fp16``
        says (its values are fp16 already). On the CPU: a float32 flat index becomes an fp16
        ``IndexScalarQuantizer`` (its vectors rounded to fp16); ivf and hnsw indexes stay float32.
        """
        if gpu and isinstance(index, faiss.IndexHNSW):
            log.info("faiss has no GPU HNSW: the hnsw index stays on the CPU")
            gpu = False
        if gpu:  # pragma: no cover - needs a GPU build of faiss
            if _is_fp16_flat(index):
                index, fp16 = _copy_vectors(index, _flat_index(index.d, metric)), True
            options = faiss.GpuClonerOptions()
            options.useFloat16 = fp16
            index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index, options)
        elif fp16 and isinstance(index, faiss.IndexFlat):
            index = _copy_vectors(index, _fp16_flat_index(index.d, metric))
        elif fp16 and not _is_fp16_flat(index):
            kind = "ivf" if isinstance(index, faiss.IndexIVF) else "hnsw" if isinstance(index, faiss.IndexHNSW) else type(index).__name__
            log.info("fp16 storage on faiss-cpu is for the flat index only: the %s index stores float32", kind)
        return cls(index, metric, gpu)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, x: np.ndarray) -> None:
        self.index.train(x)

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def add_chunks(self, n: int, chunks: Iterable[np.ndarray]) -> None:
        """Append ``n`` rows given as consecutive prepared chunks."""
        self._reserve(n)
        for chunk in chunks:
            self.index.add(chunk)

    def _reserve(self, n: int) -> None:
        """Give a flat CPU index room for ``n`` more rows before they are added chunk by chunk."""
        if not self.on_gpu:
            _reserve_codes(self.index, n)

    def configure(self, nprobe: int | None, ef_search: int, k: int) -> None:
        if self.on_gpu:  # pragma: no cover - needs a GPU build of faiss
            if nprobe is not None:
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", nprobe)
            return
        if isinstance(self.index, faiss.IndexIVF) and nprobe is not None:
            self.index.nprobe = nprobe
        if isinstance(self.index, faiss.IndexHNSW):
            self.index.hnsw.efSearch = max(ef_search, k)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.on_gpu and len(q) >= _FP16_BLOCKWISE_MIN_QUERIES and _is_fp16_flat(self.index):
            scores, labels = self._search_fp16_blockwise(q, k)
        else:
            scores, labels = self.index.search(q, k)
        if self.metric == "l2":
            scores = -scores
        scores[labels < 0] = -np.inf
        return scores, labels

    def _search_fp16_blockwise(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search of an fp16 flat index with BLAS: decode ``_ADD_CHUNK_ROWS`` rows at a time to
        float32 (``reconstruct_n``), brute-force them with ``faiss.knn`` and merge in a
        ``faiss.ResultHeap``. faiss-cpu's own ``IndexScalarQuantizer.search`` scores one (query,
        vector) pair at a time, ~14x slower for 1000 queries (bench/search_speed.py); this costs one
        float32 block (96 MiB at 384 dims) beside the index."""
        l2 = self.metric == "l2"
        heap = faiss.ResultHeap(len(q), k, keep_max=not l2)
        for start in range(0, self.ntotal, _ADD_CHUNK_ROWS):
            block = self.index.reconstruct_n(start, min(_ADD_CHUNK_ROWS, self.ntotal - start))
            scores, labels = faiss.knn(q, block, min(k, len(block)),
                                       metric=faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT)
            if scores.shape[1] < k:  # a last block shorter than k: pad as faiss pads missing results
                pad = ((0, 0), (0, k - scores.shape[1]))
                scores = np.pad(scores, pad, constant_values=np.inf if l2 else -np.inf)
                labels = np.pad(labels, pad, constant_values=-1 - start)
            heap.add_result(np.ascontiguousarray(scores, dtype=np.float32), np.ascontiguousarray(labels + start, dtype=np.int64))
        heap.finalize()
        return heap.D, heap.I

    def cpu_index(self) -> faiss.Index:
        if self.on_gpu:  # pragma: no cover - needs a GPU build of faiss
            return faiss.index_gpu_to_cpu(self.index)
        return self.index

    def vectors(self) -> np.ndarray:
        return self.cpu_index().reconstruct_n(0, self.ntotal)


class _TorchStore:
    """Exact search with torch: blocks of passage vectors on a device, chunked ``topk``."""

    def __init__(self, metric: str, device: torch.device, dtype: torch.dtype):
        self.metric, self.device, self.dtype = metric, device, dtype
        self.blocks: list[Tensor] = []
        self.sq_norms: list[Tensor] = []  # l2 only: ||x||^2 per block, float32

    @classmethod
    def create(cls, metric: str, *, device: str | torch.device | None, fp16: bool, half_dtype: str) -> _TorchStore:
        device = pick_device(device)
        dtype = torch.float32
        if fp16 and device.type == "cuda":
            dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[half_dtype]
        elif fp16:
            log.info("fp16 storage only applies on a GPU: the torch backend on %s stores float32", device)
        return cls(metric, device, dtype)

    def prepare(self, x: Array, what: str, dim: int | None, *, offset: int = 0, ids: Sequence[str] | None = None,
                check_finite: bool = True) -> Tensor:
        """Validated float32 rows on the store's device, L2-normalised for the cosine metric."""
        x = _as_float32_tensor(x, what, dim, self.device, offset=offset, ids=ids, check_finite=check_finite)
        return torch.nn.functional.normalize(x, dim=1, eps=1e-12) if self.metric == "cos" else x

    @property
    def ntotal(self) -> int:
        return sum(len(b) for b in self.blocks)

    is_trained = True

    def train(self, x: Tensor) -> None:  # exact search needs no training
        pass

    def configure(self, nprobe: int | None, ef_search: int, k: int) -> None:
        pass

    def add(self, x: Array) -> None:
        block = x if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.add_chunks(len(block), [block])

    def add_chunks(self, n: int, chunks: Iterable[Tensor]) -> None:
        """Append ``n`` rows given as consecutive float32 chunks.

        The rows are copied into blocks of up to ``_BLOCK_ROWS`` rows allocated once, in the storage
        dtype, so neither a float32 copy of all ``n`` rows nor a later ``torch.cat`` of the chunks
        is needed. The store changes only once every chunk is in.
        """
        blocks: list[Tensor] = []
        norms: list[Tensor] = []
        filled = added = 0
        for chunk in chunks:
            chunk = chunk.to(self.device, torch.float32)
            pos = 0
            while pos < len(chunk):
                if not blocks or filled == len(blocks[-1]):
                    rows = min(_BLOCK_ROWS, n - added)
                    if rows <= 0:
                        raise ValueError(f"add_chunks: the chunks hold more than the {n} rows announced")
                    blocks.append(torch.empty((rows, chunk.shape[1]), dtype=self.dtype, device=self.device))
                    if self.metric == "l2":
                        norms.append(torch.empty(rows, dtype=torch.float32, device=self.device))
                    filled = 0
                take = min(len(chunk) - pos, len(blocks[-1]) - filled)
                part = chunk[pos : pos + take]
                blocks[-1][filled : filled + take] = part
                if self.metric == "l2":
                    norms[-1][filled : filled + take] = (part * part).sum(dim=1)
                filled, pos, added = filled + take, pos + take, added + take
        if added != n:
            raise ValueError(f"add_chunks: the chunks hold {added} rows, {n} announced")
        self.blocks.extend(blocks)
        self.sq_norms.extend(norms)

    def consolidate(self) -> None:
        """Pack consecutive blocks into blocks of up to ``_BLOCK_ROWS`` rows (order kept)."""
        if len(self.blocks) < 2:
            return
        packed: list[list[int]] = [[]]
        rows = 0
        for i, block in enumerate(self.blocks):
            if packed[-1] and rows + len(block) > _BLOCK_ROWS:
                packed.append([])
                rows = 0
            packed[-1].append(i)
            rows += len(block)
        if len(packed) == len(self.blocks):
            return
        blocks, norms = self.blocks, self.sq_norms
        self.blocks = [torch.cat([blocks[i] for i in group]) for group in packed]
        if norms:
            self.sq_norms = [torch.cat([norms[i] for i in group]) for group in packed]

    @torch.no_grad()
    def search(self, queries: Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        best_scores = torch.full((len(queries), 0), -math.inf, device=self.device)
        best_labels = torch.zeros((len(queries), 0), dtype=torch.long, device=self.device)
        offset = 0
        for i, block in enumerate(self.blocks):
            scores = (queries.to(self.dtype) @ block.T).float()
            if self.metric == "l2":
                scores = 2 * scores - self.sq_norms[i][None, :] - (queries * queries).sum(dim=1, keepdim=True)
            top = scores.topk(min(k, len(block)), dim=1)
            best_scores = torch.cat([best_scores, top.values], dim=1)
            best_labels = torch.cat([best_labels, top.indices + offset], dim=1)
            if best_scores.shape[1] > k:
                keep = best_scores.topk(k, dim=1)
                best_scores, best_labels = keep.values, best_labels.gather(1, keep.indices)
            offset += len(block)
        return best_scores.cpu().numpy(), best_labels.cpu().numpy()

    def query_batch(self, requested: int) -> int:
        """Queries per search call so that one score block stays under the memory bound."""
        budget = _MAX_SCORE_ELEMENTS_CUDA if self.device.type == "cuda" else _MAX_SCORE_ELEMENTS
        return max(1, min(requested, budget // max((len(b) for b in self.blocks), default=1)))

    def vectors(self) -> np.ndarray:
        if not self.blocks:
            return np.zeros((0, 0), dtype=np.float32)
        return torch.cat([b.float().cpu() for b in self.blocks]).numpy()


# ----------------------------------------------------------------------------- the index
class DenseIndex:
    """Passage embeddings with string ids, searchable with faiss or torch.

    Build with :meth:`build` (or :meth:`load`), grow with :meth:`add`, query with :meth:`search`.
    """

    def __init__(
        self,
        dim: int,
        *,
        backend: str,
        index_type: str,
        metric: str,
        store: _FaissStore | _TorchStore,
        nlist: int | None,
        nprobe: int | None,
        hnsw_m: int,
        hnsw_ef_search: int,
        query_batch_size: int,
    ):
        self._dim, self.backend, self.index_type, self.metric = dim, backend, index_type, metric
        self._store = store
        self.nlist, self.nprobe, self.hnsw_m, self.hnsw_ef_search = nlist, nprobe, hnsw_m, hnsw_ef_search
        self.query_batch_size = query_batch_size
        self.ids: list[str] = []

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        embeddings: Array,
        ids: Sequence[str],
        *,
        backend: str = "auto",
        index_type: Literal["flat", "ivf", "hnsw"] = "flat",
        metric: Literal["ip", "cos", "l2"] = "ip",
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int = 32,
        hnsw_ef_search: int = 128,
        fp16: bool = False,
        half_dtype: Literal["float16", "bfloat16"] = "float16",
        device: str | torch.device | None = None,
        query_batch_size: int = 1024,
    ) -> DenseIndex:
        """Index ``embeddings`` ``[n, d]`` whose rows are the passages ``ids``.

        Args:
            backend: "auto", "faiss-gpu", "faiss-cpu" or "torch" (see :func:`select_backend`);
                the exact torch backend only does ``index_type="flat"``: with another type
                "auto" falls back to faiss-cpu and an explicit "torch" raises.
            index_type: "flat" (exact), "ivf" (IndexIVFFlat trained on ``embeddings``) or
                "hnsw" (IndexHNSWFlat).
            metric: "ip", "cos" (normalise, then inner product) or "l2".
            nlist: IVF lists; default ``4 * sqrt(n)`` capped so each list gets >= 39 training
                vectors (faiss' rule of thumb).
            nprobe: IVF lists visited per query; default ``min(nlist, 32)``.
            hnsw_m: HNSW neighbours per node. hnsw_ef_search: HNSW search breadth (>= k).
            fp16: half-precision storage (2 bytes per value). faiss-gpu: ``useFloat16``; torch on
                CUDA: ``half_dtype``; faiss-cpu, ``index_type="flat"``: an fp16
                ``IndexScalarQuantizer`` (exact search over the fp16-rounded vectors: lossless for
                fp16 embeddings with ``ip``/``l2``; ``cos`` rounds the normalised vectors). Not applied
                by faiss-cpu's ivf / hnsw nor by the torch backend on the CPU: they store float32.
            half_dtype: the torch backend's half type ("float16" or "bfloat16"); faiss uses fp16.
            device: torch backend device (default cuda when available, else cpu).
            query_batch_size: queries searched at once (memory bound).
        """
        if not isinstance(embeddings, Tensor):
            embeddings = np.asarray(embeddings)  # no copy of a numpy matrix: add() converts it chunk by chunk
        _check_matrix(tuple(embeddings.shape), "embeddings", None)
        n, dim = embeddings.shape
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type {index_type!r}: expected one of {', '.join(INDEX_TYPES)}")
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
        if dim == 0:
            raise ValueError("embeddings: dimension is 0")
        if index_type == "ivf" and n == 0:
            raise ValueError("embeddings: an ivf index is trained on the vectors given to build(), got none")
        resolved = select_backend(backend)
        if resolved == "torch" and index_type != "flat":
            if backend == "torch":
                raise ValueError(f"backend 'torch' is exact search only: index_type {index_type!r} needs faiss")
            log.info("index_type %r needs faiss: using faiss-cpu instead of torch", index_type)
            resolved = "faiss-cpu"
        if index_type == "ivf":
            nlist = nlist or max(1, min(round(4 * math.sqrt(n)), n // 39))
            nprobe = nprobe or min(nlist, 32)
        if resolved == "torch":
            store: _FaissStore | _TorchStore = _TorchStore.create(metric, device=device, fp16=fp16, half_dtype=half_dtype)
        else:
            store = _FaissStore.create(
                dim, index_type, metric, gpu=resolved == "faiss-gpu", fp16=fp16, nlist=nlist or 0, hnsw_m=hnsw_m
            )
        index = cls(
            dim, backend=resolved, index_type=index_type, metric=metric, store=store, nlist=nlist,
            nprobe=nprobe, hnsw_m=hnsw_m, hnsw_ef_search=hnsw_ef_search, query_batch_size=query_batch_size,
        )
        ids = _id_list(ids)
        if not store.is_trained:
            store.train(store.prepare(embeddings, "embeddings", dim, ids=ids if len(ids) == n else None))
        index.add(embeddings, ids)
        return index

    # -- properties ---------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Number of indexed passages."""
        return self._store.ntotal

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self._dim

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (
            f"DenseIndex(ntotal={self.ntotal}, dim={self.dim}, backend={self.backend!r}, "
            f"index_type={self.index_type!r}, metric={self.metric!r})"
        )

    # -- add / search -------------------------------------------------------------------------
    def add(self, embeddings: Array, ids: Sequence[str]) -> None:
        """Append passages (rows of ``embeddings``) with their ids; call repeatedly for chunks.

        Ids must be unique over the whole index (not re-checked across calls for memory's sake).
        ``ids`` may be a list, a tuple, a numpy array, a pyarrow array or a ``datasets`` Column (read
        in bulk). The rows are converted, checked and added ``_ADD_CHUNK_ROWS`` at a time, so the
        float32 and boolean temporaries are one chunk's, not the whole matrix's; every chunk is
        checked before anything is added, so a bad row leaves the index as it was.
        """
        if not isinstance(embeddings, Tensor):
            embeddings = np.asarray(embeddings)
        _check_matrix(tuple(embeddings.shape), "embeddings", self.dim)
        ids = _id_list(ids)
        n = len(embeddings)
        if len(ids) != n:
            raise ValueError(f"ids: {len(ids)} ids for {n} embedding rows")
        if len(set(ids)) != len(ids):
            raise ValueError("ids: duplicate passage ids in one add() call")
        if n == 0:
            return
        step = _ADD_CHUNK_ROWS
        prechecked = n > step  # the single-chunk case is checked by prepare() before the store changes
        if prechecked:
            for start in range(0, n, step):
                _check_finite(embeddings[start : start + step], "embeddings", start, ids)
        chunks = (
            self._store.prepare(embeddings[start : start + step], "embeddings", self.dim, offset=start, ids=ids,
                                check_finite=not prechecked)
            for start in range(0, n, step)
        )
        self._store.add_chunks(n, chunks)
        self.ids.extend(ids)

    def search(self, queries: Array, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` passages of each query row.

        Returns:
            ``scores`` float32 ``[m, k']`` with ``k' = min(k, ntotal)``, rows sorted best first,
            and ``ids`` (m lists). Approximate indexes may find fewer than ``k'`` passages for a
            query: its id list is then shorter and the missing scores are ``-inf``.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        q = self._store.prepare(queries, "queries", self.dim)
        k = min(int(k), self.ntotal)
        if k == 0:
            return np.zeros((len(q), 0), dtype=np.float32), [[] for _ in range(len(q))]
        self._store.configure(self.nprobe, self.hnsw_ef_search, k)
        batch = self.query_batch_size
        if isinstance(self._store, _TorchStore):
            self._store.consolidate()
            batch = self._store.query_batch(batch)
        all_scores, all_ids = [], []
        for start in range(0, len(q), batch):
            scores, labels = self._store.search(q[start : start + batch], k)
            all_scores.append(scores.astype(np.float32, copy=False))
            all_ids.extend([self.ids[j] for j in row if j >= 0] for row in labels.tolist())
        scores = np.concatenate(all_scores) if all_scores else np.zeros((0, k), dtype=np.float32)
        return scores, all_ids

    @staticmethod
    def to_run(query_ids: Sequence[str], scores: np.ndarray, ids: Sequence[Sequence[str]]) -> Run:
        """``{query id: {passage id: score}}`` from :meth:`search`'s output."""
        if not (len(query_ids) == len(scores) == len(ids)):
            raise ValueError(f"to_run: {len(query_ids)} query ids, {len(scores)} score rows, {len(ids)} id rows")
        if len(set(query_ids)) != len(query_ids):
            raise ValueError("to_run: duplicate query ids")
        return {
            str(qid): {pid: float(s) for pid, s in zip(row_ids, row_scores)}
            for qid, row_scores, row_ids in zip(query_ids, scores, ids)
        }

    def search_run(self, query_ids: Sequence[str], queries: Array, k: int) -> Run:
        """:meth:`search` then :meth:`to_run`."""
        scores, ids = self.search(queries, k)
        return self.to_run(query_ids, scores, ids)

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``meta.json``, ``ids.json`` and ``index.faiss`` (faiss) or ``embeddings.npy`` (torch)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(self._store, _FaissStore):
            faiss.write_index(self._store.cpu_index(), str(directory / FAISS_FILE))
            vectors_file = FAISS_FILE
        else:
            np.save(directory / NPY_FILE, self._store.vectors().reshape(-1, self.dim))
            vectors_file = NPY_FILE
        (directory / IDS_FILE).write_text(json.dumps(self.ids))
        meta = {
            "format": "rankers.DenseIndex", "format_version": FORMAT_VERSION, "vectors": vectors_file,
            "dim": self.dim, "ntotal": self.ntotal, "metric": self.metric, "index_type": self.index_type,
            "nlist": self.nlist, "nprobe": self.nprobe, "hnsw_m": self.hnsw_m, "hnsw_ef_search": self.hnsw_ef_search,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        backend: str = "auto",
        fp16: bool = False,
        half_dtype: Literal["float16", "bfloat16"] = "float16",
        device: str | torch.device | None = None,
        query_batch_size: int = 1024,
    ) -> DenseIndex:
        """Load what :meth:`save` wrote, on any backend (a flat index moves between faiss and torch).

        ``fp16`` as in :meth:`build`: on faiss-cpu a saved float32 flat index is converted to fp16
        storage. A flat index saved with fp16 storage (faiss-cpu ``IndexScalarQuantizer``) stays fp16
        on faiss-cpu, goes to faiss-gpu as a ``useFloat16`` flat index and to torch as float32 (or
        ``half_dtype`` on CUDA with ``fp16``).
        """
        directory = Path(directory)
        meta_path = directory / META_FILE
        meta = read_json(meta_path, missing="not a saved DenseIndex directory")
        for field in ("format_version", "vectors", "dim", "ntotal", "metric", "index_type"):
            if field not in meta:
                raise ValueError(f"{meta_path}: missing field {field!r}")
        if meta["format_version"] != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: field 'format_version' is {meta['format_version']}, expected {FORMAT_VERSION}")
        ids = read_json(directory / IDS_FILE, missing="a saved DenseIndex directory holds its ids there")
        if len(ids) != meta["ntotal"]:
            raise ValueError(f"{directory / IDS_FILE}: {len(ids)} ids but field 'ntotal' of {meta_path} is {meta['ntotal']}")

        resolved = select_backend(backend)
        if resolved == "torch" and meta["index_type"] != "flat":
            if backend == "torch":
                raise ValueError(f"backend 'torch' is exact search only: saved index_type is {meta['index_type']!r}")
            resolved = "faiss-cpu"
        metric = meta["metric"]
        if meta["vectors"] == FAISS_FILE:
            cpu_index = faiss.read_index(str(directory / FAISS_FILE))
            vectors = cpu_index.reconstruct_n(0, cpu_index.ntotal) if resolved == "torch" else None
        else:
            cpu_index, vectors = None, np.load(directory / NPY_FILE)
        if resolved == "torch":
            store: _FaissStore | _TorchStore = _TorchStore.create(metric, device=device, fp16=fp16, half_dtype=half_dtype)
        elif cpu_index is not None:
            store = _FaissStore.from_cpu(cpu_index, metric, gpu=resolved == "faiss-gpu", fp16=fp16)
        else:
            store = _FaissStore.create(meta["dim"], "flat", metric, gpu=resolved == "faiss-gpu", fp16=fp16, nlist=0, hnsw_m=0)
        if vectors is not None and len(vectors):
            store.add(np.ascontiguousarray(vectors, dtype=np.float32))  # already normalised for "cos"
        if store.ntotal != len(ids):
            raise ValueError(f"{directory}: the vectors file holds {store.ntotal} vectors for {len(ids)} ids")
        index = cls(
            meta["dim"], backend=resolved, index_type=meta["index_type"], metric=metric, store=store,
            nlist=meta.get("nlist"), nprobe=meta.get("nprobe"), hnsw_m=meta.get("hnsw_m", 32),
            hnsw_ef_search=meta.get("hnsw_ef_search", 128), query_batch_size=query_batch_size,
        )
        index.ids = [str(pid) for pid in ids]
        return index
