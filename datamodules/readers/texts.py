"""Corpus and query files -> validated, memory-mapped Arrow ``datasets.Dataset``.

Each file is parsed and validated line by line inside a generator given to
:meth:`datasets.Dataset.from_generator`; the Arrow cache is keyed on the files'
paths, sizes and modification times, so it is reused until a file changes.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetGenerationError

from .errors import DataFormatError
from .lines import column_locator, iter_lines, json_key_locator

__all__ = [
    "TEXT_FEATURES",
    "TextFormat",
    "TEXT_FORMATS",
    "build_text_dataset",
    "join_title",
    "check_id",
    "check_string",
    "unwrap_generation_error",
]

#: Schema shared by corpus and queries datasets.
TEXT_FEATURES = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string")})

#: Bump when parsing or validation changes, to invalidate Arrow caches built by older code.
PARSER_VERSION = "1"

Record = tuple[int, str, str]  # (line, id, text)


def join_title(title: str, text: str) -> str:
    """Passage text as ``"{title} {text}"`` when the title is non-empty (both stripped)."""
    title, text = title.strip(), text.strip()
    return f"{title} {text}" if title else text


def check_string(path: str | Path, line: int | None, field: str, value: Any) -> str:
    """Return ``value`` if it is a ``str``; raise a located error otherwise."""
    if not isinstance(value, str):
        shown = "null" if value is None else f"{type(value).__name__} {value!r}"[:80]
        raise DataFormatError(path, line, field, f"expected a string, got {shown}")
    return value


def check_id(path: str | Path, line: int | None, field: str, value: Any) -> str:
    """Return ``value`` if it is a usable id: a non-empty string without whitespace."""
    value = check_string(path, line, field, value)
    if not value:
        raise DataFormatError(path, line, field, "empty id")
    if any(char.isspace() for char in value):
        raise DataFormatError(path, line, field, f"id {value!r} contains whitespace (it could not be written to a TREC file)")
    return value


def _check_text(path: str | Path, line: int | None, field: str, text: str) -> str:
    if not text.strip():
        raise DataFormatError(path, line, field, "empty text (after stripping whitespace)")
    return text


def json_object(path: Path, line: int, text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, line, None, f"malformed JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(record, dict):
        raise DataFormatError(path, line, None, f"expected a JSON object, got {type(record).__name__}")
    return record


def _required(path: Path, line: int, record: Mapping[str, Any], field: str) -> Any:
    if field not in record:
        raise DataFormatError(path, line, field, f"missing (keys present: {', '.join(map(repr, record)) or 'none'})")
    return record[field]


def parse_beir_corpus(path: Path) -> Iterator[Record]:
    """BEIR ``corpus.jsonl``: ``{"_id", "title"?, "text"}``; text is title + text."""
    for line, raw in iter_lines(path, locate_field=json_key_locator):
        record = json_object(path, line, raw)
        pid = check_id(path, line, "_id", _required(path, line, record, "_id"))
        text = check_string(path, line, "text", _required(path, line, record, "text"))
        title = check_string(path, line, "title", record.get("title", ""))
        yield line, pid, _check_text(path, line, "text", join_title(title, text))


def parse_beir_queries(path: Path) -> Iterator[Record]:
    """BEIR ``queries.jsonl``: ``{"_id", "text"}`` (other keys ignored)."""
    for line, raw in iter_lines(path, locate_field=json_key_locator):
        record = json_object(path, line, raw)
        qid = check_id(path, line, "_id", _required(path, line, record, "_id"))
        text = check_string(path, line, "text", _required(path, line, record, "text"))
        yield line, qid, _check_text(path, line, "text", text).strip()


def _parse_two_column_tsv(path: Path, columns: tuple[str, str]) -> Iterator[Record]:
    for line, raw in iter_lines(path, locate_field=column_locator(columns, b"\t")):
        fields = raw.split("\t")
        if len(fields) != 2:
            raise DataFormatError(
                path, line, None,
                f"expected 2 tab-separated columns ({columns[0]}, {columns[1]}), got {len(fields)}",
            )
        rid = check_id(path, line, columns[0], fields[0])
        yield line, rid, _check_text(path, line, columns[1], fields[1]).strip()


def parse_msmarco_collection(path: Path) -> Iterator[Record]:
    """MS MARCO ``collection.tsv``: ``pid<TAB>passage``."""
    return _parse_two_column_tsv(path, ("pid", "passage"))


def parse_msmarco_queries(path: Path) -> Iterator[Record]:
    """MS MARCO ``queries.{split}.tsv``: ``qid<TAB>query``."""
    return _parse_two_column_tsv(path, ("qid", "query"))


@dataclass(frozen=True)
class TextFormat:
    """A corpus or queries file format: its parser and the name of its id field."""

    id_field: str
    parse: Callable[[Path], Iterator[Record]]
    what: str  # "passage" or "query"


TEXT_FORMATS: dict[str, TextFormat] = {
    "beir_corpus": TextFormat("_id", parse_beir_corpus, "passage"),
    "beir_queries": TextFormat("_id", parse_beir_queries, "query"),
    "msmarco_collection": TextFormat("pid", parse_msmarco_collection, "passage"),
    "msmarco_queries": TextFormat("qid", parse_msmarco_queries, "query"),
}


def _first_line_of(path: Path, fmt: TextFormat, record_id: str) -> int | None:
    for line, rid, _ in fmt.parse(path):
        if rid == record_id:
            return line
    return None


def generate_texts(
    paths: tuple[str, ...], sizes: tuple[int, ...], mtimes: tuple[int, ...], kind: str
) -> Iterator[dict[str, str]]:
    """Yield validated ``{"id", "text"}`` rows from ``paths`` (generator for ``from_generator``).

    Ids must be unique across files, except that several files may list the same
    query with the same text (MS MARCO's ``queries.dev.tsv`` and ``queries.dev.small.tsv``).
    """
    fmt = TEXT_FORMATS[kind]
    multi_file = len(paths) > 1
    seen: dict[str, tuple[int, int] | None] = {}
    for index, (name, size, mtime) in enumerate(zip(paths, sizes, mtimes)):
        path = Path(name)
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime):
            raise RuntimeError(f"{path} changed while the dataset was being built; load it again")
        count = 0
        for line, rid, text in fmt.parse(path):
            count += 1
            if rid in seen:
                first = seen[rid]
                if first is not None and first[0] != index and first[1] == hash(text):
                    continue  # the same query listed in two split files
                first_path = Path(paths[first[0]]) if first is not None else path
                first_line = _first_line_of(first_path, fmt, rid)
                where = f"line {first_line}" if first_path == path else f"{first_path.name} line {first_line}"
                raise DataFormatError(path, line, fmt.id_field, f"duplicate id {rid!r} (first seen on {where})")
            seen[rid] = (index, hash(text)) if multi_file else None
            yield {"id": rid, "text": text}
        if count == 0:
            raise DataFormatError(path, None, None, f"no {fmt.what} records: the file is empty")


def source_signature(paths: Sequence[Path]) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """Absolute paths, sizes and modification times (ns) of ``paths``."""
    resolved = tuple(str(Path(p).resolve()) for p in paths)
    stats = [os.stat(p) for p in resolved]
    return resolved, tuple(s.st_size for s in stats), tuple(s.st_mtime_ns for s in stats)


def signature_hash(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def unwrap_generation_error(err: BaseException) -> BaseException:
    """The :class:`DataFormatError` behind a ``datasets`` generation error, if any."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, DataFormatError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return err


def build_text_dataset(paths: Sequence[Path], kind: str, *, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """Parse ``paths`` with the ``kind`` parser into a memory-mapped ``id``/``text`` Dataset."""
    names, sizes, mtimes = source_signature(paths)
    fingerprint = signature_hash("texts", PARSER_VERSION, kind, names, sizes, mtimes)
    try:
        return datasets.Dataset.from_generator(
            generate_texts,
            features=TEXT_FEATURES,
            cache_dir=None if cache_dir is None else str(cache_dir),
            keep_in_memory=False,
            gen_kwargs={"paths": names, "sizes": sizes, "mtimes": mtimes, "kind": kind},
            fingerprint=fingerprint,
        )
    except DatasetGenerationError as err:
        cause = unwrap_generation_error(err)
        if cause is err:
            raise
        raise cause from None
