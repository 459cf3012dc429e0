"""Streaming, strictly UTF-8 line reading with line numbers and byte progress; compressed files
(``.gz``, ``.bz2``, ``.xz``, ``.zst``) are decompressed on the fly (:mod:`.compression`)."""
from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from datasets.utils.tqdm import tqdm

from .compression import STREAM_ERRORS, open_binary
from .errors import DataFormatError

__all__ = ["FieldLocator", "iter_lines", "column_locator", "json_key_locator", "PROGRESS_MIN_BYTES"]

#: Files at least this big get a byte progress bar (disabled with ``datasets.disable_progress_bars()``).
PROGRESS_MIN_BYTES = 64 * 2**20

#: Maps (raw line bytes, byte offset of a bad byte) to the name of the field holding that byte.
FieldLocator = Callable[[bytes, int], "str | None"]

_JSON_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')


def iter_lines(path: Path, *, locate_field: FieldLocator | None = None) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each non-blank line of ``path``, streaming.

    The file is read in binary and each line is decoded on its own, so that a
    non-UTF-8 byte is reported with its line (and field, via ``locate_field``).
    Line endings (``\\n`` or ``\\r\\n``) and a leading UTF-8 BOM are removed;
    whitespace-only lines are skipped (they hold no data).
    """
    size = path.stat().st_size
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"Reading {path.name}") if size >= PROGRESS_MIN_BYTES else None
    try:
        with open_binary(path) as handle:
            raw_file = getattr(handle, "fileobj", None) or getattr(handle, "_fp", None)  # compressed bytes read
            done = 0
            for number, raw in _numbered(handle, path):
                if bar is not None:
                    position = raw_file.tell() if raw_file is not None else done + len(raw)
                    bar.update(position - done)
                    done = position
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    field = locate_field(raw, err.start) if locate_field is not None else None
                    raise DataFormatError(
                        path, number, field,
                        f"invalid UTF-8: byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line",
                    ) from None
                text = text.rstrip("\r\n")
                if text.strip():
                    yield number, text
    finally:
        if bar is not None:
            bar.close()


def _numbered(handle, path: Path) -> Iterator[tuple[int, bytes]]:
    """``enumerate(handle, 1)``, with a truncated or corrupt compressed stream reported at the line it broke."""
    number = 0
    lines = iter(handle)
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            return
        except STREAM_ERRORS as err:
            raise DataFormatError(path, number + 1, None,
                                  f"truncated or corrupt compressed file ({type(err).__name__}: {err}); "
                                  f"{number} complete lines were read before it") from None
        number += 1
        yield number, raw


def column_locator(columns: Sequence[str], sep: bytes | None) -> FieldLocator:
    """Locator for delimited lines: ``sep`` separated, or whitespace separated when ``None``."""

    def locate(raw: bytes, offset: int) -> str | None:
        head = raw[:offset]
        if sep is not None:
            index = head.count(sep)
        else:
            index = len(head.split())
            if head and not head[-1:].isspace():
                index -= 1  # the bad byte continues the last token
        return columns[index] if 0 <= index < len(columns) else None

    return locate


def json_key_locator(raw: bytes, offset: int) -> str | None:
    """Locator for JSON lines: the last object key before the bad byte."""
    keys = _JSON_KEY.findall(raw[:offset].decode("utf-8", errors="replace"))
    return keys[-1] if keys else None
