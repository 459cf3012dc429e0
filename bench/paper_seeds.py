"""Seed spread of the paper table: ``python -m rankers reproduce`` once per seed, then mean ± sd.

For each seed S of ``--seeds`` (default 0,1,2) this runs, as a subprocess::

    python -m rankers reproduce --output_dir OUT/seedS --seed S [ARGS after --]

(its output is shown and kept in ``OUT/seedS/reproduce.log``), reads ``OUT/seedS/paper_table.json``
(written by ``rankers.commands.reproduce.run``: ``{"rows": [{"model", "eval", "mrr@10", "ndcg@10",
"recall@100", ["gap_closed"]}, ...], "seconds", ...}``) and aggregates the rows, keyed by
(model, eval): mean ± sample sd over the seeds of MRR@10, nDCG@10 and gap closed (only the rows
that have one: the distilled DEs' re-rank rows; seeds where the teacher is not above the DE on
labels give ``null`` and are left out of that mean, the count says so), and each seed's wall time.
The result goes to stdout, ``OUT/paper_seeds.md`` and ``OUT/paper_seeds.json``.

``--skip-existing`` reuses every seed directory that already has a ``paper_table.json`` (so an
interrupted sweep resumes, and a finished one re-aggregates without training).

    python bench/paper_seeds.py                                     # embedded data, seeds 0,1,2
    python bench/paper_seeds.py --skip-existing                     # resume / re-aggregate
    python bench/paper_seeds.py --seeds 0,1,2,3,4 --output-dir runs/seeds5 -- --embedded_scale 2 --losses m3se,kl
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import _common as C

METRICS = ("mrr@10", "ndcg@10")
# reproduce flags this script sets itself (per seed): not allowed after --
OWN_FLAGS = ("--output_dir", "--seed")


# ----------------------------------------------------------------------------- arguments
def split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(this script's arguments, the arguments after the first ``--``, passed to reproduce)."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def check_extra(extra: Sequence[str], own: Sequence[str]) -> None:
    """Exit when an argument after ``--`` is one the script sets itself."""
    clash = [a for a in extra if a.split("=", 1)[0] in own]
    if clash:
        raise SystemExit(f"arguments after -- must not set {', '.join(sorted(set(own)))} (the script sets them): {clash}")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    ours, extra = split_extra(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s [options] [-- REPRODUCE ARGS]")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--output-dir", default="runs/paper_seeds",
                   help="OUT: seed S goes to OUT/seedS; the summary to OUT/paper_seeds.{md,json}")
    p.add_argument("--skip-existing", action="store_true",
                   help="reuse seed directories that already have paper_table.json instead of re-running them")
    args = p.parse_args(ours)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    if not args.seed_list or len(set(args.seed_list)) != len(args.seed_list):
        p.error(f"--seeds {args.seeds!r}: expected distinct integers")
    check_extra(extra, OWN_FLAGS)
    return args, extra


# ----------------------------------------------------------------------------- running reproduce
def reproduce_command(output_dir: str | Path, extra: Sequence[str] = (), seed: int | None = None) -> list[str]:
    """``python -m rankers reproduce --output_dir DIR [--seed S] EXTRA`` with this interpreter."""
    cmd = [sys.executable, "-m", "rankers", "reproduce", "--output_dir", str(output_dir)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    return cmd + list(extra)


def run_logged(cmd: Sequence[str], log_path: Path) -> tuple[int, float]:
    """Run ``cmd`` (stdout and stderr shown and written to ``log_path``); (exit status, wall seconds).

    The repository root is put first on ``PYTHONPATH`` so ``-m rankers`` resolves to this checkout
    from any working directory; the working directory stays the caller's (relative paths in the
    arguments keep their meaning).
    """
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join([str(C.ROOT), *filter(None, [env.get("PYTHONPATH")])])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    return rc, time.perf_counter() - start


# ----------------------------------------------------------------------------- aggregation
def load_tables(paths: Mapping[int, str | Path]) -> dict[int, dict[str, Any]]:
    """``{seed: parsed paper_table.json}``."""
    return {seed: json.loads(Path(path).read_text(encoding="utf-8")) for seed, path in paths.items()}


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "sd" (sample sd; None under 2 values), "n", "values"}`` (mean None when empty)."""
    values = [float(v) for v in values]
    return {
        "mean": math.fsum(values) / len(values) if values else None,
        "sd": statistics.stdev(values) if len(values) >= 2 else None,
        "n": len(values),
        "values": values,
    }


def aggregate(tables: Mapping[int, Mapping[str, Any]], wall: Mapping[int, float | None] | None = None) -> dict[str, Any]:
    """Mean ± sample sd over seeds of each (model, eval) row's MRR@10, nDCG@10 and gap closed.

    Args:
        tables: ``{seed: paper_table.json payload}``.
        wall: ``{seed: wall seconds of the subprocess}`` for the seeds run now (None: reused).

    Returns:
        ``{"seeds": [...], "rows": [{"model", "eval", "seeds" (how many have the row), "mrr@10":
        mean_sd, "ndcg@10": mean_sd, "gap_closed": mean_sd or None}], "per_seed": [{"seed",
        "seconds" (reproduce's own total), "wall_seconds"}]}``. Rows keep their first-seen order;
        ``gap_closed`` is None for rows that never carry the key (BM25, teacher, DE labels,
        full retrieval) and averages only the seeds where it is a number.
    """
    wall = dict(wall or {})
    seeds = sorted(tables)
    order: list[tuple[str, str]] = []
    rows: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for seed in seeds:
        for row in tables[seed]["rows"]:
            key = (row["model"], row["eval"])
            if key not in rows:
                order.append(key)
                rows[key] = []
            rows[key].append(row)
    out_rows = []
    for key in order:
        found = rows[key]
        entry: dict[str, Any] = {"model": key[0], "eval": key[1], "seeds": len(found)}
        for metric in METRICS:
            entry[metric] = mean_sd([r[metric] for r in found])
        has_gap = any("gap_closed" in r for r in found)
        entry["gap_closed"] = mean_sd([r["gap_closed"] for r in found if r.get("gap_closed") is not None]) if has_gap else None
        out_rows.append(entry)
    per_seed = [{"seed": s, "seconds": tables[s].get("seconds"), "wall_seconds": wall.get(s)} for s in seeds]
    return {"seeds": seeds, "rows": out_rows, "per_seed": per_seed}


def _pm(stat: Mapping[str, Any] | None, scale: float = 1.0, digits: int = 4, unit: str = "") -> str:
    if stat is None:
        return "—"
    if stat["mean"] is None:
        return "n/a"
    text = f"{scale * stat['mean']:.{digits}f}{unit}"
    if stat["sd"] is not None:
        text += f" ± {scale * stat['sd']:.{digits}f}{unit}"
    return text


def aggregate_markdown(agg: Mapping[str, Any]) -> str:
    """The two tables: rows (mean ± sd over seeds) and wall time per seed."""
    n = len(agg["seeds"])
    lines = ["| model | eval | seeds | mrr@10 | ndcg@10 | gap closed |", "|---|---|---|---|---|---|"]
    for r in agg["rows"]:
        gap = r["gap_closed"]
        gap_s = _pm(gap, 100.0, 0, "%")
        if gap is not None and gap["n"] != r["seeds"]:
            gap_s += f" (of {gap['n']} seeds)"
        seeds = str(r["seeds"]) if r["seeds"] == n else f"{r['seeds']} of {n}"
        lines.append(f"| {r['model']} | {r['eval']} | {seeds} | {_pm(r['mrr@10'])} | {_pm(r['ndcg@10'])} | {gap_s} |")
    lines += ["", "| seed | reproduce total s (paper_table.json) | wall s (subprocess) |", "|---|---|---|"]
    for s in agg["per_seed"]:
        total = "?" if s["seconds"] is None else f"{s['seconds']:.0f}"
        wall = "reused (--skip-existing)" if s["wall_seconds"] is None else f"{s['wall_seconds']:.0f}"
        lines.append(f"| {s['seed']} | {total} | {wall} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = shlex.join(reproduce_command(out / "seed{S}", extra) + ["--seed", "{S}"])
    header = [f"## Paper table over seeds {args.seeds}", "", *C.machine_lines("reproduce --accelerator (default auto)"),
              f"- command per seed: `{template}`", ""]
    print("\n".join(header), flush=True)

    tables: dict[int, dict[str, Any]] = {}
    wall: dict[int, float | None] = {}
    failed: dict[int, int] = {}
    for seed in args.seed_list:
        seed_dir = out / f"seed{seed}"
        table = seed_dir / "paper_table.json"
        if args.skip_existing and table.is_file():
            print(f"seed {seed}: reusing {table}", flush=True)
            wall[seed] = None
        else:
            if table.is_file():
                table.unlink()  # a stale table must not pass for this run's
            cmd = reproduce_command(seed_dir, extra, seed=seed)
            print(f"seed {seed}: $ {shlex.join(cmd)}", flush=True)
            rc, seconds = run_logged(cmd, seed_dir / "reproduce.log")
            wall[seed] = seconds
            if rc != 0 or not table.is_file():
                failed[seed] = rc
                print(f"seed {seed}: FAILED (exit {rc}; log {seed_dir / 'reproduce.log'})", flush=True)
                continue
        tables.update(load_tables({seed: table}))

    if not tables:
        print("no seed produced a paper_table.json", file=sys.stderr)
        return 1
    agg = aggregate(tables, wall)
    agg["command"] = template
    agg["failed"] = {str(s): rc for s, rc in failed.items()}
    body = aggregate_markdown(agg)
    if failed:
        body += "\n\nFAILED seeds (left out): " + ", ".join(f"{s} (exit {rc})" for s, rc in failed.items())
    text = "\n".join(header) + "\n" + body + "\n"
    print("\n" + body)
    (out / "paper_seeds.md").write_text(text, encoding="utf-8")
    (out / "paper_seeds.json").write_text(json.dumps(agg, indent=2), encoding="utf-8")
    print(f"\nwrote {out / 'paper_seeds.md'} and {out / 'paper_seeds.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
