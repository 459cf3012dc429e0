"""Published distillation sources (issue 13): Hofstätter et al.'s score pairs, sentence-transformers' hard
negatives, parquet runs -- each read into the same run shape, with file:line:field errors for bad files."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamodules.formats import (
    DataFormatError,
    detect_format,
    read_candidates,
    read_hard_negatives,
    read_parquet_run,
    read_score_pairs,
    read_teacher_scores,
    write_run,
)

PAIRS = ("10.5\t-2.25\tq1\tp1\tp7\n"
         "10.5\t3.0\tq1\tp1\tp8\n"
         "7.0\t1.0\tq2\tp4\tp7\n")


def _write(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["pairs.tsv", "pairs.tsv.gz"])
def test_score_pairs_become_teacher_scores_and_pools(tmp_path, name):
    path = _write(tmp_path / name, PAIRS)
    expected = {"q1": {"p1": 10.5, "p7": -2.25, "p8": 3.0}, "q2": {"p4": 7.0, "p7": 1.0}}
    assert detect_format(path) == "score_pairs"
    assert read_score_pairs(path) == expected
    assert read_teacher_scores(path) == expected and read_candidates(path) == expected


@pytest.mark.parametrize("text, where", [
    ("10.5\t-2.25\tq1\tp1\n", r"pairs\.tsv:1: expected 5 tab-separated columns"),
    ("10.5\t-2.25\tq1\tp1\tp7\n10.5\tnan\tq1\tp1\tp8\n", r"pairs\.tsv:2: field 'neg_score': 'nan' is not finite"),
    ("10.5\t-2.25\tq1\tp1\tp7\nten\t1\tq1\tp1\tp8\n", r"pairs\.tsv:2: field 'pos_score': 'ten' is not a number"),
    ("10.5\t-2.25\tq1\tp1\tp7\n9.5\t1\tq1\tp1\tp8\n", r"pairs\.tsv:2: field 'pos_score': query 'q1', passage 'p1' scored "
                                                       r"9\.5 here and 10\.5 on line 1"),
    ("10.5\t-2.25\t\tp1\tp7\n", r"pairs\.tsv:1: field 'qid': empty id"),
])
def test_bad_score_pairs_name_file_line_and_field(tmp_path, text, where):
    path = _write(tmp_path / "pairs.tsv", text)
    with pytest.raises(DataFormatError, match=where):
        read_score_pairs(path)


HARD = [{"qid": 3, "pos": [1], "neg": {"bm25": [5, 6, 7], "msmarco-MiniLM-L-6-v3": [6, 9]}},
        {"qid": 4, "pos": [2], "neg": {"bm25": [8]}}]


def _hard_negatives(path: Path, records=HARD) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in records))


def test_hard_negatives_interleave_systems_and_pick_some(tmp_path):
    path = _hard_negatives(tmp_path / "msmarco-hard-negatives.jsonl.gz")
    assert detect_format(path) == "hard_negatives"
    run = read_candidates(path)
    assert run == {"3": {"5": 0.0, "6": -1.0, "9": -2.0, "7": -3.0}, "4": {"8": 0.0}}
    assert list(run["3"]) == ["5", "6", "9", "7"]  # depth by depth, systems in sorted order, first occurrence kept
    only = read_hard_negatives(path, systems=["msmarco-MiniLM-L-6-v3"])
    assert only == {"3": {"6": 0.0, "9": -1.0}, "4": {}}
    with pytest.raises(DataFormatError, match=r"field 'neg': no system 'tas-b' in the file \(it has: bm25, msmarco"):
        read_hard_negatives(path, systems=["tas-b"])
    with pytest.raises(DataFormatError, match="has no teacher scores: pass it as the negatives run"):
        read_teacher_scores(path)


@pytest.mark.parametrize("records, where", [
    ([{"qid": 3, "pos": [1]}], r"hn\.jsonl:1: field 'neg': missing"),
    ([{"qid": 3, "neg": {"bm25": [5]}}, {"qid": 3, "neg": {"bm25": [6]}}], r"hn\.jsonl:2: field 'qid': query '3' appears twice"),
    ([{"qid": 3, "neg": {"bm25": 5}}], r"hn\.jsonl:1: field 'neg\.bm25': expected a list"),
])
def test_bad_hard_negatives_name_file_line_and_field(tmp_path, records, where):
    path = _hard_negatives(tmp_path / "hn.jsonl", records)
    with pytest.raises(DataFormatError, match=where):
        read_hard_negatives(path)
    (tmp_path / "broken.jsonl").write_text('{"qid": 1, "neg": {}}\n{"qid": 2, "neg": \n')
    with pytest.raises(DataFormatError, match=r"broken\.jsonl:2: malformed JSON"):
        read_hard_negatives(tmp_path / "broken.jsonl")


def test_parquet_runs_with_and_without_scores(tmp_path):
    path = tmp_path / "rank-distillm.parquet"
    pq.write_table(pa.table({"query_id": ["q1", "q1", "q2"], "doc_id": ["d1", "d2", "d1"], "score": [2.5, 1.0, -3.0]}), path)
    assert detect_format(path) == "parquet"
    assert read_teacher_scores(path) == {"q1": {"d1": 2.5, "d2": 1.0}, "q2": {"d1": -3.0}}
    ranked = tmp_path / "ranked.parquet"
    pq.write_table(pa.table({"qid": [1, 1], "docno": ["d9", "d3"]}), ranked)
    assert read_candidates(ranked) == {"1": {"d9": 0.0, "d3": -1.0}}
    with pytest.raises(DataFormatError, match=r"ranked\.parquet: field 'score': no score column"):
        read_teacher_scores(ranked)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"query_id": ["q1", "q1"], "doc_id": ["d1", "d2"], "score": [1.0, float("inf")]}), bad)
    with pytest.raises(DataFormatError, match=r"bad\.parquet:2: field 'score': inf is not a finite number"):
        read_parquet_run(bad)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"question": ["q1"], "doc_id": ["d1"], "score": [1.0]}), wrong)
    with pytest.raises(DataFormatError, match=r"wrong\.parquet: field 'query id': no query id column: expected one of "
                                              r"query_id, qid; the file has question, doc_id, score"):
        read_parquet_run(wrong)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(DataFormatError, match=r"junk\.parquet: not a readable parquet file"):
        read_parquet_run(junk)


def test_trec_runs_still_read_and_unknown_shapes_are_named(tmp_path):
    run = {"q1": {"d1": 2.0, "d2": 1.0}}
    write_run(run, tmp_path / "run.trec")
    assert detect_format(tmp_path / "run.trec") == "trec_run" and read_teacher_scores(tmp_path / "run.trec") == run
    (tmp_path / "odd.tsv").write_text("q1\td1\n")
    with pytest.raises(DataFormatError, match=r"odd\.tsv:1: unrecognised run / score format"):
        read_candidates(tmp_path / "odd.tsv")
