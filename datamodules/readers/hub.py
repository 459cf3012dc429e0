"""Datasets in BEIR's Hugging Face hub schema (``BeIR/scifact`` + ``BeIR/scifact-qrels``).

``name`` (config ``corpus`` and ``queries``: columns ``_id``, ``title``, ``text``) and
``name + "-qrels"`` (one split per qrels split: ``query-id``, ``corpus-id``, ``score``).
``name`` may also be a local directory with the same schema (data files plus a
README.md whose YAML ``configs:`` block declares ``corpus`` and ``queries``), in
which case its qrels must be the sibling directory ``name-qrels`` and the hub is
never contacted.

NanoBEIR-style repositories (``zeta-alpha-ai/NanoSciFact``) keep their qrels as a third config,
``qrels``, of the same repository, with no ``score`` column: each listed pair is then grade 1, and
the qrels config's splits (NanoBEIR's one split is named ``train``) are the qrels splits. A
repository (or local directory) with a ``qrels`` config is read that way; otherwise ``name-qrels``.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetGenerationError
from huggingface_hub import metadata_load

from .errors import DataFormatError, UnknownDatasetError
from .retrieval_data import RetrievalData
from .texts import PARSER_VERSION, TEXT_FEATURES, check_id, check_string, join_title, signature_hash, unwrap_generation_error
from .trec import Qrels, check_qrels_ids

__all__ = ["hub_configs", "load_hub_data"]

_BATCH = 10_000


def hub_configs(path: Path) -> set[str]:
    """Config names declared in ``path/README.md``'s YAML header (empty if none)."""
    readme = path / "README.md"
    if not readme.is_file():
        return set()
    try:
        meta = metadata_load(readme) or {}
    except Exception:  # unparsable YAML: not a hub-schema directory
        return set()
    configs = meta.get("configs") or []
    return {c.get("config_name", "default") for c in configs if isinstance(c, dict)}


class _Loader:
    """Calls ``datasets.load_dataset`` and records every attempt for the error message."""

    def __init__(self, name: str, cache_dir: str | Path | None) -> None:
        self.name = name
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.attempts: list[str] = []

    def load(self, path: str, config: str | None = None, *, optional: bool = False) -> datasets.DatasetDict | None:
        """``datasets.load_dataset(path, config)``; a failure raises the error listing every attempt, or
        (``optional``) is recorded and returns None."""
        call = f"datasets.load_dataset({path!r}" + (f", {config!r})" if config else ")")
        try:
            loaded = datasets.load_dataset(path, config, cache_dir=self.cache_dir)
        except Exception as err:  # any failure: not found, offline, bad files...
            detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            self.attempts.append(f"{call} -> {type(err).__name__}: {detail}")
            if optional:
                return None
            raise self.error() from err
        self.attempts.append(f"{call} -> ok")
        return loaded

    def error(self, extra: str = "") -> UnknownDatasetError:
        local = Path(self.name).expanduser().absolute()
        tried = [f"local path {str(local)!r}: " + ("exists" if local.exists() else "does not exist"), *self.attempts]
        return UnknownDatasetError(
            self.name, None, None,
            "could not load the dataset" + (f" ({extra})" if extra else "") + "; tried:\n  - " + "\n  - ".join(tried),
        )


def _single_split(loaded: datasets.DatasetDict, config: str, label: str) -> datasets.Dataset:
    if config in loaded:
        return loaded[config]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise DataFormatError(label, None, None, f"expected a split named {config!r}, found {', '.join(loaded)}")


def generate_hub_texts(source: datasets.Dataset, label: str, kind: str) -> Iterator[dict[str, str]]:
    """Yield validated ``{"id", "text"}`` rows from a BEIR hub-schema dataset (row numbers as lines)."""
    for column in ("_id", "text"):
        if column not in source.column_names:
            raise DataFormatError(label, None, column, f"missing column (columns: {', '.join(source.column_names)})")
    has_title = kind == "corpus" and "title" in source.column_names
    seen: set[str] = set()
    row = 0
    for batch in source.iter(batch_size=_BATCH):
        titles = batch["title"] if has_title else [""] * len(batch["_id"])
        for rid, text, title in zip(batch["_id"], batch["text"], titles):
            row += 1
            rid = check_id(label, row, "_id", rid)
            if title is None:
                title = ""  # Arrow cannot tell a missing title (e.g. a JSON row without one) from null
            text = join_title(check_string(label, row, "title", title), check_string(label, row, "text", text))
            if not text:
                raise DataFormatError(label, row, "text", "empty text (after stripping whitespace)")
            if rid in seen:
                first = source.with_format("arrow")["_id"].to_pylist().index(rid) + 1
                raise DataFormatError(label, row, "_id", f"duplicate id {rid!r} (first seen on line {first})")
            seen.add(rid)
            yield {"id": rid, "text": text}
    if row == 0:
        raise DataFormatError(label, None, None, f"no {'passage' if kind == 'corpus' else 'query'} records: the dataset is empty")


def _texts(source: datasets.Dataset, label: str, kind: str, cache_dir: str | None) -> datasets.Dataset:
    try:
        return datasets.Dataset.from_generator(
            generate_hub_texts,
            features=TEXT_FEATURES,
            cache_dir=cache_dir,
            keep_in_memory=False,
            gen_kwargs={"source": source, "label": label, "kind": kind},
            fingerprint=signature_hash("hub-texts", PARSER_VERSION, kind, source._fingerprint),
        )
    except DatasetGenerationError as err:
        cause = unwrap_generation_error(err)
        if cause is err:
            raise
        raise cause from None


def _hub_id(label: str, row: int, field: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # csv inference turns numeric ids into integers
    return check_id(label, row, field, value)


def _qrels(source: datasets.Dataset, label: str, *, score_optional: bool = False) -> Qrels:
    """Qrels from a ``query-id``, ``corpus-id``, ``score`` dataset; with ``score_optional`` (NanoBEIR) a missing
    ``score`` column makes every listed pair grade 1."""
    required = ("query-id", "corpus-id") if score_optional else ("query-id", "corpus-id", "score")
    for column in required:
        if column not in source.column_names:
            raise DataFormatError(label, None, column, f"missing column (columns: {', '.join(source.column_names)})")
    has_score = "score" in source.column_names
    qrels: Qrels = {}
    row = 0
    for batch in source.iter(batch_size=_BATCH):
        scores = batch["score"] if has_score else [1] * len(batch["query-id"])
        for qid, pid, score in zip(batch["query-id"], batch["corpus-id"], scores):
            row += 1
            qid, pid = _hub_id(label, row, "query-id", qid), _hub_id(label, row, "corpus-id", pid)
            try:
                if isinstance(score, (bool, float)):
                    raise ValueError
                grade = int(score)
            except (TypeError, ValueError):
                raise DataFormatError(label, row, "score", f"relevance {score!r} is not an integer") from None
            judged = qrels.setdefault(qid, {})
            if pid in judged:
                raise DataFormatError(label, row, "corpus-id", f"duplicate entry for query {qid!r} and passage {pid!r}")
            judged[pid] = grade
    if not qrels:
        raise DataFormatError(label, None, None, "no qrels: the split is empty, so it has no queries")
    return qrels


def load_hub_data(name: str, *, cache_dir: str | Path | None = None) -> RetrievalData:
    """Load a dataset in BEIR's hub schema, from the hub or from a local directory (see module doc)."""
    loader = _Loader(name, cache_dir)
    local = Path(name).is_dir()
    own_qrels = local and "qrels" in hub_configs(Path(name))
    if local and not own_qrels:
        qrels_name = str(Path(name)) + "-qrels"
        if not Path(qrels_name).is_dir():
            raise loader.error(f"a local hub-schema directory needs a 'qrels' config in its README.md or its qrels "
                               f"in the sibling directory {qrels_name!r}")
    else:
        qrels_name = name + "-qrels"
    corpus_src = _single_split(loader.load(name, "corpus"), "corpus", f"{name}[corpus]")
    queries_src = _single_split(loader.load(name, "queries"), "queries", f"{name}[queries]")
    qrels_src = None
    if own_qrels or not local:  # NanoBEIR: a 'qrels' config of the same repository
        qrels_src = loader.load(name, "qrels", optional=not own_qrels)
    if qrels_src is not None:
        qrels_name = f"{name}[qrels]"
        qrels = {split: _qrels(ds, f"{qrels_name}[{split}]", score_optional=True) for split, ds in qrels_src.items()}
    else:
        qrels_src = loader.load(qrels_name)
        qrels = {split: _qrels(ds, f"{qrels_name}[{split}]") for split, ds in qrels_src.items()}
    cache = loader.cache_dir
    data = RetrievalData(
        corpus=_texts(corpus_src, f"{name}[corpus]", "corpus", cache),
        queries=_texts(queries_src, f"{name}[queries]", "queries", cache),
        qrels=qrels,
        candidates={},
        source=name,
        layout="hf",
        source_fingerprint=signature_hash(
            "hf", corpus_src._fingerprint, queries_src._fingerprint,
            sorted((split, ds._fingerprint) for split, ds in qrels_src.items()),
        ),
    )
    query_ids, passage_ids = data.query_index(), data.corpus_index()
    for split, judged in qrels.items():
        check_qrels_ids(judged, query_ids, passage_ids, path=f"{qrels_name}[{split}]")
    return data
