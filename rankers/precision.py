"""Which numeric precision fits the hardware: bf16 autocast where it is native *and* measured faster, fp32 elsewhere.

bf16 autocast pays off only where the hardware multiplies bf16 natively: CUDA GPUs that report
``torch.cuda.is_bf16_supported()`` (Ampere and newer) and CPUs with the AVX-512 BF16 or AMX-BF16
instructions. oneDNN also runs bf16 on plain AVX-512 CPUs by emulation
(``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is then True), which is slower than fp32, so the
instruction flags are the first condition. They are not enough: on an Intel Xeon that reports
``avx512_bf16`` (no AMX; 2 cores, torch 2.13, 2026-12-02) bf16 autocast ran all-MiniLM-L6-v2 *slower*
than fp32 -- encoding 1.37x the time, forward + backward 1.4-1.55x, the DE train step 1.28x, the CA step
1.37x (``bench/length_buckets.py --precision fp32|bf16``) -- while on an AMD EPYC (Zen 4) with the same
flag it encoded 1.8x faster (fp32 22 passages/s, bf16 39-42, minimum cosine to the fp32 embeddings
0.99997; issue 15). So on a CPU with the flags, :func:`cpu_bf16_speedup` times a transformer feed-forward
block in both precisions once per machine (0.32 s on the Intel Xeon above; cached under
``rankers_home()/cache/precision``) and ``auto`` picks bf16 only when it is at least
:data:`BF16_MIN_SPEEDUP` times faster.
"""
from __future__ import annotations

import functools
import json
import logging
import statistics
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: /proc/cpuinfo flags of native bf16 arithmetic
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: bf16 autocast is chosen on a CPU only when the probe measures it at least this much faster than fp32
BF16_MIN_SPEEDUP = 1.1


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def measure_cpu_bf16_speedup(hidden: int = 384, tokens: int = 1024, repeats: int = 5) -> float:
    """fp32 time / bf16-autocast time of one transformer feed-forward block on the CPU (Linear hidden -> 4 hidden,
    GELU, Linear back, LayerNorm; ``tokens`` rows, forward only), median of ``repeats`` after a warm-up."""
    generator = torch.Generator().manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(hidden, 4 * hidden), torch.nn.GELU(),
                                torch.nn.Linear(4 * hidden, hidden), torch.nn.LayerNorm(hidden)).eval()
    x = torch.randn(tokens, hidden, generator=generator)

    def timed(bf16: bool) -> float:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            block(x)  # warm-up: oneDNN builds its kernels
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                block(x)
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    fp32, bf16 = timed(False), timed(True)
    return fp32 / bf16


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """:func:`measure_cpu_bf16_speedup` on this machine, measured once and cached on disk by CPU model, flags,
    torch version and thread count."""
    from rankers.io.atomic import atomic_write, short_hash
    from rankers.io.home import rankers_home

    key = {"cpu": cpu_model(), "flags": sorted(f for f in cpu_flags() if "bf16" in f or "amx" in f),
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    path = rankers_home() / "cache" / "precision" / f"bf16-{short_hash(key)}.json"
    try:
        return float(json.loads(path.read_text())["speedup"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    speedup = measure_cpu_bf16_speedup()
    try:
        with atomic_write(path) as handle:  # creates the directory
            json.dump({**key, "speedup": speedup}, handle)
    except OSError as err:  # a read-only home: measure again next time
        log.debug("could not cache the bf16 probe in %s: %s", path, err)
    return speedup


def _cpu_choice() -> tuple[bool, str]:
    """(bf16 autocast on this CPU?, the reason in words)."""
    if not cpu_has_native_bf16():
        return False, "CPU lacks native bf16"
    speedup = cpu_bf16_speedup()
    if speedup >= BF16_MIN_SPEEDUP:
        return True, f"CPU has native bf16; bf16 autocast measured {speedup:.2f}x fp32 here"
    return False, (f"CPU has native bf16, but bf16 autocast measured {speedup:.2f}x fp32 here, "
                   f"below {BF16_MIN_SPEEDUP:.2f}x")


def _choice(accelerator: str) -> tuple[bool, str]:
    """(bf16 autocast on the device the trainer would use?, the reason in words)."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        native = bool(torch.cuda.is_bf16_supported())
        return native, f"GPU {'has' if native else 'lacks'} native bf16"
    return _cpu_choice()


def bf16_native(accelerator: str = "auto") -> bool:
    """True where bf16 autocast runs natively, and on a CPU measurably faster, on the device the trainer would use."""
    return _choice(accelerator)[0]


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``"auto"`` becomes ``"bf16-mixed"`` where bf16 pays off (:func:`bf16_native`) and ``"32-true"`` elsewhere
    (one log line says which and why); any other value (``"32-true"``, ``"bf16-mixed"``, ...) is returned as given."""
    if precision != "auto":
        return precision
    bf16, reason = _choice(accelerator)
    chosen = "bf16-mixed" if bf16 else "32-true"
    log.info("precision auto: %s (%s)", chosen, reason)
    return chosen


def inference_autocast(precision: str, device: torch.device | str):
    """The autocast context for encoding / scoring outside a Trainer under ``precision`` (``"auto"`` resolved
    as for training): bf16 autocast for a ``bf16*`` precision, no autocast (fp32) otherwise."""
    import contextlib

    device = torch.device(device)
    chosen = resolve_precision(precision, "gpu" if device.type == "cuda" else "cpu")
    if chosen.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if chosen != "32-true":
        raise ValueError(f"precision {precision!r}: use 'auto', '32-true' or 'bf16-mixed' outside training")
    return contextlib.nullcontext()


def cpu_model() -> str:
    """The CPU's model name (for benchmark and result headers)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"
