"""rankers.precision: bf16 autocast only where the hardware has native bf16, one log line saying which."""
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
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="rankers.precision"):
        assert precision.resolve_precision("auto", "auto") == expected
    assert [r.getMessage() for r in caplog.records] == [
        f"precision auto: {expected} (CPU {'has' if expected == 'bf16-mixed' else 'lacks'} native bf16)"]


def test_auto_precision_on_a_gpu_asks_cuda(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert precision.resolve_precision("auto", "gpu") == expected
    # forcing the CPU ignores the GPU
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == "bf16-mixed"


def test_explicit_precision_is_kept():
    for value in ("32-true", "bf16-mixed", "16-mixed", "bf16-true"):
        assert precision.resolve_precision(value) == value


def test_cpu_flags_come_from_proc_cpuinfo():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    assert precision.cpu_model()
