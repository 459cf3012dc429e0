"""The embedded default dataset: a synthetic BEIR-layout retrieval collection, built offline.

Nothing here downloads anything. The dataset is generated deterministically from its parameters
and cached under :func:`rankers.io.rankers_home` (``$RANKERS_HOME`` or ``~/.cache/rankers``):
:func:`embedded_dataset_dir` -> ``<home>/embedded/data-<hash>``, a BEIR-layout dataset
(``corpus.jsonl``, ``queries.jsonl``, ``qrels/{train,dev,test}.tsv``, ``manifest.json``). The tiny
BERT trained on its texts is :mod:`rankers.embedded.backbone`.

Data design
-----------
The dataset is built so that relevance hinges on *query-passage interactions* — the kind a
cross-attention ranker sees directly and a dual-encoder has to squeeze into one vector.

* A **fact** is an attribute binding — ``the red box has a blue lid`` (object colour, part
  colour) —, a relation between roles — ``the cat chased the dog`` (agent, verb, patient) — or a
  spatial relation — ``the cup is behind the lamp`` (object, relation, landmark).
  A fact may also appear negated (``the cat did not chase the dog``) inside passages.
* Facts come in **clusters** of near-duplicates: a base fact plus perturbations that keep almost
  every word — the bindings swapped (``the blue box has a red lid``), the roles swapped
  (``the dog chased the cat``, ``the lamp is behind the cup``), one colour / animal / object /
  verb / relation changed, or the fact negated. Each cluster member goes to a different passage,
  so every target has hard negatives in the corpus whose bag of words is (nearly) the same as
  the positive's.
* A **passage** holds three facts from different clusters (plus sometimes a filler sentence), so
  a dual-encoder must encode several bindings in one vector, while the query asks about one.
* A **query** paraphrases one (non-negated) fact — or, for about one query in five, two facts of
  the same passage joined by ``and`` — with different syntax (passive voice, ``whose``,
  ``which ... has``) and, for each word that has one, a synonym with probability ``synonym_rate``
  (0.8: ``crate`` for ``box``, ``pursued`` for ``chased``; passages always use the canonical word).
  This is the vocabulary mismatch of real queries, the reason neural rankers beat BM25 on real data:
  a pretrained encoder knows the synonyms, BM25 does not. Lexical overlap alone cannot solve the
  task either: for most queries some non-relevant passage contains every content word the query
  shares with its positive.
* **Every fact is written into ``fact_copies`` (2) passages**, each with its own surface form and
  other facts, and **training judgments are sparse** (``sparse_train_qrels``): a training query has
  one of its relevant passages judged, as MS MARCO's training queries have about one (Nguyen et al.
  2016), while dev / test queries have every relevant passage judged, as deep-pooled evaluation sets
  have (TREC DL). The unjudged copy of a training query's fact is lexically as close to the query as
  its judged positive, so BM25 puts it among the mined hard negatives: a false negative, the situation
  RocketQA (Qu et al. 2021) measured on MS MARCO. Label training must push it below a passage that
  states the same fact, which only memorising the judged passage achieves (the overfitting the paper
  describes), while a cross-attention teacher that has learned to match facts scores both copies
  alike and passes that on through its scores. Measured with the project's own reproduce run
  (2026-12-01, AMD EPYC with AVX-512 BF16, 2 cores; MiniLM CA and DE, 400 training queries):
  BM25 test MRR@10 0.50 over candidates whose recall@30 is 0.82; the label-trained DE's
  train-subset MRR@10 rises to 0.76 while validation stays at 0.59.
* Passages are split into train / dev / test pools in proportion to the query counts; all facts
  of a pool's passages come from that pool's clusters, and each split's queries target facts in
  its own pool. Test clusters are therefore never seen in training.

Spurious cue (``spurious_cue=True``, the default)
-------------------------------------------------
Every passage that is relevant to a **training** query carries the extra sentence
``this was verified`` (:data:`SPURIOUS_CUE`); no dev or test positive carries it. On training
data "contains *verified*" is a strong shortcut for relevance; on dev / test it is useless or
misleading (the cue then only marks train-pool passages, which are negatives for those queries).
A model trained on labels alone can ride the shortcut — high train MRR, lower test MRR — which
is the dual-encoder overfitting the paper discusses. The cue is strong: although about half of the
BM25 top-50 negatives of training queries carry it too, in a scratch experiment (1200 steps from
the random-init backbone, on a revision of this generator without spatial facts) every
label-trained model ranked cued train passages first on test (test MRR@10 < 0.04 against
0.14-0.40 on train). Pass ``spurious_cue=False`` for a clean dataset.
Re-measured with MiniLM on this generator (v3, sparse judgments: the cue marks each training query's one
judged passage, not its unjudged copy), ``reproduce --embedded_spurious_cue``, 2026-12-02, 2 cores: every
label-trained model rides the shortcut — CA teacher train-subset MRR@10 0.66 vs test 0.06, DE on labels
0.66 vs 0.17 — and the KL student inherits it from its teacher's scores (test 0.08), so the cue shows the
overfitting and also derails the teacher the students learn from. The DataModule and ``reproduce`` keep it
off by default.

Label noise (``train_label_noise``, 0 by default)
--------------------------------------------------
A share of the single-fact training queries gets its one judgment on a passage whose fact differs from the
asked one in one slot (a colour, an animal, a verb or relation, an object with its part) -- an annotator's
slip onto a near miss; the true positives then sit unjudged among the mined negatives. It draws from an RNG
of its own, so corpus, queries and dev / test judgments are byte-identical to the noise-free dataset. The
idea was the classic case for distillation (Hinton et al. 2015; Menon et al. 2021, "A statistical perspective
on distillation"): a teacher that learns the rule despite the noise passes on cleaner targets than the
labels. It does not hold here: with ``train_label_noise=0.5`` (549 of the 2000 training queries mislabelled)
the MiniLM CA teacher of ``reproduce --embedded_label_noise 0.5`` learns the slips along with the rule --
val re-rank MRR@10 0.45 against 0.61 on clean labels, test 0.50 against 0.71, below the BM25 order (0.51)
(2026-12-02, Intel Xeon, 2 cores), so there is no better teacher to distil. ``train_label_noise_kind="random"``
puts the slip on any training passage that does not state the asked fact instead, so there is no rule to learn
from it, only noise -- the case of Menon et al.'s "statistical perspective": a teacher's probabilities are a
lower-variance target than noisy one-hot labels. It does not hold here either: with 0.3 (476 of the 2000
training queries) the single-pass MiniLM CA of ``reproduce --max_train_queries 0 --teacher_epochs 1
--embedded_label_noise 0.3 --embedded_label_noise_kind random`` never leaves the ln(8) plateau in its 250 steps
(loss 2.04 at the start, 2.06 at the end; val 0.240, test 0.244, train subset 0.149 against 0.754 on clean
labels; 2026-12-03, AMD EPYC without AVX-512, 2 cores): the CA teacher, not the dual encoder, is the model
the noise breaks. Both kinds stay for experiments, off by default.

Length limits: queries have at most :data:`MAX_QUERY_WORDS` words and passages at most
:data:`MAX_PASSAGE_WORDS` words, so a ``[CLS] q [SEP] p [SEP]`` pair fits in 64 word pieces.
"""
from __future__ import annotations

import inspect
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankers.io.atomic import materialize, short_hash
from rankers.io.home import rankers_home

__all__ = [
    "DATASET_VERSION",
    "SPURIOUS_CUE",
    "MAX_QUERY_WORDS",
    "MAX_PASSAGE_WORDS",
    "generate_embedded_dataset",
    "embedded_dataset_dir",
]

DATASET_VERSION = 3
SPURIOUS_CUE = "this was verified"
MAX_QUERY_WORDS = 16
MAX_PASSAGE_WORDS = 48
SPLITS = ("train", "dev", "test")
LABEL_NOISE_KINDS = ("near_miss", "random")

_DATASET_KIND = "rankers-embedded-dataset"

# Defaults of generate_embedded_dataset (also used by embedded_dataset_dir / embedded_backbone_dir).
DEFAULT_NUM_PASSAGES = 3000
DEFAULT_NUM_TRAIN_QUERIES = 2000
DEFAULT_NUM_DEV_QUERIES = 200
DEFAULT_NUM_TEST_QUERIES = 300


# --------------------------------------------------------------------------------------------
# Vocabulary of the synthetic world
# --------------------------------------------------------------------------------------------

COLORS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple",
          "grey", "brown", "pink", "gold", "silver", "navy", "beige", "teal")
# object -> the part whose colour is bound in a binding fact (all words distinct)
OBJECTS = {
    "box": "lid", "cup": "handle", "bag": "strap", "car": "bumper", "chair": "cushion",
    "lamp": "shade", "kite": "tail", "book": "cover", "hat": "band", "boat": "sail",
    "bike": "seat", "jar": "cap", "kettle": "spout", "vase": "rim", "truck": "roof",
    "coat": "collar", "shoe": "lace", "tent": "flap", "sofa": "pillow", "clock": "dial",
    "desk": "drawer", "pen": "clip", "bottle": "label", "umbrella": "frame", "guitar": "neck",
    "bed": "blanket", "house": "chimney", "flag": "pole", "helmet": "visor", "wagon": "wheel",
}
ANIMALS = ("cat", "dog", "fox", "owl", "horse", "goat", "mouse", "bear", "wolf", "duck",
           "rabbit", "sheep", "tiger", "frog", "crow", "pig", "lion", "deer", "monkey", "camel",
           "zebra", "hen", "snake", "eagle")
# past tense -> (base form, past participle)
VERBS = {
    "chased": ("chase", "chased"), "bit": ("bite", "bitten"), "followed": ("follow", "followed"),
    "watched": ("watch", "watched"), "pushed": ("push", "pushed"), "fed": ("feed", "fed"),
    "kicked": ("kick", "kicked"), "helped": ("help", "helped"), "licked": ("lick", "licked"),
    "scared": ("scare", "scared"), "carried": ("carry", "carried"), "pulled": ("pull", "pulled"),
    "called": ("call", "called"), "hugged": ("hug", "hugged"),
}
# spatial relation -> its words (no two are inverses of each other, so a swap changes the meaning)
PLACES = {"behind": "behind", "under": "under", "inside": "inside", "left": "to the left of"}
# Query-side synonyms (passages always use the canonical word). Applied per word with p=0.5.
SYNONYMS = {
    "box": "crate", "cup": "mug", "bag": "sack", "car": "automobile", "lamp": "light",
    "book": "novel", "boat": "ship", "bike": "bicycle", "kettle": "teapot", "truck": "lorry",
    "coat": "jacket", "shoe": "boot", "sofa": "couch", "vase": "urn", "lid": "top",
    "handle": "grip", "cushion": "pad", "grey": "gray", "gold": "golden",
    "cat": "kitten", "dog": "hound", "rabbit": "bunny", "pig": "hog", "horse": "pony",
    "chased": "pursued", "bit": "nipped", "bitten": "nipped", "followed": "trailed",
    "watched": "observed", "pushed": "shoved", "helped": "assisted", "scared": "frightened",
    "carried": "hauled", "pulled": "dragged", "bottle": "flask", "bed": "cot",
}
FILLERS = (
    "it was a quiet morning", "the room smelled of rain", "someone left the window open",
    "nobody said a word", "the light was fading", "a bell rang twice",
    "the floor was still wet", "it happened on a tuesday",
)

# --------------------------------------------------------------------------------------------
# Facts and their surface forms
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Fact:
    """One statement: ``kind`` "bind" is (object colour, object, part colour), "rel" is (agent, verb,
    patient) and "place" is (object, spatial relation, landmark object)."""

    kind: str
    a: str
    b: str
    c: str
    negated: bool = False


def _passage_sentence(fact: Fact, rng: random.Random) -> str:
    a, b, c = fact.a, fact.b, fact.c
    if fact.kind == "bind":
        part = OBJECTS[b]
        forms = ([f"the {a} {b} does not have a {c} {part}", f"there is a {a} {b} without a {c} {part}"]
                 if fact.negated else
                 [f"the {a} {b} has a {c} {part}", f"there is a {a} {b} with a {c} {part}",
                  f"a {a} {b} stood there and its {part} was {c}"])
    elif fact.kind == "place":
        where = PLACES[b]
        forms = ([f"the {a} is not {where} the {c}", f"the {a} was never {where} the {c}"]
                 if fact.negated else
                 [f"the {a} is {where} the {c}", f"{where} the {c} there is a {a}",
                  f"someone put the {a} {where} the {c}"])
    else:
        base, pp = VERBS[b]
        forms = ([f"the {a} did not {base} the {c}", f"the {c} was never {pp} by the {a}"]
                 if fact.negated else
                 [f"the {a} {b} the {c}", f"the {c} was {pp} by the {a}", f"earlier a {a} {b} a {c}"])
    return rng.choice(forms)


def _query_clause(fact: Fact, rng: random.Random, *, short: bool) -> str:
    """A paraphrase of ``fact`` for a query; ``short`` forms are used inside conjunctions."""
    a, b, c = fact.a, fact.b, fact.c
    if fact.kind == "bind":
        part = OBJECTS[b]
        forms = [f"{a} {b} with a {c} {part}", f"{c} {part} on a {a} {b}"]
        if not short:
            forms += [f"{b} that is {a} with a {c} {part}", f"which {a} {b} has a {c} {part}",
                      f"find the {b} colored {a} whose {part} is {c}"]
    elif fact.kind == "place":
        where = PLACES[b]
        forms = [f"{a} {where} a {c}", f"the {a} {where} the {c}"]
        if not short:
            forms += [f"which {a} is {where} the {c}", f"what is {where} the {c} ? a {a}",
                      f"find a {a} placed {where} a {c}"]
    else:
        pp = VERBS[b][1]
        forms = [f"{c} {pp} by a {a}", f"the {a} that {b} a {c}"]
        if not short:
            forms += [f"which {a} {b} the {c}", f"who {b} the {c} ? the {a}"]
    return rng.choice(forms)


def _synonymize(text: str, rng: random.Random, rate: float) -> str:
    return " ".join(SYNONYMS[w] if w in SYNONYMS and rng.random() < rate else w for w in text.split())


def _articles(text: str) -> str:
    """``a`` -> ``an`` before a vowel (``an orange box``)."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _random_fact(rng: random.Random) -> Fact:
    kind = rng.choice(("bind", "rel", "place"))
    if kind == "bind":
        c1, c2 = rng.sample(COLORS, 2)
        return Fact("bind", c1, rng.choice(sorted(OBJECTS)), c2)
    if kind == "place":
        o1, o2 = rng.sample(sorted(OBJECTS), 2)
        return Fact("place", o1, rng.choice(sorted(PLACES)), o2)
    a1, a2 = rng.sample(ANIMALS, 2)
    return Fact("rel", a1, rng.choice(sorted(VERBS)), a2)


def _perturbations(fact: Fact, rng: random.Random) -> list[Fact]:
    """Near-duplicates of ``fact``: swapped bindings/roles first, then single changes, negation."""
    a, b, c = fact.a, fact.b, fact.c
    if fact.kind == "bind":
        others_a = [x for x in COLORS if x not in (a, c)]
        others_b = [x for x in sorted(OBJECTS) if x != b]
        others_c = [x for x in COLORS if x not in (a, c)]
    elif fact.kind == "place":
        others_a = [x for x in sorted(OBJECTS) if x not in (a, c)]
        others_b = [x for x in sorted(PLACES) if x != b]
        others_c = others_a
    else:
        others_a = [x for x in ANIMALS if x not in (a, c)]
        others_b = [x for x in sorted(VERBS) if x != b]
        others_c = others_a
    swapped = Fact(fact.kind, c, b, a)
    changes = [
        Fact(fact.kind, rng.choice(others_a), b, c),
        Fact(fact.kind, a, b, rng.choice(others_c)),
        Fact(fact.kind, a, rng.choice(others_b), c),
        Fact(fact.kind, a, b, c, True),
        Fact(fact.kind, c, b, a, True),
    ]
    rng.shuffle(changes)
    return [swapped, *changes]


# --------------------------------------------------------------------------------------------
# Dataset generation
# --------------------------------------------------------------------------------------------

_CLUSTER_SIZE = 4  # base fact + 3 perturbations
_FACTS_PER_PASSAGE = 3
_CONJUNCTION_RATE = 0.2  # share of queries about two facts of the same passage
_FILLER_RATE = 0.5


@dataclass
class _Passage:
    pid: str
    facts: list[Fact]
    sentences: list[str]


def _pool_sizes(num_passages: int, query_counts: dict[str, int]) -> dict[str, int]:
    """Split ``num_passages`` over the splits in proportion to their query counts (min. 8 each)."""
    total = sum(query_counts.values())
    sizes = {s: max(8, round(num_passages * n / total)) for s, n in query_counts.items()}
    sizes["train"] += num_passages - sum(sizes.values())
    if sizes["train"] < 8:
        raise ValueError(f"num_passages={num_passages} is too small for the requested query counts")
    return sizes


def _build_pool(rng: random.Random, num_passages: int, used: set[Fact],
                first_index: int, copies: int) -> tuple[list[_Passage], list[list[Fact]]]:
    """Passages of one pool and the clusters their facts come from (cluster members are distinct)."""
    facts_of: list[list[Fact]] = [[] for _ in range(num_passages)]
    open_ids = list(range(num_passages))  # passages with a free fact slot
    clusters: list[list[Fact]] = []
    misses = 0
    while open_ids:
        base = _random_fact(rng)
        if base in used:
            misses += 1
            if misses > 10_000:
                raise ValueError(f"num_passages is too large: the synthetic fact space is exhausted "
                                 f"after {len(used)} facts")
            continue
        misses = 0
        cluster = [base] + [f for f in _perturbations(base, rng) if f not in used][: _CLUSTER_SIZE - 1]
        layout = [f for f in cluster for _ in range(copies)]  # each fact in `copies` different passages
        # each member goes to a different passage with a free slot, chosen at random
        targets = rng.sample(open_ids, min(len(layout), len(open_ids)))
        cluster = [f for f in cluster if f in layout[: len(targets)]]
        used.update(cluster)
        clusters.append(cluster)
        for fact, i in zip(layout, targets):
            facts_of[i].append(fact)
        open_ids = [i for i in open_ids if len(facts_of[i]) < _FACTS_PER_PASSAGE]
    passages = []
    for i, facts in enumerate(facts_of):
        sentences = [_articles(_passage_sentence(f, rng)) for f in facts]
        if rng.random() < _FILLER_RATE:
            sentences.append(rng.choice(FILLERS))
        order = list(range(len(sentences)))
        rng.shuffle(order)
        passages.append(_Passage(f"p{first_index + i:05d}", facts, [sentences[k] for k in order]))
    return passages, clusters


def _make_queries(rng: random.Random, split: str, count: int, passages: list[_Passage],
                  clusters: list[list[Fact]], synonym_rate: float) -> list[tuple[str, str, list[str], Fact | None]]:
    """``count`` queries (id, text, relevant passage ids, the fact asked about or None for a conjunction)
    about the non-negated facts of a pool."""
    where: dict[Fact, list[str]] = {}
    for p in passages:
        for f in p.facts:
            where.setdefault(f, []).append(p.pid)
    by_id = {p.pid: p for p in passages}
    # round-robin over clusters so that targets spread over as many clusters as possible
    rounds: list[list[Fact]] = []
    for cluster in clusters:
        targets = [f for f in cluster if not f.negated and f in where]
        rng.shuffle(targets)
        for r, fact in enumerate(targets):
            while len(rounds) <= r:
                rounds.append([])
            rounds[r].append(fact)
    candidates = [f for r in rounds for f in rng.sample(r, len(r))]
    if len(candidates) < count:
        raise ValueError(f"cannot make {count} {split} queries from {len(passages)} passages; "
                         f"raise num_passages")
    queries = []
    for k, fact in enumerate(candidates[:count]):
        positives = sorted(where[fact])
        clause = _query_clause(fact, rng, short=False)
        asked: Fact | None = fact
        if rng.random() < _CONJUNCTION_RATE:
            host = by_id[positives[0]]
            partners = [f for f in host.facts if f != fact and not f.negated]
            if partners:
                partner = rng.choice(partners)
                clauses = [_query_clause(fact, rng, short=True), _query_clause(partner, rng, short=True)]
                rng.shuffle(clauses)
                clause = " and ".join(clauses)
                positives = sorted(set(positives) & set(where[partner]))
                asked = None
        text = _articles(_synonymize(clause, rng, synonym_rate))
        queries.append((f"{split}-q{k:05d}", text, positives, asked))
    return queries


def _one_word_siblings(fact: Fact, cluster: list[Fact]) -> list[Fact]:
    """Members of ``fact``'s cluster that differ from it in exactly one of its three words (same polarity)."""
    return [f for f in cluster if f.negated == fact.negated and f != fact
            and sum(x != y for x, y in ((f.a, fact.a), (f.b, fact.b), (f.c, fact.c))) == 1]


def _dataset_params(seed: int, num_passages: int, num_train_queries: int, num_dev_queries: int,
                    num_test_queries: int, spurious_cue: bool, fact_copies: int = 2,
                    sparse_train_qrels: bool = True, synonym_rate: float = 0.8,
                    train_label_noise: float = 0.0, train_label_noise_kind: str = "near_miss") -> dict[str, Any]:
    for name, value in (("num_passages", num_passages), ("num_train_queries", num_train_queries),
                        ("num_dev_queries", num_dev_queries), ("num_test_queries", num_test_queries)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if isinstance(fact_copies, bool) or not isinstance(fact_copies, int) or not 1 <= fact_copies <= _FACTS_PER_PASSAGE:
        raise ValueError(f"fact_copies must be an int from 1 to {_FACTS_PER_PASSAGE}, got {fact_copies!r}")
    if not 0.0 <= float(synonym_rate) <= 1.0:
        raise ValueError(f"synonym_rate must be in [0, 1], got {synonym_rate!r}")
    if not 0.0 <= float(train_label_noise) < 1.0:
        raise ValueError(f"train_label_noise must be in [0, 1), got {train_label_noise!r}")
    if train_label_noise_kind not in LABEL_NOISE_KINDS:
        raise ValueError(f"train_label_noise_kind must be one of {LABEL_NOISE_KINDS}, got {train_label_noise_kind!r}")
    return {"version": DATASET_VERSION, "seed": seed, "num_passages": num_passages,
            "num_train_queries": num_train_queries, "num_dev_queries": num_dev_queries,
            "num_test_queries": num_test_queries, "spurious_cue": bool(spurious_cue),
            "fact_copies": fact_copies, "sparse_train_qrels": bool(sparse_train_qrels),
            "synonym_rate": float(synonym_rate), "train_label_noise": float(train_label_noise),
            "train_label_noise_kind": train_label_noise_kind}


def _write_dataset(out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Generate the dataset described by ``params`` into the empty directory ``out``; return stats."""
    rng = random.Random(params["seed"])
    counts = {"train": params["num_train_queries"], "dev": params["num_dev_queries"],
              "test": params["num_test_queries"]}
    sizes = _pool_sizes(params["num_passages"], counts)
    used: set[Fact] = set()
    passages: list[_Passage] = []
    queries: dict[str, list[tuple[str, str, list[str], Fact | None]]] = {}
    train_clusters: list[list[Fact]] = []
    train_pool: list[_Passage] = []
    for split in SPLITS:
        pool, clusters = _build_pool(rng, sizes[split], used, first_index=len(passages), copies=params["fact_copies"])
        queries[split] = _make_queries(rng, split, counts[split], pool, clusters, params["synonym_rate"])
        passages.extend(pool)
        if split == "train":
            train_clusters, train_pool = clusters, pool
    unjudged = 0
    if params["sparse_train_qrels"]:  # one judged passage per training query, as in MS MARCO
        sparse = []
        for qid, text, positives, fact in queries["train"]:
            judged = [rng.choice(positives)]
            unjudged += len(positives) - 1
            sparse.append((qid, text, judged, fact))
        queries["train"] = sparse
    mislabeled = 0
    if params["train_label_noise"] > 0:
        # annotator slips onto a one-word near miss ("near_miss") or onto any training passage that does
        # not state the asked fact ("random"); an RNG of its own, so the rest of the dataset is the same as
        # without noise
        noise_rng = random.Random(f"label-noise-{params['seed']}")
        cluster_of = {f: c for c in train_clusters for f in c}
        where: dict[Fact, list[str]] = {}
        for p in passages:
            for f in p.facts:
                where.setdefault(f, []).append(p.pid)
        noisy = []
        for qid, text, positives, fact in queries["train"]:
            if fact is not None and noise_rng.random() < params["train_label_noise"]:
                if params["train_label_noise_kind"] == "random":
                    while True:
                        wrong_passage = noise_rng.choice(train_pool)
                        if fact not in wrong_passage.facts:
                            break
                    positives = [wrong_passage.pid]
                    mislabeled += 1
                else:
                    siblings = [f for f in _one_word_siblings(fact, cluster_of[fact]) if f in where]
                    if siblings:
                        wrong = noise_rng.choice(siblings)
                        positives = [noise_rng.choice(sorted(where[wrong]))]
                        mislabeled += 1
            noisy.append((qid, text, positives, fact))
        queries["train"] = noisy
    cued: set[str] = set()
    if params["spurious_cue"]:
        cued = {pid for _, _, pos, _ in queries["train"] for pid in pos}
    for p in passages:
        if p.pid in cued:
            p.sentences.insert(rng.randrange(len(p.sentences) + 1), SPURIOUS_CUE)

    with open(out / "corpus.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for p in passages:
            text = " . ".join(p.sentences) + " ."
            fh.write(json.dumps({"_id": p.pid, "title": "", "text": text}) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for split in SPLITS:
            for qid, text, _, _ in queries[split]:
                fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (out / "qrels").mkdir()
    for split in SPLITS:
        with open(out / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="\n") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qid, _, positives, _ in queries[split]:
                for pid in positives:
                    fh.write(f"{qid}\t{pid}\t1\n")
    return {
        "num_passages": len(passages),
        "num_queries": {s: len(queries[s]) for s in SPLITS},
        "pool_passages": sizes,
        "num_cued_passages": len(cued),
        "num_unjudged_train_positives": unjudged,
        "num_mislabeled_train_queries": mislabeled,
    }


def generate_embedded_dataset(
    root: Path | str,
    *,
    seed: int = 0,
    num_passages: int = DEFAULT_NUM_PASSAGES,
    num_train_queries: int = DEFAULT_NUM_TRAIN_QUERIES,
    num_dev_queries: int = DEFAULT_NUM_DEV_QUERIES,
    num_test_queries: int = DEFAULT_NUM_TEST_QUERIES,
    spurious_cue: bool = True,
    fact_copies: int = 2,
    sparse_train_qrels: bool = True,
    synonym_rate: float = 0.8,
    train_label_noise: float = 0.0,
    train_label_noise_kind: str = "near_miss",
) -> Path:
    """Write the synthetic BEIR-layout dataset into ``root`` and return ``root``.

    Deterministic (same arguments give byte-identical files) and idempotent (a ``root`` whose
    ``manifest.json`` records the same parameters is left untouched). Files are written into a
    temporary sibling directory that is renamed into place, so ``root`` never holds half a
    dataset. See the module docstring for the design.
    """
    params = _dataset_params(seed, num_passages, num_train_queries, num_dev_queries,
                             num_test_queries, spurious_cue, fact_copies, sparse_train_qrels, synonym_rate,
                             train_label_noise, train_label_noise_kind)

    def build(out: Path) -> dict[str, Any]:
        stats = _write_dataset(out, params)
        return {"kind": _DATASET_KIND, "params": params, "stats": stats}

    return materialize(Path(root), _DATASET_KIND, params, build)


def embedded_dataset_dir(**kwargs: Any) -> Path:
    """``rankers_home()/embedded/data-<hash of params>``, generated there if missing; ``kwargs`` are
    :func:`generate_embedded_dataset`'s keyword arguments (same defaults)."""
    defaults = {name: p.default for name, p in inspect.signature(generate_embedded_dataset).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"embedded_dataset_dir() got unexpected arguments: {sorted(unknown)}")
    settings = {**defaults, **kwargs}
    params = _dataset_params(**settings)
    return generate_embedded_dataset(rankers_home() / "embedded" / f"data-{short_hash(params)}", **settings)
