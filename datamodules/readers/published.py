"""Published distillation sources: teacher-score and hard-negative files researchers already have.

* **Score pairs** (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
  Knowledge Distillation": the BERT-CAT ensemble file ``bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv``):
  ``pos_score<TAB>neg_score<TAB>qid<TAB>pid_pos<TAB>pid_neg`` per line. Read as teacher scores for every
  (query, passage) pair it names and as the query's candidate pool. A pair scored twice must carry the same
  score (within 1e-4), else the two lines are named.
* **Hard negatives per system** (sentence-transformers' ``msmarco-hard-negatives.jsonl.gz``): one JSON object per
  line, ``{"qid": ..., "pos": [...], "neg": {"bm25": [...], "<system>": [...], ...}}``. Read as a candidate pool
  per query (no scores): the systems' lists interleaved in sorted system order, first occurrence kept, the i-th
  candidate scored ``-i`` so that rank windows keep that order. ``systems`` picks some of them.
* **Parquet runs** (e.g. lightning-ir's rank-distillm files): one row per (query, passage) with a query-id column
  (``query_id`` or ``qid``), a passage-id column (``doc_id``, ``docno``, ``pid``, ``passage_id`` or
  ``corpus_id``) and a ``score`` column. Rows are counted from 1 in errors.
* **TREC runs**, the format everything else here writes.

:func:`read_teacher_scores` and :func:`read_candidates` pick the reader from the file: the suffix
(``.parquet``, ``.jsonl``; compression suffixes are looked through) or, for text files, the first line's shape.
Pickles are refused before anything is read (:mod:`.compression`).
"""
from __future__ import annotations

import math
from pathlib import Path

from .compression import logical_name, open_binary
from .errors import DataFormatError
from .lines import iter_lines, json_key_locator
from .texts import json_object
from .trec import Run, read_run

__all__ = ["read_score_pairs", "read_hard_negatives", "read_parquet_run", "detect_format", "read_teacher_scores",
           "read_candidates", "SCORE_PAIR_COLUMNS"]

SCORE_PAIR_COLUMNS = ("pos_score", "neg_score", "qid", "pid_pos", "pid_neg")
_QID_COLUMNS = ("query_id", "qid")
_PID_COLUMNS = ("doc_id", "docno", "pid", "passage_id", "corpus_id")
_SCORE_TOLERANCE = 1e-4


def _number(path: Path, line: int, field: str, token: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise DataFormatError(path, line, field, f"{token!r} is not a number") from None
    if not math.isfinite(value):
        raise DataFormatError(path, line, field, f"{token!r} is not finite")
    return value


def read_score_pairs(path: str | Path) -> Run:
    """Hofstätter et al.'s teacher-score TSV as ``{qid: {pid: score}}`` (positives and negatives alike)."""
    path = Path(path)
    run: Run = {}
    first_line: dict[tuple[str, str], int] = {}
    for line, text in iter_lines(path):
        fields = text.split("\t")
        if len(fields) != len(SCORE_PAIR_COLUMNS):
            raise DataFormatError(path, line, None, f"expected {len(SCORE_PAIR_COLUMNS)} tab-separated columns "
                                  f"({' '.join(SCORE_PAIR_COLUMNS)}), got {len(fields)}")
        pos_score, neg_score = (_number(path, line, name, fields[i]) for i, name in enumerate(SCORE_PAIR_COLUMNS[:2]))
        qid, pos, neg = (f.strip() for f in fields[2:])
        for name, value in zip(SCORE_PAIR_COLUMNS[2:], (qid, pos, neg)):
            if not value:
                raise DataFormatError(path, line, name, "empty id")
        if pos == neg:
            raise DataFormatError(path, line, "pid_neg", f"the negative is the positive ({pos!r})")
        scores = run.setdefault(qid, {})
        for name, pid, score in (("pos_score", pos, pos_score), ("neg_score", neg, neg_score)):
            seen = scores.get(pid)
            if seen is None:
                scores[pid] = score
                first_line[qid, pid] = line
            elif abs(seen - score) > _SCORE_TOLERANCE:
                raise DataFormatError(path, line, name, f"query {qid!r}, passage {pid!r} scored {score!r} here and "
                                      f"{seen!r} on line {first_line[qid, pid]}")
    if not run:
        raise DataFormatError(path, None, None, "no score pairs: the file is empty")
    return run


def read_hard_negatives(path: str | Path, *, systems: list[str] | None = None) -> Run:
    """sentence-transformers' hard-negatives JSONL as candidate pools ``{qid: {pid: -rank}}``."""
    path = Path(path)
    run: Run = {}
    seen_systems: set[str] = set()
    for line, text in iter_lines(path, locate_field=json_key_locator):
        record = json_object(path, line, text)
        for key in ("qid", "neg"):
            if key not in record:
                raise DataFormatError(path, line, key, "missing")
        qid = str(record["qid"]).strip()
        if not qid:
            raise DataFormatError(path, line, "qid", "empty id")
        negatives = record["neg"]
        if not isinstance(negatives, dict):
            raise DataFormatError(path, line, "neg", f"expected an object of system -> passage ids, got "
                                  f"{type(negatives).__name__}")
        seen_systems.update(negatives)
        names = sorted(negatives) if systems is None else [s for s in systems if s in negatives]
        lists = []
        for name in names:
            ids = negatives[name]
            if not isinstance(ids, list):
                raise DataFormatError(path, line, f"neg.{name}", f"expected a list of passage ids, got {type(ids).__name__}")
            lists.append([str(pid) for pid in ids])
        if qid in run:
            raise DataFormatError(path, line, "qid", f"query {qid!r} appears twice")
        pool: dict[str, float] = {}
        for depth in range(max((len(x) for x in lists), default=0)):
            for ids in lists:
                if depth < len(ids) and ids[depth] not in pool:
                    pool[ids[depth]] = -float(len(pool))
        run[qid] = pool
    if not run:
        raise DataFormatError(path, None, None, "no queries: the file is empty")
    if systems is not None:
        unknown = [s for s in systems if s not in seen_systems]
        if unknown:
            raise DataFormatError(path, None, "neg", f"no system {unknown[0]!r} in the file (it has: "
                                  f"{', '.join(sorted(seen_systems))})")
    return run


def _column(path: Path, names: list[str], choices: tuple[str, ...], what: str) -> str:
    for name in choices:
        if name in names:
            return name
    raise DataFormatError(path, None, what, f"no {what} column: expected one of {', '.join(choices)}; the file has "
                          f"{', '.join(names)}")


def read_parquet_run(path: str | Path, *, require_scores: bool = True) -> Run:
    """A run stored as parquet (one row per query and passage) as ``{qid: {pid: score}}``."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        with open_binary(path) as handle:
            table = pq.read_table(handle)
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        if isinstance(err, DataFormatError):
            raise
        raise DataFormatError(path, None, None, f"not a readable parquet file ({type(err).__name__}: {err})") from None
    names = table.column_names
    qcol = _column(path, names, _QID_COLUMNS, "query id")
    pcol = _column(path, names, _PID_COLUMNS, "passage id")
    if "score" not in names:
        if require_scores:
            raise DataFormatError(path, None, "score", f"no score column (the file has {', '.join(names)})")
        scol = None
    else:
        scol = "score"
    qids = table.column(qcol).to_pylist()
    pids = table.column(pcol).to_pylist()
    scores = table.column(scol).to_pylist() if scol else [None] * len(qids)
    run: Run = {}
    for row, (qid, pid, score) in enumerate(zip(qids, pids, scores), 1):
        if qid is None or str(qid).strip() == "":
            raise DataFormatError(path, row, qcol, "empty id")
        if pid is None or str(pid).strip() == "":
            raise DataFormatError(path, row, pcol, "empty id")
        qid, pid = str(qid).strip(), str(pid).strip()
        pool = run.setdefault(qid, {})
        if scol:
            if score is None or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise DataFormatError(path, row, scol, f"{score!r} is not a finite number")
            value = float(score)
        else:
            value = -float(len(pool))
        if pid in pool:
            raise DataFormatError(path, row, pcol, f"duplicate entry for query {qid!r} and passage {pid!r}")
        pool[pid] = value
    if not run:
        raise DataFormatError(path, None, None, "no rows: the file is empty")
    return run


def detect_format(path: str | Path) -> str:
    """``"parquet"``, ``"hard_negatives"``, ``"score_pairs"`` or ``"trec_run"`` for ``path``."""
    path = Path(path)
    name = logical_name(path.name)
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json")):
        return "hard_negatives"
    for line, text in iter_lines(path):
        tabbed = text.split("\t")
        if len(tabbed) == len(SCORE_PAIR_COLUMNS):
            try:
                float(tabbed[0]), float(tabbed[1])
                return "score_pairs"
            except ValueError:
                pass
        if len(text.split()) == 6:
            return "trec_run"
        raise DataFormatError(path, line, None, "unrecognised run / score format: expected a TREC run (qid Q0 pid rank "
                              "score tag) or score pairs (pos_score<TAB>neg_score<TAB>qid<TAB>pid_pos<TAB>pid_neg); "
                              "parquet and sentence-transformers' hard-negative JSONL are read by suffix")
    raise DataFormatError(path, None, None, "no entries: the file is empty")


def read_teacher_scores(path: str | Path) -> Run:
    """Teacher scores for distillation from a TREC run, score pairs or a parquet run; all scores finite."""
    fmt = detect_format(path)
    if fmt == "hard_negatives":
        raise DataFormatError(path, None, None, "a hard-negatives file has no teacher scores: pass it as the "
                              "negatives run (--data.negatives run --data.negatives_run FILE) and score its pools "
                              "with a teacher (--data.mining_teacher CKPT)")
    if fmt == "score_pairs":
        return read_score_pairs(path)
    if fmt == "parquet":
        return read_parquet_run(path)
    return read_run(path, require_finite=True)


def read_candidates(path: str | Path) -> Run:
    """Candidate pools (negatives or re-rank candidates) from any of the formats above."""
    fmt = detect_format(path)
    if fmt == "hard_negatives":
        return read_hard_negatives(path)
    if fmt == "score_pairs":
        return read_score_pairs(path)
    if fmt == "parquet":
        return read_parquet_run(path, require_scores=False)
    return read_run(path)
