"""Write ``predict``'s pair scores as a TREC run file (``qid Q0 pid rank score tag``).

``predict`` scores the DataModule's predict pairs (a teacher's training pools, a split's re-rank pairs, or
every query of a candidate run: ``--data.predict_split``); this writer gathers them across ranks (DDP), checks
that every pair was scored once, and rank 0 writes the run. It is what ``python -m rankers rerank`` runs
(:class:`RunWriter`) and what writes the offline teacher-score file (:class:`callbacks.TeacherScoreWriter`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.formats import write_run
from rankers.distributed import gather_scored_pairs

log = logging.getLogger(__name__)


class RunWriter(BasePredictionWriter):
    """Gathers the predict loop's pair scores and writes them as a TREC run.

    Args:
        output: path of the run file to write (parent directories are created); ``None``: ``filename`` in
            the run directory (``trainer.log_dir``, else ``trainer.default_root_dir``).
        tag: the run's tag column.
        filename: the file name used when ``output`` is not given.
    """

    def __init__(self, output: str | None = None, tag: str = "rankers", filename: str = "run.trec") -> None:
        super().__init__(write_interval="epoch")
        self.output, self.tag, self.filename = output, tag, filename
        self.written: Path | None = None
        self.run: dict[str, dict[str, float]] | None = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if predictions and isinstance(predictions[0], list):  # several predict dataloaders
            predictions = [p for group in predictions for p in group]
        device = trainer.strategy.root_device
        pairs = trainer.datamodule.eval_sets["predict"]
        if predictions:
            pair_index = torch.cat([p["pair_index"] for p in predictions]).to(device)
            scores = torch.cat([p["scores"] for p in predictions]).float().to(device)
        else:  # a rank with no pairs still joins the gather
            pair_index, scores = torch.empty(0, dtype=torch.long, device=device), torch.empty(0, device=device)
        pair_index, scores = gather_scored_pairs(pair_index, scores)
        if len(pair_index) != len(pairs):
            raise RuntimeError(f"scored {len(pair_index)} of {len(pairs)} pairs; refusing to write a partial run")
        self.run = pairs.to_run(pair_index, scores)
        path = Path(self.output) if self.output else Path(trainer.log_dir or trainer.default_root_dir) / self.filename
        if trainer.is_global_zero:
            write_run(self.run, path, tag=self.tag)
            log.info("wrote %d scores for %d queries to %s", len(pair_index), len(self.run), path)
        self.written = path
