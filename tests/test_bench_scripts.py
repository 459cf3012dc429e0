"""bench/paper_seeds.py aggregation and bench/paper_check.py commands, on fake files (no training)."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import paper_check  # noqa: E402
import paper_seeds  # noqa: E402


def _table(mrr_teacher, mrr_labels, mrr_m3se, gap, seconds):
    rows = [
        {"model": "BM25 candidates", "eval": "candidate order", "mrr@10": 0.30, "ndcg@10": 0.35, "recall@100": 0.9},
        {"model": "CA teacher", "eval": "re-rank", "mrr@10": mrr_teacher, "ndcg@10": mrr_teacher + 0.05, "recall@100": 0.9},
        {"model": "DE labels", "eval": "re-rank", "mrr@10": mrr_labels, "ndcg@10": mrr_labels + 0.05, "recall@100": 0.9},
        {"model": "DE labels", "eval": "full retrieval (dense index)", "mrr@10": 0.2, "ndcg@10": 0.25, "recall@100": 0.8},
        {"model": "DE m3se", "eval": "re-rank", "mrr@10": mrr_m3se, "ndcg@10": mrr_m3se + 0.05, "recall@100": 0.9,
         "gap_closed": gap},
    ]
    return {"rows": rows, "seconds": seconds, "args": {}, "fit_seconds": {}}


@pytest.fixture
def two_seeds(tmp_path):
    paths = {}
    for seed, payload in ((0, _table(0.60, 0.40, 0.50, 0.5, 100.0)), (1, _table(0.70, 0.40, 0.61, 0.7, 120.0))):
        path = tmp_path / f"seed{seed}" / "paper_table.json"
        path.parent.mkdir()
        path.write_text(json.dumps(payload))
        paths[seed] = path
    return paths


def test_aggregate_two_fake_seeds(two_seeds):
    agg = paper_seeds.aggregate(paper_seeds.load_tables(two_seeds), wall={0: 101.5, 1: None})
    assert agg["seeds"] == [0, 1]
    keys = [(r["model"], r["eval"]) for r in agg["rows"]]
    assert keys == [("BM25 candidates", "candidate order"), ("CA teacher", "re-rank"), ("DE labels", "re-rank"),
                    ("DE labels", "full retrieval (dense index)"), ("DE m3se", "re-rank")]
    rows = {k: r for k, r in zip(keys, agg["rows"])}
    teacher = rows[("CA teacher", "re-rank")]
    assert teacher["seeds"] == 2
    assert teacher["mrr@10"]["mean"] == pytest.approx(0.65)
    assert teacher["mrr@10"]["sd"] == pytest.approx(statistics.stdev([0.6, 0.7]))  # sample sd
    assert teacher["mrr@10"]["sd"] == pytest.approx(0.1 / 2**0.5)
    assert teacher["ndcg@10"]["mean"] == pytest.approx(0.70)
    assert teacher["gap_closed"] is None
    labels = rows[("DE labels", "re-rank")]
    assert labels["mrr@10"]["sd"] == pytest.approx(0.0)
    m3se = rows[("DE m3se", "re-rank")]
    assert m3se["gap_closed"]["mean"] == pytest.approx(0.6)
    assert m3se["gap_closed"]["sd"] == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert m3se["gap_closed"]["n"] == 2
    assert agg["per_seed"] == [{"seed": 0, "seconds": 100.0, "wall_seconds": 101.5},
                               {"seed": 1, "seconds": 120.0, "wall_seconds": None}]

    text = paper_seeds.aggregate_markdown(agg)
    assert "| CA teacher | re-rank | 2 | 0.6500 ± 0.0707 | 0.7000 ± 0.0707 | — |" in text
    assert "| DE m3se | re-rank | 2 | 0.5550 ± 0.0778 | 0.6050 ± 0.0778 | 60% ± 14% |" in text
    assert "| 0 | 100 | 102 |" in text and "| 1 | 120 | reused (--skip-existing) |" in text


def test_aggregate_missing_gap_and_rows(two_seeds):
    tables = paper_seeds.load_tables(two_seeds)
    tables[1]["rows"][-1]["gap_closed"] = None  # teacher not above DE labels on that seed
    tables[1]["rows"] = [r for r in tables[1]["rows"] if r["eval"] != "full retrieval (dense index)"]
    agg = paper_seeds.aggregate(tables)
    rows = {(r["model"], r["eval"]): r for r in agg["rows"]}
    assert rows[("DE m3se", "re-rank")]["gap_closed"] == {"mean": 0.5, "sd": None, "n": 1, "values": [0.5]}
    full = rows[("DE labels", "full retrieval (dense index)")]
    assert full["seeds"] == 1 and full["mrr@10"]["sd"] is None
    text = paper_seeds.aggregate_markdown(agg)
    assert "| DE labels | full retrieval (dense index) | 1 of 2 | 0.2000 | 0.2500 | — |" in text
    assert "50% (of 1 seeds)" in text


def test_main_skip_existing_only_aggregates(two_seeds, capsys):
    out = two_seeds[0].parents[1]
    assert paper_seeds.main(["--seeds", "0,1", "--output-dir", str(out), "--skip-existing"]) == 0
    saved = json.loads((out / "paper_seeds.json").read_text())
    assert saved["seeds"] == [0, 1] and len(saved["rows"]) == 5
    md = (out / "paper_seeds.md").read_text()
    assert "- CPU:" in md and "torch" in md and "0.6500 ± 0.0707" in md


def test_seed_command_and_extra_args():
    ours, extra = paper_seeds.split_extra(["--seeds", "1", "--", "--losses", "kl"])
    assert ours == ["--seeds", "1"] and extra == ["--losses", "kl"]
    cmd = paper_seeds.reproduce_command("OUT/seed1", extra, seed=1)
    assert cmd[1:] == ["-m", "rankers", "reproduce", "--output_dir", "OUT/seed1", "--seed", "1", "--losses", "kl"]
    with pytest.raises(SystemExit, match="--seed"):
        paper_seeds.parse_args(["--", "--seed", "3"])


def test_paper_check_commands(capsys):
    args, extra = paper_check.parse_args(["--output-dir", "OUT", "--data-root", "DATA", "--", "--eval_depth", "30"])
    wikiqa = paper_check.dataset_command(args, "wikiqa", extra)
    assert wikiqa[3:] == ["reproduce", "--output_dir", str(Path("OUT") / "wikiqa"), "--seed", "0",
                          "--dataset", str(Path("DATA") / "wikiqa"), "--val_split", "dev", "--test_split", "test",
                          "--teacher_backbone", "minilm", "--student_backbone", "minilm",
                          "--max_train_queries", "256", "--max_eval_queries", "100",
                          "--teacher_epochs", "3", "--student_epochs", "1", "--eval_depth", "30"]
    scifact = paper_check.dataset_command(args, "scifact", extra)
    assert scifact[scifact.index("--val_split") + 1] == "test" and scifact[scifact.index("--test_split") + 1] == "test"
    args, extra = paper_check.parse_args(["--max-train-queries", "0", "--datasets", "scifact"])
    command = paper_check.dataset_command(args, "scifact", extra)
    assert command[command.index("--max_train_queries") + 1] == "0"  # reproduce: 0 = all queries
    with pytest.raises(SystemExit):
        paper_check.parse_args(["--datasets", "msmarco"])
    with pytest.raises(SystemExit, match="--dataset"):
        paper_check.parse_args(["--", "--dataset", "x"])
    assert paper_check.main(["--dry-run"]) == 0
    assert "wikiqa: " in capsys.readouterr().out
