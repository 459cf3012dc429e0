"""Training-step speed of length-bucketed encoding (``length_buckets``) against one padded batch.

The systems are the models ``python -m rankers reproduce`` trains, on its own batches: the embedded
default's training queries with BM25 negatives from :class:`datamodules.RankingDataModule`, collated
by the model's own collator (each batch padded to its longest text, as in training):

* ``DE`` -- ``DualEncoderRanker`` (all-MiniLM-L6-v2, mean pooling, cosine / 0.05, KL on stand-in
  teacher scores), B queries x (1 + k) passages per step;
* ``CA`` -- ``CrossAttentionRanker`` (all-MiniLM-L6-v2, listwise CE), B queries x (1 + k_ca) pairs.

Each step is forward + loss + backward + AdamW step under the chosen precision. For each model the
baseline is ``length_buckets=1`` (one padded batch, the behaviour before the buckets existed); the
other settings are timed on the same batches in alternating order after one warm-up step each, and
the table gives median seconds per step and the speed-up against the baseline measured in this run,
plus the padding share of the encoded tokens. Peak memory is not measured here (see bench/memory.py).

    python bench/length_buckets.py                          # B=8, k=29 (DE) / 7 (CA), bf16 when the CPU has it
    python bench/length_buckets.py --steps 2 --rounds 1     # quick check that it runs
"""
from __future__ import annotations

import argparse
import time

import _common as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm", help="backbone of both models (default: all-MiniLM-L6-v2)")
    p.add_argument("--buckets", default="1,2,4,8", help="length_buckets settings; the first is the baseline")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--negatives", type=int, default=29, help="DE negatives per query")
    p.add_argument("--ca-negatives", type=int, default=7, help="CA negatives per query")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="timed steps per setting and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    return p.parse_args(argv)


def _batches(model, num_negatives: int, batch_size: int, count: int):
    from types import SimpleNamespace

    from datamodules.datamodule import RankingDataModule

    dm = RankingDataModule(num_negatives=num_negatives, batch_size=batch_size, negative_window=(0, 30),
                           max_train_queries=400, train_subset_size=0, max_eval_queries=10)
    dm.trainer = SimpleNamespace(current_epoch=0, lightning_module=model, world_size=1, global_rank=0)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            return batches
    return batches


def _padding_share(batch, key: str) -> float:
    mask = getattr(batch, key)["attention_mask"]
    return 1.0 - float(mask.sum()) / mask.numel()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from rankers.models.cross_encoder import CrossAttentionRanker
    from rankers.models.dual_encoder import DualEncoderRanker
    from rankers.precision import bf16_native

    buckets = [int(b) for b in args.buckets.split(",")]
    precision = ("bf16" if bf16_native("cpu") else "fp32") if args.precision == "auto" else args.precision
    C.print_header("Length-bucketed training steps", "cpu",
                   {"batch": args.batch_size, "de_negatives": args.negatives, "ca_negatives": args.ca_negatives,
                    "max_length": args.max_length, "precision": precision, "steps": args.steps, "rounds": args.rounds})
    torch.manual_seed(0)
    systems = {
        "DE": (lambda b: DualEncoderRanker(backbone=args.model, pooling="mean", similarity="cos", temperature=0.05,
                                           passage_max_length=args.max_length, label_weight=0.0,
                                           distillation_loss="kl", length_buckets=b), args.negatives, "passage_inputs"),
        "CA": (lambda b: CrossAttentionRanker(backbone=args.model, max_length=args.max_length, length_buckets=b),
               args.ca_negatives, "pair_inputs"),
    }
    results, rows = {}, []
    for name, (build, negatives, key) in systems.items():
        models = {b: build(b) for b in buckets}
        for b in buckets[1:]:
            models[b].load_state_dict(models[buckets[0]].state_dict())
        batches = _batches(models[buckets[0]], negatives, args.batch_size, args.steps + 1)
        for batch in batches:
            if name == "DE":
                batch.teacher_scores = torch.randn(batch.mask.shape)
        optimizers = {b: torch.optim.AdamW(m.parameters(), lr=1e-5) for b, m in models.items()}

        def step(b, batch):
            with C.autocast("cpu", precision):
                loss, _ = models[b].listwise_loss(batch)
            loss.backward()
            optimizers[b].step()
            optimizers[b].zero_grad(set_to_none=True)

        for b in buckets:  # warm-up
            step(b, batches[0])
        times = {b: [] for b in buckets}
        for round_ in range(args.rounds):
            order = buckets if round_ % 2 == 0 else buckets[::-1]
            for b in order:
                start = time.perf_counter()
                for batch in batches[1:]:
                    step(b, batch)
                times[b].append((time.perf_counter() - start) / len(batches[1:]))
        base = C.median(times[buckets[0]])
        pad = C.median([_padding_share(batch, key) for batch in batches])
        for b in buckets:
            t = C.median(times[b])
            rows.append([name, b, t, base / t])
            results[f"{name}/{b}"] = {"seconds_per_step": t, "speedup": base / t, "padding_share_one_batch": pad}
        print(f"{name}: padding share of one padded batch {pad:.1%}")
    print()
    print(C.markdown_table(["model", "length_buckets", "s / step", f"speed-up vs {buckets[0]}"], rows))
    C.write_results(args.output, results)
    return results


if __name__ == "__main__":
    main()
