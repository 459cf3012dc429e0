"""Exceptions raised by the data readers.

Every problem found in an input file is reported as a :class:`DataFormatError`
whose message starts with ``path:line: field 'name':`` so that the offending
spot can be found without a debugger.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["DataFormatError", "UnknownDatasetError"]


class DataFormatError(ValueError):
    """Bad input data, located by file (``path``), 1-based ``line`` and ``field``.

    ``line`` and ``field`` are ``None`` when the problem concerns the whole file
    (an empty corpus) or a whole line (malformed JSON, a wrong column count).
    For data loaded from a Hugging Face dataset, ``path`` names the dataset,
    config and split, and ``line`` is the 1-based row number.
    """

    def __init__(self, path: str | Path | None, line: int | None, field: str | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.path or "<data>"
        if self.line is not None:
            where += f":{self.line}"
        if self.field is not None:
            where += f": field '{self.field}'"
        return f"{where}: {self.reason}"

    def __reduce__(self):  # keep the exception picklable (multiprocessing, datasets workers)
        return (type(self), (self.path, self.line, self.field, self.reason))


class UnknownDatasetError(DataFormatError):
    """The dataset argument is neither a recognised local layout nor a loadable hub dataset."""
