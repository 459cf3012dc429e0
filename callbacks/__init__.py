"""Lightning callbacks of rankers: retrieval evaluation, score diagnostics, teacher-score writing."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "RetrievalEvaluator": "callbacks.retrieval_eval",
    "ScoreDiagnostics": "callbacks.score_diagnostics",
    "TeacherScoreWriter": "callbacks.teacher_scores",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'callbacks' has no attribute '{name}'")
