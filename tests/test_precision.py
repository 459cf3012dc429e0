"""rankers.precision: bf16 autocast only where the hardware has native bf16 and, on a CPU, a probe measures it
faster than fp32; one log line saying which and why."""
from __future__ import annotations

import logging

import pytest
import torch

from rankers import precision


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16-mixed"),   # Zen 4 / Cooper Lake
    ({"avx2", "amx_bf16", "amx_tile"}, "bf16-mixed"),     # Sapphire Rapids
    ({"avx2", "avx512f", "avx512bw"}, "32-true"),         # AVX-512 without bf16: oneDNN would emulate it
    ({"avx2", "fma"}, "32-true"),                         # Zen 3
    (set(), "32-true"),                                   # no /proc/cpuinfo
])
def test_auto_precision_follows_the_cpu_flags(flags, expected, monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 1.8)  # what the probe gave on an AMD EPYC (Zen 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="rankers.precision"):
        assert precision.resolve_precision("auto", "auto") == expected
    reason = ("CPU has native bf16; bf16 autocast measured 1.80x fp32 here" if expected == "bf16-mixed"
              else "CPU lacks native bf16")
    assert [r.getMessage() for r in caplog.records] == [f"precision auto: {expected} ({reason})"]


def test_native_bf16_that_measures_slower_stays_fp32(monkeypatch, caplog):
    """An Intel Xeon with avx512_bf16 ran MiniLM slower under bf16 autocast (issue 15): the probe decides."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for speedup, expected in ((0.87, "32-true"), (1.09, "32-true"), (1.10, "bf16-mixed")):
        monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda speedup=speedup: speedup)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="rankers.precision"):
            assert precision.resolve_precision("auto", "cpu") == expected
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 0.87)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rankers.precision"):
        precision.resolve_precision("auto", "cpu")
    assert caplog.records[-1].getMessage() == ("precision auto: 32-true (CPU has native bf16, but bf16 autocast "
                                               "measured 0.87x fp32 here, below 1.10x)")


def test_the_probe_runs_once_per_machine_and_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKERS_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "measure_cpu_bf16_speedup", lambda: calls.append(1) or 1.25)
    precision.cpu_bf16_speedup.cache_clear()
    try:
        assert precision.cpu_bf16_speedup() == 1.25
        precision.cpu_bf16_speedup.cache_clear()  # a new process: read back from disk, not measured again
        assert precision.cpu_bf16_speedup() == 1.25 and calls == [1]
        (cached,) = (tmp_path / "cache" / "precision").glob("bf16-*.json")
        assert '"speedup": 1.25' in cached.read_text()
    finally:
        precision.cpu_bf16_speedup.cache_clear()


def test_the_real_probe_measures_a_positive_ratio():
    speedup = precision.measure_cpu_bf16_speedup(tokens=64, repeats=2)
    assert 0.0 < speedup < 100.0


def test_auto_precision_on_a_gpu_asks_cuda(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert precision.resolve_precision("auto", "gpu") == expected
    # forcing the CPU ignores the GPU
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 1.8)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == "bf16-mixed"


def test_explicit_precision_is_kept():
    for value in ("32-true", "bf16-mixed", "16-mixed", "bf16-true"):
        assert precision.resolve_precision(value) == value


def test_cpu_flags_come_from_proc_cpuinfo():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    assert precision.cpu_model()
