"""The one argument parser of rankers' pipeline commands: jsonargparse, as LightningCLI uses.

Every command (``reproduce``, ``capacity``, ``mine``, ``index``, ``search``, ``rerank``, ``export``)
builds its parser here, so they share one flag style (``--output_dir``, as LightningCLI's
``--ckpt_path`` / ``--data.max_train_queries``; no dashed spellings), typed and
checked values, ``--help`` with defaults, parse errors raised (``rankers.cli.main`` prints them as one
``rankers: error:`` line), and ``--config FILE.yaml`` / ``--print_config``: a command's
options can live in a YAML file like the training configs.
"""
from __future__ import annotations

import argparse

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help (types, defaults) with the module docstring kept as written."""


def command_parser(command: str, description: str | None) -> ArgumentParser:
    """A parser for ``python -m rankers COMMAND`` with ``--config`` (YAML) and ``--print_config``."""
    from rankers.cli import prog_name

    parser = ArgumentParser(prog=f"{prog_name()} {command}", description=description,
                            formatter_class=_HelpFormatter, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    return parser


def parse_dims(text: str | list[int]) -> list[int]:
    """``'8,16,32'`` -> ``[8, 16, 32]`` (sorted, unique); anything but positive integers is an argument
    error. A list (a YAML config's value, or a value parsed before) is checked the same way."""
    try:
        parts = text if isinstance(text, list) else text.split(",")
        values = [int(part) for part in parts if str(part).strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sorted(set(values))
