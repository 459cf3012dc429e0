"""What the cross-attention teacher and the dual-encoder student share as LightningModules.

Both train listwise over (query, positive, hard negatives), score (query, candidate) pairs in the
validation / test / predict loops (re-rank evaluation and teacher-score prediction), and use AdamW
with linear warm-up and decay. The retrieval-eval callback reads the pair scores these loops return.

Two things make a run resumed from a mid-epoch checkpoint (``fit --ckpt_path last``) continue exactly
like the uninterrupted run:

* each training step draws its randomness (dropout) from a generator seeded by ``(seed, epoch, batch,
  rank)`` -- not from the global RNG, whose state a checkpoint does not hold -- and leaves the global RNG
  as it found it;
* the learning-rate schedule learns the number of training steps in ``on_train_start``, not in
  ``configure_optimizers``: asking ``trainer.estimated_stepping_batches`` there builds the train
  dataloader before the checkpoint is restored, and Lightning then never hands that loader its saved
  position (Lightning issue #20550).
"""
from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import lightning.pytorch as pl
import torch

from rankers.models.batches import ListwiseBatch, PairBatch


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite; names the step and the batch's query ids."""


class RankerModule(pl.LightningModule):
    """Base class: optimizer, pair-scoring loops, loss sanity check. Subclasses define the model."""

    is_dual_encoder: bool = False
    #: False while an eval callback scores the eval pairs itself (a DE's re-rank from embeddings):
    #: the validation / test loop then only walks the batches
    score_pairs_in_loop: bool = True

    def __init__(self, lr: float, weight_decay: float, warmup_ratio: float, head_lr: float | None = None) -> None:
        super().__init__()
        self.lr = lr
        self.head_lr = head_lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self._step_seed: int | None = None  # base seed of the per-step RNG (checkpointed)
        self._schedule: dict[str, int] = {"total": 1, "warmup": 0}  # filled in on_train_start

    # --- what subclasses implement -------------------------------------------------------------
    def collator(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def pair_scores(self, batch: PairBatch) -> torch.Tensor:  # pragma: no cover - abstract
        """Scores of the batch's (query, passage) pairs, shape [n]."""
        raise NotImplementedError

    def listwise_loss(self, batch: ListwiseBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def is_head_parameter(self, name: str) -> bool:
        """Parameters created fresh on top of the pretrained backbone (trained at ``head_lr``)."""
        return False

    # --- per-step randomness ------------------------------------------------------------------------
    def _base_seed(self) -> int:
        if self._step_seed is None:
            self._step_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        return self._step_seed

    def step_seed(self, batch_idx: int) -> int:
        """The seed of training batch ``batch_idx`` of the current epoch on this rank (63 bits)."""
        key = f"{self._base_seed()}:{self.current_epoch}:{batch_idx}:{self.global_rank}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rankers_step_seed"] = self._base_seed()
        # the class, as the LightningCLI records it for the models it builds, also for those built in Python
        # (reproduce, the API): `rankers test --ckpt_path` then rebuilds this class, not RankerModule
        hparams = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if isinstance(hparams, dict):
            hparams.setdefault("_class_path", f"{type(self).__module__}.{type(self).__qualname__}")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rankers_step_seed" in checkpoint:
            self._step_seed = int(checkpoint["rankers_step_seed"])

    # --- loops ---------------------------------------------------------------------------------
    def training_step(self, batch: ListwiseBatch, batch_idx: int) -> torch.Tensor:
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the global RNG comes out as it went in
            torch.manual_seed(self.step_seed(batch_idx))
            loss, parts = self.listwise_loss(batch)
        if not torch.isfinite(loss):
            ids = ", ".join(batch.query_ids[:8]) + (" ..." if batch.size > 8 else "")
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); the batch's query ids: {ids}. Check the teacher scores and the learning rate."
            )
        bs = batch.size
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def _pair_step(self, batch: ListwiseBatch | PairBatch) -> dict[str, torch.Tensor]:
        if isinstance(batch, ListwiseBatch):  # the validation loss; not used for metrics
            loss, _ = self.listwise_loss(batch)
            return {"loss": loss}
        if not self.score_pairs_in_loop:
            return {}
        return {"pair_index": batch.pair_index, "scores": self.pair_scores(batch).float()}

    def validation_step(self, batch: ListwiseBatch | PairBatch, batch_idx: int, dataloader_idx: int = 0):
        return self._pair_step(batch)

    def test_step(self, batch: ListwiseBatch | PairBatch, batch_idx: int, dataloader_idx: int = 0):
        return self._pair_step(batch)

    def predict_step(self, batch: ListwiseBatch | PairBatch, batch_idx: int, dataloader_idx: int = 0):
        return self._pair_step(batch)

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            no_decay = param.ndim < 2 or "LayerNorm" in name or "norm" in name.lower()
            head = self.head_lr is not None and self.is_head_parameter(name)
            groups.setdefault((head, no_decay), []).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": params, "weight_decay": 0.0 if no_decay else self.weight_decay,
              "lr": self.head_lr if head else self.lr}
             for (head, no_decay), params in sorted(groups.items())],
            lr=self.lr,
        )
        schedule = self._schedule  # the lambda reads it; on_train_start fills in the real lengths

        def lr_factor(step: int) -> float:
            total, warmup = schedule["total"], schedule["warmup"]
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """Size the warm-up / decay schedule now that the train dataloader exists (see the module doc)."""
        total = max(1, int(self.trainer.estimated_stepping_batches))
        self._schedule.update(total=total, warmup=int(math.ceil(self.warmup_ratio * total)))
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                                  scheduler.lr_lambdas):
                    group["lr"] = base_lr * factor(scheduler.last_epoch)
