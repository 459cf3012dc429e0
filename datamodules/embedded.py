"""Old import path of the embedded default (kept for one release): the generator lives in
:mod:`rankers.embedded.dataset`, the tiny BERT in :mod:`rankers.embedded.backbone`, the cache root in
:mod:`rankers.io.home`."""
from rankers.embedded.backbone import BACKBONE_VERSION, build_embedded_backbone, embedded_backbone_dir
from rankers.embedded.dataset import (  # noqa: F401  (names tests and users read)
    COLORS, DATASET_VERSION, MAX_PASSAGE_WORDS, MAX_QUERY_WORDS, SPURIOUS_CUE, SYNONYMS, VERBS,
    embedded_dataset_dir, generate_embedded_dataset,
)
from rankers.io.home import rankers_home

__all__ = ["DATASET_VERSION", "BACKBONE_VERSION", "SPURIOUS_CUE", "MAX_QUERY_WORDS", "MAX_PASSAGE_WORDS",
           "rankers_home", "generate_embedded_dataset", "embedded_dataset_dir", "build_embedded_backbone",
           "embedded_backbone_dir"]
