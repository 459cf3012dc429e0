"""The paper table on real data: ``python -m rankers reproduce`` on WikiQA and SciFact with MiniLM.

For each dataset of ``--datasets`` this runs, as a subprocess (output shown and kept in
``OUT/DATASET/reproduce.log``)::

    python -m rankers reproduce --output_dir OUT/DATASET --dataset DATA_ROOT/DATASET \\
        --val_split V --test_split T --teacher_backbone minilm --student_backbone minilm \\
        --max_train_queries N --max_eval_queries M --teacher_epochs E --student_epochs E' --seed S [ARGS after --]

with the splits each collection has:

* ``wikiqa``: ``--val_split dev --test_split test``; WikiQA ships official candidate runs
  (``candidates_{split}.run``), which the DataModule re-ranks instead of BM25 candidates;
* ``scifact``: ``--val_split test --test_split test`` (SciFact has only train and test qrels, so
  checkpoint selection sees the test queries: a sanity check, not a clean estimate).

Then it collects each dataset's ``paper_table.md`` into ``OUT/paper_check.md`` with the dataset, the
exact command, the machine, the date and the wall time. The defaults are sized for a CPU (a few
hundred training queries, 100 evaluation queries, 2 epochs each); it is still long on 2 cores.
``--dry-run`` prints the commands without running anything; ``--skip-existing`` reuses dataset
directories that already have a ``paper_table.md``.

    python bench/paper_check.py                                       # wikiqa + scifact, CPU defaults
    python bench/paper_check.py --datasets scifact --max-train-queries 500 --teacher-epochs 3
    python bench/paper_check.py --dry-run -- --losses m3se,margin_mse --eval_depth 30
    python bench/paper_check.py --max-train-queries 0 --max-eval-queries 0 -- --accelerator gpu --precision bf16-mixed
"""
from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
from pathlib import Path

import _common as C
from paper_seeds import check_extra, reproduce_command, run_logged, split_extra

# dataset name -> (val split, test split); the directory is DATA_ROOT/NAME
DATASETS: dict[str, tuple[str, str]] = {
    "wikiqa": ("dev", "test"),
    "scifact": ("test", "test"),
}
DEFAULT_DATA_ROOT = C.ROOT.parent / "shared" / "data"
# reproduce flags this script sets itself: not allowed after --
OWN_FLAGS = ("--output_dir", "--dataset", "--val_split", "--test_split", "--teacher_backbone",
             "--student_backbone", "--max_train_queries", "--max_eval_queries", "--teacher_epochs",
             "--student_epochs", "--seed")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    ours, extra = split_extra(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s [options] [-- REPRODUCE ARGS]")
    p.add_argument("--datasets", default="wikiqa,scifact", help=f"comma-separated, of {', '.join(DATASETS)}")
    p.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT),
                   help="directory holding the datasets (default: ../shared/data beside the checkout)")
    p.add_argument("--output-dir", default="runs/paper_check",
                   help="OUT: dataset D goes to OUT/D; the collected tables to OUT/paper_check.md")
    p.add_argument("--teacher-backbone", default="minilm", help="reproduce --teacher_backbone")
    p.add_argument("--student-backbone", default="minilm", help="reproduce --student_backbone")
    p.add_argument("--max-train-queries", type=int, default=256, help="reproduce --max_train_queries (0: all)")
    p.add_argument("--max-eval-queries", type=int, default=100, help="reproduce --max_eval_queries (0: all)")
    p.add_argument("--teacher-epochs", type=int, default=3, help="reproduce --teacher_epochs (its default)")
    p.add_argument("--student-epochs", type=int, default=1, help="reproduce --student_epochs (its default)")
    p.add_argument("--seed", type=int, default=0, help="reproduce --seed")
    p.add_argument("--skip-existing", action="store_true",
                   help="reuse dataset directories that already have paper_table.md")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(ours)
    args.dataset_list = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in args.dataset_list if d not in DATASETS]
    if unknown or not args.dataset_list:
        p.error(f"--datasets {args.datasets!r}: expected some of {', '.join(DATASETS)}")
    check_extra(extra, OWN_FLAGS)
    return args, extra


def dataset_command(args: argparse.Namespace, name: str, extra: list[str]) -> list[str]:
    """The reproduce command of one dataset (limits of 0 are left out: all queries)."""
    val, test = DATASETS[name]
    flags = ["--dataset", str(Path(args.data_root) / name), "--val_split", val, "--test_split", test,
             "--teacher_backbone", args.teacher_backbone, "--student_backbone", args.student_backbone]
    # always passed: reproduce reads 0 as "all queries" (its own defaults are 400 / 200)
    flags += ["--max_train_queries", str(args.max_train_queries), "--max_eval_queries", str(args.max_eval_queries)]
    flags += ["--teacher_epochs", str(args.teacher_epochs), "--student_epochs", str(args.student_epochs)]
    return reproduce_command(Path(args.output_dir) / name, [*flags, *extra], seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    out = Path(args.output_dir)
    commands = {name: dataset_command(args, name, extra) for name in args.dataset_list}
    if args.dry_run:
        for name, cmd in commands.items():
            print(f"{name}: {shlex.join(cmd)}")
        return 0
    missing = [n for n in commands if not (Path(args.data_root) / n).is_dir()]
    if missing:
        raise SystemExit(f"--data-root {args.data_root}: no {', '.join(missing)} directory")

    out.mkdir(parents=True, exist_ok=True)
    header = ["# Paper table on real data (bench/paper_check.py)", "",
              *C.machine_lines("reproduce --accelerator (default auto)"), ""]
    print("\n".join(header), flush=True)
    sections: list[str] = []
    failed = []
    for name, cmd in commands.items():
        table = out / name / "paper_table.md"
        started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        if args.skip_existing and table.is_file():
            print(f"{name}: reusing {table}", flush=True)
            rc, wall = 0, None
        else:
            if table.is_file():
                table.unlink()  # a stale table must not pass for this run's
            print(f"{name}: $ {shlex.join(cmd)}", flush=True)
            rc, wall = run_logged(cmd, out / name / "reproduce.log")
        wall_s = "reused (--skip-existing)" if wall is None else f"{wall:.0f} s"
        lines = [f"## {name}", "", f"- command: `{shlex.join(cmd)}`", f"- started: {started}; wall time: {wall_s}",
                 f"- exit status: {rc}; log: `{out / name / 'reproduce.log'}`", ""]
        if rc == 0 and table.is_file():
            lines.append(table.read_text(encoding="utf-8").rstrip())
        else:
            failed.append(name)
            lines.append(f"**FAILED**: no paper_table.md (exit status {rc}); see the log.")
        sections.append("\n".join(lines))
        # rewritten after every dataset, so a later failure or interruption keeps the finished ones
        (out / "paper_check.md").write_text("\n".join(header) + "\n" + "\n\n".join(sections) + "\n", encoding="utf-8")
    print("\n\n".join(sections))
    print(f"\nwrote {out / 'paper_check.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
