"""Encoding texts with a dual encoder outside the training loop: corpus and query embeddings.

Used by the retrieval-eval callback, dense mining and the ``index`` command -- one implementation.
Texts are processed in length-sorted batches (less padding), under ``inference_mode``, and the
embeddings are returned in the input order. ``shard_bounds`` lets each DDP rank encode its own slice;
:func:`encode_in_chunks` writes a large corpus chunk by chunk to disk so an interrupted run resumes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rankers.io.atomic import atomic_write
from rankers.io.metadata import read_json


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous slice [start, end) of n items owned by ``rank`` (sizes differ by at most one)."""
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return start, start + per + (1 if rank < extra else 0)


# Rows read at a time to take the text lengths of an Arrow-backed column (a ``datasets`` Column).
_LENGTH_CHUNK_ROWS = 1 << 16


def is_datasets_column(x: Any) -> bool:
    """Whether ``x`` is a ``datasets`` Column (``dataset["text"]`` in datasets >= 4): a lazy view of Arrow
    data whose item-by-item access is slow (``__iter__`` ~30 µs, ``__getitem__(int)`` ~700 µs per row)
    but whose slices and lists of indices are read in bulk. Does not import ``datasets``."""
    column = getattr(sys.modules.get("datasets.arrow_dataset"), "Column", None)
    return column is not None and isinstance(x, column)


def as_list(values: Any) -> list:
    """A list of the values: what a Column returned for a slice or a list of indices (a list, or a
    numpy / pyarrow array under other formats), a pyarrow array (converted in bulk) or any iterable."""
    if isinstance(values, list):
        return values
    if hasattr(values, "to_pylist"):
        return values.to_pylist()
    return list(values)


def _text_reader(texts: Sequence[str]) -> tuple[np.ndarray, Callable[[list[int]], list[str]]]:
    """(character length of every text, a function returning the texts at given positions).

    A ``datasets`` Column is never turned into one list of all its texts: the lengths are taken
    ``_LENGTH_CHUNK_ROWS`` rows at a time, and each batch reads only its own rows (one bulk Arrow
    read per batch).
    """
    n = len(texts)
    if is_datasets_column(texts):
        lengths = np.empty(n, dtype=np.int64)
        for start in range(0, n, _LENGTH_CHUNK_ROWS):
            chunk = as_list(texts[start : start + _LENGTH_CHUNK_ROWS])
            lengths[start : start + len(chunk)] = [len(t) for t in chunk]
        return lengths, lambda idx: as_list(texts[idx])
    lengths = np.fromiter((len(texts[i]) for i in range(n)), dtype=np.int64, count=n)
    return lengths, lambda idx: [texts[i] for i in idx]


class EncodingOutOfMemoryError(MemoryError):
    """Out of memory while encoding a batch of texts; the message names the batch and what to lower."""


@torch.inference_mode()
def encode_texts(
    model,
    texts: Sequence[str],
    side: Literal["query", "passage"],
    *,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    desc: str | None = None,
) -> torch.Tensor:
    """Embeddings ``[len(texts), d]`` (on CPU, ``dtype``) of ``texts`` with a DualEncoderRanker.

    ``texts`` is any sequence of strings; a ``datasets`` Column (e.g. ``corpus["text"]``) is read
    lazily, batch by batch, instead of being materialised as a list of all its strings.
    """
    lengths, read = _text_reader(texts)
    # longest first; equal lengths keep their input order (what sorted(..., reverse=True) gives)
    order = np.argsort(-lengths, kind="stable")
    encode = model.encode_query_inputs if side == "query" else model.encode_passage_inputs
    out: torch.Tensor | None = None
    device = model.device
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc or f"encode {side}s", disable=None if progress else True, leave=False):  # disable=None: a terminal only
        idx = order[start : start + batch_size]
        inputs = model.tokenize(read(idx.tolist()), side)
        try:
            emb = encode({k: v.to(device, non_blocking=True) for k, v in inputs.items()}).to("cpu", dtype)
        except (torch.OutOfMemoryError, MemoryError) as err:
            raise EncodingOutOfMemoryError(
                f"out of memory on {device} encoding {side}s {start + 1}-{start + len(idx)} of {len(order)} "
                f"(a batch of {len(idx)} texts, {inputs['input_ids'].shape[-1]} tokens each after padding): "
                f"lower the encoding batch size (now {batch_size}: --batch_size of index / search / mine, "
                f"the RetrievalEvaluator callback's encode_batch_size while training)") from err
        if out is None:
            out = torch.empty(len(order), emb.shape[1], dtype=dtype)
        out[torch.from_numpy(idx)] = emb
    if out is None:
        return torch.empty(0, 0, dtype=dtype)
    return out


def encode_distinct(model, table, rows: np.ndarray, side: str, *, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of each distinct row of ``table`` (a dataset with a ``text`` column), each encoded once, and
    for every entry of ``rows`` the index of its embedding."""
    distinct, inverse = np.unique(rows, return_inverse=True)
    emb = encode_texts(model, table.select(distinct.tolist())["text"] if len(distinct) else [], side,
                       batch_size=batch_size)
    return emb, torch.from_numpy(inverse.reshape(-1).astype(np.int64))


def dot_scores(q_emb: torch.Tensor, q_index: torch.Tensor, p_emb: torch.Tensor, p_index: torch.Tensor,
               temperature: float = 1.0) -> np.ndarray:
    """Pair scores ``q_emb[q_index] · p_emb[p_index] / temperature`` in fp32: a dual encoder's ``pair_scores``
    from precomputed embeddings."""
    return ((q_emb.float()[q_index] * p_emb[p_index].float()).sum(-1) / float(temperature)).numpy()


def embedding_pair_scores(model, queries, corpus, query_row: np.ndarray, passage_row: np.ndarray, *,
                          batch_size: int = 256) -> np.ndarray:
    """A dual encoder's score of each (query row, passage row) pair -- query · passage / temperature, as its
    ``pair_scores`` -- from one embedding per distinct query and passage (``queries`` / ``corpus``: datasets
    with a ``text`` column, indexed by the rows)."""
    q_emb, q_index = encode_distinct(model, queries, query_row, "query", batch_size=batch_size)
    p_emb, p_index = encode_distinct(model, corpus, passage_row, "passage", batch_size=batch_size)
    return dot_scores(q_emb, q_index, p_emb, p_index, getattr(model, "temperature", 1.0))


# --- chunked, resumable encoding (the ``index`` command) ------------------------------------------
CHUNK_MANIFEST = "manifest.json"


def _chunk_path(directory: Path, chunk: int) -> Path:
    return directory / f"chunk-{chunk:06d}.npy"


def _check_manifest(directory: Path, signature: dict[str, Any]) -> None:
    """Write ``signature`` to the chunk directory, or check that the chunks there were made with it."""
    path = directory / CHUNK_MANIFEST
    if not path.exists():
        with atomic_write(path) as handle:
            handle.write(json.dumps(signature, indent=2, sort_keys=True))
        return
    saved = read_json(path, invalid=f"delete {directory} to start over")
    for key in sorted(set(saved) | set(signature)):
        if saved.get(key) != signature.get(key):
            raise ValueError(
                f"{path}: field '{key}' is {saved.get(key)!r} but this run has {signature.get(key)!r}: the chunks in "
                f"{directory} were encoded with other settings; delete the directory (or pass --overwrite) to start over"
            )


def encode_in_chunks(
    model,
    texts: Sequence[str],
    side: Literal["query", "passage"],
    directory: str | Path,
    *,
    chunk_size: int = 100_000,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    signature: dict[str, Any] | None = None,
    progress: bool = False,
) -> list[Path]:
    """Encode ``texts`` chunk by chunk into ``directory/chunk-NNNNNN.npy`` ``[rows, d]`` files; resumable.

    Chunk ``i`` holds rows ``[i * chunk_size, (i + 1) * chunk_size)`` in input order (each chunk is
    encoded with :func:`encode_texts`, length-sorted). A chunk file is written atomically (temporary
    file + rename), so after an interruption every file present is complete, and a later call with
    the same arguments encodes only the missing chunks. ``signature`` (JSON-serialisable: model,
    data fingerprint...) is stored in ``manifest.json`` together with the chunking settings, and a
    mismatch on resume raises ``ValueError`` instead of mixing embeddings of two models or corpora.
    ``texts`` only needs ``len`` and slicing (a ``datasets`` column is read one chunk at a time).

    Returns:
        The chunk files, in order.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype must be torch.float32 or torch.float16 (numpy chunk files), got {dtype}")
    directory = Path(directory)
    n = len(texts)
    _check_manifest(directory, {**(signature or {}), "side": side, "num_texts": n, "chunk_size": chunk_size,
                                "dtype": str(dtype).removeprefix("torch.")})
    num_chunks = -(-n // chunk_size)
    paths = []
    for chunk in tqdm(range(num_chunks), desc=f"encode {side} chunks", disable=None if progress else True):
        path, start = _chunk_path(directory, chunk), chunk * chunk_size
        rows = min(chunk_size, n - start)
        if path.exists():
            have = np.load(path, mmap_mode="r").shape[0]
            if have != rows:
                raise ValueError(f"{path}: holds {have} rows, expected {rows}; delete it to re-encode that chunk")
        else:
            emb = encode_texts(model, list(texts[start : start + rows]), side, batch_size=batch_size, dtype=dtype,
                               progress=progress, desc=f"chunk {chunk + 1}/{num_chunks}")
            with atomic_write(path, "wb") as handle:
                np.save(handle, emb.numpy())
        paths.append(path)
    return paths
