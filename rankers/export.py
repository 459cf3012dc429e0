"""Export a trained ranker as a plain Hugging Face / sentence-transformers directory, and load it back.

``python -m rankers export --ckpt_path CKPT --output DIR`` reads a rankers checkpoint (a
:class:`~rankers.DualEncoderRanker` or :class:`~rankers.CrossAttentionRanker`; the class comes from
the checkpoint's ``_class_path`` hyper-parameter or its state-dict keys) with ``weights_only=True``
and writes:

* **Dual encoder** -- a sentence-transformers directory (``SentenceTransformer(DIR)``): the encoder
  and tokenizer (``save_pretrained``, safetensors) at the top, ``modules.json``,
  ``sentence_bert_config.json`` (``max_seq_length``), ``1_Pooling`` (cls / mean), ``2_Dense`` (the
  projection, identity activation) when ``embedding_dim`` is set, ``N_Normalize`` for cosine, and
  ``config_sentence_transformers.json`` (``similarity_fn_name`` ``"dot"`` / ``"cosine"``). The files
  use the sentence-transformers 2/3 layout, which every later version still loads.
  sentence-transformers has one ``max_seq_length``: the passage length is used, so queries longer than
  ``query_max_length`` (and shorter than the passage length) keep tokens rankers would have cut.
  Separate towers (``shared_towers=False``) become two such directories, ``query/`` and ``passage/``,
  each with its own length.
* **Cross-attention** -- an ``AutoModelForSequenceClassification`` (one label) directory whose
  ``config.json`` tells ``CrossEncoder(DIR)`` to apply the identity (raw logits, like
  :meth:`CrossAttentionRanker.score`) instead of its default sigmoid; the tokenizer's
  ``model_max_length`` is the ranker's ``max_length``. A CA with ``pooling="segments"`` (a cosine of the pair's
  two mean-pooled segments) has no such class: its directory holds the encoder (``AutoModel``) and tokenizer,
  and its score scale is in ``rankers_config.json``; rankers loads it back, ``CrossEncoder`` cannot.

Both carry ``rankers_config.json`` (what rankers needs to rebuild the module: pooling, similarity,
temperature, lengths, hyper-parameters). Scores are ``similarity / temperature`` (DE) and ``logit``
(CA); the temperature is recorded, not applied, by sentence-transformers (ranking-invariant).
:func:`load_model` loads a checkpoint or an exported directory as a rankers module.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from rankers.models.checkpoints import CROSS_ATTENTION, DUAL_ENCODER, checkpoint_kind, load_checkpoint  # noqa: F401
from rankers.io.metadata import read_json

log = logging.getLogger(__name__)

RANKERS_CONFIG = "rankers_config.json"
FORMAT_VERSION = 1
# Oldest sentence-transformers release that reads every key written here (similarity_fn_name: 3.0).
_ST_FORMAT_VERSION = "3.0.0"
_IDENTITY = "torch.nn.modules.linear.Identity"


# ----------------------------------------------------------------------------- writing
def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def _versions() -> dict[str, str]:
    import transformers

    return {"sentence_transformers": _ST_FORMAT_VERSION, "transformers": transformers.__version__,
            "pytorch": torch.__version__}


def _write_tower(directory: Path, encoder, projection, tokenizer, *, pooling: str, similarity: str,
                 max_seq_length: int) -> None:
    """One tower as a sentence-transformers directory: Transformer → Pooling [→ Dense] [→ Normalize]."""
    from safetensors.torch import save_file

    encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    hidden = encoder.config.hidden_size
    modules = [("", "sentence_transformers.models.Transformer"), ("1_Pooling", "sentence_transformers.models.Pooling")]
    _write_json(directory / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    if isinstance(projection, torch.nn.Linear):
        dense = directory / f"{len(modules)}_Dense"
        modules.append((dense.name, "sentence_transformers.models.Dense"))
        _write_json(dense / "config.json", {"in_features": projection.in_features, "out_features": projection.out_features,
                                            "bias": projection.bias is not None, "activation_function": _IDENTITY})
        weights = {"linear.weight": projection.weight.detach().cpu().contiguous()}
        if projection.bias is not None:
            weights["linear.bias"] = projection.bias.detach().cpu().contiguous()
        save_file(weights, str(dense / "model.safetensors"))
    if similarity == "cos":
        normalize = directory / f"{len(modules)}_Normalize"
        normalize.mkdir()
        modules.append((normalize.name, "sentence_transformers.models.Normalize"))
    _write_json(directory / "modules.json", [
        {"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(modules)
    ])
    _write_json(directory / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    _write_json(directory / "config_sentence_transformers.json", {
        "__version__": _versions(), "prompts": {}, "default_prompt_name": None,
        "similarity_fn_name": "cosine" if similarity == "cos" else "dot",
    })


def _hyper_parameters(model) -> dict[str, Any]:
    return {k: v for k, v in dict(model.hparams).items() if not k.startswith("_")}


def _export_dual_encoder(model, directory: Path) -> dict[str, Any]:
    if model.pooling not in ("cls", "mean") or model.similarity not in ("dot", "cos"):
        raise ValueError(f"export: pooling {model.pooling!r} / similarity {model.similarity!r} has no "
                         "sentence-transformers equivalent here (supported: cls, mean / dot, cos)")
    shared = model.passage_encoder is model.query_encoder
    towers = {"query": ".", "passage": "."} if shared else {"query": "query", "passage": "passage"}
    for side in ("query", "passage") if not shared else ("passage",):
        _write_tower(
            directory / towers[side],
            model.query_encoder if side == "query" else model.passage_encoder,
            model.query_projection if side == "query" else model.passage_projection,
            model.tokenizer,
            pooling=model.pooling, similarity=model.similarity,
            max_seq_length=model.query_max_length if side == "query" else model.passage_max_length,
        )
    projection = model.query_projection
    return {
        "ranker": DUAL_ENCODER, "class_path": "rankers.DualEncoderRanker", "shared_towers": shared, "towers": towers,
        "pooling": model.pooling, "similarity": model.similarity, "temperature": float(model.temperature),
        "embedding_dim": projection.out_features if isinstance(projection, torch.nn.Linear) else None,
        "query_max_length": model.query_max_length, "passage_max_length": model.passage_max_length,
        "sentence_transformers_max_seq_length": model.passage_max_length if shared else None,
    }


def _export_cross_attention(model, directory: Path) -> dict[str, Any]:
    model.model.save_pretrained(directory)
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.model_max_length = model.max_length  # CrossEncoder truncates pairs to it
    tokenizer.save_pretrained(directory)
    exported = {"ranker": CROSS_ATTENTION, "class_path": "rankers.CrossAttentionRanker", "max_length": model.max_length,
                "temperature": float(model.temperature), "activation": "identity", "pooling": model.pooling}
    if model.pooling == "segments":  # an encoder plus one scalar: rankers' own format, not a CrossEncoder
        exported["segment_scale"] = float(model.segment_scale.detach())
        return exported
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    # CrossEncoder applies a sigmoid to a one-label model unless told otherwise: raw logits, like rankers.
    config["sentence_transformers"] = {"activation_fn": _IDENTITY}
    config["sbert_ce_default_activation_function"] = _IDENTITY  # the key sentence-transformers < 4 reads
    _write_json(config_path, config)
    return exported


def export_model(model, output: str | Path, *, source: str | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` (a DualEncoderRanker or CrossAttentionRanker) to ``output``; see the module doc.

    The directory is assembled beside ``output`` and renamed into place. An existing ``output`` is
    replaced only with ``overwrite=True`` and only if it is an earlier export (has ``rankers_config.json``).
    """
    output = Path(output)
    if output.exists():
        if not overwrite:
            raise ValueError(f"{output}: already exists; pass --overwrite to replace an earlier export")
        if output.is_file() or (any(output.iterdir()) and not (output / RANKERS_CONFIG).is_file()):
            raise ValueError(f"{output}: exists and is not a rankers export (no {RANKERS_CONFIG}); not replacing it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        if getattr(model, "is_dual_encoder", False):
            config = _export_dual_encoder(model, staging)
        elif hasattr(model, "model") and hasattr(model, "max_length"):
            config = _export_cross_attention(model, staging)
        else:
            raise ValueError(f"cannot export a {type(model).__name__}: expected a DualEncoderRanker or CrossAttentionRanker")
        config = {"format": "rankers.export", "format_version": FORMAT_VERSION, **config, "source": source,
                  "hyper_parameters": _hyper_parameters(model)}
        _write_json(staging / RANKERS_CONFIG, config)
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s to %s", config["ranker"].replace("_", "-"), output)
    return output


def export_checkpoint(ckpt_path: str | Path, output: str | Path, *, overwrite: bool = False) -> Path:
    """Load a checkpoint (:func:`load_checkpoint`) and :func:`export_model` it."""
    model = load_checkpoint(ckpt_path)
    return export_model(model, output, source=str(Path(ckpt_path).resolve()), overwrite=overwrite)


# ----------------------------------------------------------------------------- reading exports
def read_export_config(directory: str | Path) -> dict[str, Any]:
    """``rankers_config.json`` of an exported directory (``ValueError`` when missing or unreadable)."""
    path = Path(directory) / RANKERS_CONFIG
    config = read_json(path, missing=f"{directory} is not a directory written by `python -m rankers export`")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: field 'format_version' is {config.get('format_version')!r}, expected {FORMAT_VERSION}")
    if config.get("ranker") not in (DUAL_ENCODER, CROSS_ATTENTION):
        raise ValueError(f"{path}: field 'ranker' is {config.get('ranker')!r}, expected {DUAL_ENCODER!r} or {CROSS_ATTENTION!r}")
    return config


def _load_dense(projection: torch.nn.Module, tower: Path) -> None:
    from safetensors.torch import load_file

    dense = sorted(tower.glob("*_Dense"))
    if not isinstance(projection, torch.nn.Linear):
        return
    if not dense:
        raise ValueError(f"{tower}: no N_Dense module directory, but {RANKERS_CONFIG} sets embedding_dim")
    weights = load_file(str(dense[0] / "model.safetensors"))
    projection.load_state_dict({"weight": weights["linear.weight"], "bias": weights["linear.bias"]})


def load_exported(directory: str | Path):
    """Rebuild the rankers module of an exported directory (eval mode)."""
    from rankers.models.backbone import load_encoder
    from rankers.models.cross_encoder import CrossAttentionRanker
    from rankers.models.dual_encoder import DualEncoderRanker

    directory = Path(directory)
    config = read_export_config(directory)
    if config["ranker"] == CROSS_ATTENTION:
        model = CrossAttentionRanker(backbone=str(directory), max_length=config["max_length"],
                                     temperature=config["temperature"], pooling=config.get("pooling", "cls"))
        if model.pooling == "segments":
            with torch.no_grad():
                model.segment_scale.fill_(float(config["segment_scale"]))
        return model.eval()
    query_dir, passage_dir = (directory / config["towers"][side] for side in ("query", "passage"))
    model = DualEncoderRanker(
        backbone=str(query_dir), shared_towers=config["shared_towers"], pooling=config["pooling"],
        embedding_dim=config["embedding_dim"], similarity=config["similarity"], temperature=config["temperature"],
        query_max_length=config["query_max_length"], passage_max_length=config["passage_max_length"],
    )
    _load_dense(model.query_projection, query_dir)
    if not config["shared_towers"]:
        model.passage_encoder = load_encoder(str(passage_dir))
        _load_dense(model.passage_projection, passage_dir)
    return model.eval()


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """A rankers module from a checkpoint file or an exported directory."""
    path = Path(path)
    if path.is_dir():
        return load_exported(path).to(map_location)
    if not path.exists():
        raise ValueError(f"{path}: not found (expected a rankers checkpoint or an exported directory)")
    return load_checkpoint(path, map_location=map_location)
