"""Command line: ``python -m rankers {fit,validate,test,predict} --config ...`` (LightningCLI) and the
pipeline commands (``reproduce`` ...).

The Lightning subcommands take any rankers model (``model.class_path``: ``rankers.CrossAttentionRanker``
or ``rankers.DualEncoderRanker``) with the shared :class:`datamodules.RankingDataModule`; every
constructor argument is a flag (``--model.backbone``, ``--data.dataset``, ...) and configs stack
(``--config a.yaml --config b.yaml``, later files win).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# command -> ("module:function", one-line description); the function takes the remaining argv.
PIPELINE_COMMANDS = {
    "reproduce": ("rankers.commands.reproduce:main", "CA teacher → teacher scores → DE on labels and distilled DEs → paper table"),
    "mine": ("rankers.commands.mine:main", "mine hard negatives (BM25 or dense) [+ teacher scores] into cached run files"),
    "capacity": ("rankers.commands.capacity:main", "fit DE embeddings of size k to a teacher score matrix, per k"),
    "compare": ("rankers.commands.compare:main", "paired significance tests between TREC runs (t-test / Wilcoxon / permutation, Holm)"),
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


def say_where_outputs_went(trainer, stage: str = "fit") -> None:
    """One log line naming the run directory and what was written there (rank zero only)."""
    if trainer.global_rank != 0:
        return
    parts = [f"run directory {trainer.default_root_dir}"]
    if stage == "fit":
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if checkpoint:
            parts.append(f"best checkpoint {checkpoint}")
    elif trainer.ckpt_path:
        verb = {"validate": "validated", "test": "tested", "predict": "predicted with"}[stage]
        parts.append(f"checkpoint {verb} {trainer.ckpt_path}")
    for callback in trainer.callbacks:
        written = getattr(callback, "written", None)  # TeacherScoreWriter
        if written:
            parts.append(f"teacher scores {written}")
    logger = trainer.logger
    if logger is not None and getattr(logger, "log_dir", None):
        parts.append(f"metrics in {logger.log_dir}")
    logging.getLogger("rankers.cli").info("outputs: %s", "; ".join(parts))


def lightning_cli(args=None, run: bool = True):
    """The LightningCLI with rankers' models and DataModule."""
    from lightning.pytorch.cli import LightningCLI

    from datamodules.datamodule import RankingDataModule
    from rankers.commands.console import progress_enabled
    from rankers.models.checkpoints import load_checkpoint
    from rankers.models.module import RankerModule

    class RankersCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # the DataModule imports no model code: it is handed the one checkpoint loader
            parser.set_defaults({"data.model_loader": load_checkpoint})
            # progress bars and Lightning's model-summary table on a terminal only: a piped log gets one
            # line per stage and the metrics (--trainer.enable_model_summary true brings the table back)
            parser.set_defaults({"trainer.enable_progress_bar": progress_enabled(),
                                 "trainer.enable_model_summary": progress_enabled()})

        def before_instantiate_classes(self) -> None:
            link_run_dir(self.config[self.subcommand] if self.subcommand else self.config)

        def after_fit(self) -> None:
            say_where_outputs_went(self.trainer, "fit")

        def after_validate(self) -> None:
            say_where_outputs_went(self.trainer, "validate")

        def after_test(self) -> None:
            say_where_outputs_went(self.trainer, "test")

        def after_predict(self) -> None:
            say_where_outputs_went(self.trainer, "predict")

    return RankersCLI(
        RankerModule,
        RankingDataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        # a parse error is raised, and main() prints it as one `rankers: error:` line
        parser_kwargs={"description": "rankers: CA teacher → DE student distillation (LightningCLI).",
                       "exit_on_error": False},
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
    """Raise ``FILE:LINE: invalid YAML: ...`` for a ``--config`` file that is not valid YAML
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
            raise argparse.ArgumentError(None, f"{where}: invalid YAML: {getattr(err, 'problem', None) or err}") from None


TRAINING_COMMANDS = {
    "fit": "train a model (LightningCLI): --config configs/de_distill.yaml",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "score every training query's candidates with a CA checkpoint (the teacher-score file)",
}
SERVING_COMMANDS = ("index", "search", "rerank")


def prog_name() -> str:
    """``rankers`` for the console script, ``python -m rankers`` for the module (what the person typed)."""
    return "python -m rankers" if os.path.basename(sys.argv[0] or "") == "__main__.py" else "rankers"


def top_level_help(prog: str) -> str:
    """The top-level ``--help``: every subcommand on one line, grouped; needs no torch or Lightning."""
    from rankers import __version__

    def block(title: str, items) -> list[str]:
        return [f"{title}:", *(f"  {name:<10} {desc}" for name, desc in items), ""]

    pipeline = [(n, d) for n, (_, d) in PIPELINE_COMMANDS.items() if n not in SERVING_COMMANDS]
    serving = [(n, PIPELINE_COMMANDS[n][1]) for n in SERVING_COMMANDS]
    lines = [f"usage: {prog} COMMAND [options]      ({prog} COMMAND --help for a command's options)", "",
             f"rankers {__version__}: train a cross-attention teacher and distill it into a dual-encoder retriever",
             "(Menon et al., ICML 2022).", "",
             *block("training stages (LightningCLI; --config files stack, every constructor argument is a flag)",
                    TRAINING_COMMANDS.items()),
             *block("pipeline commands", pipeline),
             *block("serving", serving),
             "options:", "  -h, --help  show this message", "  --version   print the version",
             "  --traceback show the full traceback of an anticipated error (or RANKERS_TRACEBACK=1)", "",
             "examples:", f"  {prog} reproduce --output_dir runs/demo",
             f"  {prog} fit --config configs/de_distill.yaml --trainer.max_epochs 2"]
    return "\n".join(lines)


def _dispatch(argv: list[str], prog: str):
    if argv and argv[0] in PIPELINE_COMMANDS:
        module_name, func = PIPELINE_COMMANDS[argv[0]][0].split(":")
        return getattr(importlib.import_module(module_name), func)(argv[1:])
    check_config_files(argv)
    if argv and argv[0] in TRAINING_COMMANDS and not any(a.startswith("--weights_only") for a in argv):
        argv += ["--weights_only", "true"]  # never unpickle code from a checkpoint (URLs default to False in Lightning)
    # LightningCLI reads sys.argv itself (passing args= makes it warn that it is meant for use from Python)
    saved, sys.argv = sys.argv, [prog, *argv]
    try:
        return lightning_cli(None)
    finally:
        sys.argv = saved


def main(argv: list[str] | None = None):
    """Run a command and return what it returns; errors propagate (for Python callers and tests). The
    terminal entry point is :func:`entry`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog_name()
    if not argv or argv[0] in ("-h", "--help"):
        print(top_level_help(prog))
        return None
    if argv[0] == "--version":
        from rankers import __version__

        print(f"rankers {__version__}")
        return None
    if argv[0] not in PIPELINE_COMMANDS and argv[0] not in TRAINING_COMMANDS:
        known = ", ".join([*TRAINING_COMMANDS, *PIPELINE_COMMANDS])
        raise argparse.ArgumentError(None, f"unknown command {argv[0]!r} (choose from {known}; "
                                           f"{prog} --help lists them)")
    setup_logging()
    from rankers.commands.console import silence_known_noise

    silence_known_noise()
    return _dispatch(argv, prog)


def entry(argv: list[str] | None = None) -> None:
    """``rankers`` / ``python -m rankers``: :func:`main`, with every anticipated failure ending the process
    as one ``rankers: error: ...`` line (exit 2; 1 for a failure during training) and ``--traceback`` /
    ``RANKERS_TRACEBACK=1`` to see the traceback instead (:mod:`rankers.commands.console`)."""
    from rankers.commands.console import report_errors, wants_traceback

    show_traceback, argv = wants_traceback(list(sys.argv[1:] if argv is None else argv))
    report_errors(lambda: main(argv), show_traceback=show_traceback)
