"""Lightning callbacks of rankers: retrieval evaluation (and on a suite of extra datasets), the ANCE negative
refresh, score diagnostics, run and teacher-score writing."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "RetrievalEvaluator": "callbacks.retrieval_eval",
    "NegativeRefresh": "callbacks.negative_refresh",
    "ScoreDiagnostics": "callbacks.score_diagnostics",
    "TeacherScoreWriter": "callbacks.teacher_scores",
    "RunWriter": "callbacks.run_writer",
    "SuiteEvaluator": "callbacks.suite_eval",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'callbacks' has no attribute '{name}'")
