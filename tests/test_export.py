"""`python -m rankers export`: exported DEs load in SentenceTransformer and CAs in CrossEncoder with
the same embeddings / scores as rankers computes; exports load back into rankers."""
from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from rankers.api import load_ranker
from rankers.cli import main
from rankers.models.cross_encoder import CrossAttentionRanker
from rankers.models.dual_encoder import DualEncoderRanker
from rankers.retrieval.encode import encode_texts
from rankers.export import export_model

st = pytest.importorskip("sentence_transformers")

QUERIES = ["red box with a blue lid", "which cup is green", "blue box"]
PASSAGES = [
    "the red box has a blue lid",
    "a green cup stands beside the blue box",
    "the blue box has a red lid and " + "a very long story about boxes and lids " * 20,  # > 64 tokens: truncated
]


def save_checkpoint(model: pl.LightningModule, path: Path) -> Path:
    """A Lightning checkpoint of ``model`` as ``trainer.save_checkpoint`` writes it (no training)."""
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def _assert_close(a, b, atol: float) -> None:
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=atol), f"max abs diff {(a - b).abs().max().item():.3g}"


def test_de_with_projection_and_cosine_exports_to_sentence_transformers(tmp_path):
    pl.seed_everything(0)
    de = DualEncoderRanker(backbone="embedded", pooling="mean", embedding_dim=16, similarity="cos",
                           temperature=0.05, query_max_length=16, passage_max_length=64).eval()
    ckpt = save_checkpoint(de, tmp_path / "de.ckpt")
    out = main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "de")])

    files = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert {"model.safetensors", "modules.json", "1_Pooling/config.json", "2_Dense/config.json",
            "2_Dense/model.safetensors", "3_Normalize", "sentence_bert_config.json",
            "config_sentence_transformers.json", "rankers_config.json"} <= files
    config = json.loads((out / "rankers_config.json").read_text())
    assert (config["ranker"], config["temperature"], config["embedding_dim"]) == ("dual_encoder", 0.05, 16)

    model = st.SentenceTransformer(str(out), device="cpu")
    assert model.similarity_fn_name == "cosine" and model.max_seq_length == 64
    passages = model.encode(PASSAGES, convert_to_tensor=True)
    _assert_close(passages, encode_texts(de, PASSAGES, "passage"), atol=1e-5)
    _assert_close(passages.norm(dim=-1), torch.ones(3), atol=1e-5)
    queries = model.encode(QUERIES, convert_to_tensor=True)  # all shorter than query_max_length
    _assert_close(queries, encode_texts(de, QUERIES, "query"), atol=1e-5)
    # rankers' score = similarity / temperature
    reloaded = load_ranker(out)
    expected = model.similarity_pairwise(queries, passages) / config["temperature"]
    _assert_close(reloaded.score(QUERIES, PASSAGES), expected, atol=1e-4)
    _assert_close(reloaded.encode_passages(PASSAGES), encode_texts(de, PASSAGES, "passage"), atol=1e-6)
    _assert_close(load_ranker(ckpt).encode_queries(QUERIES), encode_texts(de, QUERIES, "query"), atol=1e-6)


def test_minilm_export_gives_the_same_embeddings(tmp_path, minilm_path, shared_data):
    abstracts = [json.loads(line) for line in (shared_data / "scifact" / "corpus.jsonl").open()][:8]
    texts = [f"{a['title']} {a['text']}".strip() for a in abstracts]  # several longer than 256 tokens
    de = DualEncoderRanker(backbone=minilm_path, pooling="mean", passage_max_length=256).eval()
    ours = encode_texts(de, texts, "passage", batch_size=4)

    original = st.SentenceTransformer(minilm_path, device="cpu")  # Transformer → mean pooling → Normalize
    original.max_seq_length = 256
    _assert_close(original.encode(texts, convert_to_tensor=True), F.normalize(ours, dim=-1), atol=1e-5)

    exported = st.SentenceTransformer(str(export_model(de, tmp_path / "minilm")), device="cpu")
    assert exported.similarity_fn_name == "dot" and exported.max_seq_length == 256
    _assert_close(exported.encode(texts, convert_to_tensor=True, batch_size=4), ours, atol=1e-5)


def test_separate_towers_export_as_query_and_passage_directories(tmp_path):
    pl.seed_everything(1)
    de = DualEncoderRanker(backbone="embedded", shared_towers=False, embedding_dim=8, pooling="cls",
                           query_max_length=8, passage_max_length=40).eval()
    with torch.no_grad():  # make the towers differ (they start as copies)
        generator = torch.Generator().manual_seed(0)
        for param in de.passage_encoder.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    out = export_model(de, tmp_path / "two")
    assert (out / "rankers_config.json").is_file() and not (out / "modules.json").exists()

    query_tower = st.SentenceTransformer(str(out / "query"), device="cpu")
    passage_tower = st.SentenceTransformer(str(out / "passage"), device="cpu")
    assert (query_tower.max_seq_length, passage_tower.max_seq_length) == (8, 40)
    q = query_tower.encode(QUERIES + PASSAGES, convert_to_tensor=True)  # passages: truncated at 8 tokens too
    p = passage_tower.encode(PASSAGES, convert_to_tensor=True)
    _assert_close(q, encode_texts(de, QUERIES + PASSAGES, "query"), atol=1e-5)
    _assert_close(p, encode_texts(de, PASSAGES, "passage"), atol=1e-5)
    assert (passage_tower.encode(PASSAGES[:2], convert_to_tensor=True) - q[3:5]).abs().max() > 1e-2

    reloaded = load_ranker(out).module
    assert reloaded.query_encoder is not reloaded.passage_encoder
    _assert_close(encode_texts(reloaded, PASSAGES, "passage"), p, atol=1e-5)
    _assert_close(encode_texts(reloaded, QUERIES, "query"), q[:3], atol=1e-5)


def test_ca_exports_to_cross_encoder_with_raw_logits(tmp_path):
    pl.seed_everything(0)
    ca = CrossAttentionRanker(backbone="embedded", max_length=40).eval()
    with torch.no_grad():
        ca.model.classifier.bias.fill_(3.0)  # logits around 3: a sigmoid would squash them below 1
    out = main(["export", "--ckpt_path", str(save_checkpoint(ca, tmp_path / "ca.ckpt")), "--output", str(tmp_path / "ca")])

    queries = [QUERIES[0]] * 3 + [QUERIES[1]] * 3
    passages = PASSAGES * 2
    expected = ca.score(queries, passages)
    assert expected.min() > 1.5
    cross_encoder = st.CrossEncoder(str(out), device="cpu")
    _assert_close(cross_encoder.predict(list(zip(queries, passages)), convert_to_tensor=True), expected, atol=1e-4)
    _assert_close(load_ranker(out).score(queries, passages), expected, atol=1e-5)


def test_export_errors_name_the_file(tmp_path):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.ckpt: not a Lightning checkpoint"):
        main(["export", "--ckpt_path", str(bad), "--output", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="missing.ckpt: checkpoint not found"):
        main(["export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--output", str(tmp_path / "x")])
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "data.txt").write_text("mine")
    de = DualEncoderRanker(backbone="embedded")
    with pytest.raises(ValueError, match="already exists"):
        export_model(de, tmp_path / "keep")
    with pytest.raises(ValueError, match="not a rankers export"):
        export_model(de, tmp_path / "keep", overwrite=True)
    assert (tmp_path / "keep" / "data.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="rankers_config.json: not found"):
        load_ranker(tmp_path / "keep")
    with pytest.raises(ValueError, match="needs a dual encoder"):
        load_ranker(export_model(CrossAttentionRanker(backbone="embedded"), tmp_path / "ca")).encode_queries(["q"])


@pytest.mark.parametrize("shared_towers", [True, False], ids=["shared", "separate"])
def test_truncated_student_exports_and_reloads_as_the_truncated_model(tmp_path, shared_towers):
    pl.seed_everything(0)
    de = DualEncoderRanker(backbone="tiny", num_layers=1, shared_towers=shared_towers, pooling="mean",
                           query_max_length=16, passage_max_length=64).eval()
    ckpt = save_checkpoint(de, tmp_path / "short.ckpt")
    out = main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "short")])
    towers = [out] if shared_towers else [out / "query", out / "passage"]
    for tower in towers:
        assert json.loads((tower / "config.json").read_text())["num_hidden_layers"] == 1
    assert json.loads((out / "rankers_config.json").read_text())["hyper_parameters"]["num_layers"] == 1

    expected = {"query": encode_texts(de, QUERIES, "query"), "passage": encode_texts(de, PASSAGES, "passage")}
    st_passage = st.SentenceTransformer(str(towers[-1]), device="cpu")
    assert len(st_passage[0].auto_model.encoder.layer) == 1
    _assert_close(st_passage.encode(PASSAGES, convert_to_tensor=True), expected["passage"], atol=1e-5)
    st_query = st.SentenceTransformer(str(towers[0]), device="cpu")  # queries are shorter than query_max_length
    _assert_close(st_query.encode(QUERIES, convert_to_tensor=True), expected["query"], atol=1e-5)

    for source in (ckpt, out):
        reloaded = load_ranker(source)
        for encoder in (reloaded.module.query_encoder, reloaded.module.passage_encoder):
            assert encoder.config.num_hidden_layers == 1 and len(encoder.encoder.layer) == 1, source
        _assert_close(reloaded.encode_passages(PASSAGES), expected["passage"], atol=1e-5)
        _assert_close(reloaded.encode_queries(QUERIES), expected["query"], atol=1e-5)


def test_segment_pooled_ca_exports_and_reloads_with_its_scale(tmp_path):
    """pooling='segments': the encoder, the tokenizer and the learned score scale round-trip through export."""
    pl.seed_everything(0)
    ca = CrossAttentionRanker(backbone="embedded", max_length=40, pooling="segments").eval()
    with torch.no_grad():
        ca.segment_scale.fill_(7.5)
    out = main(["export", "--ckpt_path", str(save_checkpoint(ca, tmp_path / "ca.ckpt")), "--output", str(tmp_path / "ca")])
    queries, passages = [QUERIES[0]] * 3 + [QUERIES[1]] * 3, PASSAGES * 2
    reloaded = load_ranker(out).module
    assert reloaded.pooling == "segments" and float(reloaded.segment_scale.detach()) == 7.5
    _assert_close(reloaded.score(queries, passages), ca.score(queries, passages), atol=1e-5)
