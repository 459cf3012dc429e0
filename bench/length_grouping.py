"""Training-step speed of a length-grouped training order (``--data.length_group_batches``) against the plain shuffle.

The system is the dual encoder ``python -m rankers reproduce`` trains (all-MiniLM-L6-v2, mean pooling,
cosine / 0.05, KL on stand-in teacher scores), fed by :class:`datamodules.RankingDataModule` exactly as in
training: BM25 negatives, the model's own collator, each batch padded to its longest text. Two orders of the
same epoch are compared:

* ``plain`` -- the seeded shuffle (``length_group_batches=0``, the default), the baseline;
* ``grouped`` -- the same shuffle with each run of ``G`` global batches sorted by length before it is cut into
  batches. The first ``G`` batches of both orders hold the same training items, so both time the same work
  apart from the padding.

Per dataset the table gives the padding share of the encoded passage tokens, median seconds per step
(forward + loss + backward + AdamW step, the orders alternating over rounds after one warm-up step each) and
the speed-up of ``grouped`` against ``plain`` measured in this run. Datasets: the embedded default (short,
similar lengths) and SciFact (``../shared/data/scifact``: abstracts of very different lengths).

    python bench/length_grouping.py                         # G=8, B=8, 3 negatives; passages up to 64 / 512 tokens, bf16 when the CPU has it
    python bench/length_grouping.py --rounds 1 --groups 1 --group-batches 2   # a quick check that it runs
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm", help="backbone (default: all-MiniLM-L6-v2)")
    p.add_argument("--datasets", default=f"embedded,{C.DEFAULT_SCIFACT}",
                   help="comma-separated datasets (names or BEIR directories)")
    p.add_argument("--group-batches", type=int, default=8, help="G: global batches sorted together")
    p.add_argument("--groups", type=int, default=1, help="how many runs of G batches are timed per round")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--negatives", type=int, default=3)
    p.add_argument("--max-lengths", default="64,512", help="passage max length per dataset (comma-separated)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    return p.parse_args(argv)


def _batches(model, dataset: str, group_batches: int, args, count: int):
    from datamodules.datamodule import RankingDataModule

    dm = RankingDataModule(dataset=dataset, num_negatives=args.negatives, batch_size=args.batch_size,
                           negative_window=(0, 30), train_subset_size=0, max_eval_queries=10,
                           length_group_batches=group_batches, seed=0,
                           val_split="dev" if dataset == "embedded" else "test")
    dm.trainer = SimpleNamespace(current_epoch=0, lightning_module=model, world_size=1, global_rank=0)
    dm.prepare_data()
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def _padding_share(batches) -> float:
    real = sum(int(b.passage_inputs["attention_mask"].sum()) for b in batches)
    total = sum(b.passage_inputs["attention_mask"].numel() for b in batches)
    return 1.0 - real / total


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from rankers.models.dual_encoder import DualEncoderRanker
    from rankers.precision import bf16_native

    precision = ("bf16" if bf16_native("cpu") else "fp32") if args.precision == "auto" else args.precision
    datasets = [d for d in args.datasets.split(",") if d]
    lengths = [int(x) for x in args.max_lengths.split(",")]
    if len(lengths) != len(datasets):
        raise SystemExit(f"--max-lengths gives {len(lengths)} lengths for {len(datasets)} datasets")
    count = args.group_batches * args.groups
    C.print_header("Length-grouped training order", "cpu",
                   {"batch": args.batch_size, "negatives": args.negatives, "group_batches": args.group_batches,
                    "timed_batches": count, "precision": precision, "rounds": args.rounds})
    results, rows = {}, []
    for dataset, max_length in zip(datasets, lengths):
        torch.manual_seed(0)
        model = DualEncoderRanker(backbone=args.model, pooling="mean", similarity="cos", temperature=0.05,
                                  passage_max_length=max_length, label_weight=0.0, distillation_loss="kl")
        orders = {"plain": _batches(model, dataset, 0, args, count),
                  "grouped": _batches(model, dataset, args.group_batches, args, count)}
        same = sorted(q for b in orders["plain"] for q in b.query_ids) == sorted(q for b in orders["grouped"] for q in b.query_ids)
        for batches in orders.values():
            for batch in batches:
                batch.teacher_scores = torch.randn(batch.mask.shape)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

        def step(batch):
            with C.autocast("cpu", precision):
                loss, _ = model.listwise_loss(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for batches in orders.values():  # warm-up
            step(batches[0])
        times = {name: [] for name in orders}
        for round_ in range(args.rounds):
            for name in (list(orders) if round_ % 2 == 0 else list(orders)[::-1]):
                start = time.perf_counter()
                for batch in orders[name]:
                    step(batch)
                times[name].append((time.perf_counter() - start) / len(orders[name]))
        base = C.median(times["plain"])
        label = "embedded" if dataset == "embedded" else dataset.rstrip("/").rsplit("/", 1)[-1]
        for name, batches in orders.items():
            t = C.median(times[name])
            pad = _padding_share(batches)
            rows.append([label, max_length, name, f"{pad:.1%}", f"{t:.3f}", f"{base / t:.2f}"])
            results[f"{label}/{name}"] = {"seconds_per_step": t, "speedup": base / t, "padding_share": pad,
                                          "same_items_as_plain": same}
        print(f"{label}: both orders hold the same {len(orders['plain']) * args.batch_size} training items: {same}")
    print()
    print(C.markdown_table(["dataset", "max length", "order", "padding (passages)", "s / step", "speed-up vs plain"],
                           rows))
    C.write_results(args.output, results)
    return results


if __name__ == "__main__":
    main()
