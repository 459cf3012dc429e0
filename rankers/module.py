"""What the cross-attention teacher and the dual-encoder student share as LightningModules.

Both train listwise over (query, positive, hard negatives), score (query, candidate) pairs in the
validation / test / predict loops (re-rank evaluation and teacher-score prediction), and use AdamW
with linear warm-up and decay. The retrieval-eval callback reads the pair scores these loops return.
"""
from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite; names the step and the batch's query ids."""


class RankerModule(pl.LightningModule):
    """Base class: optimizer, pair-scoring loops, loss sanity check. Subclasses define the model."""

    is_dual_encoder: bool = False

    def __init__(self, lr: float, weight_decay: float, warmup_ratio: float) -> None:
        super().__init__()
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio

    # --- what subclasses implement -------------------------------------------------------------
    def collator(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def pair_scores(self, batch: dict[str, Any]) -> torch.Tensor:  # pragma: no cover - abstract
        """Scores of the batch's (query, passage) pairs, shape [n]."""
        raise NotImplementedError

    def listwise_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    # --- loops ---------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, parts = self.listwise_loss(batch)
        if not torch.isfinite(loss):
            ids = ", ".join(batch["query_ids"][:8]) + (" ..." if len(batch["query_ids"]) > 8 else "")
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); the batch's query ids: {ids}. Check the teacher scores and the learning rate."
            )
        bs = len(batch["query_ids"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def _pair_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "pair_index" not in batch:  # a listwise batch (validation loss); not used for metrics
            loss, _ = self.listwise_loss(batch)
            return {"loss": loss}
        return {"pair_index": batch["pair_index"], "scores": self.pair_scores(batch).float()}

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self._pair_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self._pair_step(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self._pair_step(batch)

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        warmup = int(math.ceil(self.warmup_ratio * total))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
