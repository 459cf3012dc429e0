"""``load_retrieval_data``: detect a dataset's layout (BEIR, MS MARCO, hub schema) and load it."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .compression import COMPRESSED_SUFFIXES, is_archive, logical_name
from .errors import DataFormatError
from .hub import hub_configs, load_hub_data
from .irds import is_irds, load_irds_data
from .retrieval_data import RetrievalData
from .texts import PARSER_VERSION, build_text_dataset, signature_hash, source_signature
from .trec import Run, check_qrels_ids, check_run_ids, read_qrels, read_run, read_top1000

__all__ = ["load_retrieval_data", "EXPECTED_LAYOUTS"]

EXPECTED_LAYOUTS = (
    "BEIR: corpus.jsonl, queries.jsonl, qrels/{split}.tsv [, candidates_{split}.run] (each may be .gz/.bz2/.xz/.zst); "
    "MS MARCO: collection.tsv, queries.{split}.tsv, qrels.{split}.tsv "
    "[, run.{split}.trec | candidates_{split}.run | top1000.{split}]; "
    "Hugging Face BEIR schema: README.md with YAML 'configs:' for 'corpus' and 'queries', "
    "plus a sibling '<dir>-qrels' directory"
)


def load_retrieval_data(dataset: str | Path, *, cache_dir: str | Path | None = None) -> RetrievalData:
    """Load corpus, queries, qrels and candidate runs, validating everything.

    ``dataset`` is a directory in BEIR layout (has ``corpus.jsonl``), in MS MARCO
    layout (has ``collection.tsv``), in BEIR's hub schema (README.md ``configs:``),
    ``"irds:<id>"`` for an ``ir_datasets`` id (:mod:`datamodules.readers.irds`),
    or else a Hugging Face dataset name such as ``"BeIR/scifact"``. ``cache_dir``
    is where the Arrow caches go (default: the ``datasets`` cache).

    Raises:
        DataFormatError: bad content, located by file, line and field.
        UnknownDatasetError: not a recognised layout and not loadable from the hub.
    """
    if is_irds(dataset):
        return load_irds_data(str(dataset), cache_dir=cache_dir)
    path = Path(dataset).expanduser()
    if not path.exists():
        return load_hub_data(str(dataset), cache_dir=cache_dir)
    if path.is_dir():
        beir = _find(path, "corpus.jsonl") is not None
        if beir and (path / "qrels").is_dir():
            return _load_beir(path, cache_dir)
        if _find(path, "collection.tsv") is not None:
            return _load_msmarco(path, cache_dir)
        if {"corpus", "queries"} <= hub_configs(path):  # e.g. a local copy of BeIR/scifact
            return load_hub_data(str(path), cache_dir=cache_dir)
        if beir:
            return _load_beir(path, cache_dir)  # reports the missing qrels
    found = ", ".join(sorted(p.name for p in path.iterdir())[:20]) if path.is_dir() else "a file, not a directory"
    raise DataFormatError(path, None, None, f"unrecognised dataset layout (found: {found or 'nothing'}); expected one of: {EXPECTED_LAYOUTS}")


def _require(root: Path, name: str) -> Path:
    path = _find(root, name)
    if path is None:
        raise DataFormatError(root / name, None, None, f"missing file (expected layout: {EXPECTED_LAYOUTS})")
    return path


def _find(root: Path, name: str) -> Path | None:
    """``root/name`` or its compressed form (``name.gz``, ``.bz2``, ``.xz``, ``.zst``); two of them is an error."""
    found = [root / f"{name}{suffix}" for suffix in ("", *COMPRESSED_SUFFIXES) if (root / f"{name}{suffix}").is_file()]
    if len(found) > 1:
        raise DataFormatError(found[1], None, None, f"both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _splits(files: Iterable[Path], prefix: str, suffix: str) -> dict[str, Path]:
    """``{split: file}`` for files named ``{prefix}{split}{suffix}``, optionally compressed (``.gz`` ...),
    sorted by split; multi-file archives are ignored (e.g. MS MARCO's ``top1000.dev.tar.gz`` next to the
    extracted ``top1000.dev``)."""
    found: dict[str, Path] = {}
    for file in files:
        if is_archive(file.name) or not file.is_file():
            continue
        name = logical_name(file.name)
        if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
            split = name[len(prefix):len(name) - len(suffix)]
            if split in found:
                raise DataFormatError(file, None, None, f"both {found[split].name} and {file.name} hold split "
                                      f"{split!r}; keep one")
            found[split] = file
    return dict(sorted(found.items()))


def _read_candidates(files: dict[str, list[Path]]) -> tuple[dict[str, Run], dict[str, Path]]:
    runs, sources = {}, {}
    for split, paths in sorted(files.items()):
        if len(paths) > 1:
            raise DataFormatError(paths[1], None, None, f"several candidate runs for split {split!r}: {', '.join(p.name for p in paths)}; keep one")
        path = paths[0]
        runs[split] = read_top1000(path) if path.name.startswith("top1000") else read_run(path)
        sources[split] = path
    return runs, sources


def _assemble(
    root: Path, layout: str, corpus_files: list[Path], corpus_kind: str, query_files: list[Path], query_kind: str,
    qrels_files: dict[str, Path], qrels_fmt: str, candidate_files: dict[str, list[Path]], cache_dir: str | Path | None,
) -> RetrievalData:
    if not qrels_files:
        raise DataFormatError(root, None, None, f"no qrels files (expected layout: {EXPECTED_LAYOUTS})")
    corpus = build_text_dataset(corpus_files, corpus_kind, cache_dir=cache_dir)
    queries = build_text_dataset(query_files, query_kind, cache_dir=cache_dir)
    qrels = {split: read_qrels(path, fmt=qrels_fmt) for split, path in qrels_files.items()}
    candidates, candidate_sources = _read_candidates(candidate_files)
    all_files = [*corpus_files, *query_files, *qrels_files.values(), *candidate_sources.values()]
    data = RetrievalData(
        corpus=corpus, queries=queries, qrels=qrels, candidates=candidates, source=str(root), layout=layout,
        source_fingerprint=signature_hash("local", PARSER_VERSION, layout, *source_signature(all_files)),
    )
    query_ids, passage_ids = data.query_index(), data.corpus_index()
    for split, path in qrels_files.items():
        check_qrels_ids(qrels[split], query_ids, passage_ids, path=path)
    for split, path in candidate_sources.items():
        check_run_ids(candidates[split], query_ids, passage_ids, path=path)
    return data


def _load_beir(root: Path, cache_dir: str | Path | None) -> RetrievalData:
    qrels_dir = root / "qrels"
    qrels_files = _splits(qrels_dir.iterdir(), "", ".tsv") if qrels_dir.is_dir() else {}
    candidates = {split: [p] for split, p in _splits(root.iterdir(), "candidates_", ".run").items()}
    return _assemble(
        root, "beir", [_require(root, "corpus.jsonl")], "beir_corpus", [_require(root, "queries.jsonl")], "beir_queries",
        qrels_files, "beir", candidates, cache_dir,
    )


def _load_msmarco(root: Path, cache_dir: str | Path | None) -> RetrievalData:
    files = sorted(root.iterdir())
    query_files = list(_splits(files, "queries.", ".tsv").values())
    if not query_files:
        raise DataFormatError(root / "queries.{split}.tsv", None, None, f"missing file (expected layout: {EXPECTED_LAYOUTS})")
    candidates: dict[str, list[Path]] = {}
    for prefix, suffix in (("run.", ".trec"), ("candidates_", ".run"), ("top1000.", ".tsv"), ("top1000.", "")):
        for split, path in _splits(files, prefix, suffix).items():
            if prefix == "top1000." and suffix == "" and split.endswith(".tsv"):
                continue  # already matched as top1000.{split}.tsv
            candidates.setdefault(split, []).append(path)
    return _assemble(
        root, "msmarco", [_require(root, "collection.tsv")], "msmarco_collection", query_files, "msmarco_queries",
        _splits(files, "qrels.", ".tsv"), "auto", candidates, cache_dir,
    )
