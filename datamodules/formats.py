"""Public import point for the data readers and writers of rankers.

Shapes (shared by the whole project):

* corpus: ``datasets.Dataset`` with string columns ``id``, ``text`` (title and text
  joined with one space when the title is non-empty), memory-mapped Arrow.
* queries: ``datasets.Dataset`` with string columns ``id``, ``text``.
* qrels: ``dict[str, dict[str, int]]`` query id -> {passage id: grade}.
* run: ``dict[str, dict[str, float]]`` query id -> {passage id: score}. Teacher scores and candidate pools
  also come from published files (Hofstätter et al.'s score pairs, sentence-transformers' hard negatives,
  parquet runs): :func:`read_teacher_scores` and :func:`read_candidates` detect the format.

Every problem in an input file raises :class:`DataFormatError` (a ``ValueError``)
naming the file, the 1-based line and the field, e.g.
``corpus.jsonl:17: field '_id': duplicate id 'd3' (first seen on line 4)``.
The implementation lives in :mod:`datamodules.readers`.
"""
from __future__ import annotations

from .readers.errors import DataFormatError, UnknownDatasetError
from .readers.layouts import load_retrieval_data
from .readers.published import (
    detect_format,
    read_candidates,
    read_hard_negatives,
    read_parquet_run,
    read_score_pairs,
    read_teacher_scores,
)
from .readers.retrieval_data import RetrievalData
from .readers.trec import (
    Qrels,
    Run,
    check_qrels_ids,
    check_run_ids,
    read_qrels,
    read_run,
    read_top1000,
    write_run,
)

__all__ = [
    "DataFormatError",
    "UnknownDatasetError",
    "RetrievalData",
    "load_retrieval_data",
    "Qrels",
    "Run",
    "read_qrels",
    "read_run",
    "read_teacher_scores",
    "read_candidates",
    "read_score_pairs",
    "read_hard_negatives",
    "read_parquet_run",
    "detect_format",
    "read_top1000",
    "write_run",
    "check_qrels_ids",
    "check_run_ids",
]
