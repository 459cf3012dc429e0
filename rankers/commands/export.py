"""``python -m rankers export``: a checkpoint as a Hugging Face / sentence-transformers directory
(:func:`rankers.export.export_checkpoint`)."""
from __future__ import annotations

from pathlib import Path


def build_parser():
    from rankers.commands.parsing import command_parser

    parser = command_parser(
        "export",
        "Export a rankers checkpoint as a Hugging Face directory: a DualEncoderRanker loads with "
        "SentenceTransformer(DIR) (separate towers: DIR/query and DIR/passage), a CrossAttentionRanker "
        "with CrossEncoder(DIR) or AutoModelForSequenceClassification.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a DualEncoderRanker or CrossAttentionRanker checkpoint")
    parser.add_argument("--output", required=True, help="directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export at --output")
    return parser


def main(argv: list[str] | None = None) -> Path:
    """``python -m rankers export --ckpt_path CKPT --output DIR [--overwrite]``."""
    args = build_parser().parse_args(argv)
    from rankers.export import export_checkpoint

    return export_checkpoint(args.ckpt_path, args.output, overwrite=args.overwrite)
