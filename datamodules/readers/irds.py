"""``irds:<id>``: an ``ir_datasets`` dataset as a :class:`RetrievalData` (issue 13).

``dataset="irds:beir/scifact"`` loads the corpus of ``beir/scifact`` and one qrels split per registered child
id that has qrels (``beir/scifact/train`` -> split ``train``, ``beir/scifact/test`` -> ``test``);
``irds:msmarco-passage/dev/small`` loads that one id, as the split named by its last component (``small``).
Children with scored documents (e.g. ``msmarco-passage/dev/small``'s BM25 top-1000) become the split's
candidate run. Documents and queries are streamed once into the same Arrow-backed, memory-mapped ``id`` /
``text`` tables the local readers build, cached by id (and ``ir_datasets`` version); qrels and runs are
checked against them like any other source's.

``ir_datasets`` downloads its files itself, on first use, into ``~/.ir_datasets`` (``IR_DATASETS_HOME``).
Without network a dataset whose files are not there fails with one line saying how to fetch them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import datasets

from .errors import DataFormatError, UnknownDatasetError
from .retrieval_data import RetrievalData
from .texts import PARSER_VERSION, TEXT_FEATURES, check_id, check_string, signature_hash, unwrap_generation_error
from .trec import check_qrels_ids, check_run_ids

__all__ = ["IRDS_PREFIX", "is_irds", "load_irds_data"]

IRDS_PREFIX = "irds:"


def is_irds(dataset: str | Path) -> bool:
    return isinstance(dataset, str) and dataset.startswith(IRDS_PREFIX)


def _fetch_error(ident: str, what: str, err: BaseException) -> UnknownDatasetError:
    return UnknownDatasetError(
        f"irds:{ident}", None, None, f"ir_datasets could not read its {what} ({type(err).__name__}: {str(err)[:200]}); its files "
        f"are fetched on first use: run `ir_datasets export {ident} {what} > /dev/null` once on a machine with "
        f"network (or copy ~/.ir_datasets from one; IR_DATASETS_HOME moves it), then rerun")


def _splits(ir_datasets: Any, ident: str) -> dict[str, str]:
    """``{split: id}``: the id itself when it has qrels, else its direct children that have them."""
    registry = ir_datasets.registry
    if ident not in registry:
        raise UnknownDatasetError(f"irds:{ident}", None, None, "not an ir_datasets id (e.g. irds:beir/scifact, "
                                  "irds:msmarco-passage/train/judged; `ir_datasets list` shows them all)")
    root = ir_datasets.load(ident)
    if root.has_qrels():
        return {ident.rsplit("/", 1)[-1]: ident}
    depth = ident.count("/") + 1
    children = sorted(k for k in registry if k.startswith(ident + "/") and k.count("/") == depth)
    splits = {k.rsplit("/", 1)[-1]: k for k in children if ir_datasets.load(k).has_qrels()}
    if not splits:
        raise UnknownDatasetError(f"irds:{ident}", None, None, f"neither it nor its sub-ids ({', '.join(children) or 'none'}) have "
                                  "qrels; name one that does")
    return splits


def _texts(records: Iterator[Any], source: str, text_of) -> Iterator[dict[str, str]]:
    seen: dict[str, tuple[int, str]] = {}
    for number, record in enumerate(records, start=1):
        rid = check_id(source, number, "id", record[0])
        text = check_string(source, number, "text", text_of(record))
        if rid in seen:  # a query listed by two splits: kept once, if it is the same query
            if seen[rid][1] != text:
                raise DataFormatError(source, number, "text", f"id {rid!r} has another text on record {seen[rid][0]}")
            continue
        seen[rid] = (number, text)
        yield {"id": rid, "text": text}


def _doc_text(doc: Any) -> str:
    if hasattr(doc, "default_text"):
        return doc.default_text()
    return getattr(doc, "text")


def _generate(ident: str, what: str, split_ids: str) -> Iterator[dict[str, str]]:
    import ir_datasets

    source = f"irds:{ident} ({what})"
    try:
        if what == "docs":
            yield from _texts(ir_datasets.load(ident).docs_iter(), source, _doc_text)
        else:
            def all_queries():
                for sid in split_ids.split("\n"):
                    yield from ir_datasets.load(sid).queries_iter()

            yield from _texts(all_queries(), source, lambda q: getattr(q, "text", None) or q.default_text())
    except OSError as err:  # a file not there (requests' ConnectionError is an OSError too)
        raise _fetch_error(ident, what, err) from None


def _table(ident: str, what: str, split_ids: list[str], version: str, cache_dir: str | Path | None) -> datasets.Dataset:
    try:
        return datasets.Dataset.from_generator(
            _generate, features=TEXT_FEATURES, cache_dir=None if cache_dir is None else str(cache_dir),
            # one string, not a list: datasets would shard a list over several generator calls, and the check
            # that a query listed by two splits has one text needs them all in one pass
            keep_in_memory=False, gen_kwargs={"ident": ident, "what": what, "split_ids": "\n".join(split_ids)},
            fingerprint=signature_hash("irds", PARSER_VERSION, version, ident, what, *split_ids),
        )
    except datasets.exceptions.DatasetGenerationError as err:
        cause = unwrap_generation_error(err)  # our DataFormatError / UnknownDatasetError, if that was it
        if cause is err:
            raise
        raise cause from None


def load_irds_data(dataset: str, *, cache_dir: str | Path | None = None) -> RetrievalData:
    """Load ``irds:<id>`` (see the module docstring)."""
    try:
        import ir_datasets
    except ImportError:  # pragma: no cover - a declared dependency
        raise UnknownDatasetError(dataset, None, None, "needs the ir_datasets package (`pip install ir-datasets`)") from None
    ident = dataset[len(IRDS_PREFIX):].strip("/")
    splits = _splits(ir_datasets, ident)
    split_ids = list(splits.values())
    docs_id = ident if ir_datasets.load(ident).has_docs() else split_ids[0]
    version = getattr(ir_datasets, "__version__", "?")
    corpus = _table(docs_id, "docs", [], version, cache_dir)
    queries = _table(ident, "queries", split_ids, version, cache_dir)
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    candidates: dict[str, dict[str, dict[str, float]]] = {}
    for name, sid in splits.items():
        ds = ir_datasets.load(sid)
        try:
            table: dict[str, dict[str, int]] = {}
            for qrel in ds.qrels_iter():
                table.setdefault(str(qrel.query_id), {})[str(qrel.doc_id)] = int(qrel.relevance)
            qrels[name] = table
            if ds.has_scoreddocs():
                run: dict[str, dict[str, float]] = {}
                for sd in ds.scoreddocs_iter():
                    run.setdefault(str(sd.query_id), {})[str(sd.doc_id)] = float(sd.score)
                candidates[name] = run
        except OSError as err:
            raise _fetch_error(sid, "qrels", err) from None
    data = RetrievalData(corpus=corpus, queries=queries, qrels=qrels, candidates=candidates, source=dataset,
                         layout="irds", source_fingerprint=signature_hash("irds", PARSER_VERSION, version, ident, *split_ids))
    query_ids, passage_ids = data.query_index(), data.corpus_index()
    for name, sid in splits.items():
        check_qrels_ids(qrels[name], query_ids, passage_ids, path=f"irds:{sid} (qrels)")
        if name in candidates:
            check_run_ids(candidates[name], query_ids, passage_ids, path=f"irds:{sid} (scoreddocs)")
    return data
