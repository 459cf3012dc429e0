"""``python -m rankers reproduce``: the paper's loop end to end.

1. train the cross-attention (CA) teacher on labels (listwise CE over BM25-mined hard negatives);
2. score every training query's positives and negative pool with the best teacher checkpoint
   (the offline teacher-score file, exactly what ``predict`` with ``configs/ca_teacher.yaml`` writes);
3. train a dual encoder (DE) on labels, and one DE per distillation loss on the teacher's scores,
   from the same initialisation;
4. evaluate everything on the test split: re-rank of the same candidates for all models (the paper's
   setting), plus full retrieval through a dense index for the DEs;
5. write ``paper_table.md`` / ``paper_table.json`` with the share of the CA−DE gap each distilled DE
   closes: ``(DE_distill − DE_labels) / (CA − DE_labels)`` on the re-rank MRR@10.

Every stage is the same LightningModule / DataModule / callback code the config files run. On one device
each stage (a teacher, the capacity probe, each student) runs in a fresh process of its own
(``--isolate_stages``, on by default): a stage's freed heap is not always handed back to the OS, so in
one process the students ran on top of what the teacher's training left behind (peak RSS 3.5 GB on the
embedded default against 2.8 GB for the largest stage alone, bench/RESULTS.md §4). Results come back
pickled; the table is written by this process, which imports no model.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TABLE_METRICS = ("mrr@10", "ndcg@10", "recall@100")


def _capacity_dims(text: str | list[int]) -> list[int]:
    """``--capacity_dims``: '' (skip the probe) or what ``rankers capacity --dims`` takes, checked before any training."""
    from rankers.commands.parsing import parse_dims  # light: the main process imports no torch

    if isinstance(text, list):
        return parse_dims(text) if text else []
    return parse_dims(text) if text.strip() else []


def build_parser():
    from rankers.commands.parsing import command_parser
    from rankers.commands.recipe import recipe_defaults

    d = recipe_defaults()  # the recipe is the config files' (rankers/commands/recipe.py)
    p = command_parser("reproduce", __doc__)
    a = p.add_argument
    a("--output_dir", default="runs/demo", help="where checkpoints, runs and the table go")
    a("--dataset", default="embedded", help="'embedded', a BEIR / MS MARCO directory, or an HF dataset name")
    a("--embedded_scale", type=float, default=1.0, help="size multiplier of the embedded default data")
    a("--embedded_spurious_cue", action="store_true",
      help="plant the embedded default's train-only cue (shows overfitting; also derails the teacher)")
    a("--embedded_label_noise", type=float, default=0.0,
      help="share of the embedded default's single-fact training queries judged on a wrong passage (annotator slips)")
    a("--embedded_label_noise_kind", default="near_miss", choices=["near_miss", "random"],
      help="where a slip lands: a passage whose fact differs in one word, or any training passage without the fact")
    a("--teacher_backbone", default=d["teacher_backbone"],
      help="CA backbone (configs/model/ca_teacher.yaml): 'minilm' (all-MiniLM-L6-v2, offline), 'tiny' (random "
           "2-layer BERT), hub name or local directory")
    a("--student_backbone", default=d["student_backbone"],
      help="DE backbone (configs/model/de_labels.yaml; same choices)")
    a("--student_num_layers", type=int, default=0,
      help="the student keeps the first k layers of its backbone (the paper: 12-layer CA, 6-layer DE); 0 = all "
           "(a 3-layer MiniLM student stays below BM25 on the embedded default, see README)")
    a("--pooling", default=d["pooling"], choices=["cls", "mean"], help="DE pooling (configs/model/de_labels.yaml)")
    a("--similarity", default=d["similarity"], choices=["cos", "dot"],
      help="DE similarity (configs/model/de_labels.yaml; all-MiniLM-L6-v2 was trained with cosine / 0.05)")
    a("--temperature", type=float, default=d["temperature"], help="DE scores are similarity / temperature")
    a("--losses", default=d["losses"],
      help="comma-separated distillation losses: m3se,margin_mse,kl,softmax_ce,mse,rankdistil over each query's own "
           "candidates, or kl_in_batch (the student's softmax over the batch's passages, the teacher's mass on the "
           "own candidates) (default: configs/model/de_distill.yaml's)")
    a("--label_weight", type=float, default=d["label_weight"],
      help="weight of the one-hot label loss mixed into distillation (configs/model/de_distill.yaml)")
    a("--distillation_temperature", type=float, default=None,
      help="temperature T of the softmax losses (kl, softmax_ce): both score lists divided by T, loss times T² "
           "(Hinton et al. 2015); default: configs/model/de_distill.yaml's, else the class default")
    a("--train_split", default="train")
    a("--val_split", default="dev")
    a("--test_split", default="test")
    a("--teacher_checkpoint", default=None,
      help="reuse this CA checkpoint (e.g. OUTPUT_DIR/ca_teacher/checkpoints/best.ckpt of an earlier run) instead "
           "of training the teacher: it is still tested and scores the training candidates")
    a("--teacher_scores", default=None,
      help="distil the students from this teacher-score file (any format --data.teacher_scores reads: a TREC run, "
           "Hofstaetter et al.'s pair TSV, ...) instead of the trained teacher's; the CA row is still this run's teacher")
    a("--teacher_folds", type=int, default=1,
      help="K >= 2: cross-fitted teacher scores -- K teachers, each trained on the training queries outside one "
           "fold, score only that fold, so no student target comes from a teacher that saw its judgment")
    a("--teacher_epochs", type=int, default=d["teacher_epochs"],
      help="(configs/ca_teacher.yaml trainer.max_epochs)")
    a("--teacher_val_every", type=int, default=0,
      help="validate the teacher every N epochs (0: only after the last one, which is then its checkpoint)")
    a("--student_epochs", type=int, default=d["student_epochs"],
      help="(configs/de_distill.yaml trainer.max_epochs)")
    a("--teacher_lr", type=float, default=d["teacher_lr"], help="(configs/model/ca_teacher.yaml)")
    a("--teacher_pooling", default=d["teacher_pooling"], choices=["cls", "segments"],
      help="the CA's head (configs/model/ca_teacher.yaml): a classifier on [CLS], or the cosine of the pair's "
           "mean-pooled query and passage segments (starts from a sentence-embedding checkpoint's own similarity)")
    a("--teacher_head_lr", type=float, default=d["teacher_head_lr"],
      help="learning rate of the CA's fresh scoring head (configs/model/ca_teacher.yaml)")
    a("--student_lr", type=float, default=d["student_lr"], help="(configs/model/de_labels.yaml)")
    a("--batch_size", type=int, default=d["batch_size"],
      help="training queries per batch (configs/data/embedded.yaml)")
    a("--num_negatives", type=int, default=d["num_negatives"],
      help="hard negatives per training query and step for the students (configs/data/embedded.yaml; the teacher "
           "scores every one)")
    a("--teacher_num_negatives", type=int, default=d["teacher_num_negatives"],
      help="hard negatives per query and step for the teacher (configs/data/embedded_teacher.yaml)")
    a("--max_length", type=int, default=d["max_length"],
      help="CA pair length; DE passages use it too (configs/model/ca_teacher.yaml)")
    a("--query_max_length", type=int, default=d["query_max_length"],
      help="(configs/model/de_labels.yaml)")
    a("--max_train_queries", type=int, default=d["max_train_queries"],
      help="training queries (0 = all; configs/data/embedded.yaml)")
    a("--max_eval_queries", type=int, default=0,
      help="queries of each eval split (0 = all: the embedded default's 200 dev and 300 test queries; a sample "
           "of them adds which-queries noise of the size of the effects measured, see bench/RESULTS.md §4)")
    a("--eval_depth", type=int, default=d["eval_depth"],
      help="candidates per query to re-rank (configs/data/embedded.yaml)")
    a("--negative_window", default=d["negative_window"],
      help="rank window lo,hi of the BM25 candidates negatives come from (configs/data/embedded.yaml)")
    a("--train_subset", type=int, default=d["train_subset"],
      help="training queries evaluated each epoch (overfitting gap; configs/data/embedded.yaml)")
    a("--refresh_every", type=int, default=0,
      help="students re-mine their negatives with themselves every N epochs (ANCE-style); 0 = BM25 negatives")
    a("--denoise_margin", type=float, default=None,
      help="students drop mined negatives the teacher scores within this margin of the positive (RocketQA)")
    a("--capacity_dims", type=_capacity_dims, default="4,8,16,32,64",
      help="embedding sizes for the capacity probe ('' to skip)")
    a("--accelerator", default="auto")
    a("--devices", default="1")
    a("--precision", default="auto",
      help="'auto': bf16-mixed where the GPU / CPU has native bf16 (on a CPU also measured >= 1.1x fp32 by "
           "rankers.precision's probe), else 32-true; or any Lightning precision")
    a("--num_workers", type=int, default=0)
    a("--seed", type=int, default=d["seed"], help="(configs/de_distill.yaml seed_everything)")
    a("--isolate_stages", type=bool, default=True,
      help="run each stage (teacher, capacity probe, each student) in a fresh process, so peak memory is the "
           "largest stage's, not their sum; only with one device (with more, Lightning's DDP launcher re-runs "
           "the command, and the stages share one process); false: everything in this process")
    a("--wandb", action="store_true", help="log to W&B (offline when no key / network)")
    return p


def _trainer(args, root: Path, epochs: int, callbacks: list, monitor: bool = True, val_every: int = 1):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(root, name="", version="")]
    if args.wandb:
        from rankers.loggers import WandbLogger

        loggers.append(WandbLogger(project="rankers", name=root.name, save_dir=str(root)))
    if monitor:
        callbacks = [*callbacks, ModelCheckpoint(dirpath=root / "checkpoints", monitor="val/rerank/mrr@10",
                                                 mode="max", save_last=True, filename="best")]
    from rankers.commands.console import progress_enabled
    from rankers.precision import resolve_precision

    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    return pl.Trainer(
        default_root_dir=root, max_epochs=epochs, accelerator=args.accelerator, devices=devices,
        precision=resolve_precision(args.precision, args.accelerator), logger=loggers, callbacks=callbacks, reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0, log_every_n_steps=10, enable_progress_bar=progress_enabled(), enable_model_summary=False, check_val_every_n_epoch=val_every,
        deterministic=False,
    )


def _datamodule(args, **overrides):
    from datamodules.datamodule import RankingDataModule
    from rankers.models.checkpoints import load_checkpoint

    lo, hi = (int(x) for x in args.negative_window.split(","))
    kw = dict(dataset=args.dataset, embedded_scale=args.embedded_scale, embedded_spurious_cue=args.embedded_spurious_cue,
              embedded_label_noise=args.embedded_label_noise,
              embedded_label_noise_kind=args.embedded_label_noise_kind, negative_window=(lo, hi), train_subset_size=args.train_subset, train_split=args.train_split,
              val_split=args.val_split, test_split=args.test_split, num_negatives=args.num_negatives,
              batch_size=args.batch_size, eval_depth=args.eval_depth, max_train_queries=args.max_train_queries or None,
              max_eval_queries=args.max_eval_queries or None, num_workers=args.num_workers, seed=args.seed,
              model_loader=load_checkpoint)
    kw.update(overrides)
    return RankingDataModule(**kw)


def _evaluator(root: Path, refresh_every: int = 0):
    """The end-of-epoch evaluation; with ``refresh_every`` it also re-mines the negatives (ANCE)."""
    from callbacks.negative_refresh import NegativeRefresh
    from callbacks.retrieval_eval import RetrievalEvaluator

    kw = dict(metrics=("mrr@10", "ndcg@10", "recall@100", "recall@1000"), output_dir=str(root))
    return NegativeRefresh(every_n_epochs=refresh_every, **kw) if refresh_every else RetrievalEvaluator(**kw)


def _test_results(evaluator) -> dict[str, dict[str, float]]:
    return {k: v for k, v in evaluator.results.items() if k.startswith("test/")}


def _fit_and_test(args, name: str, model, dm, root: Path, epochs: int, val_every: int = 1,
                  refresh_every: int = 0) -> dict[str, dict[str, float]]:
    from callbacks.score_diagnostics import ScoreDiagnostics

    evaluator = _evaluator(root, refresh_every)
    trainer = _trainer(args, root, epochs, [evaluator, ScoreDiagnostics(plot_dir=str(root / "plots"))],
                       val_every=val_every)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - start
    trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)
    results = _test_results(evaluator)
    results["_meta"] = {"fit_seconds": fit_s, "best_checkpoint": trainer.checkpoint_callback.best_model_path}
    results["_run"] = evaluator.runs.get("test/rerank")
    plot_gap_curves(evaluator.history, root / "plots" / "gap.png", f"{name}: train subset vs val")
    for key in ("rerank", "retrieval"):  # the overfitting gap at the last epoch: train subset vs val
        if f"train_subset/{key}" in evaluator.history[-1] and f"val/{key}" in evaluator.history[-1]:
            results[f"gap/{key}"] = {"train_subset": evaluator.history[-1][f"train_subset/{key}"]["mrr@10"],
                                     "val": evaluator.history[-1][f"val/{key}"]["mrr@10"]}
    log.info("%s done in %.0fs: %s", name, fit_s, {k: v for k, v in results.items() if k != "_run"})
    return results


def _test_only(args, model, dm, root: Path, ckpt: str) -> dict[str, dict[str, float]]:
    """Test an existing checkpoint (``--teacher_checkpoint``): the teacher row without training it."""
    evaluator = _evaluator(root)
    trainer = _trainer(args, root, 1, [evaluator], monitor=False)
    trainer.test(model, datamodule=dm, ckpt_path=ckpt, verbose=False)
    results = _test_results(evaluator)
    results["_meta"] = {"fit_seconds": 0.0, "best_checkpoint": ckpt}
    results["_run"] = evaluator.runs.get("test/rerank")
    return results


def merge_runs(paths: list[Path], output: Path) -> None:
    """Concatenate score files over disjoint query sets (the folds' out-of-fold teacher scores) into one run."""
    from datamodules.formats import read_run, write_run

    merged: dict[str, dict[str, float]] = {}
    for path in paths:
        for qid, scores in read_run(path).items():
            if qid in merged:
                raise ValueError(f"{path}: query '{qid}' is also in an earlier fold's score file; folds must be disjoint")
            merged[qid] = scores
    write_run(merged, output, tag="ca-teacher-folds")


def teacher_ensemble(teachers: list[dict[str, Any]], qrels) -> dict[str, Any]:
    """The CA row of a cross-fitted run: the fold teachers as one model (the mean of their scores on each
    test candidate), with the mean of their overfitting gaps (each on its own training queries)."""
    from rankers.evaluation.metrics import evaluate_run

    runs = [t["_run"] for t in teachers]
    run = {q: {p: sum(r[q][p] for r in runs) / len(runs) for p in runs[0][q]} for q in runs[0]}
    metrics = list(teachers[0]["test/rerank"])
    result = evaluate_run(run, qrels, metrics)
    out: dict[str, Any] = {"test/rerank": {m: float(result[m]) for m in metrics}, "_run": run,
                           "_meta": {"fit_seconds": sum(t["_meta"]["fit_seconds"] for t in teachers),
                                     "best_checkpoint": [t["_meta"]["best_checkpoint"] for t in teachers]},
                           "_folds": [t["test/rerank"] for t in teachers]}
    gaps = [t["gap/rerank"] for t in teachers if "gap/rerank" in t]
    if len(gaps) == len(teachers):
        out["gap/rerank"] = {k: sum(g[k] for g in gaps) / len(gaps) for k in ("train_subset", "val")}
    return out


def release_memory() -> None:
    """Drop a finished stage's model, optimizer and trainer before the next one is built, and hand freed
    heap pages back to the OS (glibc keeps them otherwise, so peak RSS would add up over the stages)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def plot_gap_curves(history: list[dict[str, dict[str, float]]], path: Path, title: str) -> None:
    """MRR@10 per epoch on the training-query subset and on validation (the overfitting gap)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    epochs = list(range(len(history)))
    for key, style in (("train_subset/rerank", "-"), ("val/rerank", "--"), ("train_subset/retrieval", "-"),
                       ("val/retrieval", "--")):
        values = [h.get(key, {}).get("mrr@10") for h in history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, style, marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("MRR@10")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def bm25_baseline(dm) -> dict[str, float]:
    """Metrics of the candidate run itself (BM25 or the collection's candidates) on the test split."""
    from rankers.evaluation.metrics import evaluate_run

    dm.setup("test")
    pairs = dm.eval_sets["test"]
    run = dm.split_candidate_run(dm.test_split, list(pairs.qrels))
    result = evaluate_run(run, pairs.qrels, TABLE_METRICS)
    return {m: float(result[m]) for m in TABLE_METRICS}


def paired_significance(results: dict[str, Any], qrels) -> list[dict[str, Any]]:
    """Each distilled student and the CA vs the DE on labels on the test queries (re-rank MRR@10):
    two-sided paired t-test, Holm correction over these comparisons
    (:func:`rankers.evaluation.significance.compare_systems`)."""
    from rankers.evaluation.significance import compare_systems

    runs = {name: res["_run"] for name, res in results.items() if res.get("_run") is not None}
    if "DE labels" not in runs or len(runs) < 2:
        return []
    ordered = {"DE labels": runs["DE labels"], **{k: v for k, v in runs.items() if k not in ("DE labels", "CA teacher")}}
    if "CA teacher" in runs:
        ordered["CA teacher"] = runs["CA teacher"]
    return compare_systems(ordered, qrels, "mrr@10", baseline="DE labels", test="t-test", correction="holm")


def machine_line() -> str:
    import platform

    import torch

    from rankers.precision import cpu_bf16_speedup, cpu_has_native_bf16, cpu_model

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    bf16 = f"native bf16, bf16 autocast {cpu_bf16_speedup():.2f}x fp32" if cpu_has_native_bf16() else "no native bf16"
    return (f"{cpu_model()} ({torch.get_num_threads()} threads, {bf16}), {gpu}, "
            f"torch {torch.__version__}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")


def gap_closed(distilled: float, labels: float, teacher: float) -> float | None:
    """(DE_distill − DE_labels) / (CA − DE_labels); None when the teacher is not above DE_labels."""
    denom = teacher - labels
    return None if denom <= 0 else (distilled - labels) / denom


def make_table(rows: list[dict[str, Any]]) -> str:
    head = "| model | eval | " + " | ".join(TABLE_METRICS) + " | gap closed |"
    lines = [head, "|" + "---|" * (len(TABLE_METRICS) + 3)]
    for r in rows:
        gap = r.get("gap_closed")
        gap_s = "—" if gap is None else f"{100 * gap:.0f}%"
        lines.append(f"| {r['model']} | {r['eval']} | " + " | ".join(f"{r[m]:.4f}" for m in TABLE_METRICS) + f" | {gap_s} |")
    return "\n".join(lines)


def teacher_init_args(args) -> dict[str, Any]:
    """The CA teacher: configs/model/ca_teacher.yaml's init_args with reproduce's flags on top."""
    from rankers.commands.recipe import model_init_args

    return {**model_init_args("model/ca_teacher.yaml"), "backbone": args.teacher_backbone,
            "max_length": args.max_length, "lr": args.teacher_lr, "head_lr": args.teacher_head_lr,
            "pooling": args.teacher_pooling}


def student_init_args(args, loss: str | None) -> dict[str, Any]:
    """A DE student: configs/model/de_labels.yaml (``loss`` None) or de_distill.yaml with ``loss``, under
    reproduce's flags."""
    from rankers.commands.recipe import model_init_args

    kw = model_init_args("model/de_labels.yaml" if loss is None else "model/de_distill.yaml")
    kw.update(backbone=args.student_backbone, num_layers=args.student_num_layers or None, pooling=args.pooling,
              similarity=args.similarity, temperature=args.temperature, query_max_length=args.query_max_length,
              passage_max_length=args.max_length, lr=args.student_lr)
    if loss is not None:
        kw.update(distillation_loss=loss, label_weight=args.label_weight)
        if args.distillation_temperature is not None:
            kw["distillation_temperature"] = args.distillation_temperature
    return kw


def _isolated(args) -> bool:
    """Stages in fresh processes: asked for, and one device (see ``--isolate_stages``)."""
    return bool(getattr(args, "isolate_stages", False)) and str(args.devices).strip() == "1"


def _stage_process_setup() -> None:
    """A stage process logs and silences warnings as the command's own process does."""
    from rankers.cli import setup_logging
    from rankers.commands.console import silence_known_noise

    setup_logging()
    silence_known_noise()


def _stage(args, fn, *params):
    """``fn(args, *params)``: in a fresh (spawned) process when :func:`_isolated`, else here, then the freed
    memory handed back. An exception in the stage is raised here, as if the stage had run in this process."""
    if not _isolated(args):
        try:
            return fn(args, *params)
        finally:
            release_memory()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_stage_process_setup) as pool:
        return pool.submit(fn, args, *params).result()


def _teacher_stage(args, name: str, root: Path, fold, scores_file: Path, with_test_facts: bool) -> dict[str, Any]:
    """Train (or test a given checkpoint of) one CA teacher, then write its scores of the training candidates
    with its best checkpoint; with ``with_test_facts`` also the BM25 row and the test judgments of the table."""
    import lightning.pytorch as pl

    from callbacks.teacher_scores import TeacherScoreWriter
    from rankers.models.cross_encoder import CrossAttentionRanker

    pl.seed_everything(args.seed, workers=True)
    dm = _datamodule(args, num_negatives=args.teacher_num_negatives, cross_fit=fold)
    ca = CrossAttentionRanker(**teacher_init_args(args))
    if args.teacher_checkpoint:
        result = _test_only(args, ca, dm, root, args.teacher_checkpoint)
    else:
        result = _fit_and_test(args, name, ca, dm, root, args.teacher_epochs,
                               val_every=args.teacher_val_every or args.teacher_epochs)
    writer = TeacherScoreWriter(str(scores_file))
    predictor = _trainer(args, root / "predict", 1, [writer], monitor=False)
    predictor.predict(ca, datamodule=dm, ckpt_path=result["_meta"]["best_checkpoint"], return_predictions=False)
    if with_test_facts:
        result["_test_facts"] = {"bm25": bm25_baseline(dm),
                                 "qrels": {q: dict(r) for q, r in dm.eval_sets["test"].qrels.items()}}
    return result


def _capacity_stage(args, scores_path: Path, out: Path) -> list[dict]:
    from rankers.commands.capacity import run as capacity

    return capacity(scores_path, args.capacity_dims, max_queries=1000, seed=args.seed, output_dir=out / "capacity")


def _student_stage(args, name: str, loss: str | None, dm_kw: dict[str, Any], root: Path) -> dict[str, Any]:
    """Train and test one DE student from the shared initialisation."""
    import lightning.pytorch as pl

    from rankers.models.dual_encoder import DualEncoderRanker

    pl.seed_everything(args.seed, workers=True)
    de = DualEncoderRanker(**student_init_args(args, loss))
    return _fit_and_test(args, name, de, _datamodule(args, **dm_kw), root, args.student_epochs,
                         refresh_every=args.refresh_every)


def run(args) -> dict[str, Any]:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    started = time.perf_counter()
    results: dict[str, Any] = {}
    capacity_rows: list[dict] = []

    # 1. teacher (trained here, or an earlier run's checkpoint)
    if args.teacher_checkpoint and not Path(args.teacher_checkpoint).is_file():
        raise FileNotFoundError(f"--teacher_checkpoint {args.teacher_checkpoint}: no such file (a CrossAttentionRanker "
                                "checkpoint, e.g. OUTPUT_DIR/ca_teacher/checkpoints/best.ckpt of an earlier reproduce run)")
    if args.teacher_scores and not Path(args.teacher_scores).is_file():
        raise FileNotFoundError(f"--teacher_scores {args.teacher_scores}: no such file")
    if args.teacher_scores and args.teacher_folds > 1:
        raise ValueError("--teacher_scores gives the students' targets; --teacher_folds would make them: use one")
    if args.teacher_folds < 1:
        raise ValueError(f"--teacher_folds {args.teacher_folds}: give 1 (one teacher on every training query) or K >= 2")
    if args.teacher_folds > 1 and args.teacher_checkpoint:
        raise ValueError("--teacher_folds trains one teacher per fold; it cannot reuse --teacher_checkpoint")
    if args.teacher_folds > 1 and (args.refresh_every or args.denoise_margin is not None):
        raise ValueError("--refresh_every / --denoise_margin score new candidates with one teacher checkpoint; "
                         "they cannot be combined with --teacher_folds")
    scores_path = out / "ca_teacher" / "teacher_scores.trec"
    folds = [None] if args.teacher_folds <= 1 else [(k, args.teacher_folds) for k in range(args.teacher_folds)]
    fold_scores: list[Path] = []
    teachers: dict[str, Any] = {}
    test_facts: dict[str, Any] = {}
    for fold in folds:
        name, root = ("CA teacher", out / "ca_teacher") if fold is None else \
            (f"CA teacher fold {fold[0]}", out / f"ca_teacher_fold{fold[0]}")
        # 2. with it, teacher scores from the best teacher checkpoint (with folds: of the held-out fold only)
        fold_scores.append(root / "teacher_scores.trec")
        teachers[name] = _stage(args, _teacher_stage, name, root, fold, fold_scores[-1], not test_facts)
        test_facts = test_facts or teachers[name].pop("_test_facts")
    test_qrels = test_facts["qrels"]
    if args.teacher_scores:  # the students distil from the given file (the teacher's own scores stay beside it)
        scores_path = Path(args.teacher_scores)
    if len(folds) > 1:
        merge_runs(fold_scores, scores_path)
        results["CA teacher"] = teacher_ensemble(list(teachers.values()), test_qrels)
    else:
        results["CA teacher"] = teachers["CA teacher"]
    if args.capacity_dims:  # the paper's first claim, on this teacher's scores
        capacity_rows = _stage(args, _capacity_stage, scores_path, out)

    # 3. students from the same initialisation
    mining: dict[str, Any] = {}
    teacher_data: dict[str, Any] = dict(teacher_scores=str(scores_path))
    if args.refresh_every or args.denoise_margin is not None:
        # the teacher checkpoint scores every mined pool (refreshed ones too) once; those scores are
        # both the denoising signal and the distillation targets
        best = results["CA teacher"]["_meta"]["best_checkpoint"]
        mining = dict(denoise_margin=args.denoise_margin, mining_teacher=best)
        teacher_data = {}
    students = [("DE labels", None, dict(mining))] + [(f"DE {loss}", loss, {**mining, **teacher_data}) for loss in losses]
    for name, loss, dm_kw in students:
        results[name] = _stage(args, _student_stage, name, loss, dm_kw, out / name.lower().replace(" ", "_"))

    # 4. table
    rows = [{"model": "BM25 candidates", "eval": "candidate order", **test_facts["bm25"]}]
    ca_mrr = results["CA teacher"]["test/rerank"]["mrr@10"]
    labels = {mode: results["DE labels"].get(f"test/{mode}", {}).get("mrr@10") for mode in ("rerank", "retrieval")}
    for name, res in results.items():
        for mode, label in (("rerank", "re-rank"), ("retrieval", "full retrieval (dense index)")):
            if f"test/{mode}" not in res:
                continue
            row = {"model": name, "eval": label, **{m: res[f"test/{mode}"][m] for m in TABLE_METRICS}}
            if name not in ("CA teacher", "DE labels") and mode == "rerank":
                row["gap_closed"] = gap_closed(row["mrr@10"], labels["rerank"], ca_mrr)
            rows.append(row)
    elapsed = time.perf_counter() - started
    table = make_table(rows)
    gap_lines = ["", "", "Overfitting gap at the last epoch (MRR@10, training-query subset vs validation):", "",
                 "| model | eval | train subset | val | gap |", "|---|---|---|---|---|"]
    for name, res in results.items():
        for mode in ("rerank", "retrieval"):
            if f"gap/{mode}" in res:
                g = res[f"gap/{mode}"]
                gap_lines.append(f"| {name} | {mode} | {g['train_subset']:.4f} | {g['val']:.4f} | "
                                 f"{g['train_subset'] - g['val']:+.4f} |")
    table += "\n".join(gap_lines)
    significance = paired_significance(results, test_qrels)
    if significance:
        from rankers.evaluation.significance import significance_markdown

        table += ("\n\nPaired significance over the test queries (re-rank MRR@10, each system vs DE labels; "
                  "two-sided paired t-test, Holm-corrected over the comparisons, alpha 0.05):\n\n"
                  + significance_markdown(significance))
    from rankers.evaluation.paper_points import paper_points, paper_points_markdown

    points = paper_points({name: res["test/rerank"]["mrr@10"] for name, res in results.items() if "test/rerank" in res},
                          {name: res.get("gap/rerank") for name, res in results.items()}, significance, capacity_rows)
    table += "\n\nThe paper's three points on this run (criteria: rankers/evaluation/paper_points.py):\n\n"
    table += paper_points_markdown(points)
    if "_folds" in results["CA teacher"]:
        folds_text = ", ".join(f"{f['mrr@10']:.4f}" for f in results["CA teacher"]["_folds"])
        table += (f"\n\nCross-fitted teacher ({len(results['CA teacher']['_folds'])} folds): each fold's teacher was trained on "
                  f"the other folds' queries and scored only its own; the CA row is their mean score (test re-rank "
                  f"MRR@10 of each fold's teacher: {folds_text}).")
    reused = f" (checkpoint {args.teacher_checkpoint}, not retrained)" if args.teacher_checkpoint else ""
    if args.teacher_scores:
        reused += f"; students distilled from {args.teacher_scores}"
    note = (f"\nMachine: {machine_line()}.\nDataset: {args.dataset}; teacher: {args.teacher_backbone}{reused}; student: {args.student_backbone}; "
            f"test split '{args.test_split}'. Re-rank rows score the same candidates (top-{args.eval_depth}); "
            f"gap closed = (DE_distill − DE_labels) / (CA − DE_labels) on re-rank MRR@10. Total time {elapsed:.0f}s.\n")
    (out / "paper_table.md").write_text(table + "\n" + note)
    payload = {"rows": rows, "seconds": elapsed, "args": args.as_dict() if hasattr(args, "as_dict") else vars(args), "significance": significance,
               "machine": machine_line(),
               "overfitting_gap": {k: v.get("gap/rerank") for k, v in results.items()},
               "paper_points": points,
               "fit_seconds": {k: v["_meta"]["fit_seconds"] for k, v in results.items()}}
    (out / "paper_table.json").write_text(json.dumps(payload, indent=2))
    print(table)
    print(note)
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))
