"""Write the teacher's scores from ``predict`` as a TREC run file: the offline teacher-score file.

``python -m rankers predict --config configs/ca_teacher.yaml --ckpt_path CA.ckpt`` scores every
training query's positives and hard-negative pool (the DataModule's predict pairs) and this writer
turns them into ``output`` (``qid Q0 pid rank score tag``), which ``--data.teacher_scores`` reads back
for distillation. Under DDP each rank's scores are gathered and rank 0 writes the file.
"""
from __future__ import annotations

from callbacks.run_writer import RunWriter


class TeacherScoreWriter(RunWriter):
    """:class:`callbacks.RunWriter` with the teacher-score file's tag and name.

    Args:
        output: path of the score file to write (parent directories are created); ``None``: the run
            directory's ``teacher_scores.trec`` (``trainer.log_dir``, else ``trainer.default_root_dir``).
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(output, tag="teacher", filename="teacher_scores.trec")
