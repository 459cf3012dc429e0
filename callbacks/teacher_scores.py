"""Write the teacher's scores from ``predict`` as a TREC run file: the offline teacher-score file.

``python -m rankers predict --config configs/ca_teacher.yaml --ckpt_path CA.ckpt`` scores every
training query's positives and hard-negative pool (the DataModule's predict pairs) and this writer
turns them into ``output`` (``qid Q0 pid rank score tag``), which ``--data.teacher_scores`` reads back
for distillation. Under DDP each rank's scores are gathered and rank 0 writes the file.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

log = logging.getLogger(__name__)


class TeacherScoreWriter(BasePredictionWriter):
    """Gathers the predict loop's pair scores and writes them as a TREC run.

    Args:
        output: path of the score file to write (parent directories are created); ``None``: the run
            directory's ``teacher_scores.trec`` (``trainer.log_dir``, else ``trainer.default_root_dir``).
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.written: Path | None = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        from datamodules.formats import write_run

        if predictions and isinstance(predictions[0], list):  # several predict dataloaders
            predictions = [p for group in predictions for p in group]
        device = trainer.strategy.root_device
        pair_index = torch.cat([p["pair_index"] for p in predictions]).to(device)
        scores = torch.cat([p["scores"] for p in predictions]).float().to(device)
        if trainer.world_size > 1:
            pair_index = trainer.strategy.all_gather(pair_index).reshape(-1)
            scores = trainer.strategy.all_gather(scores).reshape(-1)
        pair_index, scores = pair_index.cpu().numpy(), scores.cpu().numpy()
        _, first = np.unique(pair_index, return_index=True)
        pairs = trainer.datamodule.eval_sets["predict"]
        if len(first) != len(pairs):
            raise RuntimeError(f"teacher scored {len(first)} of {len(pairs)} pairs; refusing to write a partial file")
        run = pairs.to_run(pair_index[first], scores[first])
        path = Path(self.output) if self.output else Path(trainer.log_dir or trainer.default_root_dir) / "teacher_scores.trec"
        if trainer.is_global_zero:
            write_run(run, path, tag="teacher")
            log.info("wrote %d teacher scores for %d queries to %s", len(first), len(run), path)
        self.written = path
