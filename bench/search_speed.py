"""Search time of ``DenseIndex`` on faiss-cpu: float32 flat storage against fp16 storage.

Both indexes are the product's, built from the same fp16 passage matrix (what the callback encodes with
``fp16_embeddings: true``): ``DenseIndex.build(embeddings, ids, backend="faiss-cpu", metric=...,
fp16=False)`` (``IndexFlatIP`` / ``IndexFlatL2``, float32) and ``fp16=True`` (the fp16
``IndexScalarQuantizer``, what ``RetrievalEvaluator`` builds on faiss-cpu since it passes
``fp16=fp16_embeddings``). The timed call is ``index.search(queries, k)`` with float32 queries (the
callback encodes queries in float32), in ``query_batch_size`` batches as the product does.

Each repeat times both indexes, in alternating order; the table gives the median wall time, the
process CPU time and the load average (the CPU may be shared). Agreement: share of queries whose
top-k ids are identical in order, mean top-k overlap and the largest score difference. IndexFlat
switches to a BLAS matrix product for large query batches (faiss' ``distance_compute_blas_threshold``),
the scalar quantizer does not, so the two can differ in the last bits of a score there.

    python bench/search_speed.py                                 # 200k x 384, 1000 queries, k=100, 2 threads
    python bench/search_speed.py --num-passages 20000 --repeats 1   # quick check
"""
from __future__ import annotations

import argparse
import os
import time

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-passages", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--num-queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--metric", choices=("ip", "cos", "l2"), default="ip")
    p.add_argument("--query-batch-size", type=int, default=1024, help="DenseIndex's query_batch_size (its default: 1024)")
    p.add_argument("--threads", type=int, default=2, help="faiss (OpenMP) and torch threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from rankers.retrieval.search import DenseIndex, faiss

    if faiss is None:
        raise SystemExit("search_speed.py compares faiss-cpu storages: faiss is not installed")
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    # unit-norm fp16 passages, as an fp16_embeddings encode of a normalising model gives; float32 queries
    embeddings = torch.nn.functional.normalize(torch.randn(args.num_passages, args.dim, generator=g), dim=1).half()
    queries = torch.nn.functional.normalize(torch.randn(args.num_queries, args.dim, generator=g), dim=1).numpy()
    ids = [f"p{i}" for i in range(args.num_passages)]

    indexes, build_s = {}, {}
    for name, fp16 in (("float32 flat", False), ("fp16 flat", True)):
        start = time.perf_counter()
        indexes[name] = DenseIndex.build(embeddings, ids, backend="faiss-cpu", metric=args.metric, fp16=fp16,
                                         query_batch_size=args.query_batch_size)
        build_s[name] = time.perf_counter() - start
    del embeddings

    C.print_header("Search: DenseIndex on faiss-cpu, float32 vs fp16 storage", "cpu", {
        "passages": args.num_passages, "dim": args.dim, "queries": args.num_queries, "k": args.k,
        "metric": args.metric, "query_batch_size": args.query_batch_size, "threads (faiss, torch)": args.threads,
        "repeats": args.repeats, "faiss": faiss.__version__,
        "faiss BLAS threshold": getattr(faiss.cvar, "distance_compute_blas_threshold", "?"),
    })
    wall = {name: [] for name in indexes}
    cpu = {name: [] for name in indexes}
    loads, results = [], {}
    for r in range(args.repeats):
        order = list(indexes) if r % 2 == 0 else list(indexes)[::-1]
        for name in order:
            loads.append(os.getloadavg()[0])
            c0, t0 = time.process_time(), time.perf_counter()
            results[name] = indexes[name].search(queries, args.k)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    loads.append(os.getloadavg()[0])

    base = C.median(wall["float32 flat"])
    rows = []
    for name, index in indexes.items():
        store = index._store.index
        kind = type(store).__name__ + (" (QT_fp16)" if hasattr(store, "sq") else "")
        rows.append([name, kind, store.code_size * index.ntotal / 2**20, build_s[name], C.median(wall[name]),
                     ", ".join(f"{t:.3f}" for t in wall[name]), C.median(cpu[name]), C.median(wall[name]) / base])
    print(C.markdown_table(["storage", "faiss index", "vectors MiB", "build s", "search s (median)", "per repeat",
                            "CPU s (median)", "time / float32"], rows))
    (s32, i32), (s16, i16) = results["float32 flat"], results["fp16 flat"]
    same = np.mean([a == b for a, b in zip(i32, i16)])
    overlap = np.mean([len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(i32, i16)])
    print(f"\nagreement: identical top-{args.k} (in order) for {same:.1%} of queries, mean top-{args.k} overlap "
          f"{overlap:.4f}, largest |score difference| {float(np.abs(s32 - s16).max()):.2e}")
    print(f"load average (1 min) over the timed runs: min {min(loads):.2f}, max {max(loads):.2f}, "
          f"median {C.median(loads):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
