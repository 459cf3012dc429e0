"""Gradient caching (rankers/models/grad_cache.py): the same loss and gradients as the uncached step, with
dropout replayed exactly; the 2-process DDP case is in tests/test_ddp.py (LOSS_RUNS "grad_cache")."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from rankers.models.dual_encoder import DualEncoderRanker

QUERIES = ["red box with a blue lid", "blue box with a red lid", "cat chased by a dog", "cup behind the lamp",
           "the owl that watched a fox"]
PASSAGES = ["the red box has a blue lid", "the blue box has a red lid", "a green cup", "the dog chased the cat",
            "the cup is behind the lamp . it was a quiet morning", "the lamp is behind the cup", "the owl watched the fox",
            "the fox watched the owl and nobody said a word"]


def _examples():
    out = []
    for i, query in enumerate(QUERIES):
        ids = [f"p{(i + k) % len(PASSAGES)}" for k in range(4)]
        out.append({"query_id": f"q{i}", "query": query, "passage_ids": ids,
                    "passages": [PASSAGES[int(p[1:])] for p in ids], "labels": [1.0, 0.0, 0.0, 0.0],
                    "positive_ids": ids[:1], "teacher_scores": [3.0, 1.0 - i / 10, -1.0, 0.5 * i]})
    return out


def _model(dropout: bool, **overrides):
    pl.seed_everything(0, verbose=False)
    model = DualEncoderRanker(backbone="embedded", pooling="mean", passage_max_length=32, **overrides).train()
    if not dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    return model


def _assert_same_gradients(actual, expected):
    """Per parameter ``|a - e| <= 1e-4 |e| + 1e-6 |e_all|`` (L2 norms): another chunking sums in another
    order (float32 rounding, ~1e-6 relative; the attention key biases, whose true gradient is 0, are pure
    rounding: hence the floor); a wrong gradient is off by far more (see the dropout test's control)."""
    assert actual.keys() == expected.keys() and len(expected) > 10
    scale = torch.cat([g.reshape(-1) for g in expected.values()]).norm().item()
    for name, g in expected.items():
        error = (actual[name] - g).norm().item()
        assert error <= 1e-4 * g.norm().item() + 1e-6 * scale, f"{name}: |diff| {error:.2e} vs |grad| {g.norm().item():.2e}"


def _step(model, batch, seed=1):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, _ = model.listwise_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


LOSSES = {"labels_in_batch": {}, "m3se_and_labels": {"label_weight": 0.5, "distillation_loss": "m3se"},
          "kl_only": {"label_weight": 0.0, "distillation_loss": "kl"}}


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_cached_step_has_the_loss_and_gradients_of_the_plain_step(loss, chunk):
    plain_model = _model(False, **LOSSES[loss])
    batch = plain_model.collator()(_examples())
    loss_plain, grads_plain = _step(plain_model, batch)
    cached_model = _model(False, grad_cache_chunk_size=chunk, **LOSSES[loss])
    loss_cached, grads_cached = _step(cached_model, batch)
    torch.testing.assert_close(loss_cached, loss_plain, rtol=1e-5, atol=1e-6)
    _assert_same_gradients(grads_cached, grads_plain)


def test_dropout_masks_are_replayed_in_the_backward_pass():
    """With dropout on, the cached step's gradient is that of the same chunks encoded with a graph in the
    same order (same random stream); a backward pass without the replay would see other masks."""
    chunk = 3
    model = _model(True, grad_cache_chunk_size=chunk)
    batch = model.collator()(_examples())
    loss_cached, grads_cached = _step(model, batch, seed=7)

    reference = _model(True)  # same weights; encode chunk by chunk with a graph, queries first, as the cache does
    reference.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    sides = {"query": batch.query_inputs, "passage": batch.passage_inputs}
    emb = {side: torch.cat([reference._encode({k: v[lo:lo + chunk] for k, v in inputs.items()}, side)
                            for lo in range(0, inputs["input_ids"].shape[0], chunk)])
           for side, inputs in sides.items()}
    reference._embed_batch = lambda _batch: (emb["query"], emb["passage"])
    loss_ref, _ = reference.listwise_loss(batch)
    loss_ref.backward()
    torch.testing.assert_close(loss_cached, loss_ref.detach(), rtol=1e-5, atol=1e-6)
    _assert_same_gradients(grads_cached, {n: p.grad for n, p in reference.named_parameters() if p.grad is not None})
    # the control: other dropout masks (another seed) give another loss and gradient, so the test can tell
    other_loss, other_grads = _step(_model(True, grad_cache_chunk_size=chunk), batch, seed=8)
    assert not torch.allclose(other_loss, loss_cached)
    with pytest.raises(AssertionError):
        _assert_same_gradients(other_grads, grads_cached)


def test_cache_is_training_only_and_checks_its_size():
    model = _model(False, grad_cache_chunk_size=2).eval()
    batch = model.collator()(_examples())
    with torch.no_grad():
        loss, _ = model.listwise_loss(batch)  # validation loss: the plain path
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="grad_cache_chunk_size must be >= 1"):
        DualEncoderRanker(backbone="embedded", grad_cache_chunk_size=0)
