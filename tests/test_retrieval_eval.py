"""callbacks.retrieval_eval: full retrieval encodes under the trainer's precision, reads the corpus lazily."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

import rankers.encode
from callbacks.retrieval_eval import RetrievalEvaluator
from datamodules.datamodule import RankingDataModule


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("retrieval-eval-cache"))


def _validate(precision: str, cache_dir: str, tmp_path, monkeypatch) -> tuple[list[dict], RetrievalEvaluator]:
    """validate() a tiny DE on the embedded data; what each encode_texts call of the callback saw."""
    from rankers.dual_encoder import DualEncoderRanker

    pl.seed_everything(0)
    model = DualEncoderRanker(backbone="embedded", passage_max_length=32, query_max_length=16)
    dm = RankingDataModule(embedded_scale=0.05, max_eval_queries=8, train_subset_size=0, batch_size=8,
                           num_negatives=3, cache_dir=cache_dir)
    linear = next(m for m in model.passage_encoder.modules() if isinstance(m, torch.nn.Linear))
    calls: list[dict] = []
    original = rankers.encode.encode_texts

    def spy(module, texts, side, **kwargs):
        seen: list[torch.dtype] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
                   for m in (linear, next(m for m in module.query_encoder.modules() if isinstance(m, torch.nn.Linear)))]
        try:
            out = original(module, texts, side, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        calls.append({"side": side, "autocast": torch.is_autocast_enabled("cpu"),
                      "autocast_dtype": torch.get_autocast_dtype("cpu"), "linear_dtypes": set(seen),
                      "texts_type": type(texts).__name__, "out_dtype": out.dtype})
        return out

    monkeypatch.setattr(rankers.encode, "encode_texts", spy)
    evaluator = RetrievalEvaluator(metrics=("mrr@10",), retrieval_depth=20, encode_batch_size=16, write_runs=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[evaluator],
                         default_root_dir=tmp_path)
    trainer.validate(model, datamodule=dm)
    return calls, evaluator


def test_full_retrieval_encodes_under_bf16_autocast_with_bf16_mixed(cache_dir, tmp_path, monkeypatch):
    calls, evaluator = _validate("bf16-mixed", cache_dir, tmp_path, monkeypatch)
    assert [c["side"] for c in calls] == ["passage", "query"]
    for call in calls:
        assert call["autocast"] and call["autocast_dtype"] == torch.bfloat16, call
        assert call["linear_dtypes"] == {torch.bfloat16}, call  # the forward really ran in bf16
        assert call["out_dtype"] == torch.float32  # the stored embeddings keep the requested dtype
    assert calls[0]["texts_type"] == "Column"  # the corpus is handed over lazily, not as a list
    assert "val/retrieval" in evaluator.results
    assert evaluator.index is not None and evaluator.index.ntotal > 0


def test_full_retrieval_stays_fp32_with_32_true(cache_dir, tmp_path, monkeypatch):
    calls, evaluator = _validate("32-true", cache_dir, tmp_path, monkeypatch)
    assert [c["side"] for c in calls] == ["passage", "query"]
    for call in calls:
        assert not call["autocast"] and call["linear_dtypes"] == {torch.float32}, call
    assert "val/retrieval" in evaluator.results
