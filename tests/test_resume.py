"""A run killed mid-epoch and resumed with ``--ckpt_path last`` ends exactly where an uninterrupted run ends.

Scale: the embedded default at ``embedded_scale=0.1``, 32 training queries in batches of 8 (4 steps an
epoch), 2 epochs, a ``ModelCheckpoint(every_n_train_steps=3, save_last=True)``. On CPU:

* run A: ``python -m rankers fit`` uninterrupted (in this process);
* run B: the same command in a subprocess that SIGKILLs itself after step 4 (the last checkpoint is
  step 3: mid-epoch 0, one batch of the epoch left); resumed here with ``--ckpt_path last``, it crashes
  (an exception) after step 7 (last checkpoint: step 6, mid-epoch 1); resumed again, it finishes.

Every step records the query ids of its batch; B's steps (the last record of each step) must be A's,
and the final weights and validation metrics must be *equal* (no tolerance: same process layout, CPU,
same thread count; each step's dropout is seeded by (seed, epoch, batch, rank), see rankers.models.module).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 4
CHECKPOINT_EVERY = 3


class RecordBatches(pl.Callback):
    """Appends ``{"step", "epoch", "batch_idx", "query_ids"}`` of every training step to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, "batch_idx": batch_idx,
                  "query_ids": list(batch.query_ids)}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class CrashAtStep(pl.Callback):
    """Simulates a crash once ``global_step`` reaches ``step``: SIGKILL (``kill``) or an exception (``raise``)."""

    def __init__(self, step: int, mode: str = "kill") -> None:
        self.step, self.mode = step, mode

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"simulated crash after step {self.step}")


def _config(root: Path, extra_callbacks: list[dict]) -> Path:
    callbacks = [
        {"class_path": "callbacks.RetrievalEvaluator", "init_args": {"full_retrieval": False, "write_runs": False}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(root / "checkpoints"), "every_n_train_steps": CHECKPOINT_EVERY,
                       "save_last": True, "save_top_k": 0}},
        {"class_path": "test_resume.RecordBatches", "init_args": {"path": str(root / "batches.jsonl")}},
        *extra_callbacks,
    ]
    config = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root), "max_epochs": 2, "accelerator": "cpu", "devices": 1,
            "precision": "32-true", "reload_dataloaders_every_n_epochs": 1, "num_sanity_val_steps": 0,
            "log_every_n_steps": 1, "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "callbacks": callbacks,
        },
        "model": {"class_path": "rankers.DualEncoderRanker",
                  "init_args": {"backbone": "embedded", "query_max_length": 16, "passage_max_length": 48,
                                "lr": 1e-3, "warmup_ratio": 0.25}},
        "data": {"dataset": "embedded", "embedded_scale": 0.1, "max_train_queries": 8 * STEPS_PER_EPOCH,
                 "batch_size": 8, "num_negatives": 3, "train_subset_size": 0, "max_eval_queries": 10,
                 "eval_depth": 20, "eval_batch_size": 64, "seed": 0},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"config-{len(list(root.glob('config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, *extra: str):
    from rankers.cli import main

    return main(["fit", "--config", str(config), *extra])


def _steps(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "batches.jsonl").read_text().splitlines()]


def _last_checkpoint_step(root: Path) -> int:
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"]


def test_killed_and_resumed_run_matches_the_uninterrupted_run(tmp_path):
    run_a = _fit(_config(tmp_path / "a", []))
    assert [r["step"] for r in _steps(tmp_path / "a")] == list(range(1, 2 * STEPS_PER_EPOCH + 1))

    # B, part 1: a real SIGKILL in a subprocess after step 4 (last checkpoint: step 3, mid-epoch 0)
    root = tmp_path / "b"
    path = [str(ROOT), str(ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    killed = subprocess.run(
        [sys.executable, "-m", "rankers", "fit", "--config", str(_config(root, [
            {"class_path": "test_resume.CrashAtStep", "init_args": {"step": 4, "mode": "kill"}}]))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _last_checkpoint_step(root) == 3

    # B, part 2: resume; an exception after step 7 (last checkpoint: step 6, mid-epoch 1)
    with pytest.raises(RuntimeError, match="simulated crash after step 7"):
        _fit(_config(root, [{"class_path": "test_resume.CrashAtStep", "init_args": {"step": 7, "mode": "raise"}}]),
             "--ckpt_path", "last")
    assert _last_checkpoint_step(root) == 6

    # B, part 3: resume to the end
    run_b = _fit(_config(root, []), "--ckpt_path", "last")

    records = _steps(root)
    resumed_at = [b["step"] for a, b in zip(records, records[1:]) if b["step"] != a["step"] + 1]
    assert resumed_at == [4, 7]  # each resume redid the steps after its checkpoint (the counters)
    by_step = {r["step"]: r for r in records}  # the last record of each step: the one the final model saw
    # the data: every step trained on the uninterrupted run's batch (no batch repeated or skipped)
    assert [by_step[s] for s in sorted(by_step)] == _steps(tmp_path / "a")

    weights_a, weights_b = run_a.model.state_dict(), run_b.model.state_dict()
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    metrics_a = {k: float(v) for k, v in run_a.trainer.callback_metrics.items() if k.startswith("val/")}
    metrics_b = {k: float(v) for k, v in run_b.trainer.callback_metrics.items() if k.startswith("val/")}
    assert metrics_a and metrics_a == metrics_b
    # the evaluator's per-epoch history came back with the checkpoint (callback state_dict)
    history_a, history_b = (next(c for c in r.trainer.callbacks if type(c).__name__ == "RetrievalEvaluator").history
                            for r in (run_a, run_b))
    assert len(history_a) == 2 and history_b == history_a
    assert run_b.trainer.global_step == run_a.trainer.global_step == 2 * STEPS_PER_EPOCH
    assert run_b.trainer.optimizers[0].param_groups[0]["lr"] == run_a.trainer.optimizers[0].param_groups[0]["lr"]


# ----------------------------------------------------------------------------- the sampler and loader alone


def _order(loader) -> list[int]:
    return [i for batch in loader for i in batch.tolist()]


def test_sampler_order_is_the_seeded_shuffle_and_the_ddp_shards():
    from torch.utils.data.distributed import DistributedSampler

    from datamodules.sampler import ResumableSampler, resumable_train_loader

    data = list(range(23))
    orders = [_order(resumable_train_loader(data, batch_size=5, seed=7, epoch=epoch)) for epoch in (0, 1)]
    assert sorted(orders[0]) == sorted(orders[1]) == data and orders[0] != orders[1]  # reshuffled per epoch
    expected = torch.randperm(23, generator=torch.Generator().manual_seed(7 + 1)).tolist()
    assert orders[1] == expected
    for rank in (0, 1, 2):
        ours = list(ResumableSampler(data, seed=3, epoch=2, num_replicas=3, rank=rank))
        reference = DistributedSampler(data, num_replicas=3, rank=rank, shuffle=True, seed=3)
        reference.set_epoch(2)
        assert ours == list(reference) and len(ours) == 8  # 23 items padded to 3 shards of 8


def test_loader_state_round_trip_skips_exactly_the_consumed_batches():
    from datamodules.sampler import resumable_train_loader

    data = list(range(23))
    full = _order(resumable_train_loader(data, batch_size=4, seed=1, epoch=3))
    first = resumable_train_loader(data, batch_size=4, seed=1, epoch=3)
    seen = []
    for n, batch in enumerate(first, start=1):
        seen += batch.tolist()
        if n == 2:
            state = first.state_dict()
            break
    assert state == {"epoch": 3, "samples": 8, "num_replicas": 1}
    second = resumable_train_loader(data, batch_size=4, seed=1, epoch=3)
    second.load_state_dict(state)
    assert len(second) == 6  # the epoch's length as Lightning counts it; it adds the batches already done
    assert seen + _order(second) == full
    assert _order(second) == full  # the offset applies to one pass only
    again = resumable_train_loader(data, batch_size=4, seed=1, epoch=3)
    it = iter(again)  # created before the state arrives (Lightning may build it early): still applied
    again.load_state_dict(state)
    assert [i for batch in it for i in batch.tolist()] == full[8:]
    assert again.state_dict()["samples"] == 8 + 4 * 4


def test_loader_state_of_another_epoch_or_world_size_is_ignored(caplog):
    from datamodules.sampler import resumable_train_loader

    data = list(range(10))
    full = _order(resumable_train_loader(data, batch_size=3, seed=0, epoch=1))
    loader = resumable_train_loader(data, batch_size=3, seed=0, epoch=1)
    loader.load_state_dict({"epoch": 0, "samples": 9, "num_replicas": 1})  # saved on epoch 0's last batch
    assert _order(loader) == full
    loader.load_state_dict({"epoch": 1, "samples": 3, "num_replicas": 2})
    assert _order(loader) == full and "cannot be continued in the same order" in caplog.text


def test_loader_with_workers_resumes_too():
    from datamodules.sampler import resumable_train_loader

    data = list(range(12))
    full = _order(resumable_train_loader(data, batch_size=2, seed=5, epoch=0, num_workers=2))
    loader = resumable_train_loader(data, batch_size=2, seed=5, epoch=0, num_workers=2)
    loader.load_state_dict({"epoch": 0, "samples": 6, "num_replicas": 1})
    assert _order(loader) == full[6:]
