"""The tiny random-init BERT backbone (``tiny``): a 2-layer, 128-d ``BertModel`` with a WordPiece
tokenizer trained on the embedded dataset's texts, saved like any hub model.

The project's unit tests train a 2-layer, 128-d BERT with random weights (:func:`embedded_backbone_dir`).
It exercises every code path in seconds, but it does not learn the task: a randomly initialised
cross-attention ranker must first learn cross-segment matching through attention, and in a CPU budget
it stays at chance (test MRR@10 0.03-0.13 after 1000-6000 steps, earlier revision of this generator)
while a mean-pooled dual encoder gets lexical matching from its dot product. The paper's effects are
shown with the pretrained default backbone (``minilm``), not with this one.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rankers.embedded.dataset import embedded_dataset_dir
from rankers.io.atomic import materialize, short_hash
from rankers.io.home import rankers_home

__all__ = ["BACKBONE_VERSION", "build_embedded_backbone", "embedded_backbone_dir"]

BACKBONE_VERSION = 2
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BACKBONE_KIND = "rankers-embedded-backbone"

# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------


def _backbone_params(texts_sha256: str, vocab_size: int, hidden_size: int, num_layers: int,
                     num_heads: int, intermediate_size: int, max_position_embeddings: int,
                     seed: int) -> dict[str, Any]:
    for name, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers), ("num_heads", num_heads),
                        ("intermediate_size", intermediate_size),
                        ("max_position_embeddings", max_position_embeddings)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} must exceed the {len(SPECIAL_TOKENS)} special tokens")
    return {"version": BACKBONE_VERSION, "texts_sha256": texts_sha256, "vocab_size": vocab_size,
            "hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
            "intermediate_size": intermediate_size,
            "max_position_embeddings": max_position_embeddings, "seed": seed}


_INITIAL_ALPHABET = tuple("abcdefghijklmnopqrstuvwxyz0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _train_wordpiece(texts: list[str], vocab_size: int):
    """A BERT-style WordPiece ``tokenizers.Tokenizer`` whose vocabulary is learned from ``texts``.

    The pipeline is the BERT one (``BertNormalizer`` lowercasing, ``BertPreTokenizer``,
    ``WordPiece`` model with ``##`` continuation pieces). The vocabulary is *not* taken from
    ``tokenizers.trainers.WordPieceTrainer``: that trainer breaks ties between equally frequent
    merges in hash-map order, so two trainings on the same texts give different vocabularies
    (six runs on the default dataset gave six different ones), which would break the promise
    that the same arguments give the same backbone. Instead the vocabulary is, in this order:
    the special tokens; every character of the texts and of a basic ASCII alphabet, each as a
    word-initial piece and as a ``##`` piece (so any word can be spelt); then whole words by
    descending frequency (ties alphabetical) until ``vocab_size`` is reached.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted(set(_INITIAL_ALPHABET).union(*counts) - set(SPECIAL_TOKENS))
    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is too small: the special tokens and the "
                         f"{len(chars)} characters of the texts already need {len(vocab)} entries")
    for word, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    return tokenizer


def _write_backbone(out: Path, texts: list[str], params: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    wordpiece = _train_wordpiece(texts, params["vocab_size"])
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece, do_lower_case=True,
                                  model_max_length=params["max_position_embeddings"])
    tokenizer.save_pretrained(out)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=params["hidden_size"],
        num_hidden_layers=params["num_layers"], num_attention_heads=params["num_heads"],
        intermediate_size=params["intermediate_size"],
        max_position_embeddings=params["max_position_embeddings"],
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(params["seed"])
        model = BertModel(config)
    model.save_pretrained(out, safe_serialization=True)
    return {"kind": _BACKBONE_KIND, "params": params,
            "stats": {"tokenizer_vocab_size": len(tokenizer), "num_texts": len(texts),
                      "num_parameters": sum(p.numel() for p in model.parameters())}}


def build_embedded_backbone(
    root: Path | str,
    *,
    texts: Iterable[str],
    vocab_size: int = 2000,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 512,
    max_position_embeddings: int = 128,
    seed: int = 0,
) -> Path:
    """Train a WordPiece tokenizer on ``texts``, build a random-init ``BertModel``, save both.

    The result loads with ``AutoTokenizer.from_pretrained(root)`` and
    ``AutoModel.from_pretrained(root)``. The tokenizer's vocabulary has at most ``vocab_size``
    entries (fewer when ``texts`` have fewer distinct pieces); the model's embedding matrix
    matches the tokenizer. Weights come from ``torch.manual_seed(seed)`` inside a forked RNG.
    Same idempotence and atomicity rules as :func:`generate_embedded_dataset` (the manifest
    records a SHA-256 of ``texts``).
    """
    text_list = list(texts)
    for i, text in enumerate(text_list, start=1):
        if not isinstance(text, str):
            raise ValueError(f"texts: item {i} must be a str, got {type(text).__name__}")
    if not text_list:
        raise ValueError("texts: need at least one text to train the tokenizer on")
    digest = hashlib.sha256()
    for text in text_list:
        digest.update(text.encode("utf-8") + b"\n")
    params = _backbone_params(digest.hexdigest(), vocab_size, hidden_size, num_layers, num_heads,
                              intermediate_size, max_position_embeddings, seed)
    return materialize(Path(root), _BACKBONE_KIND, params,
                        lambda out: _write_backbone(out, text_list, params))


def _dataset_texts(root: Path) -> Iterator[str]:
    """Corpus texts (title and text joined) then query texts of a BEIR dataset, in file order."""
    for name in ("corpus.jsonl", "queries.jsonl"):
        with open(root / name, encoding="utf-8") as fh:
            for record in map(json.loads, fh):
                title = record.get("title") or ""
                yield f"{title} {record['text']}" if title else record["text"]


def embedded_backbone_dir(seed: int = 0, **kwargs: Any) -> Path:
    """``rankers_home()/embedded/bert-<hash>``: :func:`build_embedded_backbone` with ``seed`` and
    ``kwargs`` (``vocab_size``, ``hidden_size``, ...) trained on the texts of the default
    embedded dataset (generated first if missing)."""
    data = embedded_dataset_dir()
    texts = list(_dataset_texts(data))
    digest = hashlib.sha256("".join(t + "\n" for t in texts).encode("utf-8")).hexdigest()
    defaults = {"vocab_size": 2000, "hidden_size": 128, "num_layers": 2, "num_heads": 2,
                "intermediate_size": 512, "max_position_embeddings": 128}
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"embedded_backbone_dir() got unexpected arguments: {sorted(unknown)}")
    settings = {**defaults, **kwargs}
    params = _backbone_params(digest, seed=seed, **settings)
    root = rankers_home() / "embedded" / f"bert-{short_hash(params)}"
    return build_embedded_backbone(root, texts=texts, seed=seed, **settings)
