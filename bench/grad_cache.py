"""Peak memory and time of a DE training step with gradient caching (``grad_cache_chunk_size``) at a batch
``--scale`` times larger, against the plain step at the base batch (the baseline) — measured in one run.

Each setting runs in its own fresh subprocess (so peak RSS is that setting's alone): all-MiniLM-L6-v2 DE
(mean pooling, cosine / 0.05, in-batch negatives + label CE), B queries × (1 + k) passages of synthetic
text (log-normal lengths, ``--max-length`` word pieces), one warm-up step and ``--steps`` timed steps of
forward + loss + backward + AdamW. "step memory" is the process's peak RSS minus its RSS between steps
(model, AdamW state, gradients and batch held; freed pages trimmed): what one step's activations add. Settings:

* ``plain B``       -- the baseline;
* ``plain 8B``      -- what the large batch costs without the cache;
* ``cached 8B``     -- gradient caching over the large batch, chunks of ``B × (1 + k)`` texts (one base batch).

Target (issue 15): cached 8B's step memory within 1.5× of plain B's.

    python bench/grad_cache.py                       # B=8, k=7, scale 8, bf16 where it pays off (rankers.precision)
    python bench/grad_cache.py --steps 1 --scale 2   # quick check
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--batch-size", type=int, default=8, help="base batch B (queries)")
    p.add_argument("--negatives", type=int, default=7, help="hard negatives k per query")
    p.add_argument("--scale", type=int, default=8, help="the large batch is scale × B")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--output", default=None)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _rss_kib() -> int:
    """Peak RSS of this process so far (KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _current_rss_kib() -> int:
    """RSS now (KiB), after handing freed heap pages back to the OS (glibc keeps them otherwise)."""
    import ctypes
    import os

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _child(args: argparse.Namespace) -> None:
    import time

    import torch

    from rankers.models.dual_encoder import DualEncoderRanker

    setting = json.loads(args._child)
    queries, chunk = setting["queries"], setting["chunk"]
    width = 1 + args.negatives
    torch.manual_seed(0)
    model = DualEncoderRanker(backbone=args.model, pooling="mean", similarity="cos", temperature=0.05,
                              passage_max_length=args.max_length, grad_cache_chunk_size=chunk).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    texts = C.synthetic_passages(queries * (width + 1), seed=1, mean_words=40)
    examples = []
    for i in range(queries):
        passages = texts[queries + i * width: queries + (i + 1) * width]
        examples.append({"query_id": f"q{i}", "query": " ".join(texts[i].split()[:12]),
                         "passage_ids": [f"p{i}_{j}" for j in range(width)], "passages": passages,
                         "labels": [1.0] + [0.0] * args.negatives, "positive_ids": [f"p{i}_0"], "teacher_scores": None})
    batch = model.collator()(examples)

    def step():
        with C.autocast("cpu", setting["precision"]):
            loss, _ = model.listwise_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep the gradient buffers: they belong to the baseline RSS

    step()  # warm-up: allocates the gradient and optimizer state (its peak equals a timed step's: same batch)
    base = _current_rss_kib()  # model, optimizer state, gradients, batch; the step's activations freed
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"step_mib": (_rss_kib() - base) / 1024, "peak_mib": _rss_kib() / 1024,
                      "seconds": C.median(times)}))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args._child:
        _child(args)
        return {}
    from rankers.precision import bf16_native

    precision = ("bf16" if bf16_native("cpu") else "fp32") if args.precision == "auto" else args.precision
    C.print_header("Gradient caching: step memory at a larger batch", "cpu",
                   {"batch": args.batch_size, "negatives": args.negatives, "scale": args.scale,
                    "max_length": args.max_length, "precision": precision, "steps": args.steps})
    b, big = args.batch_size, args.batch_size * args.scale
    settings = {f"plain {b}": {"queries": b, "chunk": None}, f"plain {big}": {"queries": big, "chunk": None},
                f"cached {big}": {"queries": big, "chunk": b * (1 + args.negatives)}}
    results = {}
    for name, setting in settings.items():
        setting["precision"] = precision
        base_argv = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--_child")]
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *base_argv, "--_child", json.dumps(setting)],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]}", flush=True)
    baseline = results[f"plain {b}"]
    rows = [[name, r["step_mib"], r["step_mib"] / baseline["step_mib"], r["peak_mib"], r["seconds"],
             r["seconds"] / baseline["seconds"]] for name, r in results.items()]
    print()
    print(C.markdown_table(["setting", "step memory MiB", f"× plain {b}", "peak RSS MiB", "s / step",
                            f"time × plain {b}"], rows))
    ratio = results[f"cached {big}"]["step_mib"] / baseline["step_mib"]
    print(f"\ncached {big} step memory / plain {b}: {ratio:.2f}× (target ≤ 1.5×: {'met' if ratio <= 1.5 else 'MISSED'})")
    C.write_results(args.output, results)
    return results


if __name__ == "__main__":
    main()
