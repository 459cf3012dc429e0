"""Command line: ``python -m rankers {fit,validate,test,predict} --config ...`` (LightningCLI) and the
pipeline commands (``reproduce`` ...).

The Lightning subcommands take any rankers model (``model.class_path``: ``rankers.CrossAttentionRanker``
or ``rankers.DualEncoderRanker``) with the shared :class:`datamodules.RankingDataModule`; every
constructor argument is a flag (``--model.backbone``, ``--data.dataset``, ...) and configs stack
(``--config a.yaml --config b.yaml``, later files win).
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

# command -> ("module:function", one-line description); the function takes the remaining argv.
PIPELINE_COMMANDS = {
    "reproduce": ("rankers.commands.reproduce:main", "CA teacher → teacher scores → DE on labels and distilled DEs → paper table"),
    "mine": ("rankers.commands.mine:main", "mine hard negatives (BM25 or dense) [+ teacher scores] into cached run files"),
    "capacity": ("rankers.commands.capacity:main", "fit DE embeddings of size k to a teacher score matrix, per k"),
    "export": ("rankers.commands.export:main", "export a checkpoint as a Hugging Face / sentence-transformers directory"),
    "index": ("rankers.commands.serve:index_main", "encode a corpus with a DE into a saved dense index"),
    "search": ("rankers.commands.serve:search_main", "search a saved index with queries, write a TREC run"),
    "rerank": ("rankers.commands.serve:rerank_main", "re-rank a TREC run with a CA (or DE) checkpoint"),
}


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    for name in ("rankers", "datamodules", "callbacks"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def lightning_cli(args=None, run: bool = True):
    """The LightningCLI with rankers' models and DataModule."""
    from lightning.pytorch.cli import LightningCLI

    from datamodules.datamodule import RankingDataModule
    from rankers.models.checkpoints import load_checkpoint
    from rankers.models.module import RankerModule

    class RankersCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # the DataModule imports no model code: it is handed the one checkpoint loader
            parser.set_defaults({"data.model_loader": load_checkpoint})

        def before_instantiate_classes(self) -> None:
            link_run_dir(self.config[self.subcommand] if self.subcommand else self.config)

    extra = "\n".join(f"  {name:<10} {desc}" for name, (_, desc) in PIPELINE_COMMANDS.items())
    return RankersCLI(
        RankerModule,
        RankingDataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        parser_kwargs={"description": "rankers: CA teacher → DE student distillation.\n"
                       f"Pipeline commands (python -m rankers COMMAND --help):\n{extra}"},
    )


def link_run_dir(config) -> None:
    """The run directory is named once, ``trainer.default_root_dir``: a logger without a ``save_dir``
    (``None``, or W&B's ``"."`` default, the working directory) writes there. The callbacks' paths default to
    the trainer's log dir, which is the first logger's directory (the configs list a CSV logger with empty
    name and version first), so ``--trainer.default_root_dir`` moves the whole run."""
    trainer = config.get("trainer")
    root = trainer.get("default_root_dir") if trainer is not None else None
    loggers = trainer.get("logger") if trainer is not None else None
    if root is None or not isinstance(loggers, list):
        return
    for logger in loggers:
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if init_args is None:
            continue
        save_dir = init_args.get("save_dir")
        if save_dir is None or (save_dir == "." and "Wandb" in str(logger.get("class_path", ""))):
            init_args["save_dir"] = root


def check_config_files(argv: list[str]) -> None:
    """Exit with ``FILE:LINE: invalid YAML: ...`` for a ``--config`` file that is not valid YAML
    (jsonargparse reports the line of ``<unicode string>``, not which of the stacked files it is)."""
    import yaml

    paths = [b for a, b in zip(argv, argv[1:]) if a in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        if not os.path.isfile(path):
            continue  # jsonargparse reports missing files itself
        try:
            with open(path, encoding="utf-8") as fh:
                yaml.safe_load(fh)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else path
            print(f"error: {where}: invalid YAML: {getattr(err, 'problem', None) or err}", file=sys.stderr)
            raise SystemExit(2) from None


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    check_config_files(argv)
    if argv and argv[0] in {"fit", "validate", "test", "predict"} and not any(a.startswith("--weights_only") for a in argv):
        argv += ["--weights_only", "true"]  # never unpickle code from a checkpoint (URLs default to False in Lightning)
    if argv and argv[0] in PIPELINE_COMMANDS:
        module_name, func = PIPELINE_COMMANDS[argv[0]][0].split(":")
        return getattr(importlib.import_module(module_name), func)(argv[1:])
    return lightning_cli(argv)
