"""What a person sees at the terminal: one-line errors, no known-benign noise, progress bars on a TTY only.

* :func:`report_errors` runs a command and turns every *anticipated* failure into one last line on
  stderr, ``rankers: error: <message>``, exit status 2 (bad input: a data file, a config key or
  value, a missing path, model or checkpoint, an unknown loss) or 1 (a failure during training: a
  non-finite loss, out of memory). An anticipated failure is one the project raises itself with a
  message written for a person (:class:`~datamodules.readers.errors.DataFormatError` and the
  ``ValueError`` / ``OSError`` / ``TypeError`` raised by the project's own checks). jsonargparse wraps
  an error raised while LightningCLI instantiates a class in a "Does not validate against any of the
  Union subtypes" dump; the chain of causes is walked back to the project's own exception. Anything
  else (a bug, an error deep inside a library) keeps its traceback. ``--traceback`` or
  ``RANKERS_TRACEBACK=1`` shows the traceback of anticipated failures too.
* :func:`silence_known_noise` drops, at their source, the warnings every run printed although none of
  them concerns the person (each filter says why), and nothing else.
* :func:`progress_enabled` is whether progress bars go to the terminal: only when stderr is one, so a
  piped log gets no carriage-return spam.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

PROG_ENV = "RANKERS_TRACEBACK"

# the project's own source trees: an exception whose innermost frame lies here was raised by one of its checks
_OWN_ROOTS = tuple(str(Path(__file__).resolve().parents[2] / name) for name in ("rankers", "datamodules", "callbacks"))
_ANTICIPATED = (ValueError, OSError, TypeError, KeyError, LookupError)


def wants_traceback(argv: list[str]) -> tuple[bool, list[str]]:
    """``--traceback`` anywhere in ``argv`` (removed from it) or ``RANKERS_TRACEBACK=1``."""
    rest = [a for a in argv if a != "--traceback"]
    return len(rest) != len(argv) or os.environ.get(PROG_ENV, "") not in ("", "0"), rest


def _raised_by_us(err: BaseException) -> bool:
    tb = err.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and last.tb_frame.f_code.co_filename.startswith(_OWN_ROOTS)


def _chain(err: BaseException):
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)


def _training_failure(err: BaseException) -> bool:
    try:
        from rankers.models.module import NonFiniteLossError
    except ImportError:  # pragma: no cover - torch missing
        return False
    oom = tuple(t for t in (MemoryError, getattr(sys.modules.get("torch"), "OutOfMemoryError", None)) if t)
    return isinstance(err, (NonFiniteLossError, *oom))


def anticipated(err: BaseException) -> tuple[BaseException, int] | None:
    """The exception to report and its exit status, or ``None`` for an unexpected one (traceback)."""
    if isinstance(err, argparse.ArgumentError):
        return err, 2
    from datamodules.readers.errors import DataFormatError

    for link in _chain(err):
        if _training_failure(link):
            return link, 1
        if isinstance(link, DataFormatError) or (isinstance(link, _ANTICIPATED) and _raised_by_us(link)):
            return link, 2
    return None


_UNION = "Does not validate against any of the Union subtypes"


def _without_union_dump(text: str) -> str:
    """jsonargparse's "Does not validate against any of the Union subtypes ... Given value: Namespace(...)"
    reduced to the first subtype's error (the class the config names; the other subtype is ``None``)."""
    if _UNION not in text:
        return text
    head = text.split(_UNION, 1)[0].strip()
    errors = text.split("Errors:", 1)[1].split("Given value type:", 1)[0] if "Errors:" in text else ""
    reasons: list[str] = []
    for line in errors.splitlines():  # "- reason" bullets, each maybe continued on more-indented lines
        if line.strip().startswith("- "):
            reasons.append(line.strip()[2:])
        elif line.strip() and reasons:
            reasons[-1] += " " + line.strip()
    reasons = [r for r in reasons if not r.startswith("Expected a <class 'NoneType'>")]
    return f"{head} {reasons[0]}".strip() if reasons else head or text


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (a KeyError's repr quotes are dropped)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else _without_union_dump(str(err))
    text = " ".join(str(text).split())
    if isinstance(err, (FileNotFoundError, NotADirectoryError)) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text or type(err).__name__


def report_errors(fn: Callable[[], Any], *, show_traceback: bool = False) -> Any:
    """Run ``fn``; an anticipated failure ends the process with one ``rankers: error:`` line."""
    try:
        return fn()
    except KeyboardInterrupt:
        print("rankers: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:  # noqa: BLE001 - sorted into anticipated / unexpected below
        found = anticipated(err)
        if found is None or show_traceback:
            raise
        link, status = found
        sys.stderr.flush()
        print(f"rankers: error: {one_line(link)}", file=sys.stderr)
        raise SystemExit(status) from None


class _DropTips(logging.Filter):
    """Lightning's "💡 Tip: ... install litlogger / litmodels" advertisements, printed by every Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def silence_known_noise() -> None:
    """Silence the benign warnings every run printed (and only those)."""
    # Lightning's own helper still builds torch's deprecated LeafSpec (lightning/pytorch/utilities/_pytree.py);
    # nothing the person can change.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # reproduce tests its own checkpoint without the eval callbacks it was trained with: their state is not needed
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
    # the tokenizers' fork warning: the DataLoader workers never use the parent's tokenizer threads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not progress_enabled():
        # datasets draws its bars ("Generating train split", map) with \r even into a pipe; read at its import
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        # and transformers its "Loading weights" bar (it follows huggingface_hub's switch)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


def progress_enabled() -> bool:
    """Progress bars only on a terminal: a piped or redirected stderr gets none (no ``\\r`` in logs)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
