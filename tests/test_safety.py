"""Safe defaults: no code runs from checkpoints or model directories, W&B never blocks, the hub is never contacted.

* checkpoints load with ``torch.load(weights_only=True)`` (torch >= 2.6's default, which Lightning 2.6
  keeps for local files; LightningCLI's ``--ckpt_path`` hyper-parameter peek passes it explicitly): a
  checkpoint whose pickle would run code raises and the code does not run;
* model weights: the embedded backbone is written as safetensors; a pickled ``pytorch_model.bin`` that
  would run code is refused by transformers (it also loads ``.bin`` with ``weights_only=True``);
* ``trust_remote_code`` is False unless asked for: a model directory whose config maps to its own Python
  files is refused with a message naming ``--model.trust_remote_code``;
* W&B: :func:`rankers.loggers.decide_offline` goes offline with no key, respects ``WANDB_MODE``, and goes
  offline when the server does not answer within the probe timeout; an offline run never prompts;
* with ``HF_HUB_OFFLINE`` (set by conftest) a hub name that is not cached fails at once with our message
  and no socket is opened.
"""
from __future__ import annotations

import builtins
import json
import pickle
import shutil
import socket
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


class _RunsCode:
    """Unpickling this creates ``marker``: stands in for arbitrary code in a malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "code-ran"
    pickle.loads(pickle.dumps(_RunsCode(path)))  # the payload works when unpickled without restrictions...
    assert path.exists()
    path.unlink()  # ...so its absence after a load means the load did not run it
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Records (and refuses) every DNS lookup and socket connection."""
    attempts: list[str] = []

    def refuse(what):
        def fake(*args, **kwargs):
            attempts.append(f"{what}{args[1:] if what == 'connect' else args[:2]}")
            raise OSError(f"network disabled in this test ({what})")
        return fake

    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    return attempts


@pytest.fixture(scope="module")
def ca_checkpoint(tmp_path_factory) -> Path:
    """A genuine CrossAttentionRanker checkpoint written by a Trainer."""
    from rankers.models.cross_encoder import CrossAttentionRanker

    pl.seed_everything(0)
    model = CrossAttentionRanker(backbone="embedded", max_length=32)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("ckpt") / "ca.ckpt"
    trainer.save_checkpoint(path)
    return path


# ----------------------------------------------------------------------------- checkpoints


def test_our_checkpoints_hold_only_weights_only_types(ca_checkpoint):
    checkpoint = torch.load(ca_checkpoint, weights_only=True, map_location="cpu")
    assert checkpoint["hyper_parameters"]["backbone"] == "embedded"
    assert isinstance(checkpoint["rankers_step_seed"], int)


def test_malicious_checkpoint_is_refused_not_run(ca_checkpoint, marker, tmp_path):
    from rankers.models.cross_encoder import CrossAttentionRanker
    from rankers.models.dual_encoder import DualEncoderRanker

    checkpoint = torch.load(ca_checkpoint, weights_only=True, map_location="cpu")
    checkpoint["callbacks"] = {"payload": _RunsCode(marker)}  # a real checkpoint with one poisoned entry
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        CrossAttentionRanker.load_from_checkpoint(evil)
    # the online teacher of a distilled DE (through rankers.models.checkpoints: a clear error naming the file)
    with pytest.raises(ValueError, match=r"evil.ckpt: not a Lightning checkpoint loadable with weights_only=True"):
        DualEncoderRanker(backbone="embedded", distillation_loss="m3se", label_weight=0.0, teacher_checkpoint=str(evil))
    with pytest.raises(pickle.UnpicklingError):  # resuming / testing from it with a Trainer
        pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", max_epochs=1).validate(
            CrossAttentionRanker(backbone="embedded", max_length=32), dataloaders=[[]], ckpt_path=str(evil))
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_by_the_cli(ca_checkpoint, marker, tmp_path, monkeypatch):
    from rankers.cli import main

    checkpoint = torch.load(ca_checkpoint, weights_only=True, map_location="cpu")
    checkpoint["hyper_parameters"]["payload"] = _RunsCode(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        main(["test", "--config", "configs/ca_teacher.yaml", "--config", "configs/overlays/cpu_smoke.yaml",
              "--ckpt_path", str(evil)])
    assert not marker.exists()


# ----------------------------------------------------------------------------- model directories


def test_embedded_backbone_is_safetensors_and_pickled_weights_are_refused(marker, tmp_path):
    from rankers.embedded.backbone import embedded_backbone_dir
    from rankers.models.backbone import load_encoder

    backbone = embedded_backbone_dir()
    names = {p.name for p in backbone.iterdir()}
    assert "model.safetensors" in names and not {n for n in names if n.endswith((".bin", ".pt", ".pkl"))}

    poisoned = tmp_path / "pickled-weights"
    shutil.copytree(backbone, poisoned)
    (poisoned / "model.safetensors").unlink()
    torch.save({"embeddings.word_embeddings.weight": _RunsCode(marker)}, poisoned / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError):
        load_encoder(str(poisoned))
    assert not marker.exists()


@pytest.fixture
def remote_code_dir(tmp_path, marker) -> Path:
    """A model directory whose config maps the Auto classes to its own Python file, which creates ``marker``."""
    root = tmp_path / "remote-code-model"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({
        "model_type": "rankers-test-remote",
        "auto_map": {"AutoConfig": "modeling_remote.RemoteConfig", "AutoModel": "modeling_remote.RemoteModel",
                     "AutoModelForSequenceClassification": "modeling_remote.RemoteModel"},
    }))
    (root / "modeling_remote.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    return root


def test_remote_code_is_refused_unless_trusted(remote_code_dir, marker):
    from rankers.models.backbone import load_encoder, load_sequence_scorer
    from rankers.models.cross_encoder import CrossAttentionRanker
    from rankers.models.dual_encoder import DualEncoderRanker

    for make in (lambda: load_encoder(str(remote_code_dir)), lambda: load_sequence_scorer(str(remote_code_dir)),
                 lambda: CrossAttentionRanker(backbone=str(remote_code_dir)),
                 lambda: DualEncoderRanker(backbone=str(remote_code_dir))):
        with pytest.raises(ValueError, match=r"ships its own model code .*--model\.trust_remote_code true"):
            make()
    assert not marker.exists()
    with pytest.raises(Exception):  # asked for: the directory's code runs (then fails: it defines no model)
        load_encoder(str(remote_code_dir), trust_remote_code=True)
    assert marker.exists()


def test_remote_code_is_refused_through_the_cli(remote_code_dir, marker, tmp_path, monkeypatch):
    from rankers.cli import main

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        main(["validate", "--config", "configs/de_baseline.yaml", "--config", "configs/overlays/cpu_smoke.yaml",
              "--model.backbone", str(remote_code_dir)])
    assert not marker.exists()


def test_trust_remote_code_defaults_to_false_everywhere():
    import inspect

    from rankers.models import backbone
    from rankers.models.cross_encoder import CrossAttentionRanker
    from rankers.models.dual_encoder import DualEncoderRanker

    for function in (CrossAttentionRanker.__init__, DualEncoderRanker.__init__, backbone.load_encoder,
                     backbone.load_tokenizer, backbone.load_sequence_scorer):
        assert inspect.signature(function).parameters["trust_remote_code"].default is False, function


# ----------------------------------------------------------------------------- the Hugging Face hub


def test_uncached_hub_names_fail_fast_without_touching_the_network(no_network):
    from datamodules.formats import UnknownDatasetError, load_retrieval_data
    from rankers.models.backbone import load_encoder, load_tokenizer

    for load in (load_encoder, load_tokenizer):
        with pytest.raises(ValueError, match="not in the local HF cache"):
            load("rankers-test/no-such-model")
    with pytest.raises(UnknownDatasetError, match="could not load the dataset"):
        load_retrieval_data("rankers-test/no-such-dataset")
    assert no_network == []


# ----------------------------------------------------------------------------- Weights & Biases


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """No W&B key anywhere: empty HOME, no NETRC, no WANDB_* variables."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_wandb_without_a_key_goes_offline(wandb_env, no_network):
    from rankers.loggers import decide_offline

    offline, reason = decide_offline(False)
    assert offline and "no API key" in reason and "wandb sync" in reason
    assert no_network == []  # decided without probing


@pytest.mark.parametrize("mode, expected", [("offline", True), ("disabled", True), ("dryrun", True), ("online", False)])
def test_wandb_mode_is_respected_as_is(wandb_env, no_network, monkeypatch, mode, expected):
    from rankers.loggers import decide_offline

    monkeypatch.setenv("WANDB_MODE", mode)
    assert decide_offline(False) == (expected, None)
    assert no_network == []


def test_wandb_key_but_unreachable_host_goes_offline_within_the_probe_timeout(wandb_env, monkeypatch):
    from rankers import loggers

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    calls = []

    def times_out(address, timeout=None, *args, **kwargs):
        calls.append((address, timeout))
        raise socket.timeout("timed out")

    monkeypatch.setattr(socket, "create_connection", times_out)
    offline, reason = loggers.decide_offline(False, probe_timeout=0.25)
    assert offline and "api.wandb.ai is unreachable" in reason
    assert calls == [(("api.wandb.ai", 443), 0.25)]  # one probe, bounded by the timeout


def test_wandb_probe_uses_the_servers_port_and_a_netrc_key(wandb_env, monkeypatch):
    """A self-hosted server (WANDB_BASE_URL with a port), a key in ~/.netrc: online iff the port answers."""
    from rankers.loggers import decide_offline

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        netrc_file = wandb_env / ".netrc"
        netrc_file.write_text(f"machine 127.0.0.1:{port}\n  login user\n  password {'k' * 40}\n")
        netrc_file.chmod(0o600)
        assert decide_offline(False, probe_timeout=2.0) == (False, None)
    finally:
        server.close()
    offline, reason = decide_offline(False, probe_timeout=2.0)  # nothing listens there now: refused at once
    assert offline and "127.0.0.1 is unreachable" in reason


def test_wandb_logger_offline_run_never_prompts(wandb_env, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")
    from rankers.loggers import WandbLogger

    def prompt(*args, **kwargs):
        raise AssertionError("W&B asked for input")

    monkeypatch.setattr(builtins, "input", prompt)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="rankers-test", save_dir=str(wandb_env / "logs"))
    assert "no API key configured" in capsys.readouterr().out
    try:
        logger.log_metrics({"val/rerank/mrr@10": 0.5}, step=0)
    finally:
        wandb.finish()
    assert list((wandb_env / "logs" / "wandb").glob("offline-run-*"))


def test_wandb_offline_fallback_drops_log_model_instead_of_crashing(wandb_env, monkeypatch, capsys):
    """configs/msmarco/ca_teacher.yaml asks for log_model: true; Lightning refuses that offline."""
    pytest.importorskip("wandb")
    from rankers.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = WandbLogger(project="rankers-test", save_dir=str(wandb_env / "logs"), log_model=True)
    assert "log_model ignored" in capsys.readouterr().out
    assert logger._log_model is False
