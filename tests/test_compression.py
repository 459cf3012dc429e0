"""Compressed inputs (issue 13): every reader takes .gz / .bz2 / .xz files, detected by suffix, with the same
result as the plain file; a truncated stream and ambiguous layouts are errors naming the file (and line)."""
from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
from pathlib import Path

import pytest

from datamodules.readers.errors import DataFormatError
from datamodules.readers.compression import logical_name
from datamodules.readers.layouts import load_retrieval_data
from datamodules.readers.trec import read_qrels, read_run

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _compress(path: Path, suffix: str) -> Path:
    target = path.with_name(path.name + suffix)
    with open(path, "rb") as src, OPENERS[suffix](target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return target


def _beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    corpus = "".join(f'{{"_id": "d{i}", "title": "", "text": "passage number {i} é"}}\n' for i in range(40))
    (root / "corpus.jsonl").write_text(corpus, encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(f'{{"_id": "q{i}", "text": "query {i}"}}\n' for i in range(6)))
    for split in ("train", "test"):
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(6)))
    (root / "candidates_test.run").write_text(
        "".join(f"q{i} Q0 d{j} {j + 1} {10 - j} bm25\n" for i in range(6) for j in range(5)))
    return root


def _content(data):
    corpus = {row["id"]: row["text"] for row in data.corpus}
    queries = {row["id"]: row["text"] for row in data.queries}
    return corpus, queries, data.qrels, data.candidates


@pytest.mark.parametrize("suffix", sorted(OPENERS))
def test_a_compressed_beir_dataset_loads_like_the_plain_one(tmp_path, suffix):
    plain = load_retrieval_data(_beir(tmp_path / "plain"), cache_dir=tmp_path / "cache")
    root = _beir(tmp_path / "packed")
    for path in [root / "corpus.jsonl", root / "queries.jsonl", root / "candidates_test.run",
                 *sorted((root / "qrels").iterdir())]:
        _compress(path, suffix)
    packed = load_retrieval_data(root, cache_dir=tmp_path / "cache")
    assert _content(packed) == _content(plain)
    assert len(plain.corpus) == 40 and set(plain.qrels) == {"train", "test"}


def test_runs_and_qrels_read_from_gzip(tmp_path):
    run = tmp_path / "teacher.trec"
    run.write_text("q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 -1.0 t\n")
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\t0\td1\t1\n")
    expected_run, expected_qrels = read_run(run), read_qrels(qrels)
    assert read_run(_compress(run, ".gz")) == expected_run
    assert read_qrels(_compress(qrels, ".gz")) == expected_qrels


def test_a_truncated_gzip_names_the_file_and_the_line(tmp_path):
    run = tmp_path / "teacher.trec"
    run.write_text("".join(f"q{i} Q0 d{i} 1 {i}.5 t\n" for i in range(5000)))
    packed = _compress(run, ".gz")
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    with pytest.raises(DataFormatError, match=r"teacher\.trec\.gz:\d+: truncated or corrupt compressed file") as info:
        read_run(packed)
    assert info.value.line > 1


def test_a_plain_and_a_compressed_copy_is_ambiguous_and_archives_are_ignored(tmp_path):
    root = _beir(tmp_path / "both")
    shutil.copy(root / "qrels" / "test.tsv", root / "qrels" / "keep.tsv")
    _compress(root / "qrels" / "keep.tsv", ".gz")
    (root / "qrels" / "test.tar.gz").write_bytes(b"not read")  # a multi-file archive is never an input
    data = load_retrieval_data(root, cache_dir=tmp_path / "cache")
    assert set(data.qrels) == {"train", "test", "keep"}
    shutil.copy(root / "corpus.jsonl", root / "corpus.jsonl.bak")
    _compress(root / "corpus.jsonl.bak", ".gz")
    (root / "corpus.jsonl.bak.gz").rename(root / "corpus.jsonl.gz")
    with pytest.raises(DataFormatError, match=r"both corpus\.jsonl and corpus\.jsonl\.gz exist; keep one"):
        load_retrieval_data(root, cache_dir=tmp_path / "cache")


def test_zstd_needs_its_package_and_says_so(tmp_path):
    try:
        import zstandard  # noqa: F401
    except ImportError:
        path = tmp_path / "run.trec.zst"
        path.write_bytes(b"\x28\xb5\x2f\xfd")
        with pytest.raises(DataFormatError, match="needs the 'zstandard' package"):
            read_run(path)
    else:  # installed: a real zstd round trip
        path = tmp_path / "run.trec.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(b"q1 Q0 d1 1 2.5 t\n"))
        assert read_run(path) == {"q1": {"d1": 2.5}}


def test_logical_names():
    assert logical_name("corpus.jsonl.gz") == "corpus.jsonl" and logical_name("x.tsv.bz2") == "x.tsv"
    assert logical_name("top1000.dev.tar.gz") == "top1000.dev.tar.gz" and logical_name("a.tsv") == "a.tsv"


class _Touch:
    """Unpickling this creates ``marker``: what a hostile pickle could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["scores.pkl", "scores.pkl.gz", "scores.pickle"])
def test_a_pickle_is_refused_unread_and_the_error_says_how_to_convert_it(tmp_path, name):
    import os
    import pickle
    import subprocess
    import sys

    marker = tmp_path / "code-ran"
    path = tmp_path / name
    payload = pickle.dumps({"q1": {"d1": 2.5}, "hostile": _Touch(marker)})
    path.write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    with pytest.raises(DataFormatError, match=rf"{name}: a Python pickle: rankers never unpickles") as info:
        read_run(path)
    assert not marker.exists()
    # the conversion the message suggests works on a benign score pickle ({qid: {pid: score}}, int ids)
    benign = tmp_path / "ce-scores.pkl.gz"
    benign.write_bytes(gzip.compress(pickle.dumps({7: {11: 1.5, 12: -0.25}})))
    command = str(info.value).split('python -c "', 1)[1].rsplit('"', 1)[0].replace("FILE.pkl.gz", str(benign))
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", command], cwd=tmp_path, check=True, env={**os.environ, "PYTHONPATH": str(root)})
    assert read_run(tmp_path / "scores.trec") == {"7": {"11": 1.5, "12": -0.25}}
