"""Numerical faults stop a run with a message that says where: non-finite losses and non-finite teacher scores.

* a teacher score file with a NaN / inf is rejected when the DataModule loads it (file, line, field
  ``score``), before any training;
* a finite but huge teacher score (1e30) passes the reader, overflows the M3SE loss to inf in float32,
  and ``Trainer.fit`` stops at that step with :class:`rankers.models.module.NonFiniteLossError` naming the global
  step, the epoch, the batch and the batch's query ids.
"""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest

from datamodules.datamodule import RankingDataModule
from datamodules.formats import DataFormatError, write_run

DATA = dict(dataset="embedded", embedded_scale=0.1, max_train_queries=8, batch_size=8, num_negatives=3,
            train_subset_size=0, max_eval_queries=5, eval_depth=10, seed=0)


@pytest.fixture(scope="module")
def training_examples():
    """The training queries (positives and negative pools) of the DataModule settings above."""
    dm = RankingDataModule(**DATA)
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataset.examples


def _score_file(path: Path, examples, poisoned: str | None = None, value: float = 0.0) -> Path:
    """Teacher scores for every training query's positives (1.0) and pool (0.0); the first positive of
    query ``poisoned`` gets ``value``."""
    run = {}
    for ex in examples:
        run[ex.query_id] = {pid: 0.0 for pid in ex.negatives} | {pid: 1.0 for pid in ex.positives}
        if ex.query_id == poisoned:
            run[ex.query_id][ex.positives[0]] = value
    write_run(run, path, tag="teacher")
    return path


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_teacher_score_is_rejected_at_load(training_examples, tmp_path, bad):
    path = _score_file(tmp_path / "teacher.trec", training_examples)
    lines = path.read_text().splitlines()
    number = len(lines) // 2 + 1  # 1-based line number of a line in the middle
    fields = lines[number - 1].split()
    fields[4] = bad
    lines[number - 1] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")

    dm = RankingDataModule(**DATA, teacher_scores=str(path))
    with pytest.raises(DataFormatError) as info:
        dm.prepare_data()
        dm.setup("fit")
    err = info.value
    assert (Path(err.path).name, err.line, err.field) == ("teacher.trec", number, "score")
    assert f"teacher.trec:{number}: field 'score'" in str(err) and "not finite" in str(err)


def test_score_file_without_a_training_query_names_it(training_examples, tmp_path):
    """The query-level branch (tests/test_datamodule.py covers a missing passage of a covered query)."""
    missing = training_examples[5].query_id
    path = _score_file(tmp_path / "teacher.trec", [ex for ex in training_examples if ex.query_id != missing])
    dm = RankingDataModule(**DATA, teacher_scores=str(path))
    with pytest.raises(ValueError, match=f"teacher.trec: no teacher scores for training query '{missing}'"):
        dm.prepare_data()
        dm.setup("fit")


def test_overflowing_loss_stops_fit_naming_step_and_queries(training_examples, tmp_path):
    from rankers.models.dual_encoder import DualEncoderRanker
    from rankers.models.module import NonFiniteLossError

    poisoned = training_examples[3].query_id
    path = _score_file(tmp_path / "teacher.trec", training_examples, poisoned=poisoned, value=1e30)
    dm = RankingDataModule(**DATA, teacher_scores=str(path))
    pl.seed_everything(0)
    model = DualEncoderRanker(backbone="embedded", distillation_loss="m3se", label_weight=0.0,
                              query_max_length=16, passage_max_length=48)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(model, datamodule=dm)
    message = str(info.value)
    assert message.startswith("training loss is inf at global step 0 (epoch 0, batch 0)"), message
    assert poisoned in message and "Check the teacher scores" in message
    assert isinstance(info.value, FloatingPointError)
    assert trainer.global_step == 0  # the optimizer never stepped on the bad loss


def test_same_scores_without_the_huge_value_train(training_examples, tmp_path):
    """Control: the same run with the huge score replaced by an ordinary one trains its step."""
    from rankers.models.dual_encoder import DualEncoderRanker

    path = _score_file(tmp_path / "teacher.trec", training_examples, poisoned=training_examples[3].query_id, value=3.0)
    pl.seed_everything(0)
    model = DualEncoderRanker(backbone="embedded", distillation_loss="m3se", label_weight=0.0,
                              query_max_length=16, passage_max_length=48)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0)
    trainer.fit(model, datamodule=RankingDataModule(**DATA, teacher_scores=str(path)))
    assert trainer.global_step == 1 and float(trainer.callback_metrics["train/distill_loss"]) > 0
