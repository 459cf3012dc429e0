"""Every shipped config (and the overlays stacked on them) parses against the classes' signatures."""
from __future__ import annotations

from pathlib import Path

import pytest

from rankers.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STACKS = [
    ["ca_teacher.yaml"], ["de_baseline.yaml"], ["de_distill.yaml"],
    ["de_baseline.yaml", "overlays/scifact.yaml", "overlays/cpu_smoke.yaml", "overlays/minilm.yaml"],
    ["ca_teacher.yaml", "overlays/teacher_val_scores.yaml"],
    ["de_distill.yaml", "overlays/label_mixing.yaml"],
    *[[f"{scale}/{name}.yaml", "trainer/gpu_ddp.yaml"]
      for scale in ("msmarco", "nq") for name in ("ca_teacher", "de_baseline", "de_distill")],
]


@pytest.mark.parametrize("stack", STACKS, ids=lambda s: "+".join(s))
def test_config_parses(stack, capsys):
    args = ["fit"]
    for name in stack:
        args += ["--config", str(CONFIGS / name)]
    with pytest.raises(SystemExit) as exit_:
        main(args + ["--print_config"])
    assert exit_.value.code in (0, None), capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "class_path: rankers." in printed and "data:" in printed


def _printed_backbone(stack: list[str], capsys) -> str:
    args = ["fit"]
    for name in stack:
        args += ["--config", str(CONFIGS / name)]
    with pytest.raises(SystemExit):
        main(args + ["--print_config"])
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("backbone:")]
    assert len(lines) == 1, lines
    return lines[0].split(":", 1)[1].strip()


@pytest.mark.parametrize("config", ["ca_teacher.yaml", "de_baseline.yaml", "de_distill.yaml"])
def test_configs_default_to_minilm_and_the_smoke_overlay_to_tiny(config, capsys):
    assert _printed_backbone([config], capsys) == "minilm"
    assert _printed_backbone([config, "overlays/cpu_smoke.yaml"], capsys) == "tiny"
    assert _printed_backbone([config, "overlays/cpu_smoke.yaml", "overlays/minilm.yaml"], capsys) == "minilm"


@pytest.mark.parametrize("config", ["ca_teacher.yaml", "de_baseline.yaml", "de_distill.yaml",
                                    *[f"{scale}/{name}.yaml" for scale in ("msmarco", "nq")
                                      for name in ("ca_teacher", "de_baseline", "de_distill")]])
def test_the_run_directory_is_named_once(config, tmp_path):
    """--trainer.default_root_dir moves the loggers (and with them the callbacks' runs, plots, checkpoints)."""
    from rankers.cli import lightning_cli

    cli = lightning_cli(["--config", str(CONFIGS / config), "--trainer.default_root_dir", str(tmp_path),
                         "--model.init_args.backbone", "tiny"], run=False)
    trainer = cli.trainer
    assert [str(logger.save_dir) for logger in trainer.loggers] == [str(tmp_path)] * 2
    assert Path(trainer.log_dir) == tmp_path  # what RetrievalEvaluator, ScoreDiagnostics and ModelCheckpoint default to
    kinds = [type(cb).__name__ for cb in trainer.callbacks]
    assert "RetrievalEvaluator" in kinds and "ModelCheckpoint" in kinds
    assert ("TeacherScoreWriter" in kinds) == config.endswith("ca_teacher.yaml")


def test_the_refresh_callbacks_file_swaps_in_the_negative_refresh(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "de_baseline.yaml"), "--trainer.callbacks",
              str(CONFIGS / "callbacks" / "student_refresh.yaml"), "--print_config"])
    printed = capsys.readouterr().out
    assert "callbacks.NegativeRefresh" in printed and "callbacks.RetrievalEvaluator" not in printed


def test_the_loss_is_a_weighted_list_of_loss_objects_in_a_config(tmp_path):
    from rankers.cli import lightning_cli

    cli = lightning_cli(["--config", str(CONFIGS / "de_distill.yaml"), "--config", str(CONFIGS / "overlays" / "label_mixing.yaml"),
                         "--trainer.default_root_dir", str(tmp_path), "--model.init_args.backbone", "tiny"], run=False)
    assert [repr(t) for t in cli.model.losses] == ["LabelLoss(weight=0.1, in_batch=True)",
                                                    "DistillationLoss(name='kl', weight=1.0, temperature=2.0)"]
