"""What a person sees at the terminal (issue 14), through the real CLI in a subprocess: help, one-line errors
with exit status 2 (1 for a failure during training), ``--traceback``, and no ``\\r`` progress spam in a
piped log."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--config", "configs/de_baseline.yaml", "--config", "configs/overlays/cpu_smoke.yaml"]


def _rankers(*argv: str, tmp_path: Path | None = None, env: dict | None = None, timeout: int = 300):
    full_env = {key: value for key, value in os.environ.items() if key != "RANKERS_TRACEBACK"}
    full_env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                     "WANDB_MODE": "disabled", **(env or {})})
    if tmp_path is not None:
        full_env.setdefault("RANKERS_HOME", str(tmp_path / "home"))
    return subprocess.run([sys.executable, "-m", "rankers", *argv], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc, status: int) -> str:
    """The process failed with ``status`` and ``rankers: error: ...`` as the last stderr line, no traceback."""
    assert proc.returncode == status, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("rankers: error: "), proc.stderr[-3000:]
    assert sum(line.startswith("rankers: error:") for line in lines) == 1, proc.stderr[-3000:]
    return lines[-1]


def test_top_level_help_lists_every_subcommand_and_imports_no_torch():
    from rankers.cli import PIPELINE_COMMANDS, TRAINING_COMMANDS

    proc = _rankers("--help")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("usage: python -m rankers COMMAND")
    for name in [*TRAINING_COMMANDS, *PIPELINE_COMMANDS]:
        assert any(line.startswith(f"  {name} ") for line in proc.stdout.splitlines()), name
    # the fast path: neither --help nor --version needs torch or Lightning
    code = ("import sys; from rankers.cli import main; main(['--help']); main(['--version']); "
            "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout and "rankers 0.1.0" in out.stdout, out.stdout + out.stderr


def test_unknown_command_is_one_line():
    line = _one_error_line(_rankers("fitt"), 2)
    assert "unknown command 'fitt'" in line and "reproduce" in line


def test_subcommand_help_names_the_program():
    proc = _rankers("capacity", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m rankers capacity"), proc.stdout[:200]


def _bad_dataset(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "a b"}\n{"_id": "d5", "text": "c d"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q18", "text": "c"}\n')
    for split in ("train", "dev", "test"):
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq18\td5\t1.5\n")
    return root


def test_a_malformed_qrels_line_is_one_error_line_and_traceback_on_request(tmp_path):
    data = _bad_dataset(tmp_path / "bad")
    line = _one_error_line(_rankers("fit", *SMOKE, "--data.dataset", str(data), tmp_path=tmp_path), 2)
    assert "qrels/dev.tsv:3: field 'score': relevance '1.5' is not an integer" in line, line
    shown = _rankers("fit", *SMOKE, "--data.dataset", str(data), "--traceback", tmp_path=tmp_path)
    assert shown.returncode != 0 and "Traceback" in shown.stderr and "DataFormatError" in shown.stderr
    env = _rankers("fit", *SMOKE, "--data.dataset", str(data), tmp_path=tmp_path, env={"RANKERS_TRACEBACK": "1"})
    assert "Traceback" in env.stderr


@pytest.mark.parametrize("argv, says", [
    (["--model.distillation_loss", "m4se"], "unknown distillation loss 'm4se'; valid names: kl, m3se"),
    (["--model.init_args.backbone", "/nonexistent/encoder"], "could not load the encoder for backbone '/nonexistent/encoder'"),
    (["--model.init_args.foo", "1"], "DualEncoderRanker': Option 'foo' is not accepted"),
    (["--model.init_args.lr", "abc"], 'Parser key "lr": Expected a <class \'float\'>'),
    (["--config", "configs/missing.yaml"], "missing.yaml"),
], ids=["unknown-loss", "missing-backbone", "unknown-key", "bad-value", "missing-config"])
def test_config_errors_are_the_classes_own_message_on_one_line(argv, says, tmp_path):
    line = _one_error_line(_rankers("fit", *SMOKE, *argv, tmp_path=tmp_path), 2)
    assert says in line and "Union subtypes" not in line and "Namespace(" not in line, line


def test_pipeline_command_parse_error_is_one_line(tmp_path):
    line = _one_error_line(_rankers("reproduce", "--capacity_dims", "4,x"), 2)
    assert "expected comma-separated positive integers" in line
    line = _one_error_line(_rankers("capacity", "--teacher_scores", str(tmp_path / "none.trec")), 2)
    assert "none.trec" in line
    # one flag style: underscores, as LightningCLI's --ckpt_path; the dashed spelling is not a second name
    line = _one_error_line(_rankers("reproduce", "--output-dir", str(tmp_path / "out")), 2)
    assert "--output-dir" in line, line


def test_training_failures_exit_1_and_bugs_keep_their_traceback():
    import torch

    from rankers.commands.console import anticipated
    from rankers.models.module import NonFiniteLossError

    assert anticipated(NonFiniteLossError("loss is nan at step 3"))[1] == 1
    assert anticipated(torch.OutOfMemoryError("CUDA out of memory"))[1] == 1
    try:  # a ValueError raised outside the project (a bug or a library's internals) is not "anticipated"
        int("x")
    except ValueError as err:
        assert anticipated(err) is None


def test_a_piped_training_run_has_no_carriage_returns_and_no_known_noise(tmp_path):
    proc = _rankers("fit", *SMOKE, "--trainer.default_root_dir", str(tmp_path / "run"), tmp_path=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "\r" not in log
    for noise in ("LightningCLI's args parameter", "litlogger", "LeafSpec", "💡", "exists and is not empty"):
        assert noise not in log, noise
    assert "val/rerank: mrr@10=" in log  # the metrics still reach the log, one line each
    assert "Params" not in log and "Trainable params" not in log  # no model-summary table off a terminal
    assert f"[rankers.cli] outputs: run directory {tmp_path / 'run'}; best checkpoint {tmp_path / 'run'}" in log


def test_out_of_memory_while_encoding_is_one_line_naming_the_batch(tmp_path, monkeypatch, capsys):
    """An OOM inside the encoder (the real CLI entry, in process: a CPU cannot be made to run out of GPU
    memory on cue) ends with one ``rankers: error:`` line naming the batch and the knob, exit status 1."""
    import lightning.pytorch as pl
    import torch

    from rankers.cli import entry
    from rankers.models.dual_encoder import DualEncoderRanker

    ckpt = tmp_path / "de.ckpt"
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(DualEncoderRanker(backbone="embedded"))
    trainer.save_checkpoint(ckpt)

    def out_of_memory(self, inputs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")

    monkeypatch.setenv("RANKERS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RANKERS_TRACEBACK", raising=False)
    monkeypatch.setattr(DualEncoderRanker, "encode_passage_inputs", out_of_memory)
    with pytest.raises(SystemExit) as exit_info:
        entry(["index", "--ckpt_path", str(ckpt), "--data.dataset", "embedded", "--data.embedded_scale", "0.1",
               "--batch_size", "32", "--output", str(tmp_path / "index")])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("rankers: error: out of memory on cpu encoding passages 1-32 of 300"), lines[-1]
    assert "lower the encoding batch size (now 32" in lines[-1]
    assert not any("Traceback" in line for line in lines)


def test_the_csv_logger_warns_only_when_it_replaces_an_earlier_metrics_file(tmp_path, caplog):
    """The run directory always holds other things (wandb/, checkpoints/): Lightning's "exists and is not empty"
    warning is gone; replacing an earlier metrics.csv is still said, with the file named."""
    import logging
    import warnings

    from rankers.loggers import CSVLogger

    (tmp_path / "wandb").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's warning would raise here
        with caplog.at_level(logging.WARNING, logger="rankers.loggers"):
            logger = CSVLogger(str(tmp_path))
            logger.log_metrics({"a": 1.0}, step=0)
            logger.save()
    assert not caplog.records and (tmp_path / "metrics.csv").is_file() and (tmp_path / "wandb").is_dir()
    with caplog.at_level(logging.WARNING, logger="rankers.loggers"):
        again = CSVLogger(str(tmp_path))
        again.log_metrics({"b": 2.0}, step=0)
        again.save()
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'metrics.csv'}: replacing the metrics file of an earlier run in this directory"]
    assert "b" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
