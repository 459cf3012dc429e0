"""The main job's recipe, read from the same config files ``fit`` runs (so it is written down once).

``reproduce`` takes its defaults from ``configs/`` -- the teacher from ``model/ca_teacher.yaml`` and the
epochs of ``ca_teacher.yaml``; the students from ``model/de_labels.yaml`` / ``model/de_distill.yaml`` and the
epochs of ``de_distill.yaml``; negatives and batch size from ``data/embedded_teacher.yaml`` and
``data/embedded.yaml``; the seed from ``seed_everything`` -- and builds its models from those files'
``init_args`` with only its own flags on top. A knob a config does not set takes the class's default.
``tests/test_reproduce.py`` checks that the two cannot drift apart.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_DIR", "read_config", "model_init_args", "recipe_defaults"]

#: the repository's configs/ (the package is installed from a checkout: ``pip install -e .``)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@functools.lru_cache(maxsize=None)
def read_config(relative: str) -> dict[str, Any]:
    """``configs/<relative>`` parsed (YAML)."""
    import yaml

    path = CONFIG_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the config the main job's recipe is read from is missing (install rankers "
                                f"from its checkout, `pip install -e .`, so that configs/ is beside the package)")
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _class_defaults(class_path: str) -> dict[str, Any]:
    import importlib

    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.default is not inspect.Parameter.empty}


def model_init_args(relative: str) -> dict[str, Any]:
    """A model config's ``init_args`` completed with its class's defaults for the knobs it does not set."""
    config = read_config(relative)
    return {**_class_defaults(config["class_path"]), **(config.get("init_args") or {})}


def recipe_defaults() -> dict[str, Any]:
    """``reproduce``'s defaults, as ``{argument: value}``, from the configs (no model is imported)."""
    teacher = read_config("model/ca_teacher.yaml")["init_args"]
    labels = read_config("model/de_labels.yaml")["init_args"]
    distill = read_config("model/de_distill.yaml")["init_args"]
    student_data, teacher_data = read_config("data/embedded.yaml"), read_config("data/embedded_teacher.yaml")
    teacher_entry, student_entry = read_config("ca_teacher.yaml"), read_config("de_distill.yaml")
    shared = ("negative_window", "max_train_queries", "eval_depth", "train_subset_size", "batch_size")
    for key in shared:
        if student_data.get(key) != teacher_data.get(key):
            raise ValueError(f"configs/data/embedded.yaml and configs/data/embedded_teacher.yaml set {key} differently "
                             f"({student_data.get(key)!r} vs {teacher_data.get(key)!r}); reproduce runs one DataModule")
    if labels.get("passage_max_length", teacher["max_length"]) != teacher["max_length"]:
        raise ValueError("configs/model/de_labels.yaml passage_max_length and configs/model/ca_teacher.yaml "
                         "max_length differ; reproduce uses one length for both")
    return {
        "teacher_backbone": teacher["backbone"], "teacher_lr": teacher["lr"], "teacher_head_lr": teacher["head_lr"],
        "teacher_pooling": teacher.get("pooling", "cls"),
        "max_length": teacher["max_length"], "teacher_epochs": teacher_entry["trainer"]["max_epochs"],
        "teacher_num_negatives": teacher_data["num_negatives"],
        "student_backbone": labels["backbone"], "pooling": labels["pooling"], "similarity": labels["similarity"],
        "temperature": labels["temperature"], "query_max_length": labels["query_max_length"],
        "student_lr": labels["lr"], "student_epochs": student_entry["trainer"]["max_epochs"],
        "losses": distill["distillation_loss"], "label_weight": distill["label_weight"],
        "num_negatives": student_data["num_negatives"], "batch_size": student_data["batch_size"],
        "negative_window": ",".join(str(x) for x in student_data["negative_window"]),
        "max_train_queries": student_data["max_train_queries"] or 0, "eval_depth": student_data["eval_depth"],
        "train_subset": student_data["train_subset_size"],
        "seed": student_entry["seed_everything"],
    }
