"""``python -m rankers compare RUN RUN ... --qrels QRELS``: paired significance tests between TREC runs.

Every run is scored on the same judged queries (:func:`rankers.evaluation.metrics.evaluate_run`: queries of
the qrels without a positive judgement are skipped, a query a run lacks scores 0), each system is tested
against the baseline (the first run, or ``--baseline NAME``) with a two-sided paired test on the per-query
values of ``--metric``, and the p-values are corrected together for the number of comparisons (Holm 1979 by
default). Runs are named by their file name, or ``NAME=PATH``. Runs and qrels may be compressed (``.gz`` ...).

Example::

    python -m rankers compare labels=runs/demo/de_labels/runs/test-rerank-epoch1.trec \\
        kl=runs/demo/de_kl/runs/test-rerank-epoch1.trec --qrels DATA/qrels/test.tsv
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("mrr@10", "ndcg@10", "recall@100")


def _named_runs(specs: list[str]) -> dict[str, Path]:
    runs: dict[str, Path] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)  # a path may hold '=', a name not
        path_ = Path(path)
        name = name or path_.name
        if name in runs:
            raise ValueError(f"compare: two runs are named {name!r}; name them NAME=PATH")
        if not path_.is_file():
            raise FileNotFoundError(f"compare: run file {path_} does not exist")
        runs[name] = path_
    if len(runs) < 2:
        raise ValueError(f"compare: needs at least two runs, got {len(runs)}")
    return runs


def build_parser():
    from rankers.commands.parsing import command_parser
    from rankers.evaluation.significance import CORRECTIONS, TESTS

    p = command_parser("compare", __doc__)
    p.add_argument("runs", nargs="+", help="TREC run files (qid Q0 pid rank score tag), each PATH or NAME=PATH")
    p.add_argument("--qrels", required=True, help="judgements: BEIR tsv or TREC qrels")
    p.add_argument("--baseline", default=None, help="the run every other is tested against (default: the first)")
    p.add_argument("--metric", default="mrr@10", help="the metric of the tests: mrr@k, ndcg@k, recall@k, precision@k (torchmetrics) or map, map@k, "
                        "r-prec, judged@k (ir-measures)")
    p.add_argument("--test", default="t-test", choices=list(TESTS), help="paired test")
    p.add_argument("--correction", default="holm", choices=list(CORRECTIONS), help="multiple-comparison correction")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--output", default=None, help="also write the tables to this markdown file")
    return p


def compare(runs: dict[str, Path], qrels_path: Path, *, baseline: str | None = None, metric: str = "mrr@10",
            test: str = "t-test", correction: str = "holm", alpha: float = 0.05) -> dict[str, Any]:
    """Means of each run and the paired tests against ``baseline``; returns ``{"means", "tests", "markdown"}``."""
    from datamodules.readers.trec import read_qrels, read_run
    from rankers.evaluation.metrics import evaluate_run, metric_name
    from rankers.evaluation.significance import compare_systems, significance_markdown

    metric = metric_name(metric)  # MAP -> map; an unknown name fails before any file is read
    qrels = read_qrels(qrels_path)
    loaded = {name: read_run(path) for name, path in runs.items()}
    baseline = baseline or next(iter(loaded))
    if baseline not in loaded:
        raise ValueError(f"compare: --baseline {baseline!r} is not one of the runs: {', '.join(loaded)}")
    metrics = list(dict.fromkeys([metric, *SUMMARY_METRICS]))
    means = {name: evaluate_run(run, qrels, metrics) for name, run in loaded.items()}
    rows = compare_systems(loaded, qrels, metric, baseline=baseline, test=test, correction=correction, alpha=alpha)
    header = "| run | queries | " + " | ".join(metrics) + " |"
    lines = [header, "|---|---|" + "---|" * len(metrics)]
    for name, result in means.items():
        lines.append(f"| {name} | {result.get('num_queries', '')} | "
                     + " | ".join(f"{result[m]:.4f}" for m in metrics) + " |")
    markdown = ("\n".join(lines) + f"\n\nPaired {test} on per-query {metric} against {baseline} "
                f"({correction} correction over {len(rows)} comparisons, alpha {alpha}):\n\n"
                + significance_markdown(rows) + "\n")
    return {"means": means, "tests": rows, "markdown": markdown}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    result = compare(_named_runs(list(args.runs)), Path(args.qrels), baseline=args.baseline, metric=args.metric,
                     test=args.test, correction=args.correction, alpha=args.alpha)
    print(result["markdown"], end="")
    if args.output:
        from rankers.io.atomic import atomic_write

        with atomic_write(args.output) as fh:
            fh.write(result["markdown"])
        log.info("wrote %s", args.output)
    return result
