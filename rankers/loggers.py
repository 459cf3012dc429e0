"""rankers' loggers: a Weights & Biases logger that never blocks, prompts or crashes when W&B cannot be
reached, and a CSV logger that writes into the run directory (:class:`CSVLogger`).

Lightning's ``WandbLogger`` with wandb 0.31: no API key and no ``WANDB_MODE`` → ``wandb.init`` raises
at once; a key but no network → it hangs about 100 s, then fails. This subclass decides up front:

* ``WANDB_MODE`` set (``online``/``offline``/``disabled``) → respected as is;
* no API key configured (``WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B host) → offline;
* a key but the W&B host unreachable within ``probe_timeout`` seconds → offline.

Each fallback prints one line saying so; offline runs land in ``save_dir/wandb/offline-run-*`` and can
be uploaded later with ``wandb sync``.
"""
from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _LightningExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

log = logging.getLogger(__name__)


def _wandb_url():
    return urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")


def _wandb_host() -> str:
    return _wandb_url().hostname or "api.wandb.ai"


def _wandb_address() -> tuple[str, int]:
    """(host, port) of the W&B server; the port from ``WANDB_BASE_URL`` (self-hosted servers) or the scheme's."""
    url = _wandb_url()
    return _wandb_host(), url.port or (80 if url.scheme == "http" else 443)


def wandb_api_key_configured() -> bool:
    """A key in ``WANDB_API_KEY`` or a ``.netrc`` entry (``$NETRC`` or ``~/.netrc``) for the W&B server."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        entries = netrc.netrc(os.environ.get("NETRC", Path.home() / ".netrc"))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any(entries.authenticators(machine) is not None for machine in {_wandb_url().netloc, _wandb_host()})


def wandb_reachable(timeout: float) -> bool:
    """Whether a TCP connection to the W&B server opens within ``timeout`` seconds."""
    try:
        with socket.create_connection(_wandb_address(), timeout=timeout):
            return True
    except OSError:
        return False


def decide_offline(offline: bool, probe_timeout: float = 3.0) -> tuple[bool, str | None]:
    """(offline?, reason to print or None)."""
    mode = os.environ.get("WANDB_MODE")
    if offline or mode in ("offline", "dryrun", "disabled"):
        return True, None
    if mode == "online":
        return False, None
    if not wandb_api_key_configured():
        return True, "W&B: no API key configured (WANDB_API_KEY / `wandb login`): logging offline; upload later with `wandb sync`"
    if not wandb_reachable(probe_timeout):
        return True, f"W&B: {_wandb_host()} is unreachable: logging offline; upload later with `wandb sync`"
    return False, None


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger``, falling back to offline mode instead of failing or hanging.

    Args (besides Lightning's): probe_timeout: seconds to wait for the W&B host before going offline.
    """

    def __init__(self, *args, offline: bool = False, probe_timeout: float = 3.0, **kwargs) -> None:
        offline, reason = decide_offline(offline, probe_timeout)
        if reason:
            print(reason, flush=True)
        kwargs.setdefault("settings", None)
        if kwargs["settings"] is None:
            kwargs.pop("settings")
        if offline and kwargs.get("log_model"):
            # Lightning refuses log_model with offline=True (checkpoints cannot be uploaded offline); the
            # fallback must not turn a config that logs models online into a crash.
            print("W&B: offline, so checkpoints are not uploaded (log_model ignored); they stay in the run directory",
                  flush=True)
            kwargs["log_model"] = False
        super().__init__(*args, offline=offline, **kwargs)


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSV logger writing ``metrics.csv`` straight into the run directory.

    ``save_dir=None`` is the run directory: the rankers CLI fills it in with ``trainer.default_root_dir``
    (:func:`rankers.cli.link_run_dir`), so a config names that directory once; built in Python without it,
    it is the working directory. ``name`` and ``version`` default to ``""`` (no ``lightning_logs/version_N``
    levels), so this logger's directory -- the trainer's log dir when it is listed first -- is the run directory.
    """

    def __init__(self, save_dir: str | None = None, name: str = "", version: int | str | None = "", **kwargs) -> None:
        super().__init__(save_dir if save_dir is not None else ".", name=name, version=version, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> _LightningExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _RunDirectoryWriter(log_dir=self.log_dir)
        return self._experiment


class _RunDirectoryWriter(_LightningExperimentWriter):
    """Lightning's CSV writer for a log directory that is the run directory.

    Lightning warns "Experiment logs directory ... exists and is not empty. Previous log files ... will be
    deleted" whenever the directory holds anything, which the run directory always does (``wandb/``,
    ``checkpoints/``, ``runs/``), and then removes only ``metrics.csv``. This writer says so only when there is
    an earlier ``metrics.csv`` to replace, naming it.
    """

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            log.warning("%s: replacing the metrics file of an earlier run in this directory", self.metrics_file_path)
            self._fs.rm_file(self.metrics_file_path)
