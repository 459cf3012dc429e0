"""The one DataModule shared by the cross-attention teacher and the dual-encoder student.

It loads a retrieval collection (BEIR / MS MARCO directory, HF dataset name, or the embedded default),
mines hard negatives for the training queries (BM25 with ``bm25s``, or a candidate run file), attaches
teacher scores when given a score file, and serves:

* ``train_dataloader`` -- listwise examples (query, positive, k hard negatives[, teacher scores]);
* ``val_dataloader``   -- (query, candidate) pairs of the validation split for re-rank evaluation, and,
  with ``train_subset_size > 0``, the same for a fixed sample of *training* queries (to see overfitting);
* ``test_dataloader``  -- the same for the test split;
* ``predict_dataloader`` -- every training query's positives and negative pool, for the teacher to score.

Tokenization is the model's job: the model hands over its collator (see :mod:`rankers.models.collate`).
BM25 runs are computed once (rank 0, ``prepare_data``) and cached under ``cache_dir`` keyed by the
collection's fingerprint and the mining parameters.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import random
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader

from datamodules import formats
from datamodules.examples import ListwiseTrainDataset, PairDataset, TrainingQuery
from datamodules.mining import dense as dense_mining
from datamodules.mining.bm25 import bm25_run
from datamodules.mining.cache import MinedNegatives, MiningSpec, NegativeCache, file_digest
from datamodules.mining.pools import denoise, negative_pool
from datamodules.sampler import BatchedDataset, CollectionBatchSampler, CollectionDataLoader, resumable_train_loader
from rankers.devices import pick_device
from rankers.embedded import dataset as embedded
from rankers.evaluation.metrics import rank_passages
from rankers.io.home import rankers_home

log = logging.getLogger(__name__)

EMBEDDED = "embedded"


_DIGEST_CHUNK_BYTES = 1 << 24  # _state_digest reads (and moves to the host) at most this much at a time


def _state_digest(model) -> str:
    """A short hash of a model's state (names the in-training state negatives were mined with).

    Every byte of every tensor is hashed (with its name, dtype and shape), read in chunks of at most
    ``_DIGEST_CHUNK_BYTES`` so that a large tensor on a GPU is never copied to the host whole.
    Tensors are hashed as raw bytes (``view(torch.uint8)``), which also covers dtypes numpy lacks
    (bfloat16, float8).
    """
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        if not isinstance(value, torch.Tensor):  # e.g. a module's extra state
            h.update(repr(value).encode())
            continue
        tensor = value.detach()
        h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        raw = tensor.contiguous().reshape(-1).view(torch.uint8)
        for start in range(0, raw.numel(), _DIGEST_CHUNK_BYTES):
            h.update(raw[start : start + _DIGEST_CHUNK_BYTES].cpu().numpy().data)
    return h.hexdigest()[:16]


def _top(run: dict[str, dict[str, float]], depth: int) -> dict[str, list[str]]:
    """Candidates of each query in rank order (the project's one convention), cut at ``depth``."""
    return {qid: rank_passages(c)[:depth] for qid, c in run.items()}


@dataclass
class TrainingCollection:
    """One more training collection for :class:`RankingDataModule` (``extra_train``).

    Args:
        dataset: as ``RankingDataModule.dataset`` (a directory, ``irds:<id>``, a hub name, ``embedded``).
        weight: how many passes over its training queries an epoch makes (2.0: each query twice, 0.5: half of
            them; the main collection counts once).
        teacher_scores: its teacher-score run (for distillation), covering its training queries' pools.
        train_split: its training split.
        max_train_queries: cap on its training queries (a seeded sample).
    """
    dataset: str
    weight: float = 1.0
    teacher_scores: str | None = None
    train_split: str = "train"
    max_train_queries: int | None = None


def fold_query_ids(query_ids: list[str], num_folds: int, seed: int) -> list[list[str]]:
    """Split query ids into ``num_folds`` disjoint folds of near-equal size (a seeded shuffle dealt round
    robin; each fold keeps the input order), the same for every process and every model of a run."""
    order = list(query_ids)
    random.Random(f"{seed}:folds").shuffle(order)
    fold_of = {qid: i % num_folds for i, qid in enumerate(order)}
    return [[q for q in query_ids if fold_of[q] == k] for k in range(num_folds)]


class RankingDataModule(pl.LightningDataModule):
    """Shared DataModule with hard-negative mining.

    Args:
        dataset: ``"embedded"`` (generated locally), a BEIR or MS MARCO layout directory (detected), or a
            Hugging Face dataset name in BEIR's schema.
        embedded_scale: size multiplier of the embedded default (1.0 = the demo size).
        embedded_spurious_cue: plant a train-only cue in the embedded default's training positives
            (shows a label-trained model overfitting to it; off by default because it also derails
            the teacher -- see rankers/embedded/dataset.py).
        embedded_label_noise: share of the embedded default's single-fact training queries whose one
            judgment lands on a passage whose fact differs from the asked one in one word (annotator slips;
            see rankers/embedded/dataset.py). Dev and test judgments stay clean.
        embedded_label_noise_kind: where a slip lands: ``"near_miss"`` (a passage whose fact differs from
            the asked one in one word) or ``"random"`` (any training passage that does not state the fact).
        train_split / val_split / test_split: qrels split names.
        num_negatives: hard negatives per training query and step.
        negatives: ``"bm25"`` to mine with BM25, ``"run"`` to take them from ``negatives_run``,
            ``"dense"`` to mine with the dual encoder in ``miner_checkpoint``.
        negatives_run: a TREC run file of candidates per training query (for ``negatives="run"``).
        miner_checkpoint: a DualEncoderRanker checkpoint for ``negatives="dense"``.
        mining_depth: candidates retrieved per training query before the window is applied
            (default: the window's end).
        predict_split: what ``predict`` scores: ``train`` (every training query's positives and negative
            pool: the distillation teacher scores), the ``val`` / ``test`` re-rank pairs (held-out
            teacher scores, e.g. for ``callbacks.ScoreDiagnostics`` teacher-student agreement), or
            ``candidates``: the top ``eval_depth`` passages of every query of the ``eval_candidates`` run,
            judged or not (``python -m rankers rerank``).
        mining_teacher: a CrossAttentionRanker checkpoint that scores every training query's
            positives and mined pool once at mining time (cached with the negatives): used for
            denoising and as the distillation teacher scores when ``teacher_scores`` is not given.
        denoise_threshold / denoise_margin: drop mined candidates whose teacher score is above the
            threshold, or within the margin of the query's best positive (RocketQA); needs teacher
            scores (``mining_teacher`` or ``teacher_scores``).
        negative_window: 0-based rank window ``[lo, hi)`` of the candidate list negatives come from;
            judged positives are always excluded.
        teacher_scores: a TREC run file of teacher scores covering every training query's positives and
            negative pool (written by the CA's ``predict``); attached to training examples.
        eval_candidates: a TREC run file with the candidates to re-rank for val/test; by default the
            collection's own candidate runs when it has them, else BM25 top ``eval_depth``.
        eval_depth: candidates per query for re-rank evaluation.
        train_subset_size: training queries also evaluated each epoch (train-vs-test gap); 0 = off.
        max_train_queries / max_eval_queries: cap the number of queries (deterministic sample).
        extra_train: more training collections (:class:`TrainingCollection`, e.g. NQ beside MS MARCO), each with
            its own BM25 negatives (same window and count) and teacher scores, mixed by their ``weight``; every
            batch -- under DDP every global batch -- comes from one collection, so in-batch negatives stay
            meaningful (:class:`datamodules.sampler.CollectionBatchSampler`). Evaluation uses ``dataset``.
        cross_fit: ``(fold, num_folds)`` for out-of-fold teacher scores: the training queries are split into
            ``num_folds`` seeded folds; ``fit`` (and the train-subset evaluation) use the queries *outside*
            ``fold`` and ``predict`` scores only the queries *in* it, so a teacher never scores the
            judgments it was trained on (see :func:`fold_query_ids`).
        batch_size: training queries per batch; eval_batch_size: pairs per eval batch.
        length_group_batches: group the training order by length: each run of this many global batches of
            the epoch's shuffle is sorted by the items' lengths (query + longest drawn passage, in characters)
            before it is cut into batches, so a step pads to similar lengths (0: off, the plain shuffle).
            Deterministic, sharded and resumable like the plain order (:class:`datamodules.sampler.ResumableSampler`);
            one collection only (ignored with ``extra_train``).
        num_workers: dataloader workers; pin_memory: pin host memory (GPU training).
        worker_start_method: how dataloader workers start (``multiprocessing_context``): ``"auto"`` --
            ``"forkserver"`` when training runs on several processes (DDP), the platform default
            otherwise --, or ``"fork"`` / ``"spawn"`` / ``"forkserver"``. Forking a DDP rank copies the
            locks its gloo / NCCL and OpenMP threads may hold at that instant into the worker, which
            can then block forever; a forkserver's workers start from a clean single-threaded process.
        cache_dir: where mined runs and Arrow caches go (default ``$RANKERS_HOME/cache``).
        seed: seeds negative sampling and query sub-sampling.
        model_loader: how a checkpoint path becomes a model, called as
            ``model_loader(path, map_location=..., expect="dual_encoder" | "cross_attention")``; needed only
            for ``miner_checkpoint`` and ``mining_teacher``. The DataModule imports no model code: the
            application layer hands it :func:`rankers.load_checkpoint` (the CLI, :mod:`rankers.api` and
            the commands do; pass it yourself when you build the DataModule in Python).

    The ANCE-style refresh of the negatives during training is the :class:`callbacks.NegativeRefresh`
    callback, which holds the model being trained and the evaluation's index and calls
    :meth:`refresh_negatives`.
    """
    def __init__(
        self,
        dataset: str = EMBEDDED,
        embedded_scale: float = 1.0,
        embedded_spurious_cue: bool = False,
        embedded_label_noise: float = 0.0,
        embedded_label_noise_kind: Literal["near_miss", "random"] = "near_miss",
        train_split: str = "train",
        val_split: str = "dev",
        test_split: str = "test",
        num_negatives: int = 7,
        negatives: Literal["bm25", "run", "dense"] = "bm25",
        negatives_run: str | None = None,
        negative_window: tuple[int, int] = (0, 100),
        miner_checkpoint: str | None = None,
        mining_depth: int | None = None,
        teacher_scores: str | None = None,
        predict_split: Literal["train", "val", "test", "candidates"] = "train",
        mining_teacher: str | None = None,
        denoise_threshold: float | None = None,
        denoise_margin: float | None = None,
        eval_candidates: str | None = None,
        eval_depth: int = 100,
        train_subset_size: int = 200,
        max_train_queries: int | None = None,
        max_eval_queries: int | None = None,
        cross_fit: tuple[int, int] | None = None,
        extra_train: list[TrainingCollection] | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 128,
        length_group_batches: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        worker_start_method: Literal["auto", "fork", "spawn", "forkserver"] = "auto",
        cache_dir: str | None = None,
        seed: int = 0,
        model_loader: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model_loader", "extra_train"])
        self.model_loader = model_loader
        if negatives == "run" and not negatives_run:
            raise ValueError("RankingDataModule: negatives='run' needs negatives_run=PATH (a TREC run file)")
        if negatives == "dense" and not miner_checkpoint:
            raise ValueError("RankingDataModule: negatives='dense' needs miner_checkpoint=PATH (a DualEncoderRanker checkpoint)")
        if (denoise_threshold is not None or denoise_margin is not None) and not (mining_teacher or teacher_scores):
            raise ValueError("RankingDataModule: denoising needs teacher scores: set mining_teacher (a CA checkpoint) "
                             "or teacher_scores (a score file)")
        if negative_window[0] < 0 or negative_window[1] <= negative_window[0]:
            raise ValueError(f"RankingDataModule: negative_window must be [lo, hi) with 0 <= lo < hi, got {negative_window}")
        self.dataset = dataset
        self.embedded_scale = embedded_scale
        self.embedded_spurious_cue = embedded_spurious_cue
        self.embedded_label_noise = embedded_label_noise
        self.embedded_label_noise_kind = embedded_label_noise_kind
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.num_negatives = num_negatives
        self.negatives = negatives
        self.negatives_run = negatives_run
        self.negative_window = tuple(negative_window)
        self.miner_checkpoint = miner_checkpoint
        self.mining_depth = mining_depth
        self.teacher_scores_path = teacher_scores
        self.predict_split = predict_split
        self.mining_teacher = mining_teacher
        self.denoise_threshold = denoise_threshold
        self.denoise_margin = denoise_margin
        self.refreshed: dict[str, Any] | None = None  # spec of the last in-training refresh (checkpointed)
        self._active_refresh: dict[str, Any] | None = None  # the refresh the current train_dataset uses
        self.eval_candidates = eval_candidates
        self.eval_depth = eval_depth
        self.train_subset_size = train_subset_size
        self.max_train_queries = max_train_queries
        self.max_eval_queries = max_eval_queries
        if cross_fit is not None and not (cross_fit[1] >= 2 and 0 <= cross_fit[0] < cross_fit[1]):
            raise ValueError(f"cross_fit={tuple(cross_fit)}: expected (fold, num_folds) with num_folds >= 2 and "
                             "0 <= fold < num_folds")
        self.cross_fit = tuple(cross_fit) if cross_fit is not None else None
        self.extra_train = [c if isinstance(c, TrainingCollection) else TrainingCollection(**c) for c in extra_train or []]
        for c in self.extra_train:
            if not c.weight > 0:
                raise ValueError(f"extra_train {c.dataset}: weight must be > 0, got {c.weight}")
        self._extra: list[RankingDataModule] | None = None
        self.hparams["extra_train"] = [dataclasses.asdict(c) for c in self.extra_train]  # plain data in checkpoints
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        if length_group_batches < 0:
            raise ValueError(f"RankingDataModule: length_group_batches must be >= 0 (0: off), got {length_group_batches}")
        self.length_group_batches = length_group_batches
        self._text_lengths: tuple[Any, Any] | None = None
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        if worker_start_method not in ("auto", "fork", "spawn", "forkserver"):
            raise ValueError(f"RankingDataModule: worker_start_method must be auto, fork, spawn or forkserver, "
                             f"got {worker_start_method!r}")
        self.worker_start_method = worker_start_method
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
        params = inspect.signature(embedded.generate_embedded_dataset).parameters
        kwargs = {}
        for name in ("num_passages", "num_train_queries", "num_dev_queries", "num_test_queries"):
            if name in params and params[name].default is not inspect.Parameter.empty:
                kwargs[name] = max(8, int(round(params[name].default * self.embedded_scale)))
        return str(embedded.embedded_dataset_dir(seed=0, spurious_cue=self.embedded_spurious_cue,
                                                 train_label_noise=self.embedded_label_noise,
                                                 train_label_noise_kind=self.embedded_label_noise_kind, **kwargs))

    def cache_root(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        return rankers_home() / "cache"

    def load(self):
        """Load (once) the collection as :class:`datamodules.formats.RetrievalData`."""
        if self.data is None:
            self.data = formats.load_retrieval_data(self.dataset_path(), cache_dir=self.cache_root() / "arrow")
        return self.data

    def _check_split(self, split: str) -> None:
        data = self.load()
        if split not in data.qrels:
            raise ValueError(
                f"split '{split}' has no qrels in {data.source} (available: {sorted(data.qrels)}); "
                f"set --data.train_split / --data.val_split / --data.test_split"
            )

    def split_query_ids(self, split: str, limit: int | None) -> list[str]:
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
        path = self._bm25_path(split, depth)
        if not path.exists():
            self._mine_bm25({split: depth})
        run = formats.read_run(path)
        return {q: run.get(q, {}) for q in query_ids}

    def _mine_bm25(self, wanted: dict[str, int]) -> None:
        """One BM25 index over the corpus, searched with every wanted split's queries; one cached run per split."""
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
            formats.write_run({q: {p: run[q][p] for p in cut[q]} for q in ids if cut.get(q)}, path, tag="bm25")

    # --- Lightning hooks --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Rank 0: generate the embedded data, build Arrow caches and BM25 runs so other ranks only read."""
        wanted = {}
        self._check_split(self.train_split)
        if self.negatives == "bm25" or self.train_subset_size > 0:
            wanted[self.train_split] = self._mining_depth()
        self._check_split(self.val_split)
        for split in (self.val_split, self.test_split):
            if split in self.load().qrels and self._eval_run_source(split) == "bm25":
                wanted.setdefault(split, self.eval_depth)
        self._mine_bm25(wanted)
        self.mined(self.split_query_ids(self.train_split, self.max_train_queries))  # fills the negatives cache
        for child in self.extra_collections():
            child.prepare_data()

    def _mining_depth(self) -> int:
        return max(self.mining_depth or self.negative_window[1], self.eval_depth)

    def _eval_run_source(self, split: str) -> str:
        if self.eval_candidates:
            return "file"
        return "collection" if self.load().candidates.get(split) else "bm25"

    def setup(self, stage: str | None = None) -> None:
        data = self.load()
        self.query_rows = data.query_index()
        self.corpus_rows = data.corpus_index()
        if stage in (None, "fit") or (stage == "predict" and self.predict_split == "train"):
            self._setup_train(predicting=stage == "predict")
        if stage == "predict" and self.predict_split == "candidates":
            self.eval_sets["candidates"] = self._candidate_pairs()
        elif stage == "predict" and self.predict_split != "train":
            split = self.val_split if self.predict_split == "val" else self.test_split
            self.eval_sets[self.predict_split] = self._pair_set(split)
        if stage in (None, "fit", "validate"):
            self.eval_sets["val"] = self._pair_set(self.val_split)
            if self.train_subset_size > 0 and stage != "validate":
                self.eval_sets["train_subset"] = self._train_subset()
        if stage in (None, "test"):
            self.eval_sets["test"] = self._pair_set(self.test_split)

    def split_candidate_run(self, split: str, query_ids: list[str]) -> dict[str, dict[str, float]]:
        source = self._eval_run_source(split)
        if source == "file":
            run = formats.read_candidates(self.eval_candidates)
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
        query_ids = self.split_query_ids(split, self.max_eval_queries)
        if not query_ids:
            raise ValueError(f"split '{split}' of {data.source}: none of its {len(data.qrels[split])} queries has a "
                             "judged positive (relevance > 0), so there is nothing to evaluate; choose another split "
                             "with --data.val_split / --data.test_split")
        run = _top(self.split_candidate_run(split, query_ids), self.eval_depth)
        pairs = PairDataset(data.queries, self.query_rows, data.corpus, self.corpus_rows, run)
        pairs.split, pairs.qrels = split, {q: data.qrels[split][q] for q in query_ids}
        return pairs

    def _candidate_pairs(self) -> PairDataset:
        """Every query of the ``eval_candidates`` run with its top ``eval_depth`` passages (ids checked)."""
        if not self.eval_candidates:
            raise ValueError("predict_split='candidates' re-ranks the run in eval_candidates: set --data.eval_candidates")
        run = formats.read_candidates(self.eval_candidates)
        formats.check_run_ids(run, self.query_rows, self.corpus_rows, path=self.eval_candidates)
        data = self.load()
        pairs = PairDataset(data.queries, self.query_rows, data.corpus, self.corpus_rows, _top(run, self.eval_depth))
        pairs.split, pairs.qrels = None, {}
        return pairs

    def training_query_ids(self, predicting: bool = False) -> list[str]:
        """The training queries ``fit`` uses (``predicting``: the ones ``predict`` scores); with ``cross_fit``
        the queries outside (inside) its fold, else every training query."""
        ids = self.split_query_ids(self.train_split, self.max_train_queries)
        if self.cross_fit is None:
            return ids
        fold, num_folds = self.cross_fit
        inside = set(fold_query_ids(ids, num_folds, self.seed)[fold])
        return [q for q in ids if (q in inside) == predicting]

    def _train_subset(self) -> PairDataset:
        data = self.load()
        ids = self.training_query_ids()
        ids = sorted(random.Random(f"{self.seed}:train_subset").sample(ids, min(self.train_subset_size, len(ids))), key=ids.index)
        run = _top(self._bm25(self.train_split, ids, self._mining_depth()), self.eval_depth)
        pairs = PairDataset(data.queries, self.query_rows, data.corpus, self.corpus_rows, run)
        pairs.split, pairs.qrels = self.train_split, {q: data.qrels[self.train_split][q] for q in ids}
        return pairs

    # --- negatives: mined once, cached with provenance ---------------------------------------------
    def mining_spec(self, query_ids: list[str]) -> "MiningSpec":
        teacher = self.mining_teacher or (self.teacher_scores_path if self._denoising() else None)
        return MiningSpec(
            miner=self.negatives, dataset_fingerprint=self.load().fingerprint(), split=self.train_split,
            depth=self._mining_depth(), window=tuple(self.negative_window), seed=self.seed,
            model_digest=file_digest(self.miner_checkpoint) if self.negatives == "dense" else None,
            run_digest=file_digest(self.negatives_run) if self.negatives == "run" else None,
            teacher_digest=file_digest(teacher) if teacher else None,
            denoise_threshold=self.denoise_threshold, denoise_margin=self.denoise_margin,
            num_queries=len(query_ids),
            queries_digest=hashlib.sha256("\n".join(query_ids).encode()).hexdigest()[:16],
        )

    def _denoising(self) -> bool:
        return self.denoise_threshold is not None or self.denoise_margin is not None

    def negative_cache(self):
        return NegativeCache(self.cache_root() / "negatives")

    def _positives(self, query_ids: list[str]) -> dict[str, list[str]]:
        qrels = self.load().qrels[self.train_split]
        return {q: sorted(pid for pid, rel in qrels[q].items() if rel > 0) for q in query_ids}

    def candidate_run(self, query_ids: list[str]) -> dict[str, dict[str, float]]:
        """The training queries' candidate lists from the configured miner (before window / filters)."""
        if self.negatives == "run":
            run = formats.read_candidates(self.negatives_run)
            missing = [q for q in query_ids if q not in run]
            if missing:
                raise ValueError(f"{self.negatives_run}: no candidates for training query '{missing[0]}' "
                                 f"({len(missing)} of {len(query_ids)} training queries missing)")
            return {q: run[q] for q in query_ids}
        if self.negatives == "dense":
            miner = self.load_model(self.miner_checkpoint, "miner_checkpoint", expect="dual_encoder")
            rows = self.load().query_index()
            queries = self.load().queries.select([rows[q] for q in query_ids])
            return dense_mining.dense_run(miner, self.load().corpus, queries, depth=self._mining_depth(),
                                          batch_size=self.eval_batch_size)
        return self._bm25(self.train_split, query_ids, self._mining_depth())

    def _pools_from_run(self, run, query_ids, teacher_scores=None):
        """Window + positive exclusion, then (optionally) teacher scoring and denoising."""
        qrels = self.load().qrels[self.train_split]
        pools = negative_pool(run, {q: qrels[q] for q in query_ids}, window=self.negative_window)
        positives = self._positives(query_ids)
        scores = None
        if self.mining_teacher:
            scores = self.score_with_teacher({q: [*positives[q], *pools[q]] for q in query_ids}, teacher_scores)
        elif self._denoising():
            scores = self._read_teacher_file()
        dropped: dict[str, int] = {}
        if self._denoising():
            pools, dropped = denoise(pools, scores, positives, threshold=self.denoise_threshold, margin=self.denoise_margin)
            total = sum(dropped.values())
            log.info("denoising: dropped %d likely false negatives (%.2f per query, max %d) with threshold=%s margin=%s",
                     total, total / max(1, len(query_ids)), max(dropped.values(), default=0),
                     self.denoise_threshold, self.denoise_margin)
        return MinedNegatives(pools, scores if self.mining_teacher else None, dropped)

    def mined(self, query_ids: list[str]):
        """The training queries' negative pools (and teacher scores, if a teacher checkpoint is set),
        from the cache when the same inputs were mined before, else mined now and cached."""
        if self.refreshed is not None:
            hit = self.negative_cache().load(MiningSpec(**{**self.refreshed, "window": tuple(self.refreshed["window"])}))
            if hit is not None:
                return hit
            log.warning("the refreshed negatives of the checkpoint are not in the cache; mining from scratch")
        spec = self.mining_spec(query_ids)
        cache = self.negative_cache()
        hit = cache.load(spec)
        if hit is not None:
            return hit
        mined = self._pools_from_run(self.candidate_run(query_ids), query_ids)
        cache.save(spec, mined)
        return mined

    def score_with_teacher(self, candidates: dict[str, list[str]], known=None) -> dict[str, dict[str, float]]:
        """Teacher (``mining_teacher``) scores of each query's candidates; ``known`` scores are reused."""
        known = known or {}
        todo = {q: [p for p in pids if p not in known.get(q, {})] for q, pids in candidates.items()}
        pairs = [(q, p) for q, pids in todo.items() for p in pids]
        scores = {q: dict(known.get(q, {})) for q in candidates}
        if pairs:
            device = pick_device()
            if self.trainer is not None and getattr(self.trainer, "strategy", None) is not None:
                device = self.trainer.strategy.root_device
            teacher = self.load_model(self.mining_teacher, "mining_teacher", expect="cross_attention", map_location=device)
            data = self.load()
            qrows, prows = data.query_index(), data.corpus_index()
            qtext = data.queries.select([qrows[q] for q, _ in pairs])["text"]
            ptext = data.corpus.select([prows[p] for _, p in pairs])["text"]
            log.info("teacher: scoring %d (query, candidate) pairs with %s", len(pairs), self.mining_teacher)
            values = teacher.score(qtext, ptext, batch_size=self.eval_batch_size).tolist()
            for (q, p), v in zip(pairs, values):
                scores[q][p] = float(v)
        return {q: {p: scores[q][p] for p in pids} for q, pids in candidates.items()}

    def load_model(self, path: str, argument: str, expect: str, map_location: Any = "cpu"):
        """The model of checkpoint ``path`` (given as ``argument``), through the injected ``model_loader``."""
        if self.model_loader is None:
            raise ValueError(f"RankingDataModule: {argument}={path} is a checkpoint, and loading it needs "
                             "model_loader=rankers.load_checkpoint (the rankers CLI, rankers.api and the commands "
                             "pass it; pass it yourself when you build the DataModule in Python)")
        return self.model_loader(path, map_location=map_location, expect=expect)

    def _read_teacher_file(self):
        path = self.teacher_scores_path
        if not Path(path).exists():
            raise FileNotFoundError(
                f"teacher score file {path} does not exist; make it with "
                f"`python -m rankers predict --config configs/ca_teacher.yaml --ckpt_path CA_CKPT` "
                f"(or run `python -m rankers reproduce`)"
            )
        return formats.read_teacher_scores(path)

    def _setup_train(self, predicting: bool = False) -> None:
        query_ids = self.training_query_ids(predicting)
        mined = self.mined(query_ids)
        self._set_training_queries(query_ids, mined)
        log.info("training: %d queries, %d negatives each from pools of median size %d", len(self.train_dataset),
                 self.num_negatives, mined.summary()["pool_size_median"])
        if not predicting:
            for child, spec in zip(self.extra_collections(), self.extra_train):
                child.trainer = self.trainer
                child.query_rows, child.corpus_rows = child.load().query_index(), child.load().corpus_index()
                child._setup_train()
                log.info("training collection %s: %d queries, weight %s", spec.dataset, len(child.train_dataset), spec.weight)

    def extra_collections(self) -> list["RankingDataModule"]:
        """One DataModule per ``extra_train`` collection (its training side only: negatives, teacher scores)."""
        if self._extra is None:
            self._extra = [RankingDataModule(
                dataset=c.dataset, embedded_scale=self.embedded_scale, train_split=c.train_split,
                val_split=c.train_split, test_split=c.train_split, num_negatives=self.num_negatives,
                negative_window=tuple(self.negative_window), mining_depth=self.mining_depth,
                teacher_scores=c.teacher_scores, eval_depth=self.eval_depth, train_subset_size=0,
                max_train_queries=c.max_train_queries, batch_size=self.batch_size, num_workers=self.num_workers,
                pin_memory=self.pin_memory, cache_dir=self.cache_dir, seed=self.seed) for c in self.extra_train]
        return self._extra

    def _set_training_queries(self, query_ids: list[str], mined) -> None:
        data = self.load()
        positives = self._positives(query_ids)
        examples, empty = [], 0
        for qid in query_ids:
            if not mined.pools.get(qid):
                empty += 1
                continue
            examples.append(TrainingQuery(qid, positives[qid], list(mined.pools[qid])))
        if empty:
            log.warning("%d training queries have no hard-negative candidates in window %s and are skipped",
                        empty, self.negative_window)
        if not examples:
            raise ValueError(f"no usable training queries in split '{self.train_split}' of {data.source}")
        if self.teacher_scores_path:
            teacher = self._load_teacher_scores(examples)
        elif mined.teacher_scores is not None:
            teacher = {ex.query_id: mined.teacher_scores[ex.query_id] for ex in examples}
        else:
            teacher = None
        epoch = self.train_dataset.epoch if self.train_dataset is not None else 0
        self.train_dataset = ListwiseTrainDataset(
            data.queries, self.query_rows, data.corpus, self.corpus_rows, examples,
            num_negatives=self.num_negatives, seed=self.seed, teacher_scores=teacher, epoch=epoch,
        )

    # --- ANCE-style refresh during training -------------------------------------------------------
    def refresh_negatives(self, model, epoch: int, index=None) -> None:
        """Re-mine the training negatives with ``model`` (the DE being trained) for training epoch
        ``epoch``, searching ``index`` (a dense index of this corpus built with the same weights) when
        given; rank 0 mines and caches, every rank then loads the same pools (DDP-safe: barrier +
        broadcast of the cache key). The next ``train_dataloader`` serves them."""
        trainer = self.trainer
        query_ids = [ex.query_id for ex in self.train_dataset.examples]
        spec = dataclasses.replace(self.mining_spec(query_ids), miner="dense-refresh",
                                   model_digest=f"epoch{epoch}:{_state_digest(model)}", run_digest=None)
        if trainer.is_global_zero and self.negative_cache().load(spec) is None:
            rows = self.load().query_index()
            queries = self.load().queries.select([rows[q] for q in query_ids])
            run = dense_mining.dense_run(model, self.load().corpus, queries, depth=self._mining_depth(), index=index,
                                         batch_size=self.eval_batch_size, progress=False)
            known = self.train_dataset.teacher_scores if self.mining_teacher else None
            self.negative_cache().save(spec, self._pools_from_run(run, query_ids, teacher_scores=known))
        spec_dict = trainer.strategy.broadcast(dataclasses.asdict(spec), src=0)
        trainer.strategy.barrier("rankers-refresh")
        self.refreshed = self._active_refresh = spec_dict
        mined = self.mined(query_ids)
        before = {ex.query_id: set(ex.negatives) for ex in self.train_dataset.examples}
        self._set_training_queries(query_ids, mined)
        changed = sum(1 for ex in self.train_dataset.examples if set(ex.negatives) != before.get(ex.query_id))
        log.info("refreshed negatives for epoch %d with the current DE: %d of %d queries got a new pool",
                 epoch, changed, len(self.train_dataset))

    def state_dict(self) -> dict[str, Any]:
        return {"refreshed": self.refreshed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.refreshed = state.get("refreshed")

    def _load_teacher_scores(self, examples: list[TrainingQuery]) -> dict[str, dict[str, float]]:
        """Read the teacher score file and check it covers every training query's positives and pool."""
        path = self.teacher_scores_path
        scores = self._read_teacher_file()
        for ex in examples:
            have = scores.get(ex.query_id)
            if have is None:
                raise ValueError(f"{path}: no teacher scores for training query '{ex.query_id}'; the score file "
                                 f"must cover every training query (was it made with the same data and mining settings?)")
            for pid in (*ex.positives, *ex.negatives):
                if pid not in have:
                    raise ValueError(f"{path}: no teacher score for training query '{ex.query_id}', passage '{pid}' "
                                     f"(a {'positive' if pid in ex.positives else 'mined negative'}); the score file "
                                     f"must cover each query's positives and negative pool"
                                     + (" -- negatives were refreshed during training: set --data.mining_teacher "
                                        "so new candidates get scored, or use an online teacher "
                                        "(--model.teacher_checkpoint)" if self.refreshed else ""))
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

    def _worker_context(self) -> str | None:
        """The ``multiprocessing_context`` of the dataloaders (None: PyTorch's default)."""
        if self.num_workers == 0:
            return None
        if self.worker_start_method == "auto":
            return "forkserver" if getattr(self.trainer, "world_size", 1) > 1 else None
        return self.worker_start_method

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        context = self._worker_context()
        if shuffle:  # the training order: seeded per epoch, sharded over ranks, resumable mid-epoch
            lengths = self.train_item_lengths() if self.length_group_batches else None
            return resumable_train_loader(
                dataset, batch_size=batch_size, seed=self.seed, epoch=self.train_dataset.epoch,
                num_replicas=getattr(self.trainer, "world_size", 1), rank=getattr(self.trainer, "global_rank", 0),
                lengths=lengths, group_batches=max(1, self.length_group_batches),
                num_workers=self.num_workers, collate_fn=self._collate(), pin_memory=self.pin_memory,
                multiprocessing_context=context)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=self._collate(), pin_memory=self.pin_memory, persistent_workers=False,
                          multiprocessing_context=context)

    def train_item_lengths(self):
        """This epoch's training items' lengths (query + longest drawn passage, characters) for length grouping;
        the texts' lengths are read once, with Arrow, from the memory-mapped tables."""
        if self._text_lengths is None:
            import pyarrow.compute as pc

            data = self.load()
            self._text_lengths = tuple(pc.utf8_length(ds.with_format("arrow")["text"]).to_numpy(zero_copy_only=False)
                                       for ds in (data.queries, data.corpus))
        return self.train_dataset.item_lengths(*self._text_lengths)

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "setup('fit') first"
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if self.refreshed is not None and self._active_refresh != self.refreshed:  # resumed from a checkpoint
            query_ids = [ex.query_id for ex in self.train_dataset.examples]
            self._set_training_queries(query_ids, self.mined(query_ids))
            self._active_refresh = self.refreshed
        self.train_dataset.epoch = epoch
        if self.extra_train:
            return self._collection_loader(epoch)
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def _collection_loader(self, epoch: int) -> DataLoader:
        """The training loader over this collection and ``extra_train``'s, each batch from one of them."""
        parts = [self.train_dataset, *(child.train_dataset for child in self.extra_collections())]
        for part in parts:
            part.epoch = epoch
        sampler = CollectionBatchSampler([len(p) for p in parts], [1.0, *(c.weight for c in self.extra_train)],
                                         batch_size=self.batch_size, seed=self.seed, epoch=epoch,
                                         num_replicas=getattr(self.trainer, "world_size", 1),
                                         rank=getattr(self.trainer, "global_rank", 0))
        return CollectionDataLoader(BatchedDataset(ConcatDataset(parts)), sampler=sampler, batch_size=None,
                                    num_workers=self.num_workers,
                                    collate_fn=self._collate(), pin_memory=self.pin_memory,
                                    multiprocessing_context=self._worker_context(),
                                    generator=torch.Generator().manual_seed(self.seed + epoch))

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
        self.eval_sets["predict"] = self.predict_pairs() if self.predict_split == "train" else self.eval_sets[self.predict_split]
        return self._loader(self.eval_sets["predict"], self.eval_batch_size, shuffle=False)
