"""The one DataModule shared by the cross-attention teacher and the dual-encoder student.

It loads a retrieval collection (BEIR / MS MARCO directory, HF dataset name, or the embedded default),
mines hard negatives for the training queries (BM25 with ``bm25s``, or a candidate run file), attaches
teacher scores when given a score file, and serves:

* ``train_dataloader`` -- listwise examples (query, positive, k hard negatives[, teacher scores]);
* ``val_dataloader``   -- (query, candidate) pairs of the validation split for re-rank evaluation, and,
  with ``train_subset_size > 0``, the same for a fixed sample of *training* queries (to see overfitting);
* ``test_dataloader``  -- the same for the test split;
* ``predict_dataloader`` -- every training query's positives and negative pool, for the teacher to score.

Tokenization is the model's job: the model hands over its collator (see :mod:`rankers.collate`).
BM25 runs are computed once (rank 0, ``prepare_data``) and cached under ``cache_dir`` keyed by the
collection's fingerprint and the mining parameters.
"""
from __future__ import annotations

import inspect
import logging
import random
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from datamodules.examples import ListwiseTrainDataset, PairDataset, TrainingQuery

log = logging.getLogger(__name__)

EMBEDDED = "embedded"


def _top(run: dict[str, dict[str, float]], depth: int) -> dict[str, list[str]]:
    """Candidates of each query in rank order (the project's one convention), cut at ``depth``."""
    from rankers.metrics import rank_passages

    return {qid: rank_passages(c)[:depth] for qid, c in run.items()}


class RankingDataModule(pl.LightningDataModule):
    """Shared DataModule with hard-negative mining.

    Args:
        dataset: ``"embedded"`` (generated locally), a BEIR or MS MARCO layout directory (detected), or a
            Hugging Face dataset name in BEIR's schema.
        embedded_scale: size multiplier of the embedded default (1.0 = the demo size).
        train_split / val_split / test_split: qrels split names.
        num_negatives: hard negatives per training query and step.
        negatives: ``"bm25"`` to mine with BM25, ``"run"`` to take them from ``negatives_run``.
        negatives_run: a TREC run file of candidates per training query (for ``negatives="run"``).
        negative_window: 0-based rank window ``[lo, hi)`` of the candidate list negatives come from;
            judged positives are always excluded.
        teacher_scores: a TREC run file of teacher scores covering every training query's positives and
            negative pool (written by the CA's ``predict``); attached to training examples.
        eval_candidates: a TREC run file with the candidates to re-rank for val/test; by default the
            collection's own candidate runs when it has them, else BM25 top ``eval_depth``.
        eval_depth: candidates per query for re-rank evaluation.
        train_subset_size: training queries also evaluated each epoch (train-vs-test gap); 0 = off.
        max_train_queries / max_eval_queries: cap the number of queries (deterministic sample).
        batch_size: training queries per batch; eval_batch_size: pairs per eval batch.
        num_workers: dataloader workers; pin_memory: pin host memory (GPU training).
        cache_dir: where mined runs and Arrow caches go (default ``$RANKERS_HOME/cache``).
        seed: seeds negative sampling and query sub-sampling.
    """

    def __init__(
        self,
        dataset: str = EMBEDDED,
        embedded_scale: float = 1.0,
        train_split: str = "train",
        val_split: str = "dev",
        test_split: str = "test",
        num_negatives: int = 7,
        negatives: Literal["bm25", "run"] = "bm25",
        negatives_run: str | None = None,
        negative_window: tuple[int, int] = (0, 100),
        teacher_scores: str | None = None,
        eval_candidates: str | None = None,
        eval_depth: int = 100,
        train_subset_size: int = 200,
        max_train_queries: int | None = None,
        max_eval_queries: int | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if negatives == "run" and not negatives_run:
            raise ValueError("RankingDataModule: negatives='run' needs negatives_run=PATH (a TREC run file)")
        if negative_window[0] < 0 or negative_window[1] <= negative_window[0]:
            raise ValueError(f"RankingDataModule: negative_window must be [lo, hi) with 0 <= lo < hi, got {negative_window}")
        self.dataset = dataset
        self.embedded_scale = embedded_scale
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.num_negatives = num_negatives
        self.negatives = negatives
        self.negatives_run = negatives_run
        self.negative_window = tuple(negative_window)
        self.teacher_scores_path = teacher_scores
        self.eval_candidates = eval_candidates
        self.eval_depth = eval_depth
        self.train_subset_size = train_subset_size
        self.max_train_queries = max_train_queries
        self.max_eval_queries = max_eval_queries
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.cache_dir = cache_dir
        self.seed = seed
        self.data = None
        self.train_dataset: ListwiseTrainDataset | None = None
        self.eval_sets: dict[str, PairDataset] = {}

    # --- locating things --------------------------------------------------------------------------
    def dataset_path(self) -> str:
        """The dataset argument resolved: the embedded default is generated (once) and becomes a directory."""
        if self.dataset != EMBEDDED:
            return self.dataset
        from datamodules import embedded

        params = inspect.signature(embedded.generate_embedded_dataset).parameters
        kwargs = {}
        for name in ("num_passages", "num_train_queries", "num_dev_queries", "num_test_queries"):
            if name in params and params[name].default is not inspect.Parameter.empty:
                kwargs[name] = max(8, int(round(params[name].default * self.embedded_scale)))
        return str(embedded.embedded_dataset_dir(seed=0, **kwargs))

    def cache_root(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        from datamodules.embedded import rankers_home

        return rankers_home() / "cache"

    def load(self):
        """Load (once) the collection as :class:`datamodules.formats.RetrievalData`."""
        if self.data is None:
            from datamodules.formats import load_retrieval_data

            self.data = load_retrieval_data(self.dataset_path(), cache_dir=self.cache_root() / "arrow")
        return self.data

    def _check_split(self, split: str) -> None:
        data = self.load()
        if split not in data.qrels:
            raise ValueError(
                f"split '{split}' has no qrels in {data.source} (available: {sorted(data.qrels)}); "
                f"set --data.train_split / --data.val_split / --data.test_split"
            )

    def _query_ids(self, split: str, limit: int | None) -> list[str]:
        """Query ids of a split that have a judged positive, in qrels order; a seeded sample if limited."""
        self._check_split(split)
        qrels = self.load().qrels[split]
        ids = [qid for qid, rels in qrels.items() if any(r > 0 for r in rels.values())]
        skipped = len(qrels) - len(ids)
        if skipped:
            log.warning("split '%s': %d of %d queries have no judged positive and are skipped", split, skipped, len(qrels))
        if limit is not None and limit < len(ids):
            ids = sorted(random.Random(f"{self.seed}:{split}").sample(ids, limit), key=ids.index)
        return ids

    def _bm25_path(self, split: str, depth: int) -> Path:
        return self.cache_root() / "runs" / self.load().fingerprint() / f"bm25-{split}-d{depth}.trec"

    def _bm25(self, split: str, query_ids: list[str], depth: int) -> dict[str, dict[str, float]]:
        """BM25 top-``depth`` for the given queries of a split, from the cache that ``prepare_data`` fills."""
        from datamodules.formats import read_run

        path = self._bm25_path(split, depth)
        if not path.exists():
            self._mine_bm25({split: depth})
        run = read_run(path)
        return {q: run.get(q, {}) for q in query_ids}

    def _mine_bm25(self, wanted: dict[str, int]) -> None:
        """One BM25 index over the corpus, searched with every wanted split's queries; one cached run per split."""
        from datamodules.formats import write_run
        from datamodules.mining import bm25_run

        todo = {split: depth for split, depth in wanted.items() if not self._bm25_path(split, depth).exists()}
        if not todo:
            return
        data = self.load()
        rows = data.query_index()
        by_split = {split: list(data.qrels[split]) for split in todo}
        all_ids = list(dict.fromkeys(q for ids in by_split.values() for q in ids))
        depth = max(todo.values())
        log.info("BM25: top-%d for %d queries (%s) over %d passages", depth, len(all_ids),
                 ", ".join(todo), len(data.corpus))
        run = bm25_run(data.corpus, data.queries.select([rows[q] for q in all_ids]), k=depth)
        for split, ids in by_split.items():
            path = self._bm25_path(split, todo[split])
            path.parent.mkdir(parents=True, exist_ok=True)
            cut = _top({q: run.get(q, {}) for q in ids}, todo[split])
            write_run({q: {p: run[q][p] for p in cut[q]} for q in ids if cut.get(q)}, path, tag="bm25")

    # --- Lightning hooks --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Rank 0: generate the embedded data, build Arrow caches and BM25 runs so other ranks only read."""
        wanted = {}
        if self.negatives == "bm25" or self.train_subset_size > 0:
            self._check_split(self.train_split)
            wanted[self.train_split] = self._mining_depth()
        self._check_split(self.val_split)
        for split in (self.val_split, self.test_split):
            if split in self.load().qrels and self._eval_run_source(split) == "bm25":
                wanted.setdefault(split, self.eval_depth)
        self._mine_bm25(wanted)

    def _mining_depth(self) -> int:
        return max(self.negative_window[1], self.eval_depth)

    def _eval_run_source(self, split: str) -> str:
        if self.eval_candidates:
            return "file"
        return "collection" if self.load().candidates.get(split) else "bm25"

    def setup(self, stage: str | None = None) -> None:
        data = self.load()
        self.query_rows = data.query_index()
        self.corpus_rows = data.corpus_index()
        if stage in (None, "fit", "predict"):
            self._setup_train()
        if stage in (None, "fit", "validate"):
            self.eval_sets["val"] = self._pair_set(self.val_split)
            if self.train_subset_size > 0 and stage != "validate":
                self.eval_sets["train_subset"] = self._train_subset()
        if stage in (None, "test"):
            self.eval_sets["test"] = self._pair_set(self.test_split)

    def _candidate_run(self, split: str, query_ids: list[str]) -> dict[str, dict[str, float]]:
        from datamodules.formats import read_run

        source = self._eval_run_source(split)
        if source == "file":
            run = read_run(self.eval_candidates)
        elif source == "collection":
            run = self.load().candidates[split]
        else:
            return self._bm25(split, query_ids, self.eval_depth)
        missing = [q for q in query_ids if q not in run]
        if missing:
            log.warning("%d '%s' queries have no candidates in the %s run and score 0 in re-rank eval",
                        len(missing), split, source)
        return {q: run[q] for q in query_ids if q in run}

    def _pair_set(self, split: str) -> PairDataset:
        data = self.load()
        query_ids = self._query_ids(split, self.max_eval_queries)
        run = _top(self._candidate_run(split, query_ids), self.eval_depth)
        pairs = PairDataset(data.queries, self.query_rows, data.corpus, self.corpus_rows, run)
        pairs.split, pairs.qrels = split, {q: data.qrels[split][q] for q in query_ids}
        return pairs

    def _train_subset(self) -> PairDataset:
        data = self.load()
        ids = self._query_ids(self.train_split, self.max_train_queries)
        ids = sorted(random.Random(f"{self.seed}:train_subset").sample(ids, min(self.train_subset_size, len(ids))), key=ids.index)
        run = _top(self._bm25(self.train_split, ids, self._mining_depth()), self.eval_depth)
        pairs = PairDataset(data.queries, self.query_rows, data.corpus, self.corpus_rows, run)
        pairs.split, pairs.qrels = self.train_split, {q: data.qrels[self.train_split][q] for q in ids}
        return pairs

    def negative_pools(self, query_ids: list[str]) -> dict[str, list[str]]:
        """Each training query's ordered pool of hard-negative candidates (positives excluded)."""
        from datamodules.formats import read_run
        from datamodules.mining import negative_pool

        qrels = self.load().qrels[self.train_split]
        if self.negatives == "run":
            run = read_run(self.negatives_run)
            missing = [q for q in query_ids if q not in run]
            if missing:
                raise ValueError(f"{self.negatives_run}: no candidates for training query '{missing[0]}' "
                                 f"({len(missing)} of {len(query_ids)} training queries missing)")
            run = {q: run[q] for q in query_ids}
        else:
            run = self._bm25(self.train_split, query_ids, self._mining_depth())
        return negative_pool(run, {q: qrels[q] for q in query_ids}, window=self.negative_window)

    def _setup_train(self) -> None:
        data = self.load()
        qrels = data.qrels[self.train_split]
        query_ids = self._query_ids(self.train_split, self.max_train_queries)
        pools = self.negative_pools(query_ids)
        examples, empty = [], 0
        for qid in query_ids:
            positives = sorted(pid for pid, rel in qrels[qid].items() if rel > 0)
            if not pools.get(qid):
                empty += 1
                continue
            examples.append(TrainingQuery(qid, positives, list(pools[qid])))
        if empty:
            log.warning("%d training queries have no hard-negative candidates in window %s and are skipped",
                        empty, self.negative_window)
        if not examples:
            raise ValueError(f"no usable training queries in split '{self.train_split}' of {data.source}")
        teacher = self._load_teacher_scores(examples) if self.teacher_scores_path else None
        self.train_dataset = ListwiseTrainDataset(
            data.queries, self.query_rows, data.corpus, self.corpus_rows, examples,
            num_negatives=self.num_negatives, seed=self.seed, teacher_scores=teacher,
        )
        log.info("training: %d queries, %d negatives each from pools of median size %d", len(examples),
                 self.num_negatives, sorted(len(e.negatives) for e in examples)[len(examples) // 2])

    def _load_teacher_scores(self, examples: list[TrainingQuery]) -> dict[str, dict[str, float]]:
        """Read the teacher score file and check it covers every training query's positives and pool."""
        from datamodules.formats import read_teacher_scores

        path = self.teacher_scores_path
        if not Path(path).exists():
            raise FileNotFoundError(
                f"teacher score file {path} does not exist; make it with "
                f"`python -m rankers predict --config configs/ca_teacher.yaml --ckpt_path CA_CKPT` "
                f"(or run `python -m rankers reproduce`)"
            )
        scores = read_teacher_scores(path)
        for ex in examples:
            have = scores.get(ex.query_id)
            if have is None:
                raise ValueError(f"{path}: no teacher scores for training query '{ex.query_id}'; the score file "
                                 f"must cover every training query (was it made with the same data and mining settings?)")
            for pid in (*ex.positives, *ex.negatives):
                if pid not in have:
                    raise ValueError(f"{path}: no teacher score for training query '{ex.query_id}', passage '{pid}' "
                                     f"(a {'positive' if pid in ex.positives else 'mined negative'}); the score file "
                                     f"must cover each query's positives and negative pool")
        return {ex.query_id: scores[ex.query_id] for ex in examples}

    def predict_pairs(self) -> PairDataset:
        """Every training query × (its positives + negative pool): what the teacher must score."""
        assert self.train_dataset is not None
        run = {ex.query_id: list(dict.fromkeys([*ex.positives, *ex.negatives])) for ex in self.train_dataset.examples}
        pairs = PairDataset(self.load().queries, self.query_rows, self.load().corpus, self.corpus_rows, run)
        pairs.split, pairs.qrels = self.train_split, {}
        return pairs

    # --- dataloaders ------------------------------------------------------------------------------
    def _collate(self):
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not hasattr(module, "collator"):
            raise RuntimeError("RankingDataModule needs a rankers model (it provides the tokenizing collator)")
        return module.collator()

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed + (self.train_dataset.epoch if shuffle else 0))
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator if shuffle else None,
            num_workers=self.num_workers, collate_fn=self._collate(), pin_memory=self.pin_memory,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "setup('fit') first"
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        self.train_dataset.epoch = epoch
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def eval_names(self, stage: str) -> list[str]:
        """Names of the eval pair sets in dataloader order for a stage ("val" loop or "test" loop)."""
        if stage == "test":
            return ["test"]
        return [n for n in ("val", "train_subset") if n in self.eval_sets]

    def val_dataloader(self):
        return [self._loader(self.eval_sets[n], self.eval_batch_size, shuffle=False) for n in self.eval_names("val")]

    def test_dataloader(self):
        return [self._loader(self.eval_sets["test"], self.eval_batch_size, shuffle=False)]

    def predict_dataloader(self):
        self.eval_sets["predict"] = self.predict_pairs()
        return self._loader(self.eval_sets["predict"], self.eval_batch_size, shuffle=False)
