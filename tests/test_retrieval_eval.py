"""callbacks.retrieval_eval: full retrieval encodes under the trainer's precision, reads the corpus lazily."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

import rankers.retrieval.encode
from callbacks.retrieval_eval import RetrievalEvaluator
from datamodules.datamodule import RankingDataModule


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("retrieval-eval-cache"))


def _validate(precision: str, cache_dir: str, tmp_path, monkeypatch, **evaluator_kwargs) -> tuple[list[dict], RetrievalEvaluator]:
    """validate() a tiny DE on the embedded data; what each encode_texts call of the callback saw."""
    from rankers.models.dual_encoder import DualEncoderRanker

    pl.seed_everything(0)
    model = DualEncoderRanker(backbone="embedded", passage_max_length=32, query_max_length=16)
    dm = RankingDataModule(embedded_scale=0.05, max_eval_queries=8, train_subset_size=0, batch_size=8,
                           num_negatives=3, cache_dir=cache_dir)
    linear = next(m for m in model.passage_encoder.modules() if isinstance(m, torch.nn.Linear))
    calls: list[dict] = []
    original = rankers.retrieval.encode.encode_texts

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

    monkeypatch.setattr(rankers.retrieval.encode, "encode_texts", spy)
    evaluator = RetrievalEvaluator(metrics=("mrr@10",), retrieval_depth=20, encode_batch_size=16, write_runs=False,
                                   **evaluator_kwargs)
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


@pytest.mark.parametrize("fp16_embeddings", [False, True])
def test_fp16_embeddings_reach_the_index(fp16_embeddings, cache_dir, tmp_path, monkeypatch):
    """fp16_embeddings: fp16 corpus matrix and DenseIndex.build(fp16=True): fp16 storage on faiss-cpu too."""
    from rankers.retrieval import search

    if search.faiss is None:
        pytest.skip("needs faiss-cpu")
    calls, evaluator = _validate("32-true", cache_dir, tmp_path, monkeypatch, search_backend="faiss-cpu",
                                 fp16_embeddings=fp16_embeddings)
    assert calls[0]["side"] == "passage"
    assert calls[0]["out_dtype"] == (torch.float16 if fp16_embeddings else torch.float32)
    stored = evaluator.index._store.index
    if fp16_embeddings:
        assert type(stored) is search.faiss.IndexScalarQuantizer
        assert stored.sq.qtype == search.faiss.ScalarQuantizer.QT_fp16 and stored.code_size == 2 * evaluator.index.dim
    else:
        assert isinstance(stored, search.faiss.IndexFlat)
    assert evaluator.index.ntotal > 0 and "val/retrieval" in evaluator.results


@pytest.mark.parametrize("full_retrieval", [True, False])
def test_dual_encoder_rerank_from_embeddings_equals_scoring_every_pair(full_retrieval, cache_dir, tmp_path):
    """A DE's re-rank scores computed from each distinct text's embedding (the default) are the scores the
    validation loop gives when it encodes every (query, candidate) pair, with or without full retrieval."""
    from rankers.models.dual_encoder import DualEncoderRanker

    runs = {}
    for from_embeddings in (True, False):
        pl.seed_everything(0)
        model = DualEncoderRanker(backbone="tiny", passage_max_length=32, query_max_length=16, temperature=0.5)
        dm = RankingDataModule(embedded_scale=0.05, max_eval_queries=8, train_subset_size=0, batch_size=8,
                               num_negatives=3, cache_dir=cache_dir, eval_depth=10)
        evaluator = RetrievalEvaluator(metrics=("mrr@10",), retrieval_depth=20, encode_batch_size=16, write_runs=False,
                                       full_retrieval=full_retrieval, rerank_from_embeddings=from_embeddings)
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[evaluator],
                             default_root_dir=tmp_path)
        trainer.validate(model, datamodule=dm)
        runs[from_embeddings] = evaluator.runs["val/rerank"]
        assert model.score_pairs_in_loop  # restored after the epoch
    assert runs[True].keys() == runs[False].keys() and len(runs[True]) == 8
    for qid, candidates in runs[False].items():
        assert runs[True][qid].keys() == candidates.keys()
        for pid, score in candidates.items():
            assert runs[True][qid][pid] == pytest.approx(score, abs=1e-4)
