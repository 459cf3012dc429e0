"""``rankers compare``: paired tests between TREC runs, checked against scipy on hand-built runs."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from scipy import stats

from rankers.commands.compare import main


def _write_run(path, ranking: dict[str, list[str]]):
    lines = [f"{q} Q0 {p} {r + 1} {10.0 - r} sys\n" for q, ps in ranking.items() for r, p in enumerate(ps)]
    path.write_text("".join(lines))
    return path


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\tpos{i}\t1\n" for i in range(30)))
    rankings = {}
    for name, shift in (("a", 0), ("b", 1), ("c", 3)):
        ranking = {}
        for i in range(30):
            rank = int(min(9, max(0, rng.integers(0, 4) + shift)))
            ranking[f"q{i}"] = [f"neg{i}_{k}" for k in range(rank)] + [f"pos{i}"] + [f"neg{i}_x{k}" for k in range(3)]
        rankings[name] = ranking
    paths = {name: _write_run(tmp_path / f"{name}.trec", r) for name, r in rankings.items()}
    return qrels, paths, rankings


def _rr(ranking):
    return np.array([1.0 / (ranking[f"q{i}"].index(f"pos{i}") + 1) for i in range(30)])


def test_compare_matches_scipy_paired_t_test_with_holm(runs, tmp_path, capsys):
    qrels, paths, rankings = runs
    out = tmp_path / "compare.md"
    result = main([f"base={paths['a']}", f"B={paths['b']}", str(paths["c"]), "--qrels", str(qrels),
                   "--output", str(out)])
    a, b, c = (_rr(rankings[n]) for n in "abc")
    raw = [stats.ttest_rel(b, a).pvalue, stats.ttest_rel(c, a).pvalue]
    order = np.argsort(raw)  # Holm: the smaller p times 2, the larger times 1, made monotone
    holm = [0.0, 0.0]
    holm[order[0]] = min(1.0, raw[order[0]] * 2)
    holm[order[1]] = min(1.0, max(holm[order[0]], raw[order[1]]))
    rows = {row["system"]: row for row in result["tests"]}
    assert set(rows) == {"B", "c.trec"} and all(row["baseline"] == "base" for row in rows.values())
    for name, mean, p, corrected in (("B", b.mean(), raw[0], holm[0]), ("c.trec", c.mean(), raw[1], holm[1])):
        assert rows[name]["mean"] == pytest.approx(mean)
        assert rows[name]["p_value"] == pytest.approx(p) and rows[name]["p_corrected"] == pytest.approx(corrected)
        assert rows[name]["n_queries"] == 30
    assert result["means"]["base"]["mrr@10"] == pytest.approx(a.mean())
    printed = capsys.readouterr().out
    assert "| base | 30 |" in printed and "p (t-test) | p (holm)" in printed and out.read_text() == printed


def test_compare_baseline_test_and_compressed_inputs(runs, tmp_path):
    qrels, paths, rankings = runs
    packed = tmp_path / "b.trec.gz"
    with gzip.open(packed, "wt") as fh:
        fh.write(paths["b"].read_text())
    result = main([str(paths["a"]), str(packed), "--qrels", str(qrels), "--baseline", "b.trec.gz",
                   "--test", "wilcoxon", "--correction", "none", "--metric", "ndcg@10"])
    (row,) = result["tests"]
    assert row["system"] == "a.trec" and row["test"] == "wilcoxon" and row["metric"] == "ndcg@10"
    a, b = _rr(rankings["a"]), _rr(rankings["b"])
    assert row["delta"] != 0 and (row["delta"] > 0) == (a.mean() > b.mean())


def test_compare_on_map_from_ir_measures(runs):
    """MAP (not in torchmetrics) through ir-measures: with one relevant passage per query AP is 1 / rank."""
    qrels, paths, rankings = runs
    result = main([str(paths["a"]), str(paths["c"]), "--qrels", str(qrels), "--metric", "MAP"])
    (row,) = result["tests"]
    a, c = _rr(rankings["a"]), _rr(rankings["c"])
    assert row["metric"] == "map" and row["mean"] == pytest.approx(c.mean()) and row["baseline_mean"] == pytest.approx(a.mean())
    assert row["p_value"] == pytest.approx(stats.ttest_rel(c, a).pvalue)


def test_compare_errors_name_the_problem(runs, tmp_path):
    qrels, paths, _ = runs
    with pytest.raises(ValueError, match="needs at least two runs"):
        main([str(paths["a"]), "--qrels", str(qrels)])
    with pytest.raises(FileNotFoundError, match="nowhere.trec does not exist"):
        main([str(paths["a"]), str(tmp_path / "nowhere.trec"), "--qrels", str(qrels)])
    with pytest.raises(ValueError, match="two runs are named 'a.trec'"):
        main([str(paths["a"]), str(paths["a"]), "--qrels", str(qrels)])
    with pytest.raises(ValueError, match="--baseline 'zzz' is not one of the runs"):
        main([str(paths["a"]), str(paths["b"]), "--qrels", str(qrels), "--baseline", "zzz"])
