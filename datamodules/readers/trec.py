"""Qrels and run files: TREC / BEIR readers, an atomic TREC run writer, id checks."""
from __future__ import annotations

import math
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from rankers.io.atomic import atomic_write

from .errors import DataFormatError
from .lines import column_locator, iter_lines

__all__ = [
    "Qrels",
    "Run",
    "read_qrels",
    "read_run",
    "read_top1000",
    "write_run",
    "check_qrels_ids",
    "check_run_ids",
]

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Columns:
    """A line-oriented file layout: column names and where query id, passage id and value are."""

    names: tuple[str, ...]
    qid: int
    pid: int
    value: int | None
    sep: str | None = None  # None: any whitespace

    def split(self, path: Path, line: int, text: str) -> list[str]:
        fields = text.split(self.sep) if self.sep else text.split()
        if len(fields) != len(self.names):
            how = "tab-separated" if self.sep == "\t" else "whitespace-separated"
            raise DataFormatError(
                path, line, None,
                f"expected {len(self.names)} {how} columns ({' '.join(self.names)}), got {len(fields)}",
            )
        return fields

    def lines(self, path: Path) -> Iterator[tuple[int, list[str]]]:
        locate = column_locator(self.names, None if self.sep is None else self.sep.encode())
        for line, text in iter_lines(path, locate_field=locate):
            yield line, self.split(path, line, text)


BEIR_QRELS = Columns(("query-id", "corpus-id", "score"), qid=0, pid=1, value=2)
TREC_QRELS = Columns(("qid", "iter", "pid", "rel"), qid=0, pid=2, value=3)
TREC_RUN = Columns(("qid", "Q0", "pid", "rank", "score", "tag"), qid=0, pid=2, value=4)
TOP1000 = Columns(("qid", "pid", "query", "passage"), qid=0, pid=1, value=None, sep="\t")


def _check_token_id(path: Path, line: int, field: str, value: str) -> str:
    if not value:
        raise DataFormatError(path, line, field, "empty id")
    return value


def _records(path: Path, columns: Columns) -> Iterator[tuple[int, str, str, list[str]]]:
    """Yield ``(line, qid, pid, fields)``, skipping a BEIR header on the first line."""
    first = True
    for line, fields in columns.lines(path):
        if first and columns is BEIR_QRELS and [f.lower() for f in fields] == list(BEIR_QRELS.names):
            first = False
            continue
        first = False
        qid = _check_token_id(path, line, columns.names[columns.qid], fields[columns.qid])
        pid = _check_token_id(path, line, columns.names[columns.pid], fields[columns.pid])
        yield line, qid, pid, fields


def _first_line(path: Path, columns: Columns, qid: str | None = None, pid: str | None = None) -> int | None:
    """Line of the first record matching ``qid`` and/or ``pid`` (re-reads the file; error paths only)."""
    for line, rq, rp, _ in _records(path, columns):
        if (qid is None or rq == qid) and (pid is None or rp == pid):
            return line
    return None


def _duplicate(path: Path, line: int, columns: Columns, qid: str, pid: str) -> DataFormatError:
    first = _first_line(path, columns, qid, pid)
    return DataFormatError(
        path, line, columns.names[columns.pid],
        f"duplicate entry for query {qid!r} and passage {pid!r} (first seen on line {first})",
    )


def _qrels_columns(path: Path, fmt: str) -> Columns:
    if fmt == "beir":
        return BEIR_QRELS
    if fmt == "trec":
        return TREC_QRELS
    if fmt != "auto":
        raise ValueError(f"fmt must be 'auto', 'beir' or 'trec', got {fmt!r}")
    for line, text in iter_lines(path):
        width = len(text.split())
        if width == 3:
            return BEIR_QRELS
        if width == 4:
            return TREC_QRELS
        raise DataFormatError(
            path, line, None,
            f"expected 3 columns (query-id corpus-id score) or 4 columns (qid 0 pid rel), got {width}",
        )
    raise DataFormatError(path, None, None, "no qrels: the file is empty, so its split has no queries")


def read_qrels(path: str | Path, *, fmt: str = "auto") -> Qrels:
    """Read relevance judgements: BEIR tsv (``query-id corpus-id score``, header optional) or TREC
    (``qid 0 pid rel``, tab or space separated). ``fmt`` is ``"auto"``, ``"beir"`` or ``"trec"``.

    Queries keep the order of their first line. Grades must be integers (negative allowed).
    """
    path = Path(path)
    columns = _qrels_columns(path, fmt)
    qrels: Qrels = {}
    for line, qid, pid, fields in _records(path, columns):
        token = fields[columns.value]
        try:
            grade = int(token)
        except ValueError:
            raise DataFormatError(path, line, columns.names[columns.value], f"relevance {token!r} is not an integer") from None
        judged = qrels.setdefault(qid, {})
        if pid in judged:
            raise _duplicate(path, line, columns, qid, pid)
        judged[pid] = grade
    if not qrels:
        raise DataFormatError(path, None, None, "no qrels: the file has no entries, so its split has no queries")
    return qrels


def read_run(path: str | Path, *, require_finite: bool = True) -> Run:
    """Read a TREC run (``qid Q0 pid rank score tag``) into ``{qid: {pid: score}}``.

    Ranks must be integers; scores must be numbers, and finite unless ``require_finite=False``.
    A (query, passage) pair may appear once. An empty file is an error.
    """
    path = Path(path)
    run: Run = {}
    for line, qid, pid, fields in _records(path, TREC_RUN):
        try:
            int(fields[3])
        except ValueError:
            raise DataFormatError(path, line, "rank", f"rank {fields[3]!r} is not an integer") from None
        try:
            score = float(fields[4])
        except ValueError:
            raise DataFormatError(path, line, "score", f"score {fields[4]!r} is not a number") from None
        if require_finite and not math.isfinite(score):
            raise DataFormatError(path, line, "score", f"score {fields[4]!r} is not finite")
        scores = run.setdefault(qid, {})
        if pid in scores:
            raise _duplicate(path, line, TREC_RUN, qid, pid)
        scores[pid] = score
    if not run:
        raise DataFormatError(path, None, None, "no run entries: the file is empty")
    return run


def read_top1000(path: str | Path) -> Run:
    """MS MARCO ``top1000.{split}`` (``qid<TAB>pid<TAB>query<TAB>passage``) as a run.

    The file has no scores: the i-th candidate of a query (0-based, in file order)
    gets score ``-i``, so ranking by score keeps the file's order.
    """
    path = Path(path)
    run: Run = {}
    for line, qid, pid, _ in _records(path, TOP1000):
        scores = run.setdefault(qid, {})
        if pid in scores:
            raise _duplicate(path, line, TOP1000, qid, pid)
        scores[pid] = -float(len(scores))
    if not run:
        raise DataFormatError(path, None, None, "no candidates: the file is empty")
    return run


def _check_writable_token(what: str, value: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what} {value!r} must be a string, got {type(value).__name__}")
    if not value or any(char.isspace() for char in value):
        raise ValueError(f"{what} {value!r} cannot be written to a TREC file (empty or contains whitespace)")


def write_run(run: Mapping[str, Mapping[str, float]], path: str | Path, *, tag: str = "rankers", depth: int | None = None) -> None:
    """Write ``run`` as a TREC run file, atomically (temporary file + rename).

    Per query (in the run's order), passages are sorted by score descending, ties
    broken by passage id ascending; ranks start at 1; at most ``depth`` per query.
    Scores are written with ``repr`` so that :func:`read_run` gets the same floats back.
    """
    _check_writable_token("tag", tag)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ValueError(f"depth must be a positive integer or None, got {depth!r}")
    if not run:
        raise ValueError("refusing to write an empty run")
    lines: list[str] = []
    for qid, scores in run.items():
        _check_writable_token("query id", qid)
        ranked = []
        for pid, score in scores.items():
            _check_writable_token("passage id", pid)
            score = float(score)
            if not math.isfinite(score):
                raise ValueError(f"run has a non-finite score {score} for query {qid!r}, passage {pid!r}")
            ranked.append((-score, pid))
        ranked.sort()
        for rank, (neg_score, pid) in enumerate(ranked[:depth], start=1):
            lines.append(f"{qid} Q0 {pid} {rank} {-neg_score!r} {tag}\n")
    with atomic_write(path) as handle:
        handle.writelines(lines)


def _unknown_id_error(
    mapping: Mapping[str, Mapping[str, object]],
    query_ids: Container[str],
    passage_ids: Container[str],
    path: str | Path | None,
    columns: Columns,
    what: str,
) -> DataFormatError | None:
    unknown_queries = [qid for qid in mapping if qid not in query_ids]
    unknown_passages = {pid for docs in mapping.values() for pid in docs if pid not in passage_ids}
    if not unknown_queries and not unknown_passages:
        return None
    file = Path(path) if path is not None and Path(path).is_file() else None
    if unknown_queries:
        qid, pid, field = unknown_queries[0], None, columns.names[columns.qid]
        reason = f"unknown query id {qid!r} (not in the queries)"
    else:
        qid, pid = next((q, p) for q, docs in mapping.items() for p in docs if p in unknown_passages)
        field = columns.names[columns.pid]
        reason = f"unknown passage id {pid!r} (not in the corpus)"
    line = _first_line(file, columns, qid, pid) if file is not None else None
    reason += f"; this {what} names {len(unknown_queries)} unknown query id(s) and {len(unknown_passages)} unknown passage id(s) in all"
    return DataFormatError(path if path is not None else what, line, field, reason)


def _columns_for(path: str | Path | None, default: Columns) -> Columns:
    if path is None or not Path(path).is_file():
        return default
    if default is TREC_RUN:
        return TOP1000 if Path(path).name.startswith("top1000") else TREC_RUN
    return _qrels_columns(Path(path), "auto")


def check_run_ids(
    run: Mapping[str, Mapping[str, float]],
    query_ids: Container[str],
    passage_ids: Container[str],
    *,
    path: str | Path | None = None,
) -> None:
    """Raise :class:`DataFormatError` if ``run`` names a query or passage id not in the given ids.

    The first unknown id is named, with its line when ``path`` (the run's file) is given.
    Pass sets or dicts (e.g. ``RetrievalData.corpus_index()``) for fast membership tests.
    """
    error = _unknown_id_error(run, query_ids, passage_ids, path, _columns_for(path, TREC_RUN), "run")
    if error is not None:
        raise error


def check_qrels_ids(
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Container[str],
    passage_ids: Container[str],
    *,
    path: str | Path | None = None,
) -> None:
    """Raise :class:`DataFormatError` if ``qrels`` names a query or passage id not in the given ids."""
    error = _unknown_id_error(qrels, query_ids, passage_ids, path, _columns_for(path, BEIR_QRELS), "qrels")
    if error is not None:
        raise error
