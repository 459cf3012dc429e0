"""rankers.retrieval.encode.encode_texts: a datasets Column is read lazily, batch by batch, with the same output as a list."""
from __future__ import annotations

import random

import pytest
import torch

import rankers.retrieval.encode as encode_mod
from rankers.retrieval.encode import encode_texts, is_datasets_column

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def model():
    from rankers.models.dual_encoder import DualEncoderRanker

    torch.manual_seed(0)
    return DualEncoderRanker(backbone="embedded", passage_max_length=32, query_max_length=16).eval()


def _texts(n: int = 150, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "délta", "ε", "zeta", "eta", "theta", "iota", "kappa"]
    # few distinct lengths, so many ties: the order within equal lengths must be kept
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(n)]


@torch.inference_mode()
def _encode_texts_before(model, texts, side, *, batch_size=256, dtype=torch.float32):
    """encode_texts as it was before Columns were read lazily (the reference for bit-identity)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    encode = model.encode_query_inputs if side == "query" else model.encode_passage_inputs
    out = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        emb = encode(model.tokenize([texts[i] for i in idx], side)).to("cpu", dtype)
        if out is None:
            out = torch.empty(len(texts), emb.shape[1], dtype=dtype)
        out[torch.as_tensor(idx)] = emb
    return out


def _dataset(texts, tmp_path):
    datasets.Dataset.from_dict({"id": [f"d{i}" for i in range(len(texts))], "text": texts}).save_to_disk(
        str(tmp_path / "corpus"), max_shard_size="4KB")  # several Arrow record batches
    return datasets.load_from_disk(str(tmp_path / "corpus"))


@pytest.mark.parametrize("side", ["passage", "query"])
def test_a_column_encodes_bit_identically_to_the_list(model, side, tmp_path):
    texts = _texts()
    ds = _dataset(texts, tmp_path)
    column = ds["text"]
    if not is_datasets_column(column):
        pytest.skip("datasets < 4: dataset['text'] is a list")
    reference = _encode_texts_before(model, texts, side, batch_size=16)
    assert torch.equal(encode_texts(model, texts, side, batch_size=16), reference)
    assert torch.equal(encode_texts(model, column, side, batch_size=16), reference)
    order = list(range(len(texts) - 1, -1, -1))  # an indices mapping (what the callback's queries are)
    selected = encode_texts(model, ds.select(order)["text"], side, batch_size=16)
    assert torch.equal(selected, _encode_texts_before(model, [texts[i] for i in order], side, batch_size=16))
    half = encode_texts(model, column, side, batch_size=16, dtype=torch.float16)
    assert torch.equal(half, _encode_texts_before(model, texts, side, batch_size=16, dtype=torch.float16))
    assert encode_texts(model, ds.select([])["text"], side).shape == (0, 0)


def test_a_column_is_never_materialised_whole(model, tmp_path, monkeypatch):
    texts = _texts(100, seed=1)
    column = _dataset(texts, tmp_path)["text"]
    if not is_datasets_column(column):
        pytest.skip("datasets < 4: dataset['text'] is a list")
    column_type = type(column)
    reads: list[int] = []
    getitem = column_type.__getitem__

    def spy(self, key):
        if isinstance(key, int):
            pytest.fail("Column read one row at a time")
        reads.append(len(range(*key.indices(len(self)))) if isinstance(key, slice) else len(key))
        return getitem(self, key)

    monkeypatch.setattr(column_type, "__getitem__", spy)
    monkeypatch.setattr(column_type, "__iter__", lambda self: pytest.fail("Column iterated"))
    monkeypatch.setattr(encode_mod, "_LENGTH_CHUNK_ROWS", 32)
    out = encode_texts(model, column, "passage", batch_size=8)
    assert max(reads) <= 32 and sum(reads) == 2 * len(texts)  # lengths in 32-row chunks, then batches of 8
    monkeypatch.setattr(column_type, "__getitem__", getitem)
    assert torch.equal(out, _encode_texts_before(model, texts, "passage", batch_size=8))
