"""``python -m rankers mine``: mine hard negatives (and teacher scores) once, into files usable elsewhere.

Reads the ``data:`` section of any rankers config (other sections are ignored) plus ``--data.*``
flags, mines with the configured miner (BM25, a run file, or a dense DE checkpoint), optionally scores
and denoises with a CA teacher, caches the result with its provenance, and writes:

* ``OUTPUT/negatives.trec``       -- each training query's negative pool as a TREC run (score = −rank);
* ``OUTPUT/teacher_scores.trec``  -- teacher scores of positives + pool (when ``--data.mining_teacher``);
* ``OUTPUT/provenance.json``      -- miner, model checkpoint hash, depth, window, filters, seed, dataset
  fingerprint, and a summary (pool sizes, false negatives dropped per query).

Example::

    python -m rankers mine --config configs/de_distill.yaml --data.negatives dense \\
        --data.miner_checkpoint runs/de_baseline/checkpoints/best.ckpt \\
        --data.mining_teacher runs/ca_teacher/checkpoints/best.ckpt --data.denoise_margin 0.5 \\
        --output runs/mined
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path


def build_parser():
    from datamodules.datamodule import RankingDataModule
    from rankers.commands.parsing import command_parser
    from rankers.models.checkpoints import load_checkpoint

    parser = command_parser("mine", __doc__)
    parser.add_class_arguments(RankingDataModule, "data")
    parser.set_defaults({"data.model_loader": load_checkpoint})  # the DataModule imports no model code
    parser.add_argument("--output", type=str, required=True, help="directory for negatives.trec etc.")
    for ignored in ("trainer", "model", "seed_everything", "ckpt_path", "optimizer", "lr_scheduler"):
        parser.add_argument(f"--{ignored}", type=object, default=None, help="(ignored: read from configs only for compatibility)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    from datamodules.datamodule import RankingDataModule
    from datamodules.formats import write_run

    parser = build_parser()
    cfg = parser.parse_args(argv)
    dm = RankingDataModule(**cfg.data.as_dict())
    dm.prepare_data()
    query_ids = dm.split_query_ids(dm.train_split, dm.max_train_queries)
    mined = dm.mined(query_ids)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    run = {q: {pid: -float(rank) for rank, pid in enumerate(pool, 1)} for q, pool in mined.pools.items() if pool}
    write_run(run, out / "negatives.trec", tag=f"rankers-{dm.negatives}")
    if mined.teacher_scores is not None:
        write_run(mined.teacher_scores, out / "teacher_scores.trec", tag="teacher")
    spec = dm.mining_spec(query_ids)
    provenance = {"spec": dataclasses.asdict(spec), "key": spec.key(), "summary": mined.summary(),
                  "cache": str(dm.negative_cache().path(spec))}
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, default=list))
    print(json.dumps(provenance["summary"]))
    print(f"wrote {out / 'negatives.trec'}" + (f" and {out / 'teacher_scores.trec'}" if mined.teacher_scores else ""))
    return out
