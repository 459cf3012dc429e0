"""Score diagnostics: hand-computed margins, Kendall τ-b against a brute-force count, top-1 agreement,
the plots, and the ScoreDiagnostics callback inside tiny Lightning fits (CSV and offline W&B)."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from rankers.evaluation.diagnostics import (
    PairTrace,
    agreement,
    kendall_tau,
    margins,
    normalised_margin,
    plot_capacity,
    plot_pair_evolution,
    plot_score_histograms,
    score_summary,
    split_scores,
    top1_agreement,
)


# --- pure functions ----------------------------------------------------------------------------
def test_normalised_margin_by_hand():
    # best positive 3.0, hardest negative 4.0, spread 4.0 - (-1.0) = 5.0 -> (3 - 4) / 5
    assert normalised_margin({"a": 3.0, "b": 1.0, "c": 4.0, "d": -1.0}, {"a", "b"}) == pytest.approx(-0.2)
    # the positive ranks first: (5 - 2) / (5 - 0)
    assert normalised_margin({"a": 5.0, "b": 2.0, "c": 0.0}, {"a"}) == pytest.approx(0.6)
    assert normalised_margin({"a": 2.0, "b": 2.0}, {"a"}) == 0.0  # max s == min s
    assert normalised_margin({"a": 1.0, "b": 0.0}, {"x"}) is None  # no positive among the candidates
    assert normalised_margin({"a": 1.0}, {"a"}) is None  # no negative


def test_score_summary_by_hand():
    run = {"q1": {"a": 5.0, "b": 2.0, "c": 0.0}, "q2": {"d": 1.0, "e": 3.0}, "q3": {"f": 1.0}}
    qrels = {"q1": {"a": 1, "c": 0}, "q2": {"d": 2}, "q3": {"zz": 1}}
    pos, neg = split_scores(run, qrels)
    assert sorted(pos) == [1.0, 5.0] and sorted(neg) == [0.0, 1.0, 2.0, 3.0]
    assert margins(run, qrels) == pytest.approx({"q1": 0.6, "q2": -1.0})
    s = score_summary(run, qrels)
    assert s["pos_score_mean"] == pytest.approx(3.0) and s["pos_score_std"] == pytest.approx(2.0)
    assert s["neg_score_mean"] == pytest.approx(1.5)
    assert s["hardneg_score_mean"] == pytest.approx((2.0 + 3.0 + 1.0) / 3)  # q3's only candidate is a negative
    assert s["margin_mean"] == pytest.approx(-0.2) and s["margin_positive_frac"] == pytest.approx(0.5)
    assert s["num_queries"] == 2
    assert math.isnan(score_summary({}, {})["margin_mean"])


def _tau_b_brute_force(x, y) -> float:
    """Kendall τ-b by counting every pair: (C − D) / sqrt((n0 − n1)(n0 − n2))."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0:
            ties_x += 1
        if dy == 0:
            ties_y += 1
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    n0 = len(x) * (len(x) - 1) / 2
    return (concordant - discordant) / math.sqrt((n0 - ties_x) * (n0 - ties_y))


def test_kendall_tau_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 25):
        for _ in range(5):
            x = rng.integers(0, 4, n).astype(float)  # many ties
            y = rng.integers(0, 4, n).astype(float)
            if len(set(x)) < 2 or len(set(y)) < 2:
                continue
            assert kendall_tau(x, y) == pytest.approx(_tau_b_brute_force(x, y), abs=1e-12)
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))  # constant: undefined
    assert math.isnan(kendall_tau([1.0], [2.0]))
    with pytest.raises(ValueError, match="differ in length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_top1_and_agreement_over_common_candidates():
    teacher = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"d": 1.0, "e": 2.0, "f": 0.0}, "q3": {"g": 1.0}}
    student = {"q1": {"a": 0.9, "b": 0.5, "c": 0.7, "x": 99.0},  # x is not scored by the teacher: ignored
               "q2": {"d": 5.0, "e": 4.0, "f": 3.0}, "q3": {"g": 0.0}}
    assert top1_agreement(teacher["q1"], student["q1"]) == 1.0
    assert top1_agreement(teacher["q2"], student["q2"]) == 0.0
    assert top1_agreement({"a": 1.0, "b": 1.0}, {"a": 0.0, "b": 0.0}) == 1.0  # ties break alike (id descending)
    assert math.isnan(top1_agreement({"a": 1.0}, {"b": 1.0}))
    agree = agreement(teacher, student)
    tau_q1 = _tau_b_brute_force([3.0, 2.0, 1.0], [0.9, 0.5, 0.7])  # 1/3
    tau_q2 = _tau_b_brute_force([1.0, 2.0, 0.0], [5.0, 4.0, 3.0])  # 1/3
    assert agree.num_queries == 2  # q3 has a single candidate
    assert agree.per_query_tau == pytest.approx({"q1": tau_q1, "q2": tau_q2})
    assert agree.kendall_tau == pytest.approx((tau_q1 + tau_q2) / 2)
    assert agree.top1 == pytest.approx(0.5)


def test_plots_write_small_pngs(tmp_path):
    rng = np.random.default_rng(0)
    panels = {"val": (rng.normal(1, 1, 40), rng.normal(0, 1, 400)), "train_subset": (rng.normal(3, 1, 40), rng.normal(0, 1, 400))}
    hist = plot_score_histograms(panels, tmp_path / "h.png", title="scores")
    traces = []
    for i in range(3):
        tr = PairTrace(f"q{i}", "p", "n")
        for epoch in range(4):
            tr.add(epoch, {f"q{i}": {"p": epoch + i, "n": epoch / 2}})
        traces.append(tr)
    assert traces[1].epochs == [0, 1, 2, 3] and traces[1].positive == [1.0, 2.0, 3.0, 4.0]
    pairs = plot_pair_evolution({"val": traces}, tmp_path / "p.png")
    rows = [{"method": m, "k": k, "mrr@10": k / 64, "kendall_tau": k / 64, "top1": k / 64}
            for m in ("svd", "gradient") for k in (8, 16, 32, 64)]
    cap = plot_capacity(rows + [{"method": "teacher", "k": None, "mrr@10": 0.9, "kendall_tau": 1.0, "top1": 1.0}],
                        tmp_path / "c.png")
    for path in (hist, pairs, cap):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 150_000
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_score_histograms({}, tmp_path / "x.png")


# --- the callback in tiny fits -------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine run far faster on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _datamodule():
    from datamodules.datamodule import RankingDataModule

    return RankingDataModule(dataset="embedded", embedded_scale=0.1, max_eval_queries=12, train_subset_size=8,
                             eval_depth=15, batch_size=8, eval_batch_size=64, num_negatives=3)


def _trainer(tmp_path: Path, callbacks, logger, epochs: int) -> pl.Trainer:
    return pl.Trainer(default_root_dir=tmp_path, max_epochs=epochs, limit_train_batches=2, accelerator="cpu",
                      devices=1, logger=logger, callbacks=callbacks, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      reload_dataloaders_every_n_epochs=1, log_every_n_steps=1)


@pytest.fixture(scope="module")
def csv_fit(tmp_path_factory, one_thread):
    """A DE trained two epochs with an online CA teacher; ScoreDiagnostics listed *before* the evaluator."""
    from lightning.pytorch.loggers import CSVLogger

    from callbacks.retrieval_eval import RetrievalEvaluator
    from callbacks.score_diagnostics import ScoreDiagnostics
    from rankers.models.cross_encoder import CrossAttentionRanker
    from rankers.models.dual_encoder import DualEncoderRanker

    tmp_path = tmp_path_factory.mktemp("diag_csv")
    pl.seed_everything(0)
    teacher = CrossAttentionRanker(backbone="embedded", max_length=64).eval()
    student = DualEncoderRanker(backbone="embedded", passage_max_length=64, lr=1e-3)
    object.__setattr__(student, "teacher", teacher)  # what teacher_checkpoint does, without a checkpoint file
    diag = ScoreDiagnostics(num_queries=10, track_pairs=4)
    evaluator = RetrievalEvaluator(metrics=("mrr@10",), full_retrieval=False, write_runs=False)
    trainer = _trainer(tmp_path, [diag, evaluator], CSVLogger(tmp_path, name="", version=""), epochs=2)
    dm = _datamodule()
    trainer.fit(student, datamodule=dm)
    return trainer, diag, evaluator, dm, teacher, tmp_path


def test_callback_logs_the_diagnostics_and_agreement(csv_fit):
    trainer, diag, evaluator, dm, teacher, _ = csv_fit
    assert trainer.callbacks.index(diag) > trainer.callbacks.index(evaluator)  # moved after the evaluator
    metrics = trainer.callback_metrics
    for name in ("val", "train_subset"):
        for key in ("margin_mean", "margin_median", "margin_positive_frac", "pos_score_mean", "neg_score_mean",
                    "hardneg_score_mean", "num_queries"):
            assert f"diag/{name}/{key}" in metrics
        assert {f"agree/{name}/kendall_tau", f"agree/{name}/top1"} <= set(metrics)
    assert "diag/gap/margin_mean" in metrics and "gap/rerank/mrr@10" in metrics

    # the logged numbers, recomputed independently from the evaluator's last run and the teacher
    run, qrels = evaluator.runs["val/rerank"], dm.eval_sets["val"].qrels
    fixed = diag.states["val"].query_ids
    usable = [q for q in qrels if q in run and {p for p, g in qrels[q].items() if g > 0} & run[q].keys()
              and run[q].keys() - {p for p, g in qrels[q].items() if g > 0}]
    assert len(fixed) >= 5 and fixed == usable[:10]
    by_hand = []
    for qid in fixed:
        scores = run[qid]
        rel = {p for p, g in qrels[qid].items() if g > 0}
        best_pos = max(s for p, s in scores.items() if p in rel)
        best_neg = max(s for p, s in scores.items() if p not in rel)
        by_hand.append((best_pos - best_neg) / (max(scores.values()) - min(scores.values())))
    assert float(metrics["diag/val/margin_mean"]) == pytest.approx(np.mean(by_hand), abs=1e-5)
    assert float(metrics["diag/val/num_queries"]) == len(fixed)

    from scipy.stats import kendalltau

    data = dm.load()
    taus, tops = [], []
    for qid in fixed:
        pids = sorted(run[qid])
        t = teacher.score([data.queries[dm.query_rows[qid]]["text"]] * len(pids),
                          [data.corpus[dm.corpus_rows[p]]["text"] for p in pids]).numpy()
        s = np.asarray([run[qid][p] for p in pids])
        taus.append(kendalltau(t, s).statistic)
        tops.append(float(pids[int(np.argmax(t))] == pids[int(np.argmax(s))]))
    assert float(metrics["agree/val/kendall_tau"]) == pytest.approx(np.mean(taus), abs=1e-4)
    assert float(metrics["agree/val/top1"]) == pytest.approx(np.mean(tops))

    # two epochs of history, the tracked pairs followed in both
    assert [h["epoch"] for h in diag.history["val"]] == [0.0, 1.0]
    traces = diag.states["val"].traces
    assert len(traces) == 4 and all(tr.epochs == [0, 1] for tr in traces)
    for tr in traces:
        assert qrels[tr.query_id].get(tr.positive_id, 0) > 0 and qrels[tr.query_id].get(tr.negative_id, 0) <= 0
        scores = np.asarray(list(run[tr.query_id].values()))  # plotted per query as (s − mean) / (max − min)
        spread = scores.max() - scores.min()
        assert tr.positive[-1] == pytest.approx((run[tr.query_id][tr.positive_id] - scores.mean()) / spread)
        assert tr.negative[-1] == pytest.approx((run[tr.query_id][tr.negative_id] - scores.mean()) / spread)


def test_callbacks_state_survives_a_weights_only_checkpoint(csv_fit, tmp_path):
    """ScoreDiagnostics and RetrievalEvaluator keep their history across a checkpoint (Lightning's
    callback state), and the state loads with ``torch.load(weights_only=True)``."""
    from callbacks.retrieval_eval import RetrievalEvaluator
    from callbacks.score_diagnostics import ScoreDiagnostics

    _, diag, evaluator, _, _, _ = csv_fit
    torch.save({"diag": diag.state_dict(), "eval": evaluator.state_dict()}, tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    fresh_diag, fresh_eval = ScoreDiagnostics(num_queries=10, track_pairs=4), RetrievalEvaluator()
    fresh_diag.load_state_dict(saved["diag"])
    fresh_eval.load_state_dict(saved["eval"])
    assert fresh_diag.history == diag.history and len(fresh_diag.history["val"]) == 2
    assert fresh_eval.history == evaluator.history and len(fresh_eval.history) == 2
    for name, state in diag.states.items():
        restored = fresh_diag.states[name]
        assert restored.query_ids == state.query_ids and restored.margins == state.margins
        assert [(t.query_id, t.epochs, t.positive, t.negative) for t in restored.traces] == \
               [(t.query_id, t.epochs, t.positive, t.negative) for t in state.traces]
    assert fresh_diag.state_dict() == diag.state_dict()


def test_callback_writes_the_plots_and_csv(csv_fit):
    trainer, _, _, _, _, tmp_path = csv_fit
    plots = tmp_path / "plots"
    for name in ("scores_epoch00.png", "scores_epoch01.png", "pairs.png", "margins.png"):
        assert (plots / name).read_bytes()[:4] == b"\x89PNG"
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"diag/val/margin_mean", "agree/val/top1", "diag/train_subset/pos_score_mean"} <= set(header)


def test_callback_with_offline_wandb_and_a_teacher_file(csv_fit, tmp_path, monkeypatch):
    """W&B offline: histograms, images and the example table go to the offline run; agreement comes
    from a TREC teacher-score file."""
    import wandb

    from callbacks.retrieval_eval import RetrievalEvaluator
    from callbacks.score_diagnostics import ScoreDiagnostics
    from datamodules.formats import write_run
    from rankers.models.dual_encoder import DualEncoderRanker
    from rankers.loggers import WandbLogger

    _, _, evaluator, dm, _, _ = csv_fit
    teacher_file = tmp_path / "teacher_val.trec"
    fake_teacher = {q: {p: -s for p, s in c.items()} for q, c in evaluator.runs["val/rerank"].items()}
    write_run(fake_teacher, teacher_file, tag="teacher")

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="rankers-test", save_dir=str(tmp_path))
    pl.seed_everything(0)
    student = DualEncoderRanker(backbone="embedded", passage_max_length=64)
    diag = ScoreDiagnostics(num_queries=6, track_pairs=2, teacher_scores=str(teacher_file), sets=("val",),
                            plot_dir=str(tmp_path / "pics"))
    trainer = _trainer(tmp_path, [RetrievalEvaluator(metrics=("mrr@10",), full_retrieval=False, write_runs=False), diag],
                       logger, epochs=1)
    try:
        trainer.fit(student, datamodule=_datamodule())
        run_dir = Path(logger.experiment.dir)
    finally:
        wandb.finish()
    metrics = trainer.callback_metrics
    assert "agree/val/kendall_tau" in metrics and "diag/train_subset/margin_mean" not in metrics
    assert (tmp_path / "pics" / "scores_epoch00.png").exists()
    assert not diag.warned, diag.warned  # W&B logging raised nothing
    tables = list(run_dir.glob("media/table/diag/val/examples*.table.json"))
    assert tables, sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    import json

    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["epoch", "query_id", "query"] and len(table["data"]) == 3 * 5


def test_callback_needs_the_evaluator():
    from callbacks.score_diagnostics import ScoreDiagnostics

    trainer = pl.Trainer(logger=False, callbacks=[ScoreDiagnostics()], enable_checkpointing=False)
    with pytest.raises(ValueError, match="RetrievalEvaluator"):
        ScoreDiagnostics.evaluator(trainer)
    with pytest.raises(ValueError, match="num_queries"):
        ScoreDiagnostics(num_queries=0)


def test_normalised_scores_make_the_margin_a_difference():
    from rankers.evaluation.diagnostics import normalise_per_query

    run = {"q1": {"a": 3.0, "b": 1.0, "c": 4.0, "d": -1.0}, "q2": {"e": 2.0, "f": 2.0}}
    norm = normalise_per_query(run)
    assert norm["q1"] == pytest.approx({"a": 1.25 / 5, "b": -0.75 / 5, "c": 2.25 / 5, "d": -2.75 / 5})
    assert norm["q2"] == {"e": 0.0, "f": 0.0}
    assert norm["q1"]["a"] - norm["q1"]["c"] == pytest.approx(normalised_margin(run["q1"], {"a", "b"}))
