"""``python -m rankers capacity``: the capacity probe (:mod:`rankers.evaluation.capacity`) on a teacher score file."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from datamodules.formats import read_qrels, read_teacher_scores
from rankers.commands.parsing import parse_dims
from rankers.evaluation import capacity as probe
from rankers.evaluation.capacity import METHODS, capacity_probe, markdown_table, sample_queries, write_report

__all__ = ["build_parser", "main", "parse_dims", "run"]


def _methods(text: str | list[str]) -> list[str]:
    values = [str(part).strip() for part in (text if isinstance(text, list) else text.split(",")) if str(part).strip()]
    bad = [v for v in values if v not in METHODS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad or text!r}; choose from {','.join(METHODS)}")
    return list(dict.fromkeys(values))


def build_parser():
    from rankers.commands.parsing import command_parser

    p = command_parser("capacity", probe.__doc__)
    p.add_argument("--teacher_scores", required=True,
                   help="TREC score file of the teacher (qid Q0 pid rank score tag)")
    p.add_argument("--dims", type=parse_dims, default=[8, 16, 32, 64], help="embedding sizes, e.g. 8,16,32,64")
    p.add_argument("--methods", "--method", type=_methods, default=list(METHODS),
                   help="svd, gradient or both (comma-separated)")
    p.add_argument("--qrels", default=None, help="qrels file for MRR@10 (default: the teacher's top-1 is relevant)")
    p.add_argument("--output_dir", default=None,
                   help="where capacity.{json,md,png} go (default: beside the score file, in capacity/)")
    p.add_argument("--max_queries", type=int, default=None, help="seeded sample of queries")
    p.add_argument("--steps", type=int, default=300, help="Adam steps of the gradient fit")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate of the gradient fit")
    p.add_argument("--svd_iters", type=int, default=1,
                   help="SVDs per k: 1 = zero (row-mean) fill of unscored entries; more = hard-impute refinement")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(teacher_scores: str | Path, dims: Sequence[int], methods: Sequence[str] = METHODS, qrels: str | None = None,
        output_dir: str | Path | None = None, max_queries: int | None = None, steps: int = 300, lr: float = 0.05,
        svd_iters: int = 1, seed: int = 0) -> list[dict]:
    """Fit size-k embeddings to the teacher's score matrix for each k; write capacity.{json,md,png}."""
    path = Path(teacher_scores)
    if not path.exists():
        raise FileNotFoundError(f"teacher score file {path} does not exist; write it with "
                                f"`python -m rankers predict --config configs/ca_teacher.yaml --ckpt_path CA_CKPT`")
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"--max-queries must be >= 1, got {max_queries}")
    if svd_iters < 1 or steps < 1:
        raise ValueError(f"--svd-iters and --steps must be >= 1, got {svd_iters} and {steps}")
    scores = sample_queries(read_teacher_scores(path), max_queries, seed)
    judged = read_qrels(qrels) if qrels else None
    rows = capacity_probe(scores, dims, methods, seed=seed, qrels=judged, steps=steps, lr=lr, svd_iters=svd_iters)
    meta = {"teacher_scores": str(path), "num_queries": len(scores),
            "num_passages": len({p for c in scores.values() for p in c}),
            "observed": sum(len(c) for c in scores.values()),
            "labels": f"qrels {qrels}" if qrels else "teacher top-1", "methods": list(methods),
            "dims": list(dims), "seed": seed, "steps": steps, "lr": lr, "svd_iters": svd_iters}
    out = Path(output_dir) if output_dir else path.parent / "capacity"
    paths = write_report(rows, out, meta)
    print(markdown_table(rows))
    print(f"\nwrote {paths['json']}, {paths['md']}, {paths['png']}")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    return run(args.teacher_scores, args.dims, args.methods, qrels=args.qrels, output_dir=args.output_dir,
               max_queries=args.max_queries, steps=args.steps, lr=args.lr, svd_iters=args.svd_iters, seed=args.seed)
