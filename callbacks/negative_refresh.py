"""ANCE-style hard-negative refresh during training (Xiong et al. 2021, "Approximate nearest neighbor
negative contrastive learning for dense text retrieval").

Every ``every_n_epochs`` epochs the dual encoder being trained re-mines its own training negatives:
its top candidates for each training query, searched in the dense index its end-of-epoch evaluation
has just built (one corpus encode serves both), cut to the DataModule's window, positives excluded,
cached with provenance. The callback is a :class:`~callbacks.retrieval_eval.RetrievalEvaluator` (it
takes the same arguments), so it holds the model and the evaluation index itself: nothing scans
``trainer.callbacks``. Use it *instead of* the evaluator.
"""
from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl

from callbacks.retrieval_eval import RetrievalEvaluator

log = logging.getLogger(__name__)


class NegativeRefresh(RetrievalEvaluator):
    """Retrieval evaluation plus an in-training re-mining of the training negatives with the model.

    Args:
        every_n_epochs: refresh before every epoch ``e`` with ``e % every_n_epochs == 0`` (``e > 0``):
            at the end of the epoch before, after its evaluation and before its checkpoint, so a run
            resumed from that checkpoint trains on the refreshed negatives.
        **kwargs: :class:`~callbacks.retrieval_eval.RetrievalEvaluator`'s arguments.
    """

    def __init__(self, every_n_epochs: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if every_n_epochs < 1:
            raise ValueError(f"NegativeRefresh: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.refreshed_for_epoch = 0  # the last training epoch refreshed negatives were mined for
        self._index_step: int | None = None  # global step at which ``self.index`` was built

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "refreshed_for_epoch": self.refreshed_for_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.refreshed_for_epoch = int(state_dict.get("refreshed_for_epoch", 0))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not getattr(pl_module, "is_dual_encoder", False):
            raise ValueError("NegativeRefresh re-mines negatives with the model being trained, which must be a "
                             f"DualEncoderRanker (got {type(pl_module).__name__})")
        reload = trainer.reload_dataloaders_every_n_epochs
        if reload < 1 or self.every_n_epochs % reload:
            raise ValueError(f"NegativeRefresh(every_n_epochs={self.every_n_epochs}) needs the training dataloader "
                             f"rebuilt at those epochs: set Trainer(reload_dataloaders_every_n_epochs=1) (is {reload})")
        if not hasattr(trainer.datamodule, "refresh_negatives"):
            raise ValueError("NegativeRefresh needs the RankingDataModule (it owns the training negatives)")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        if self.index is not None and not trainer.sanity_checking:
            self._index_step = trainer.global_step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the end-of-epoch validation (not a mid-epoch one): runs before ModelCheckpoint saves
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.is_last_batch:
            self._refresh(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._refresh(trainer, pl_module)  # epochs without validation (check_val_every_n_epoch > 1)

    def _refresh(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # the epoch the new negatives are for
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        if epoch % self.every_n_epochs or self.refreshed_for_epoch == epoch or (max_epochs and epoch >= max_epochs):
            return
        fresh = self.index is not None and self._index_step == trainer.global_step  # built with these weights
        trainer.datamodule.refresh_negatives(pl_module, epoch, index=self.index if fresh else None)
        self.refreshed_for_epoch = epoch
