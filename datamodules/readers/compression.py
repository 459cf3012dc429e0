"""Compressed input files, detected by suffix: ``.gz`` (gzip), ``.bz2``, ``.xz`` (standard library) and
``.zst`` (the ``zstandard`` package, when installed).

Every reader opens its file through :func:`open_binary`, so a corpus, a queries file, qrels, a candidate
run or a teacher-score file may each be compressed; the layouts find ``corpus.jsonl.gz`` where they look
for ``corpus.jsonl`` (:func:`logical_name`). Multi-file archives (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``)
are not inputs: extract them first. Python pickles (``.pkl``, ``.pickle``, also compressed) are refused, never
loaded: unpickling a downloaded file runs whatever code it holds (sentence-transformers publishes its MS MARCO
cross-encoder scores as one), so the error says what to convert it to.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path
from typing import IO

from .errors import DataFormatError

__all__ = ["COMPRESSED_SUFFIXES", "ARCHIVE_SUFFIXES", "PICKLE_SUFFIXES", "open_binary", "logical_name", "is_archive",
           "is_pickle", "STREAM_ERRORS"]

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
PICKLE_SUFFIXES = (".pkl", ".pickle")

PICKLE_ADVICE = ("a Python pickle: rankers never unpickles data files (loading one runs any code it holds); convert "
                 "it once, in a Python session you trust, to a TREC run file, e.g. for sentence-transformers' "
                 "cross-encoder score pickle ({qid: {pid: score}}): python -c \"import gzip, pickle; "
                 "from datamodules.formats import write_run; s = pickle.load(gzip.open('FILE.pkl.gz', 'rb')); "
                 "write_run({str(q): {str(p): float(v) for p, v in d.items()} for q, d in s.items()}, 'scores.trec')\"")

#: What a truncated or corrupt compressed stream raises while it is read.
STREAM_ERRORS: tuple[type[BaseException], ...] = (EOFError, gzip.BadGzipFile, OSError, lzma.LZMAError)


def is_pickle(name: str) -> bool:
    return logical_name(name).endswith(PICKLE_SUFFIXES)


def is_archive(name: str) -> bool:
    return name.endswith(ARCHIVE_SUFFIXES)


def logical_name(name: str) -> str:
    """``corpus.jsonl.gz`` -> ``corpus.jsonl``; names without a compression suffix are returned as they are."""
    if is_archive(name):
        return name
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def open_binary(path: Path) -> IO[bytes]:
    """``path`` opened for binary reading, decompressing by suffix."""
    name = path.name
    if is_archive(name):
        raise DataFormatError(path, None, None, "a multi-file archive, not a data file: extract it first")
    if is_pickle(name):
        raise DataFormatError(path, None, None, PICKLE_ADVICE)
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DataFormatError(path, None, None, "a .zst file needs the 'zstandard' package: pip install zstandard "
                                  "(or decompress it: zstd -d FILE)") from None
        return zstandard.open(path, "rb")
    return open(path, "rb")
