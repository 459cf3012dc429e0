"""The capacity probe: an exactly rank-k teacher is recovered at k and not below; the masked gradient
fit improves with k; the command writes its table, JSON and plot; bad input fails clearly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rankers.evaluation.capacity import ScoreMatrix, capacity_probe, gradient_fit, markdown_table, svd_fits
from rankers.commands.capacity import main


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices on a shared 2-core machine run far faster on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rank_k_run(q: int = 40, p: int = 60, k: int = 6, seed: int = 0, observed: int | None = None):
    """Scores U Vᵀ of random U [q, k], V [p, k]: a matrix of rank exactly k (with probability 1)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(q, k)) @ rng.normal(size=(p, k)).T
    run = {}
    for i in range(q):
        cols = range(p) if observed is None else sorted(rng.choice(p, observed, replace=False))
        run[f"q{i}"] = {f"p{j}": float(scores[i, j]) for j in cols}
    return run, scores


def _by(rows, method):
    return {r["k"]: r for r in rows if r["method"] == method}


def test_score_matrix_from_run_masks_unscored_entries():
    run = {"q1": {"a": 1.0, "b": 3.0}, "q2": {"b": 2.0, "c": -1.0, "d": 5.0}, "q3": {}}
    m = ScoreMatrix.from_run(run)
    assert m.query_ids == ["q1", "q2"] and m.passage_ids == ["a", "b", "c", "d"]
    assert m.mask.tolist() == [[True, True, False, False], [False, True, True, True]]
    assert m.row_centred().tolist() == [[-1.0, 1.0, 0.0, 0.0], [0.0, 0.0, -3.0, 3.0]]
    assert m.to_run(m.scores) == {"q1": {"a": 1.0, "b": 3.0}, "q2": {"b": 2.0, "c": -1.0, "d": 5.0}}
    index, teacher, valid = m.padded()
    assert valid.tolist() == [[True, True, False], [True, True, True]]
    assert teacher.tolist() == [[1.0, 3.0, 0.0], [2.0, -1.0, 5.0]]


def test_svd_recovers_an_exactly_rank_k_teacher_at_k_and_not_below():
    run, scores = _rank_k_run()
    fits = svd_fits(ScoreMatrix.from_run(run), [2, 6])
    centred = scores - scores.mean(1, keepdims=True)
    assert np.allclose(fits[6], centred, atol=1e-8)  # rank of the row-centred matrix is <= 6
    assert np.linalg.norm(fits[2] - centred) > 0.3 * np.linalg.norm(centred)

    rows = capacity_probe(run, [2, 6], methods=["svd"])
    svd = _by(rows, "svd")
    assert svd[6]["kendall_tau"] == pytest.approx(1.0) and svd[6]["top1"] == 1.0 and svd[6]["mrr@10"] == 1.0
    assert svd[2]["kendall_tau"] < 0.8 and svd[2]["top1"] < 0.7 and svd[2]["mrr@10"] < 0.8


def test_gradient_fit_improves_with_k_and_fits_observed_entries_only():
    # each query sees half the passages: the zero-filled SVD is biased there, the masked fit is not
    run, _ = _rank_k_run(observed=30)
    rows = capacity_probe(run, [1, 2, 6], methods=["gradient", "svd"], seed=0, steps=300)
    grad, svd = _by(rows, "gradient"), _by(rows, "svd")
    taus = [grad[k]["kendall_tau"] for k in (1, 2, 6)]
    assert taus[0] < taus[1] < taus[2]
    assert grad[6]["kendall_tau"] > 0.97 and grad[6]["top1"] == 1.0
    assert grad[2]["kendall_tau"] < 0.8
    assert grad[6]["kendall_tau"] > svd[6]["kendall_tau"] + 0.1
    # hard-impute (more SVDs, refilling the unobserved entries) moves the SVD toward the observed entries' fit
    refined = _by(capacity_probe(run, [6], methods=["svd"], svd_iters=40), "svd")
    assert refined[6]["kendall_tau"] > svd[6]["kendall_tau"] + 0.05
    # seeded: the same fit twice
    m = ScoreMatrix.from_run(run)
    assert np.array_equal(gradient_fit(m, 2, steps=20, seed=3), gradient_fit(m, 2, steps=20, seed=3))


def test_qrels_labels_add_a_teacher_row():
    run, _ = _rank_k_run(q=10, p=12, k=2)
    qrels = {f"q{i}": {"p0": 1} for i in range(10)}
    rows = capacity_probe(run, [2], methods=["svd"], qrels=qrels)
    assert rows[0]["method"] == "teacher" and rows[0]["k"] is None
    assert rows[0]["kendall_tau"] == pytest.approx(1.0)
    assert rows[1]["mrr@10"] == pytest.approx(rows[0]["mrr@10"])  # rank 2 is exact: same ranking as the teacher
    table = markdown_table(rows)
    assert table.splitlines()[2].startswith("| teacher | — |")


def test_command_writes_table_json_and_plot(tmp_path, capsys):
    from datamodules.formats import write_run

    run, _ = _rank_k_run(q=20, p=30, k=3, observed=20)
    path = tmp_path / "teacher_scores.trec"
    write_run(run, path, tag="teacher")
    rows = main(["--teacher_scores", str(path), "--dims", "4,2", "--method", "svd,gradient", "--steps", "100",
                 "--max_queries", "15"])
    out = tmp_path / "capacity"
    report = json.loads((out / "capacity.json").read_text())
    assert report["num_queries"] == 15 and report["labels"] == "teacher top-1" and report["dims"] == [2, 4]
    assert [(r["method"], r["k"]) for r in report["rows"]] == [("svd", 2), ("svd", 4), ("gradient", 2), ("gradient", 4)]
    for written, returned in zip(report["rows"], rows):
        assert written["method"] == returned["method"]
        assert [written[m] for m in ("k", "mrr@10", "kendall_tau", "top1")] == pytest.approx(
            [returned[m] for m in ("k", "mrr@10", "kendall_tau", "top1")])
    assert "| gradient | 4 |" in (out / "capacity.md").read_text() and "| svd | 2 |" in capsys.readouterr().out
    assert (out / "capacity.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_a_clear_error(tmp_path):
    import argparse

    with pytest.raises(argparse.ArgumentError, match="expected comma-separated positive integers, got '8,zero'"):
        main(["--teacher_scores", "x.trec", "--dims", "8,zero"])
    with pytest.raises(argparse.ArgumentError, match="pca"):
        main(["--teacher_scores", "x.trec", "--method", "pca"])
    with pytest.raises(FileNotFoundError, match="rankers predict"):
        main(["--teacher_scores", str(tmp_path / "missing.trec")])
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 p1 1 0.5 t\nq1 Q0 p2 2 high t\n")
    with pytest.raises(ValueError, match=r"bad\.trec.*2.*score"):
        main(["--teacher_scores", str(bad)])
    with pytest.raises(ValueError, match="dims must be positive"):
        capacity_probe({"q": {"a": 1.0, "b": 0.0}}, [0])
    with pytest.raises(ValueError, match="svd-iters"):
        main(["--teacher_scores", str(bad), "--svd_iters", "0"])
    with pytest.raises(ValueError, match="unknown method"):
        capacity_probe({"q": {"a": 1.0, "b": 0.0}}, [1], methods=["pca"])
