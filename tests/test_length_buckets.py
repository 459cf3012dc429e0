"""Length-bucketed encoding: same outputs and gradients as one padded batch, with less padding."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from rankers.models.length_buckets import forward_by_length


def _inputs(lengths, width):
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = torch.arange(len(lengths) * width).view(len(lengths), width) * mask
    return {"input_ids": ids, "attention_mask": mask}


def test_rows_come_back_in_order_and_each_bucket_is_trimmed():
    lengths = [9, 2, 5, 3, 8, 1, 4, 7]
    inputs = _inputs(lengths, 12)
    widths = []

    def forward(x):
        widths.append(x["input_ids"].shape[1])
        return x["input_ids"].sum(-1)  # a per-row value that depends only on the row's real tokens

    out = forward_by_length(forward, inputs, num_buckets=4)
    assert torch.equal(out, inputs["input_ids"].sum(-1))
    assert widths == [2, 4, 7, 9]  # the two shortest, ... the two longest, each cut to its longest row


def test_left_padding_and_small_batches_run_as_one_batch():
    calls = []
    left = {k: v.flip(-1) for k, v in _inputs([3, 1, 2, 2], 4).items()}
    forward_by_length(lambda x: calls.append(x["input_ids"].shape) or x["input_ids"].sum(-1), left, 2)
    forward_by_length(lambda x: calls.append(x["input_ids"].shape) or x["input_ids"].sum(-1), _inputs([3, 1], 4), 2)
    assert calls == [torch.Size([4, 4]), torch.Size([2, 4])]


def test_a_batch_with_little_padding_runs_as_one_batch():
    from rankers.models import length_buckets

    calls = []
    record = lambda x: calls.append(x["input_ids"].shape) or x["input_ids"].sum(-1)  # noqa: E731
    nearly_full = _inputs([20, 20, 20, 20, 20, 20, 20, 19], 20)  # buckets would remove 1 of 160 tokens
    out = forward_by_length(record, nearly_full, 4)
    assert calls == [torch.Size([8, 20])] and torch.equal(out, nearly_full["input_ids"].sum(-1))
    calls.clear()
    lengths = [20, 20, 20, 20, 20, 20, 16, 16]  # 4 buckets: widths 16, 20, 20, 20: 8 of 160 tokens = 5% saved
    forward_by_length(record, _inputs(lengths, 20), 4)
    assert length_buckets.MIN_SAVING > 0.05 and len(calls) == 1
    calls.clear()
    forward_by_length(record, _inputs([20, 20, 20, 20, 20, 20, 4, 4], 20), 4)  # 32 of 160 = 20% saved
    assert [c[1] for c in calls] == [4, 20, 20, 20]


TEXTS = ["the red box has a blue lid", "a cat", "the dog chased the cat behind the green lamp under the old chair",
         "the cup is behind the lamp", "owl", "the kettle has a silver spout and the bag has a pink strap", "a b c",
         "nobody said a word"]


@pytest.mark.parametrize("kind", ["dual_encoder", "cross_attention"])
def test_bucketed_model_matches_one_padded_batch_in_scores_and_gradients(kind):
    from rankers.models.cross_encoder import CrossAttentionRanker
    from rankers.models.dual_encoder import DualEncoderRanker

    def build(buckets):
        pl.seed_everything(0)
        if kind == "dual_encoder":
            return DualEncoderRanker(backbone="embedded", pooling="mean", passage_max_length=32, length_buckets=buckets)
        return CrossAttentionRanker(backbone="embedded", max_length=48, length_buckets=buckets)

    results = []
    for buckets in (1, 4):
        model = build(buckets).eval()  # no dropout: the two runs must see the same function
        if kind == "dual_encoder":
            out = model.encode_passage_inputs(model.tokenize(TEXTS, "passage"))
        else:
            out = model(dict(model.collator().tokenize(TEXTS[:1] * len(TEXTS), TEXTS)))
        out.pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    (out1, g1), (out4, g4) = results
    torch.testing.assert_close(out4, out1, rtol=1e-4, atol=1e-5)
    assert g1.keys() == g4.keys() and g1
    for name in g1:
        torch.testing.assert_close(g4[name], g1[name], rtol=1e-3, atol=1e-5, msg=name)
