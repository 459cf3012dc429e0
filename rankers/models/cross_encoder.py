"""The cross-attention (CA) ranker: the teacher.

A Hugging Face encoder reads ``[CLS] query [SEP] passage [SEP]`` and a head on top gives the relevance
score. Trained with listwise softmax cross-entropy over the query's positive and its hard negatives
(Menon et al., 2022, section 5; Nogueira & Cho, 2019 use the pointwise form). Two heads (``pooling``):

* ``"cls"`` -- a one-unit classifier on the pooled ``[CLS]`` state (``AutoModelForSequenceClassification``
  with ``num_labels=1``, so an exported teacher is a standard cross-encoder);
* ``"segments"`` -- the two segments of the jointly encoded pair are mean-pooled separately (query side:
  ``[CLS] query [SEP]``, passage side: ``passage [SEP]``, as the token types split them) and the score is
  ``scale * cos(query mean, passage mean)`` with a learned ``scale`` that starts at ``1 / segment_temperature``.
  Every token still attends across the pair, so the model is a cross-attention ranker; but on a
  sentence-embedding checkpoint (all-MiniLM-L6-v2, trained with mean pooling and cosine / 0.05) it starts
  from the checkpoint's own similarity instead of a fresh head's uniform scores. Measured on the embedded
  default with 24% of the training judgments on random passages (bench/RESULTS.md §4): the ``cls`` head stays
  on the ln(N) plateau (test MRR@10 0.244) where this head learns (0.7505). Not yet compared on clean labels.
"""
from __future__ import annotations

from typing import Literal


import torch

from rankers.models.backbone import load_encoder, load_sequence_scorer, load_tokenizer
from rankers.models.batches import ListwiseBatch, PairBatch
from rankers.models.collate import PairCollator
from rankers.models.length_buckets import forward_by_length
from rankers.losses import one_hot_ce
from rankers.models.module import RankerModule


class CrossAttentionRanker(RankerModule):
    """Cross-attention ranker over (query, passage) pairs.

    Args:
        backbone: ``"minilm"`` (default), ``"tiny"`` (alias ``"embedded"``), hub name or local directory.
        num_layers: keep only the backbone's first k transformer layers (``None``: all).
        max_length: token budget of a (query, passage) pair; longer pairs are truncated longest-first.
        temperature: scores are divided by it inside the listwise softmax.
        lr, weight_decay, warmup_ratio: AdamW and the linear warm-up / decay schedule.
        head_lr: learning rate of the scoring head on top of the backbone (BERT's pooler and the
            one-unit classifier); ``None`` trains it at ``lr``. A sentence-embedding checkpoint such as
            all-MiniLM-L6-v2 was trained with mean pooling, so its ``[CLS]`` pooler carries little signal
            and the classifier is new: at a fine-tuning ``lr`` (3e-5) the head's gradients are too small
            and the listwise loss sits on the uniform-score plateau ln(N) for the first epoch (measured:
            2.07 after 40 steps of 8 queries x 8 candidates on the embedded default), while a head
            trained 20x faster leaves it within a few dozen steps (1.78 after 40 steps at lr 1e-4 /
            head_lr 2e-3). The body keeps the small ``lr`` that preserves its pretrained weights.
        trust_remote_code: allow model code from the hub (off by default).
        gradient_checkpointing: trade compute for activation memory.
        length_buckets: a batch of pairs runs through the encoder as this many length-sorted groups,
            each padded to its own longest pair (:mod:`rankers.models.length_buckets`; same scores,
            less padding); 1 = one padded batch.
        pooling: the head, ``"cls"`` or ``"segments"`` (see the module doc). ``"segments"`` needs a
            tokenizer that returns ``token_type_ids`` (BERT-style models).
        segment_temperature: ``"segments"`` only: the score scale starts at its inverse (0.05: the
            temperature all-MiniLM-L6-v2 was trained with).
    """

    def __init__(
        self,
        backbone: str = "minilm",
        num_layers: int | None = None,
        max_length: int = 256,
        temperature: float = 1.0,
        lr: float = 1e-4,
        head_lr: float | None = 2e-3,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        length_buckets: int = 2,
        pooling: Literal["cls", "segments"] = "cls",
        segment_temperature: float = 0.05,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio, head_lr=head_lr)
        self.save_hyperparameters()
        self.max_length = max_length
        self.length_buckets = length_buckets
        self.temperature = temperature
        if pooling not in ("cls", "segments"):
            raise ValueError(f"CrossAttentionRanker: pooling must be 'cls' or 'segments', got {pooling!r}")
        if not segment_temperature > 0:
            raise ValueError(f"CrossAttentionRanker: segment_temperature must be > 0, got {segment_temperature!r}")
        self.pooling = pooling
        load = load_sequence_scorer if pooling == "cls" else load_encoder
        self.model = load(backbone, trust_remote_code=trust_remote_code, gradient_checkpointing=gradient_checkpointing,
                          num_layers=num_layers)
        self.tokenizer = load_tokenizer(backbone, trust_remote_code=trust_remote_code)
        if pooling == "segments":
            if "token_type_ids" not in self.tokenizer("query", "passage"):
                raise ValueError(f"CrossAttentionRanker: pooling='segments' needs token_type_ids to tell the query from "
                                 f"the passage, and the tokenizer of backbone {backbone!r} returns none; use pooling='cls'")
            self.segment_scale = torch.nn.Parameter(torch.tensor(1.0 / segment_temperature))
            pooler = getattr(self.model, "pooler", None)
            if isinstance(pooler, torch.nn.Module):  # never reaches the score (as the DE's towers; DDP needs it frozen)
                pooler.requires_grad_(False)
        self.model.train()  # from_pretrained returns eval mode; Lightning expects modules to start in train mode

    def is_head_parameter(self, name: str) -> bool:
        """The pooler and classifier of ``AutoModelForSequenceClassification`` (fresh on an encoder checkpoint)."""
        return name == "segment_scale" or any(
            part in ("pooler", "classifier", "pre_classifier", "score") for part in name.split("."))

    def collator(self) -> PairCollator:
        return PairCollator(self.tokenizer, self.max_length)

    def forward(self, pair_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        head = self._cls_scores if self.pooling == "cls" else self._segment_scores
        return forward_by_length(head, pair_inputs, self.length_buckets)

    def _cls_scores(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**inputs).logits.squeeze(-1)

    def _segment_scores(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(**inputs).last_hidden_state
        real = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        passage_side = inputs["token_type_ids"].unsqueeze(-1).to(hidden.dtype) * real
        query_side = real - passage_side

        def mean(weights: torch.Tensor) -> torch.Tensor:
            return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

        cosine = torch.nn.functional.cosine_similarity(mean(query_side).float(), mean(passage_side).float(), dim=-1)
        return self.segment_scale * cosine

    def pair_scores(self, batch: PairBatch) -> torch.Tensor:
        return self(batch.pair_inputs)

    @torch.inference_mode()
    def score(self, queries: list[str], passages: list[str], batch_size: int = 64) -> torch.Tensor:
        """Scores of aligned (query, passage) lists, for use outside the Lightning loops."""
        collate = self.collator()
        out = []
        for start in range(0, len(queries), batch_size):
            inputs = collate.tokenize(queries[start : start + batch_size], passages[start : start + batch_size])
            out.append(self({k: v.to(self.device) for k, v in inputs.items()}).float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def listwise_loss(self, batch: ListwiseBatch):
        mask = batch.mask
        scores = self(batch.pair_inputs).view(mask.shape)
        loss = one_hot_ce(scores, None, batch.labels > 0, mask, temperature=self.temperature)
        return loss, {}
