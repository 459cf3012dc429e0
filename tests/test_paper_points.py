"""The paper's three points as reproduce judges them (rankers/evaluation/paper_points.py), on hand-made numbers."""
from __future__ import annotations

import pytest

from rankers.evaluation.paper_points import paper_points, paper_points_markdown

GAPS = {"CA teacher": {"train_subset": 0.70, "val": 0.65}, "DE labels": {"train_subset": 0.80, "val": 0.55}}
CAPACITY = [{"method": "svd", "k": 4, "top1": 0.3}, {"method": "gradient", "k": 8, "top1": 0.93},
            {"method": "gradient", "k": 4, "top1": 0.85}]


def _sig(system: str, significant: bool, p: float = 0.01):
    return [{"system": system, "baseline": "DE labels", "significant": significant, "p_corrected": p, "correction": "holm"}]


def test_all_three_shown_with_their_numbers():
    rerank = {"CA teacher": 0.37, "DE labels": 0.31, "DE m3se": 0.349, "DE kl": 0.33}
    capacity, overfitting, distillation = paper_points(rerank, GAPS, _sig("DE m3se", True), CAPACITY)
    assert capacity["shown"] and capacity["k"] == 8  # the smallest k reaching 90% top-1 agreement
    assert overfitting["shown"] and overfitting["de_gap"] == pytest.approx(0.25) and overfitting["ca_gap"] == pytest.approx(0.05)
    assert distillation["shown"] and distillation["best"] == "DE m3se"
    assert distillation["gap_closed"] == pytest.approx((0.349 - 0.31) / (0.37 - 0.31))  # the paper's 65%
    text = paper_points_markdown([capacity, overfitting, distillation])
    assert "gap closed 65%" in text and text.count("shown:") == 3 and "not shown" not in text


def test_not_shown_when_the_numbers_say_otherwise():
    gaps = {"CA teacher": {"train_subset": 0.70, "val": 0.62}, "DE labels": {"train_subset": 0.61, "val": 0.58}}
    rerank = {"CA teacher": 0.714, "DE labels": 0.630, "DE kl": 0.637}  # the embedded default, 2026-12-02
    capacity, overfitting, distillation = paper_points(rerank, gaps, _sig("DE kl", False, 0.57),
                                                       [{"method": "svd", "k": 64, "top1": 0.5}])
    assert capacity["shown"] is False and "best 50% at k = 64" in capacity["evidence"]
    assert overfitting["shown"] is False
    assert distillation["shown"] is False and distillation["ordered"] and not distillation["significant"]
    assert "gap closed 8%" in distillation["evidence"]
    # significant but above the CA is not "between": not shown either
    _, _, above = paper_points({"CA teacher": 0.6, "DE labels": 0.5, "DE kl": 0.65}, gaps, _sig("DE kl", True))
    assert above["shown"] is False and not above["ordered"]


def test_no_gap_to_close_and_missing_measurements():
    _, _, distillation = paper_points({"CA teacher": 0.06, "DE labels": 0.17, "DE kl": 0.08}, GAPS, _sig("DE kl", True))
    assert distillation["shown"] is False and distillation["gap_closed"] is None
    assert "no gap to close" in distillation["evidence"]
    capacity, overfitting, distillation = paper_points({"CA teacher": 0.5}, {}, None, None)
    assert capacity["shown"] is None and overfitting["shown"] is None and distillation["shown"] is None
    assert "not measured" in paper_points_markdown([capacity, overfitting, distillation])
