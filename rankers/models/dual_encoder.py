"""The dual-encoder (DE) ranker: the student, and the retriever.

Queries and passages are encoded separately (one shared tower, or two), pooled (CLS or mean), optionally
projected to ``embedding_dim``, and scored by dot product or cosine similarity divided by a temperature.

Training loss (per batch of B queries, each with N candidates: its positive and hard negatives)::

    L = Σ_i weight_i · term_i      (``losses``: :mod:`rankers.losses.terms`), by default
      = label_weight · CE_onehot(S_inbatch, labels) + L_distill(s_own, t)

* ``S_inbatch`` -- query × all B·N passages of the batch (in-batch negatives; a passage that is a
  judged positive of the query is a positive wherever it appears), or only the query's own N
  candidates when ``in_batch_negatives=False``. Under DDP (training, ``gather_negatives=True``) the
  passages of *every* rank's batch are gathered, so the columns are the whole global batch; the
  gathered embeddings carry gradients back to the rank that encoded them;
* ``s_own`` / ``t`` -- student / teacher scores of the query's own N candidates; teacher scores come
  from the batch (offline: a score file the CA's ``predict`` wrote) or from a frozen CA teacher
  loaded from ``teacher_checkpoint`` that scores every batch under ``no_grad`` (online);
* ``L_distill`` -- one of :data:`rankers.losses.DISTILLATION_LOSSES` (``m3se`` is the paper's) over the
  query's own candidates, or ``kl_in_batch`` (:class:`rankers.losses.InBatchDistillationLoss`): the student's
  softmax over ``S_inbatch`` against the teacher's softmax over the own candidates (zero mass elsewhere).

Label training alone (Menon et al.'s "DE on labels") is ``distillation_loss=None, label_weight=1`` (or
``losses=[LabelLoss()]``); the flat arguments are shorthand for the term list (:func:`rankers.losses.losses_from`).

Under DDP each rank's loss terms are weighted (:func:`rankers.distributed.rank_weights`) so that DDP's
gradient averaging yields the gradient of one process over the concatenated global batch.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rankers import distributed
from rankers.models.backbone import load_encoder, load_tokenizer
from rankers.models.batches import ListwiseBatch, PairBatch
from rankers.models.collate import DualCollator
from rankers.models.grad_cache import cached_embeddings
from rankers.models.length_buckets import forward_by_length
from rankers.losses import one_hot_ce
from rankers.losses.terms import InBatchScores, LossInputs, LossTerm, losses_from
from rankers.models.module import RankerModule

log = logging.getLogger(__name__)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """CLS pooling (first token) or mean pooling over non-padding tokens."""
    if mode == "cls":
        return hidden[:, 0]
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-6)


@dataclass
class KeyedDualCollator(DualCollator):
    """:class:`DualCollator` whose listwise batches also carry int64 id keys for cross-rank labels.

    Adds ``passage_keys`` ``[B, N]`` (0 in padding slots; ``mask`` tells them apart), ``positive_keys``
    and ``positive_mask`` ``[B, P]``: each query's judged positives, padded. With them a rank can build
    the in-batch label matrix against passages gathered from other ranks (:func:`distributed.key_labels`).
    """

    def __call__(self, examples: list[dict[str, Any]]) -> ListwiseBatch | PairBatch:
        batch = super().__call__(examples)
        if not isinstance(batch, ListwiseBatch):
            return batch
        bsz, width = batch.mask.shape
        passage_keys = torch.zeros(bsz, width, dtype=torch.long)
        for i, ids in enumerate(batch.passage_ids):
            passage_keys[i, : len(ids)] = distributed.id_keys(ids)
        positives = [list(ex["positive_ids"]) for ex in examples]
        n_pos = max(1, max(len(p) for p in positives))
        positive_keys = torch.zeros(bsz, n_pos, dtype=torch.long)
        positive_mask = torch.zeros(bsz, n_pos, dtype=torch.bool)
        for i, ids in enumerate(positives):
            positive_keys[i, : len(ids)] = distributed.id_keys(ids)
            positive_mask[i, : len(ids)] = True
        batch.passage_keys, batch.positive_keys, batch.positive_mask = passage_keys, positive_keys, positive_mask
        return batch


class DualEncoderRanker(RankerModule):
    """Dual-encoder ranker.

    Args:
        backbone: ``"minilm"`` (all-MiniLM-L6-v2, the default), ``"tiny"`` (the tiny random local BERT, for
            tests; ``"embedded"`` is an alias), a local directory or a hub name (see :mod:`rankers.models.backbone`);
            the query tower (and the passage tower when ``shared_towers``).
        num_layers: keep only the backbone's first ``num_layers`` transformer layers (a student smaller than
            its teacher, e.g. 6 of a 12-layer model); ``None`` keeps them all. Checkpoints rebuild the short
            model from this hyper-parameter; exports are the short model (``num_hidden_layers`` in config.json).
        shared_towers: one encoder for queries and passages (True) or two copies initialised alike.
        pooling: ``"cls"`` or ``"mean"``.
        embedding_dim: if set, a linear projection to this size after pooling.
        similarity: ``"dot"`` or ``"cos"``; scores are divided by ``temperature``.
        query_max_length / passage_max_length: token budgets.
        in_batch_negatives: use the other queries' candidates as extra negatives in the label loss.
        gather_negatives: under DDP (world size > 1, training), use every rank's candidates as in-batch
            negatives (all-gathered, gradients flowing back to each rank), not only the local batch's.
        label_weight: weight of the one-hot (label) loss.
        distillation_loss: name in ``rankers.losses.DISTILLATION_LOSSES``, ``"kl_in_batch"`` (the KL over the
            in-batch passages, :class:`rankers.losses.InBatchDistillationLoss`) or None for label training.
        distillation_temperature: temperature of the softmax-based distillation losses (kl, softmax_ce).
        losses: the loss as a weighted list of terms (:class:`rankers.losses.LabelLoss`,
            :class:`rankers.losses.DistillationLoss`, ...); when given it replaces ``label_weight``,
            ``distillation_loss`` and ``distillation_temperature``.
        teacher_checkpoint: a CrossAttentionRanker checkpoint scoring batches online (frozen); without
            it, teacher scores must come with the batch (``--data.teacher_scores``).
        gradient_checkpointing: trade compute for activation memory.
        length_buckets: the texts of a batch run through the encoder as this many length-sorted groups,
            each padded to its own longest text (:mod:`rankers.models.length_buckets`; same embeddings,
            less padding); 1 = one padded batch.
        grad_cache_chunk_size: gradient caching (:mod:`rankers.models.grad_cache`): in training, embed
            queries and passages this many texts at a time without a graph, compute the loss over the whole
            batch, and re-embed chunk by chunk in the backward pass — the gradients of the full batch with
            the activation memory of one chunk, for a second forward pass; ``None`` = off.
    """

    is_dual_encoder = True

    def __init__(
        self,
        backbone: str = "minilm",
        num_layers: int | None = None,
        shared_towers: bool = True,
        pooling: Literal["cls", "mean"] = "cls",
        embedding_dim: int | None = None,
        similarity: Literal["dot", "cos"] = "dot",
        temperature: float = 1.0,
        query_max_length: int = 32,
        passage_max_length: int = 180,
        in_batch_negatives: bool = True,
        gather_negatives: bool = True,
        label_weight: float = 1.0,
        distillation_loss: str | None = None,
        distillation_temperature: float = 1.0,
        losses: list[LossTerm] | None = None,
        teacher_checkpoint: str | None = None,
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        length_buckets: int = 2,
        grad_cache_chunk_size: int | None = None,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio)
        self.save_hyperparameters()
        if losses is None:
            if distillation_loss is None and label_weight <= 0:
                raise ValueError("DualEncoderRanker: label_weight must be > 0 when no distillation_loss is set")
            losses = losses_from(label_weight, distillation_loss, distillation_temperature, in_batch_negatives)
        elif not losses:
            raise ValueError("DualEncoderRanker: losses is an empty list; give at least one loss term")
        bad = [t for t in losses if not isinstance(t, LossTerm)]
        if bad:
            raise TypeError(f"DualEncoderRanker: losses must be rankers.losses loss terms, got {bad!r}")
        if teacher_checkpoint is not None and not any(t.needs_teacher for t in losses):
            raise ValueError("DualEncoderRanker: teacher_checkpoint is set but no loss term uses a teacher "
                             "(distillation_loss is None)")
        if grad_cache_chunk_size is not None and grad_cache_chunk_size < 1:
            raise ValueError(f"DualEncoderRanker: grad_cache_chunk_size must be >= 1 or None, got {grad_cache_chunk_size}")
        self.pooling = pooling
        self.similarity = similarity
        self.temperature = temperature
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.in_batch_negatives = in_batch_negatives
        self.gather_negatives = gather_negatives
        self.losses = list(losses)

        kw = dict(trust_remote_code=trust_remote_code, gradient_checkpointing=gradient_checkpointing)
        self.query_encoder = load_encoder(backbone, num_layers=num_layers, **kw)
        self.passage_encoder = self.query_encoder if shared_towers else copy.deepcopy(self.query_encoder)
        self.tokenizer = load_tokenizer(backbone, trust_remote_code=trust_remote_code)
        hidden = self.query_encoder.config.hidden_size
        if embedding_dim:
            self.query_projection = nn.Linear(hidden, embedding_dim)
            self.passage_projection = self.query_projection if shared_towers else nn.Linear(hidden, embedding_dim)
        else:
            self.query_projection = self.passage_projection = nn.Identity()
        self._freeze_unused_poolers()
        # The teacher is frozen and never saved with the student: keep it out of the module tree.
        object.__setattr__(self, "teacher", None)
        if teacher_checkpoint is not None:
            self._load_teacher(teacher_checkpoint)
        self.train()  # from_pretrained returns eval mode; Lightning expects modules to start in train mode

    def _load_teacher(self, path: str) -> None:
        from rankers.models.checkpoints import CROSS_ATTENTION, load_checkpoint

        teacher = load_checkpoint(path, expect=CROSS_ATTENTION)
        teacher.requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)
        log.info("online teacher loaded from %s", path)

    def _freeze_unused_poolers(self) -> None:
        """The towers' pooler heads (e.g. BERT's) never reach the loss (we pool ``last_hidden_state``).

        Parameters that get no gradient make DDP fail on the second step ("parameters that were not used
        in producing the loss"); freezing them keeps them in checkpoints and exports, unchanged.
        """
        for encoder in (self.query_encoder, self.passage_encoder):
            pooler = getattr(encoder, "pooler", None)
            if isinstance(pooler, nn.Module):
                pooler.requires_grad_(False)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    # --- encoding -------------------------------------------------------------------------------
    def _encode(self, inputs: dict[str, torch.Tensor], side: Literal["query", "passage"]) -> torch.Tensor:
        encoder = self.query_encoder if side == "query" else self.passage_encoder
        projection = self.query_projection if side == "query" else self.passage_projection
        def embed(x: dict[str, torch.Tensor]) -> torch.Tensor:
            return projection(pool(encoder(**x).last_hidden_state, x["attention_mask"], self.pooling))

        emb = forward_by_length(embed, inputs, self.hparams.length_buckets)
        return F.normalize(emb, dim=-1) if self.similarity == "cos" else emb

    def encode_query_inputs(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._encode(inputs, "query")

    def encode_passage_inputs(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._encode(inputs, "passage")

    def tokenize(self, texts: list[str], side: Literal["query", "passage"]) -> dict[str, torch.Tensor]:
        max_length = self.query_max_length if side == "query" else self.passage_max_length
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

    def collator(self) -> KeyedDualCollator:
        teacher = self.teacher.collator() if self.teacher is not None else None
        return KeyedDualCollator(self.tokenizer, self.tokenizer, self.query_max_length, self.passage_max_length, teacher)

    # --- scoring --------------------------------------------------------------------------------
    def pair_scores(self, batch: PairBatch) -> torch.Tensor:
        q = self.encode_query_inputs(batch.query_inputs)
        p = self.encode_passage_inputs(batch.passage_inputs)
        return (q * p).sum(-1) / self.temperature

    def teacher_scores(self, batch: ListwiseBatch) -> torch.Tensor:
        if self.teacher is not None:
            with torch.no_grad():
                return self.teacher(batch.teacher_inputs).float().view(batch.mask.shape)
        if batch.teacher_scores is None:
            raise ValueError(
                "distillation needs teacher scores: set --data.teacher_scores FILE (written by "
                "`python -m rankers predict --config configs/ca_teacher.yaml --ckpt_path CKPT`) or "
                "--model.teacher_checkpoint CKPT for an online teacher"
            )
        return batch.teacher_scores

    def _gathers(self) -> bool:
        """Gather in-batch negatives across ranks: training under DDP with ``gather_negatives``."""
        return self.training and self.gather_negatives and distributed.world_size() > 1

    def _in_batch_columns(self, q: torch.Tensor, p: torch.Tensor, batch: ListwiseBatch):
        """Each local query against the in-batch passages -- the local batch's or, when gathering, every rank's
        (one all-gather with gradients): scores ``[B, M]``, the passages' id keys ``[M]`` (None for a local batch
        without keys), their validity ``[M]``, and the column where this rank's passages start. Computed once
        per step and shared by the loss terms that need it."""
        device = p.device
        if not self._gathers():
            keys = None if batch.passage_keys is None else batch.passage_keys.reshape(-1).to(device)
            return q @ p.T / self.temperature, keys, batch.mask.reshape(-1).to(device), 0
        if batch.passage_keys is None:
            raise ValueError("gathering in-batch negatives across ranks needs the batch's id keys: build "
                             "batches with DualEncoderRanker.collator() (a KeyedDualCollator)")
        rows = distributed.max_rows(p.shape[0], device)
        passages = distributed.all_gather_rows(p, rows, with_grad=True)  # [W*rows, d]
        keys = distributed.all_gather_rows(batch.passage_keys.reshape(-1).to(device), rows)
        valid = distributed.all_gather_rows(batch.mask.reshape(-1).to(device), rows)  # padding rows are False
        return q @ passages.T / self.temperature, keys, valid, distributed.rank() * rows

    def _in_batch_label_loss(self, columns, batch: ListwiseBatch) -> torch.Tensor:
        """One-hot CE of each local query over the in-batch passages (``columns``); when gathering, the label
        matrix is rebuilt from id keys against the gathered passages."""
        scores, keys, valid, _ = columns
        bsz = batch.mask.shape[0]
        if not self._gathers():
            labels = batch.in_batch_labels.to(scores.device)
        else:
            labels = distributed.key_labels(batch.positive_keys.to(scores.device),
                                            batch.positive_mask.to(scores.device), keys, valid)
        return one_hot_ce(scores, None, labels, valid.view(1, -1).expand(bsz, -1))

    def _in_batch_scores(self, columns, batch: ListwiseBatch) -> InBatchScores:
        """The in-batch passages (``columns``) for in-batch distillation; a second copy of one of the query's
        own candidates elsewhere in the batch is masked out (it would otherwise be a zero-target twin of a
        passage the teacher scored)."""
        scores, keys, valid, start = columns
        mask = batch.mask.to(scores.device)
        bsz, width = mask.shape
        own_keys = batch.passage_keys
        if own_keys is None:  # a plain DualCollator batch (never gathered): keys from the ids
            own_keys = torch.zeros(bsz, width, dtype=torch.long)
            for i, ids in enumerate(batch.passage_ids):
                own_keys[i, : len(ids)] = distributed.id_keys(ids)
        own_keys = own_keys.to(scores.device)
        keys = own_keys.reshape(-1) if keys is None else keys
        own = start + torch.arange(bsz * width, device=scores.device).view(bsz, width)
        copies = ((keys.view(1, 1, -1) == own_keys.unsqueeze(-1)) & mask.unsqueeze(-1)).any(dim=1)
        copies.scatter_(1, own, False)
        return InBatchScores(scores, valid.view(1, -1) & ~copies, own)

    def _rank_weights(self, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of the label and distillation terms that make DDP's gradient average exact (ones otherwise).

        Counted queries: label loss -- those with a positive (every query); distillation -- those with a
        valid positive and a valid negative among their own candidates (the queries m3se / margin_mse /
        rankdistil average over; for every loss, all training queries, which always have a negative).
        """
        if not self.training or distributed.world_size() == 1:
            one = torch.ones((), device=mask.device)
            return one, one
        positive, negative = labels & mask, ~labels & mask
        counts = torch.stack([positive.any(-1).sum(), (positive.any(-1) & negative.any(-1)).sum()])
        weights = distributed.rank_weights(counts)
        return weights[0], weights[1]

    def _embed_batch(self, batch: ListwiseBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Query and passage embeddings of a batch; through the gradient cache when it is on (training)."""
        chunk = self.hparams.get("grad_cache_chunk_size")
        if not (self.training and chunk and torch.is_grad_enabled()):
            return self.encode_query_inputs(batch.query_inputs), self.encode_passage_inputs(batch.passage_inputs)
        inputs = {"query": batch.query_inputs, "passage": batch.passage_inputs}

        def encode(side: str, lo: int, hi: int) -> torch.Tensor:
            return self._encode({key: value[lo:hi] for key, value in inputs[side].items()}, side)  # type: ignore[arg-type]

        towers = (self.query_encoder, self.passage_encoder, self.query_projection, self.passage_projection)
        params = list({id(p): p for tower in towers for p in tower.parameters()}.values())  # shared towers once
        rows = {side: int(value["input_ids"].shape[0]) for side, value in inputs.items()}
        return cached_embeddings(encode, rows, int(chunk), params, self.device)

    def listwise_loss(self, batch: ListwiseBatch):
        mask = batch.mask
        labels = batch.labels > 0
        bsz, width = mask.shape
        q, p = self._embed_batch(batch)
        own = torch.einsum("bd,bnd->bn", q, p.view(bsz, width, -1)) / self.temperature
        rank_weight = dict(zip(("label", "distill"), self._rank_weights(labels.to(mask.device), mask)))
        # teacher scores are the query's own N candidates, aligned with ``own`` (never gathered)
        columns: list = []  # the in-batch scores, computed (and under DDP gathered) once for every term

        def in_batch_columns():
            if not columns:
                columns.append(self._in_batch_columns(q, p, batch))
            return columns[0]

        inputs = LossInputs(own, labels, mask,
                            in_batch_label_loss=lambda: self._in_batch_label_loss(in_batch_columns(), batch),
                            teacher=lambda: self.teacher_scores(batch),
                            in_batch_scores=lambda: self._in_batch_scores(in_batch_columns(), batch))
        parts: dict[str, torch.Tensor] = {}
        loss = own.new_zeros(())
        for term in self.losses:
            value = term(inputs)
            key, n = term.log_name, 2
            while key in parts:  # two terms of one kind: distill_loss, distill_loss_2, ...
                key, n = f"{term.log_name}_{n}", n + 1
            parts[key] = value.detach()
            loss = loss + term.weight * rank_weight[term.counts] * value
        return loss, parts
