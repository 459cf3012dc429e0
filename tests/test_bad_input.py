"""Every kind of bad input raises a DataFormatError naming the file, the 1-based line and the field.

Each case copies the tiny hand-written dataset in ``tests/fixtures/tiny_beir`` (or
writes a small MS MARCO / hub-schema directory) into ``tmp_path`` and breaks one file.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from datamodules.formats import (
    DataFormatError,
    check_qrels_ids,
    check_run_ids,
    load_retrieval_data,
    read_qrels,
    read_run,
    read_teacher_scores,
)

TINY = Path(__file__).parent / "fixtures" / "tiny_beir"
CORPUS = (TINY / "corpus.jsonl").read_bytes().splitlines(keepends=True)  # d1..d5
QUERIES = (TINY / "queries.jsonl").read_bytes().splitlines(keepends=True)  # q1..q4


def _with_line(lines: list[bytes], number: int, new: bytes) -> bytes:
    """``lines`` with line ``number`` (1-based) replaced by ``new``."""
    return b"".join(lines[: number - 1] + [new + b"\n"] + lines[number:])


def assert_located(err: BaseException, name: str, line: int | None, field: str | None, fragment: str) -> None:
    """The error is a DataFormatError whose attributes and message locate the problem."""
    assert isinstance(err, DataFormatError) and isinstance(err, ValueError)
    message = str(err)
    assert (err.line, err.field) == (line, field), message
    assert name in message, message
    where = f"{name}:{line}" if line is not None else f"{name}:"
    assert where in message, message
    if field is not None:
        assert f"field '{field}'" in message, message
    assert fragment in message, message


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    shutil.copytree(TINY, root)
    return root


def _load_error(root: Path) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        load_retrieval_data(root, cache_dir=root.parent / "cache")
    return info.value


# ----------------------------------------------------------------------------- the error itself


def test_error_message_format_and_pickling():
    err = DataFormatError("corpus.jsonl", 17, "_id", "duplicate id 'd3' (first seen on line 4)")
    assert str(err) == "corpus.jsonl:17: field '_id': duplicate id 'd3' (first seen on line 4)"
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), str(again), again.line, again.field) == (DataFormatError, str(err), 17, "_id")
    assert str(DataFormatError("q.tsv", None, None, "empty")) == "q.tsv: empty"


# ----------------------------------------------------------------------------- corpus.jsonl / queries.jsonl

JSONL_CASES = {
    # name: (file, content, line, field, message fragment)
    "malformed_json": ("corpus.jsonl", _with_line(CORPUS, 3, b'{"_id": "d3", "text": "x"'), 3, None, "malformed JSON"),
    "not_an_object": ("corpus.jsonl", _with_line(CORPUS, 2, b'["d2", "text"]'), 2, None, "expected a JSON object"),
    "missing_id": ("corpus.jsonl", _with_line(CORPUS, 2, b'{"text": "x"}'), 2, "_id", "missing (keys present"),
    "missing_text": ("corpus.jsonl", _with_line(CORPUS, 4, b'{"_id": "d4", "title": "t"}'), 4, "text", "missing (keys present: '_id', 'title')"),
    "int_id": ("corpus.jsonl", _with_line(CORPUS, 1, b'{"_id": 7, "text": "x"}'), 1, "_id", "expected a string, got int 7"),
    "list_text": ("corpus.jsonl", _with_line(CORPUS, 2, b'{"_id": "d2", "text": ["a"]}'), 2, "text", "got list"),
    "null_title": ("corpus.jsonl", _with_line(CORPUS, 3, b'{"_id": "d3", "title": null, "text": "x"}'), 3, "title", "got null"),
    "non_utf8_text": ("corpus.jsonl", _with_line(CORPUS, 2, b'{"_id": "d2", "text": "caf\xe9"}'), 2, "text", "invalid UTF-8"),
    "non_utf8_id": ("corpus.jsonl", _with_line(CORPUS, 5, b'{"_id": "d\xff5", "text": "x"}'), 5, "_id", "invalid UTF-8"),
    "empty_text": ("corpus.jsonl", _with_line(CORPUS, 5, b'{"_id": "d5", "title": " ", "text": "  \\t "}'), 5, "text", "empty text"),
    "duplicate_id": ("corpus.jsonl", _with_line(CORPUS, 4, b'{"_id": "d2", "text": "again"}'), 4, "_id", "duplicate id 'd2' (first seen on line 2)"),
    "id_with_space": ("corpus.jsonl", _with_line(CORPUS, 1, b'{"_id": "d 1", "text": "x"}'), 1, "_id", "whitespace"),
    "empty_corpus": ("corpus.jsonl", b"", None, None, "empty"),
    "blank_corpus": ("corpus.jsonl", b"\n  \n", None, None, "empty"),
    "query_missing_text": ("queries.jsonl", _with_line(QUERIES, 2, b'{"_id": "q2"}'), 2, "text", "missing (keys present"),
    "query_empty_text": ("queries.jsonl", _with_line(QUERIES, 3, b'{"_id": "q3", "text": ""}'), 3, "text", "empty text"),
    "query_duplicate": ("queries.jsonl", _with_line(QUERIES, 4, b'{"_id": "q1", "text": "other"}'), 4, "_id", "first seen on line 1"),
    "query_non_utf8": ("queries.jsonl", _with_line(QUERIES, 1, b'{"_id": "q1", "text": "\xc3("}'), 1, "text", "invalid UTF-8"),
    "query_malformed": ("queries.jsonl", _with_line(QUERIES, 2, b'{"_id": "q2", text: "x"}'), 2, None, "malformed JSON"),
    "empty_queries": ("queries.jsonl", b"", None, None, "empty"),
}


@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_bad_jsonl(tiny, case):
    name, content, line, field, fragment = JSONL_CASES[case]
    (tiny / name).write_bytes(content)
    assert_located(_load_error(tiny), name, line, field, fragment)


def test_fixed_file_loads_after_an_error(tiny):
    (tiny / "corpus.jsonl").write_bytes(_with_line(CORPUS, 3, b"{oops"))
    assert_located(_load_error(tiny), "corpus.jsonl", 3, None, "malformed JSON")
    (tiny / "corpus.jsonl").write_bytes(b"".join(CORPUS))
    assert load_retrieval_data(tiny, cache_dir=tiny.parent / "cache").corpus.num_rows == 5


# ----------------------------------------------------------------------------- BEIR qrels and candidate runs

QRELS_HEADER = b"query-id\tcorpus-id\tscore\n"
BEIR_QRELS_CASES = {
    "column_count": (QRELS_HEADER + b"q3\td4\t1\nq4\td5\n", 3, None, "expected 3 whitespace-separated columns"),
    "non_integer_grade": (QRELS_HEADER + b"q3\td4\t1.5\n", 2, "score", "relevance '1.5' is not an integer"),
    "header_only": (QRELS_HEADER, None, None, "no qrels"),
    "empty_file": (b"", None, None, "no qrels"),
    "unknown_query": (QRELS_HEADER + b"q3\td4\t1\nq9\td5\t1\n", 3, "query-id", "unknown query id 'q9'"),
    "unknown_passage": (QRELS_HEADER + b"q3\td4\t1\nq4\td9\t1\n", 3, "corpus-id", "unknown passage id 'd9'"),
    "duplicate_pair": (QRELS_HEADER + b"q3\td4\t1\nq3\td4\t0\n", 3, "corpus-id", "first seen on line 2"),
    "non_utf8": (QRELS_HEADER + b"q3\td\xe94\t1\n", 2, "corpus-id", "invalid UTF-8"),
}


@pytest.mark.parametrize("case", list(BEIR_QRELS_CASES))
def test_bad_beir_qrels(tiny, case):
    content, line, field, fragment = BEIR_QRELS_CASES[case]
    (tiny / "qrels" / "test.tsv").write_bytes(content)
    assert_located(_load_error(tiny), "test.tsv", line, field, fragment)


RUN_CASES = {
    "column_count": (b"q3 Q0 d4 1 2.5 t\nq3 Q0 d1 2 0.7\n", 2, None, "expected 6 whitespace-separated columns"),
    "non_numeric_score": (b"q3 Q0 d4 1 2.5 t\nq3 Q0 d1 2 high t\n", 2, "score", "'high' is not a number"),
    "nan_score": (b"q3 Q0 d4 1 2.5 t\nq3 Q0 d1 2 0.7 t\nq4 Q0 d2 1 NaN t\n", 3, "score", "not finite"),
    "inf_score": (b"q3 Q0 d4 1 inf t\n", 1, "score", "not finite"),
    "non_integer_rank": (b"q3 Q0 d4 first 2.5 t\n", 1, "rank", "not an integer"),
    "unknown_passage": (b"q3 Q0 d4 1 2.5 t\nq4 Q0 d7 1 1 t\n", 2, "pid", "unknown passage id 'd7'"),
    "unknown_query": (b"q3 Q0 d4 1 2.5 t\nq8 Q0 d1 1 1 t\n", 2, "qid", "unknown query id 'q8'"),
    "duplicate_pair": (b"q3 Q0 d4 1 2.5 t\nq3 Q0 d4 2 1 t\n", 2, "pid", "first seen on line 1"),
    "empty_file": (b"", None, None, "empty"),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_bad_candidate_run(tiny, case):
    content, line, field, fragment = RUN_CASES[case]
    (tiny / "candidates_test.run").write_bytes(content)
    assert_located(_load_error(tiny), "candidates_test.run", line, field, fragment)


def test_teacher_scores_reject_non_finite(tmp_path):
    path = tmp_path / "teacher.run"
    path.write_text("q1 Q0 d1 1 3.5 ce\nq1 Q0 d2 2 -inf ce\n")
    with pytest.raises(DataFormatError) as info:
        read_teacher_scores(path)
    assert_located(info.value, "teacher.run", 2, "score", "'-inf' is not finite")
    assert read_run(path, require_finite=False)["q1"]["d2"] == float("-inf")


def test_trec_qrels_non_integer_relevance(tmp_path):
    path = tmp_path / "qrels.dev.tsv"
    path.write_text("q1 0 d1 1\nq1\t0\td2\tyes\n")
    with pytest.raises(DataFormatError) as info:
        read_qrels(path)
    assert_located(info.value, "qrels.dev.tsv", 2, "rel", "'yes' is not an integer")


def test_check_ids_name_first_unknown_with_line(tmp_path):
    path = tmp_path / "dev.run"
    path.write_text("q1 Q0 d1 1 2 t\nq1 Q0 d2 2 1 t\nq2 Q0 d9 1 1 t\n")
    with pytest.raises(DataFormatError) as info:
        check_run_ids(read_run(path), {"q1", "q2"}, {"d1", "d2"}, path=path)
    assert_located(info.value, "dev.run", 3, "pid", "unknown passage id 'd9'")
    qrels = tmp_path / "dev.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq3\td2\t1\n")
    with pytest.raises(DataFormatError) as info:
        check_qrels_ids(read_qrels(qrels), {"q1"}, {"d1", "d2"}, path=qrels)
    assert_located(info.value, "dev.tsv", 3, "query-id", "unknown query id 'q3'")


# ----------------------------------------------------------------------------- MS MARCO layout


@pytest.fixture
def msmarco(tmp_path: Path) -> Path:
    root = tmp_path / "msmarco"
    root.mkdir()
    (root / "collection.tsv").write_text("0\tfirst passage\n1\tsecond passage\n2\tthird passage\n")
    (root / "queries.dev.tsv").write_text("10\twhat is first\n11\twhat is second\n")
    (root / "qrels.dev.tsv").write_text("10 0 0 1\n11\t0\t1\t1\n")
    return root


MSMARCO_CASES = {
    "collection_columns": ("collection.tsv", b"0\tfirst\n1\tsecond\textra\n2\tthird\n", 2, None, "expected 2 tab-separated columns"),
    "collection_no_tab": ("collection.tsv", b"0\tfirst\n1 second\n", 2, None, "got 1"),
    "collection_non_utf8": ("collection.tsv", b"0\tfirst\n1\tsec\xf0nd\n", 2, "passage", "invalid UTF-8"),
    "collection_empty_passage": ("collection.tsv", b"0\tfirst\n1\t \n", 2, "passage", "empty text"),
    "collection_duplicate": ("collection.tsv", b"0\tfirst\n1\tsecond\n0\tagain\n", 3, "pid", "first seen on line 1"),
    "empty_collection": ("collection.tsv", b"", None, None, "empty"),
    "queries_duplicate": ("queries.dev.tsv", b"10\twhat\n11\twho\n11\twhy\n", 3, "qid", "first seen on line 2"),
    "trec_qrels_columns": ("qrels.dev.tsv", b"10 0 0 1\n11 0 1\n", 2, None, "expected 4 whitespace-separated columns"),
    "trec_qrels_grade": ("qrels.dev.tsv", b"10 0 0 1\n11 0 1 2.0\n", 2, "rel", "not an integer"),
    "trec_qrels_unknown_pid": ("qrels.dev.tsv", b"10 0 0 1\n11 0 5 1\n", 2, "pid", "unknown passage id '5'"),
    "top1000_columns": ("top1000.dev", b"10\t0\twhat is first\tfirst passage\n11\t1\twhat is second\n", 2, None, "expected 4 tab-separated"),
    "top1000_unknown_qid": ("top1000.dev", b"10\t0\tq\tp\n12\t1\tq\tp\n", 2, "qid", "unknown query id '12'"),
}


@pytest.mark.parametrize("case", list(MSMARCO_CASES))
def test_bad_msmarco(msmarco, case):
    name, content, line, field, fragment = MSMARCO_CASES[case]
    (msmarco / name).write_bytes(content)
    assert_located(_load_error(msmarco), name, line, field, fragment)


def test_msmarco_same_query_id_different_text_across_files(msmarco):
    (msmarco / "queries.dev.small.tsv").write_text("10\twhat is FIRST\n")
    assert_located(_load_error(msmarco), "queries.dev.small.tsv", 1, "qid", "first seen on queries.dev.tsv line 1")


def test_msmarco_two_candidate_runs_for_one_split(msmarco):
    (msmarco / "run.dev.trec").write_text("10 Q0 0 1 1.0 t\n")
    (msmarco / "top1000.dev").write_text("10\t0\tq\tp\n")
    err = _load_error(msmarco)
    assert "several candidate runs for split 'dev'" in str(err) and "run.dev.trec" in str(err)


# ----------------------------------------------------------------------------- layouts


def test_missing_queries_file(tiny):
    (tiny / "queries.jsonl").unlink()
    err = _load_error(tiny)
    assert err.path.endswith("queries.jsonl") and "missing file" in str(err)


def test_beir_without_qrels(tiny):
    shutil.rmtree(tiny / "qrels")
    assert "qrels/{split}.tsv" in str(_load_error(tiny))


def test_existing_file_is_not_a_dataset(tiny):
    err = _load_error(tiny / "corpus.jsonl")
    assert "unrecognised dataset layout" in str(err) and "collection.tsv" in str(err)


# ----------------------------------------------------------------------------- hub schema (local)


def _hub_dir(tmp_path: Path, queries: bytes, qrels: bytes) -> Path:
    root = tmp_path / "hub"
    root.mkdir()
    (root / "corpus.jsonl").write_bytes(b"".join(CORPUS))
    (root / "queries.jsonl").write_bytes(queries)
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: corpus\n  data_files:\n  - split: corpus\n    path: corpus.jsonl\n"
        "- config_name: queries\n  data_files:\n  - split: queries\n    path: queries.jsonl\n---\n"
    )
    (tmp_path / "hub-qrels").mkdir()
    (tmp_path / "hub-qrels" / "test.tsv").write_bytes(qrels)
    return root


def test_hub_schema_empty_query_text(tmp_path):
    root = _hub_dir(tmp_path, _with_line(QUERIES, 2, b'{"_id": "q2", "text": " "}'), QRELS_HEADER + b"q1\td1\t1\n")
    assert_located(_load_error(root), "hub[queries]", 2, "text", "empty text")


def test_hub_schema_unknown_passage_in_qrels(tmp_path):
    root = _hub_dir(tmp_path, b"".join(QUERIES), QRELS_HEADER + b"q1\td1\t1\nq2\td42\t1\n")
    assert_located(_load_error(root), "hub-qrels[test]", None, "corpus-id", "unknown passage id 'd42'")


def test_hub_schema_without_qrels_directory(tmp_path):
    root = _hub_dir(tmp_path, b"".join(QUERIES), QRELS_HEADER + b"q1\td1\t1\n")
    shutil.rmtree(tmp_path / "hub-qrels")
    assert "hub-qrels" in str(_load_error(root))


# ----------------------------------------------------------------------------- configs (LightningCLI / jsonargparse)



def _cli_error(tmp_path: Path, monkeypatch, capsys, config: str) -> str:
    """stderr of ``rankers fit`` with a valid base config plus ``bad.yaml`` holding ``config``; it must exit 2
    with the error as the one ``rankers: error:`` line (the terminal entry point, :func:`rankers.cli.entry`)."""
    from rankers.cli import entry

    shutil.copytree(Path(__file__).resolve().parents[1] / "configs", tmp_path / "configs")
    (tmp_path / "bad.yaml").write_text(config)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        entry(["fit", "--config", "configs/de_baseline.yaml", "--config", "bad.yaml"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("rankers: error: ") and "Traceback" not in err, err
    return err


def test_config_unknown_key_names_the_key(tmp_path, monkeypatch, capsys):
    err = _cli_error(tmp_path, monkeypatch, capsys, "data:\n  batch_size: 8\n  batch_sise: 8\n")
    assert "does not accept option 'data.batch_sise'" in err, err


def test_config_wrong_type_names_the_key_and_the_value(tmp_path, monkeypatch, capsys):
    err = _cli_error(tmp_path, monkeypatch, capsys, "model:\n  init_args:\n    lr: fast\n")
    assert 'key "lr"' in err and "Expected a <class 'float'>. Got value: fast" in err, err


def test_config_yaml_syntax_error_names_the_file_and_line(tmp_path, monkeypatch, capsys):
    err = _cli_error(tmp_path, monkeypatch, capsys, "data:\n  batch_size: 8\n  seed: 0: 1\n")
    assert "bad.yaml:3" in err and "invalid YAML" in err, err


# ----------------------------------------------------------------------------- eval splits in the DataModule


def _records(name: str):
    """Collect the records of logger ``name`` (the CLI turns propagation off, so caplog may miss them)."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def capture():
        records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.DEBUG)
        handler.emit = records.append
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            yield records
        finally:
            logger.removeHandler(handler)

    return capture()


def _eval_datamodule(root: Path):
    from datamodules.datamodule import RankingDataModule

    dm = RankingDataModule(dataset=str(root), val_split="test", test_split="test", train_subset_size=0,
                           num_negatives=2, eval_depth=2, cache_dir=str(root.parent / "cache"))
    dm.prepare_data()
    return dm


def test_eval_queries_without_a_positive_are_skipped_and_counted(tiny):
    with _records("datamodules.datamodule") as records:  # tiny's test split: q3 (d4 relevant), q4 (grade 0 only)
        dm = _eval_datamodule(tiny)
        dm.setup("validate")
    assert dm.eval_sets["val"].qrels == {"q3": {"d4": 1}}
    warnings = [r.getMessage() for r in records if r.levelname == "WARNING"]
    assert "split 'test': 1 of 2 queries have no judged positive and are skipped" in warnings


def test_eval_split_without_any_positive_is_an_error_at_setup(tiny):
    (tiny / "qrels" / "test.tsv").write_bytes(QRELS_HEADER + b"q4\td5\t0\n")
    dm = _eval_datamodule(tiny)
    with pytest.raises(ValueError, match=r"split 'test' of .*: none of its 1 queries has a judged positive"):
        dm.setup("validate")
