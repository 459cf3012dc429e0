"""Using a trained ranker outside training: ``python -m rankers index | search | rerank``.

* ``index`` -- encode a corpus with a dual encoder (:func:`rankers.retrieval.encode.encode_in_chunks`: chunks
  of ``--chunk_size`` passages, each saved when done, so an interrupted run resumes at the first
  missing chunk), then build and save a :class:`rankers.retrieval.search.DenseIndex`. ``rankers_index.json``
  beside it names the model and the data, so ``search`` needs only the index directory.
* ``search`` -- encode queries (a BEIR ``queries.jsonl``, an MS MARCO queries ``.tsv``, or a dataset
  and ``--split``) with the index's model and write a TREC run of the top ``--depth`` passages.
* ``rerank`` -- score the top ``--depth`` candidates of each query of a TREC run with a cross-attention
  (or dual-encoder) ranker and write the re-ranked run.

Models are checkpoints or directories written by ``python -m rankers export``. Corpus and queries
are loaded by the DataModule's loader (``--data.dataset``: a BEIR / MS MARCO directory, a hub name or
``embedded``). Dense scores are the raw similarities (inner product of the, for cosine normalised,
embeddings), as in the retrieval-eval callback; pair scores in ``rerank`` are the model's scores
(DE: similarity / temperature, CA: logit). The functions here are what :mod:`rankers.api` wraps.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets
import torch

from rankers.devices import pick_device
from rankers.io.metadata import read_json

log = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
TextSource = Mapping[str, str] | datasets.Dataset
INDEX_META = "rankers_index.json"
CHUNKS_DIR = "chunks"
DEFAULT_CHUNK_SIZE = 100_000


# ----------------------------------------------------------------------------- models and data
def require_dual_encoder(model, what: str) -> None:
    """``ValueError`` unless ``model`` is a dual encoder (``what`` names the operation)."""
    if not getattr(model, "is_dual_encoder", False):
        raise ValueError(f"{what} needs a dual encoder (DualEncoderRanker); got a {type(model).__name__}, "
                         f"which scores (query, passage) pairs jointly: use `rerank` instead")


def load_data(dataset: str, *, embedded_scale: float = 1.0, cache_dir: str | None = None):
    """A collection as :class:`datamodules.formats.RetrievalData`, resolved like ``--data.dataset``."""
    from datamodules.datamodule import RankingDataModule

    return RankingDataModule(dataset=dataset, embedded_scale=embedded_scale, cache_dir=cache_dir).load()


def load_queries_file(path: str | Path, *, cache_dir: str | None = None) -> datasets.Dataset:
    """Queries (``id``, ``text``) of a BEIR ``.jsonl`` or MS MARCO ``.tsv`` (``qid<TAB>query``) file."""
    from datamodules.readers.texts import build_text_dataset

    path = Path(path)
    kinds = {".jsonl": "beir_queries", ".tsv": "msmarco_queries"}
    if path.suffix not in kinds:
        raise ValueError(f"{path}: unknown queries file type {path.suffix!r}: expected .jsonl (BEIR) or .tsv (MS MARCO)")
    if not path.is_file():
        raise ValueError(f"{path}: queries file not found")
    return build_text_dataset([path], kinds[path.suffix], cache_dir=cache_dir)


def texts_by_id(source: TextSource, ids: Iterable[str], what: str, rows: Mapping[str, int] | None = None) -> dict[str, str]:
    """``{id: text}`` for ``ids`` from a mapping or an ``id``/``text`` Dataset (``rows``: its id -> row index)."""
    ids = list(dict.fromkeys(ids))
    if isinstance(source, Mapping):
        missing = [i for i in ids if i not in source]
        if missing:
            raise ValueError(f"{what} id {missing[0]!r}: no text given ({len(missing)} {what} id(s) missing)")
        return {i: source[i] for i in ids}
    if rows is None:
        column = source.with_format("arrow")["id"].to_pylist()
        rows = dict(zip(column, range(len(column))))
    missing = [i for i in ids if i not in rows]
    if missing:
        raise ValueError(f"{what} id {missing[0]!r}: not in the {what}s ({len(missing)} {what} id(s) missing)")
    return dict(zip(ids, source.select([rows[i] for i in ids])["text"])) if ids else {}


def _id_text(queries: TextSource) -> tuple[list[str], list[str]]:
    if isinstance(queries, Mapping):
        return list(queries), list(queries.values())
    return list(queries["id"]), list(queries["text"])


# ----------------------------------------------------------------------------- index
def build_index(
    model,
    corpus: datasets.Dataset,
    output: str | Path,
    *,
    batch_size: int = 256,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    index_type: str = "flat",
    backend: str = "auto",
    fp16: bool = False,
    source: str | None = None,
    fingerprint: str | None = None,
    meta: dict[str, Any] | None = None,
    keep_chunks: bool = False,
    progress: bool = True,
):
    """Encode ``corpus`` (``id``/``text``) with a DE into ``output/chunks`` and save a DenseIndex in ``output``.

    Resumable: chunks already in ``output/chunks`` made with the same model file (``source``: its
    path; size and modification time are checked too), data (``fingerprint``, default the Dataset's)
    and settings are not encoded again. ``rankers_index.json`` records ``source`` as ``model`` (what
    ``search`` loads), the similarity and ``meta`` (e.g. the data spec). The chunk files are removed
    once the index is saved unless ``keep_chunks``.
    """
    import numpy as np

    from rankers.retrieval.encode import encode_in_chunks
    from rankers.retrieval.dense import index_chunks

    require_dual_encoder(model, "index")
    if len(corpus) == 0:
        raise ValueError("index: the corpus is empty")
    output = Path(output)
    fingerprint = fingerprint or corpus._fingerprint
    signature = {"model": source, "model_stamp": _file_stamp(source), "fingerprint": fingerprint}
    chunks = encode_in_chunks(model, corpus["text"], "passage", output / CHUNKS_DIR, chunk_size=chunk_size,
                              batch_size=batch_size, dtype=torch.float16 if fp16 else torch.float32,
                              signature=signature, progress=progress)
    ids = corpus["id"]
    if index_type == "ivf":  # IVF trains on all vectors at once: one chunk
        pieces = [(np.concatenate([np.load(p) for p in chunks]), list(ids))]
    else:
        pieces = ((np.load(path), list(ids[i * chunk_size : (i + 1) * chunk_size])) for i, path in enumerate(chunks))
    index = index_chunks(pieces, backend=backend, index_type=index_type, metric="ip", fp16=fp16)
    index.save(output)
    meta = {"model": source, **(meta or {})}
    meta.update(similarity=model.similarity, temperature=float(model.temperature), num_passages=index.ntotal,
                fingerprint=fingerprint, batch_size=batch_size)
    (output / INDEX_META).write_text(json.dumps(meta, indent=2) + "\n")
    if not keep_chunks:
        shutil.rmtree(output / CHUNKS_DIR)
    log.info("index of %d passages saved to %s (%s)", index.ntotal, output, index)
    return index


def _file_stamp(path: str | None) -> list[int] | None:
    """(size, mtime in ns) of a checkpoint file or an export's config: a re-trained model at the same path
    must not resume chunks encoded by the old one."""
    if path is None:
        return None
    file = Path(path) / "rankers_config.json" if Path(path).is_dir() else Path(path)
    stat = file.stat()
    return [stat.st_size, stat.st_mtime_ns]


def read_index_meta(directory: str | Path) -> dict[str, Any]:
    """``rankers_index.json`` of an index directory written by :func:`build_index`."""
    return read_json(Path(directory) / INDEX_META,
                     missing=f"{directory} is not an index written by `python -m rankers index`")


def search_run(model, index, queries: TextSource, *, depth: int = 1000, batch_size: int = 256, progress: bool = False) -> Run:
    """Top-``depth`` passages of ``index`` for each query (``{id: text}`` or an ``id``/``text`` Dataset)."""
    from rankers.retrieval.dense import search_queries

    require_dual_encoder(model, "search")
    query_ids, texts = _id_text(queries)
    return search_queries(model, index, query_ids, texts, depth=depth, batch_size=batch_size, progress=progress)


# ----------------------------------------------------------------------------- rerank
def score_pairs(model, queries: list[str], passages: list[str], *, batch_size: int = 128) -> torch.Tensor:
    """Scores of aligned (query, passage) text lists: CA logits, or DE similarity / temperature
    (a DE encodes each distinct text once)."""
    if len(queries) != len(passages):
        raise ValueError(f"score_pairs: {len(queries)} queries but {len(passages)} passages")
    if not getattr(model, "is_dual_encoder", False):
        return model.score(list(queries), list(passages), batch_size=batch_size)
    from rankers.retrieval.encode import encode_texts

    unique_q, unique_p = list(dict.fromkeys(queries)), list(dict.fromkeys(passages))
    q = encode_texts(model, unique_q, "query", batch_size=batch_size)
    p = encode_texts(model, unique_p, "passage", batch_size=batch_size)
    q_row = {t: i for i, t in enumerate(unique_q)}
    p_row = {t: i for i, t in enumerate(unique_p)}
    if not queries:
        return torch.empty(0)
    qi = torch.as_tensor([q_row[t] for t in queries])
    pi = torch.as_tensor([p_row[t] for t in passages])
    return (q[qi] * p[pi]).sum(-1) / model.temperature


def rerank_run(
    model,
    run: Mapping[str, Mapping[str, float]],
    queries: TextSource,
    passages: TextSource,
    *,
    depth: int = 100,
    batch_size: int = 128,
    query_rows: Mapping[str, int] | None = None,
    passage_rows: Mapping[str, int] | None = None,
) -> Run:
    """Re-score the top ``depth`` candidates (the project's rank order) of each query of ``run``.

    ``queries`` / ``passages``: ``{id: text}`` or ``id``/``text`` Datasets (``*_rows``: their id -> row
    maps, e.g. ``RetrievalData.query_index()``). Candidates below ``depth`` are dropped.
    """
    from rankers.evaluation.metrics import rank_passages

    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    pairs = [(qid, pid) for qid, candidates in run.items() for pid in rank_passages(candidates)[:depth]]
    query_text = texts_by_id(queries, (q for q, _ in pairs), "query", query_rows)
    passage_text = texts_by_id(passages, (p for _, p in pairs), "passage", passage_rows)
    scores = score_pairs(model, [query_text[q] for q, _ in pairs], [passage_text[p] for _, p in pairs],
                         batch_size=batch_size).tolist()
    reranked: Run = {}
    for (qid, pid), score in zip(pairs, scores):
        reranked.setdefault(qid, {})[pid] = float(score)
    return reranked


# ----------------------------------------------------------------------------- commands
def _add_data_args(parser, required: bool) -> None:
    parser.add_argument("--data.dataset", required=required,
                        help="BEIR / MS MARCO directory, Hugging Face dataset name, or 'embedded'")
    parser.add_argument("--data.embedded_scale", type=float, default=1.0,
                        help="size multiplier of the embedded default (as in the configs)")
    parser.add_argument("--data.cache_dir", default=None, help="Arrow cache (default $RANKERS_HOME/cache)")


def _add_model_args(parser, required: bool, help: str) -> None:
    parser.add_argument("--ckpt_path", required=required, help=help)
    parser.add_argument("--batch_size", type=int, default=None, help="texts (or pairs) per model batch")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--precision", default="32-true", choices=("auto", "32-true", "bf16-mixed"),
                        help="32-true as the configs' trainers (so an index matches the eval callback's); auto: bf16 "
                             "autocast where it pays off (native bf16, on a CPU also measured faster; rankers/precision.py)")


def _arrow_cache(cache_dir: str | None) -> str:
    """Where the DataModule keeps Arrow caches for ``--data.cache_dir`` (default ``$RANKERS_HOME/cache``)."""
    from rankers.io.home import rankers_home

    return str(Path(cache_dir) if cache_dir else rankers_home() / "cache") + "/arrow"


def load_model_on(path: str, device: str | None = None):
    """:func:`rankers.export.load_model` (checkpoint or export), moved to ``device`` (default: cuda if available)."""
    from rankers.export import load_model

    return load_model(path).to(pick_device(device))


def index_main(argv: list[str] | None = None):
    """``python -m rankers index --ckpt_path CKPT_OR_EXPORT --data.dataset DATA --output INDEX_DIR``."""
    from rankers.commands.parsing import command_parser

    parser = command_parser("index", "Encode a corpus with a dual encoder into a saved dense index (resumable).")
    _add_model_args(parser, True, "DualEncoderRanker checkpoint or exported directory")
    _add_data_args(parser, required=True)
    parser.add_argument("--output", required=True, help="index directory")
    parser.add_argument("--index_type", choices=("flat", "ivf", "hnsw"), default="flat")
    parser.add_argument("--backend", choices=("auto", "faiss-cpu", "faiss-gpu", "torch"), default="auto")
    parser.add_argument("--fp16", action="store_true",
                        help="store embeddings in float16: the chunks, and the index (faiss-gpu, torch on CUDA, faiss-cpu "
                             "flat: an fp16 IndexScalarQuantizer, searched in float32 blocks)")
    parser.add_argument("--chunk_size", type=int, default=DEFAULT_CHUNK_SIZE, help="passages per saved chunk")
    parser.add_argument("--keep_chunks", action="store_true", help="keep the chunk files after the index is saved")
    parser.add_argument("--overwrite", action="store_true", help="discard an earlier (partial) build in --output")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if args.overwrite and output.exists():
        if not ((output / INDEX_META).exists() or (output / CHUNKS_DIR).exists()):
            raise ValueError(f"{output}: exists and is not a rankers index; not removing it")
        shutil.rmtree(output)
    if (output / INDEX_META).exists():
        raise ValueError(f"{output / INDEX_META}: an index is already built there; pass --overwrite to rebuild it")
    model = load_model_on(args.ckpt_path, args.device)
    data = load_data(args.data.dataset, embedded_scale=args.data.embedded_scale, cache_dir=args.data.cache_dir)
    meta = {"dataset": args.data.dataset, "embedded_scale": args.data.embedded_scale, "cache_dir": args.data.cache_dir}
    from rankers.precision import inference_autocast

    with inference_autocast(args.precision, model.device):
        return build_index(model, data.corpus, output, batch_size=args.batch_size or 256, chunk_size=args.chunk_size,
                           index_type=args.index_type, backend=args.backend, fp16=args.fp16,
                           source=str(Path(args.ckpt_path).resolve()), fingerprint=data.fingerprint(), meta=meta,
                           keep_chunks=args.keep_chunks)


def search_main(argv: list[str] | None = None) -> Run:
    """``python -m rankers search --index INDEX_DIR --queries FILE_OR_DATASET [--split S] --output RUN``."""
    from datamodules.formats import write_run
    from rankers.retrieval.search import DenseIndex

    from rankers.commands.parsing import command_parser

    parser = command_parser("search", "Search a saved index with queries; write a TREC run.")
    parser.add_argument("--index", required=True, help="directory written by `python -m rankers index`")
    parser.add_argument("--queries", default=None,
                        help="queries.jsonl (BEIR), queries .tsv (MS MARCO) or a dataset (directory, hub name, "
                             "'embedded'); default: the dataset the index was built from")
    parser.add_argument("--split", default=None, help="with a dataset: the queries of this split's qrels (default: all)")
    parser.add_argument("--output", required=True, help="TREC run file to write")
    parser.add_argument("--depth", type=int, default=1000, help="passages per query")
    parser.add_argument("--backend", choices=("auto", "faiss-cpu", "faiss-gpu", "torch"), default="auto")
    parser.add_argument("--data.embedded_scale", type=float, default=1.0,
                        help="with another --queries dataset than the index's, 'embedded': its size multiplier")
    _add_model_args(parser, False, "model to encode queries with (default: the one the index was built with)")
    args = parser.parse_args(argv)
    meta = read_index_meta(args.index)
    source, qrels = args.queries or meta.get("dataset"), None
    if source is None:
        raise ValueError("search: pass --queries (the index does not name its dataset)")
    if Path(source).is_file():
        queries = load_queries_file(source, cache_dir=_arrow_cache(meta.get("cache_dir")))
    else:
        scale = meta.get("embedded_scale", 1.0) if source == meta.get("dataset") else args.data.embedded_scale
        data = load_data(source, embedded_scale=scale, cache_dir=meta.get("cache_dir"))
        queries = data.split_queries(args.split) if args.split else data.queries
        qrels = data.qrels[args.split] if args.split else None
    model = load_model_on(args.ckpt_path or meta["model"], args.device)
    index = DenseIndex.load(args.index, backend=args.backend)
    from rankers.precision import inference_autocast

    with inference_autocast(args.precision, model.device):
        run = search_run(model, index, queries, depth=args.depth,
                         batch_size=args.batch_size or meta.get("batch_size", 256), progress=True)
    write_run(run, args.output, tag="rankers-dense")
    log.info("run of %d queries written to %s", len(run), args.output)
    _log_metrics(run, qrels)
    return run


def _log_metrics(run: Run, qrels) -> None:
    from rankers.evaluation.metrics import evaluate_run, format_metrics

    if qrels and any(r > 0 for judged in qrels.values() for r in judged.values()):
        log.info("metrics: %s", format_metrics(evaluate_run(run, qrels)))


def rerank_main(argv: list[str] | None = None) -> Run:
    """``python -m rankers rerank --ckpt_path CKPT --run RUN --data.dataset DATA --output RUN_OUT``.

    A Lightning ``predict`` loop (as lightning-ir's ``re_rank``): the DataModule serves every query of
    ``--run`` with its top ``--depth`` candidates (``predict_split="candidates"``), the model's
    ``predict_step`` scores the pairs, :class:`callbacks.RunWriter` gathers them across devices and writes the
    run; ``--devices 2`` (or more) re-ranks under DDP.
    """
    import lightning.pytorch as pl

    from callbacks.run_writer import RunWriter
    from datamodules.datamodule import RankingDataModule
    from rankers.commands.console import progress_enabled
    from rankers.commands.parsing import command_parser
    from rankers.export import load_model
    from rankers.precision import resolve_precision

    parser = command_parser("rerank", "Re-rank a TREC run with a cross-attention (or dual-encoder) ranker.")
    parser.add_argument("--ckpt_path", required=True,
                        help="CrossAttentionRanker / DualEncoderRanker checkpoint or exported directory")
    parser.add_argument("--batch_size", type=int, default=128, help="pairs per model batch")
    _add_data_args(parser, required=True)
    parser.add_argument("--run", required=True, help="TREC run (or any candidate file the DataModule reads) to re-rank")
    parser.add_argument("--output", required=True, help="TREC run file to write")
    parser.add_argument("--depth", type=int, default=100, help="candidates re-ranked per query (the rest are dropped)")
    parser.add_argument("--split", default=None, help="log metrics against this split's qrels")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    parser.add_argument("--devices", default="1", help="devices to re-rank on (Lightning's --trainer.devices: 2, auto)")
    parser.add_argument("--precision", default="32-true",
                        help="32-true as the configs' trainers; auto: bf16 autocast where it pays off "
                             "(rankers/precision.py); or any Lightning precision")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers")
    args = parser.parse_args(argv)
    if args.depth < 1:
        raise ValueError(f"--depth must be >= 1, got {args.depth}")
    datamodule = RankingDataModule(dataset=args.data.dataset, embedded_scale=args.data.embedded_scale,
                                   cache_dir=args.data.cache_dir, eval_candidates=args.run, predict_split="candidates",
                                   eval_depth=args.depth, eval_batch_size=args.batch_size, num_workers=args.num_workers)
    model = load_model(args.ckpt_path)
    writer = RunWriter(args.output, tag="rankers-rerank")
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    trainer = pl.Trainer(accelerator=args.accelerator, devices=devices,
                         precision=resolve_precision(args.precision, args.accelerator), logger=False,
                         callbacks=[writer], enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=progress_enabled(),
                         default_root_dir=str(Path(args.output).parent))
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    _log_metrics(writer.run, datamodule.load().qrels[args.split] if args.split else None)
    return writer.run
