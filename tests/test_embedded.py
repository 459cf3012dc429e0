"""The embedded default: synthetic BEIR dataset + tiny local BERT backbone."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from rankers.embedded import dataset as embedded
from rankers.embedded.backbone import build_embedded_backbone, embedded_backbone_dir
from rankers.embedded.dataset import (
    MAX_PASSAGE_WORDS,
    MAX_QUERY_WORDS,
    SPURIOUS_CUE,
    SYNONYMS,
    VERBS,
    embedded_dataset_dir,
    generate_embedded_dataset,
)
from rankers.io import rankers_home

SMALL = dict(num_passages=300, num_train_queries=150, num_dev_queries=20, num_test_queries=30)
FILES = ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/dev.tsv", "qrels/test.tsv",
         "manifest.json")


def _read_beir(root: Path):
    corpus, queries, qrels = {}, {}, {}
    for line_no, line in enumerate((root / "corpus.jsonl").read_text("utf-8").splitlines(), 1):
        record = json.loads(line)
        assert set(record) == {"_id", "title", "text"}, f"corpus line {line_no}"
        assert all(isinstance(v, str) for v in record.values())
        assert record["_id"] not in corpus
        corpus[record["_id"]] = record["text"]
    for line in (root / "queries.jsonl").read_text("utf-8").splitlines():
        record = json.loads(line)
        assert set(record) == {"_id", "text"}
        assert record["_id"] not in queries
        queries[record["_id"]] = record["text"]
    for split in ("train", "dev", "test"):
        lines = (root / "qrels" / f"{split}.tsv").read_text("utf-8").splitlines()
        assert lines[0] == "query-id\tcorpus-id\tscore"
        qrels[split] = {}
        for line in lines[1:]:
            qid, pid, score = line.split("\t")
            assert int(score) == 1
            assert pid not in qrels[split].get(qid, {})
            qrels[split].setdefault(qid, {})[pid] = int(score)
    return corpus, queries, qrels


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return generate_embedded_dataset(tmp_path_factory.mktemp("emb") / "data", seed=0, **SMALL)


def test_deterministic_per_seed(tmp_path, small_dataset):
    again = generate_embedded_dataset(tmp_path / "again", seed=0, **SMALL)
    other = generate_embedded_dataset(tmp_path / "other", seed=1, **SMALL)
    for name in FILES:
        assert (again / name).read_bytes() == (small_dataset / name).read_bytes(), name
    assert (other / "corpus.jsonl").read_bytes() != (small_dataset / "corpus.jsonl").read_bytes()
    assert (other / "queries.jsonl").read_bytes() != (small_dataset / "queries.jsonl").read_bytes()


def test_idempotent_and_replaces_other_parameters(tmp_path):
    root = generate_embedded_dataset(tmp_path / "d", **SMALL)
    stamps = {name: (root / name).stat().st_mtime_ns for name in FILES}
    assert generate_embedded_dataset(tmp_path / "d", **SMALL) == root
    assert {name: (root / name).stat().st_mtime_ns for name in FILES} == stamps
    # other parameters in the same root: regenerated, manifest updated
    generate_embedded_dataset(tmp_path / "d", **{**SMALL, "num_test_queries": 31})
    assert json.loads((root / "manifest.json").read_text())["params"]["num_test_queries"] == 31
    assert len((root / "qrels" / "test.tsv").read_text().splitlines()) >= 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no staging leftovers


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        generate_embedded_dataset(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(out, params):
        (out / "corpus.jsonl").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_write_dataset", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_embedded_dataset(tmp_path / "d", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_beir_files_are_well_formed(small_dataset):
    corpus, queries, qrels = _read_beir(small_dataset)
    assert len(corpus) == SMALL["num_passages"]
    counts = {s: len(qrels[s]) for s in qrels}
    assert counts == {"train": 150, "dev": 20, "test": 30}
    split_ids = [set(qrels[s]) for s in ("train", "dev", "test")]
    assert not (split_ids[0] & split_ids[1] or split_ids[0] & split_ids[2] or split_ids[1] & split_ids[2])
    assert set().union(*split_ids) == set(queries)  # every query has a positive in one split
    for split in qrels.values():
        for qid, rel in split.items():
            assert qid in queries and rel and all(pid in corpus for pid in rel)
            assert len(rel) <= 2
    assert max(len(t.split()) for t in queries.values()) <= MAX_QUERY_WORDS
    assert max(len(t.split()) for t in corpus.values()) <= MAX_PASSAGE_WORDS
    manifest = json.loads((small_dataset / "manifest.json").read_text())
    assert manifest["params"] == {"version": embedded.DATASET_VERSION, "seed": 0, **SMALL,
                                  "spurious_cue": True, "fact_copies": 2, "sparse_train_qrels": True,
                                  "synonym_rate": 0.8, "train_label_noise": 0.0,
                                  "train_label_noise_kind": "near_miss"}


def _fact_sentences(text: str) -> list[str]:
    return [s.strip() for s in text.split(" . ") if s.strip(" .")]


def test_training_judgments_are_sparse_and_eval_judgments_complete(small_dataset, tmp_path):
    """Every fact is written into two passages; a training query has one of them judged (as in MS MARCO),
    a dev / test query has every passage holding its fact judged; fact_copies=1 has no unjudged copies."""
    corpus, _, qrels = _read_beir(small_dataset)
    assert all(len(rel) == 1 for rel in qrels["train"].values())
    held_out = [len(rel) for s in ("dev", "test") for rel in qrels[s].values()]
    assert sum(n == 2 for n in held_out) / len(held_out) >= 0.6  # single-fact queries: both copies
    manifest = json.loads((small_dataset / "manifest.json").read_text())
    assert manifest["stats"]["num_unjudged_train_positives"] >= 0.6 * SMALL["num_train_queries"]
    full = generate_embedded_dataset(tmp_path / "full", sparse_train_qrels=False, **SMALL)
    full_qrels = _read_beir(full)[2]["train"]
    assert sum(len(rel) == 2 for rel in full_qrels.values()) >= 0.6 * len(full_qrels)
    for qid, rel in qrels["train"].items():  # the judged passage is one of the relevant ones
        assert set(rel) <= set(full_qrels[qid])
    single = generate_embedded_dataset(tmp_path / "single", fact_copies=1, **SMALL)
    assert json.loads((single / "manifest.json").read_text())["stats"]["num_unjudged_train_positives"] == 0


def _noisy_against_clean(tmp_path, **noise):
    """A noisy dataset checked byte-identical to the clean one outside the training qrels; returns (corpus,
    queries, qrels, the full training qrels, the moved query ids), with the manifest's count checked."""
    noisy = generate_embedded_dataset(tmp_path / "noisy", spurious_cue=False, **noise, **SMALL)
    exact = generate_embedded_dataset(tmp_path / "exact", spurious_cue=False, **SMALL)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/dev.tsv", "qrels/test.tsv"):
        assert (noisy / name).read_bytes() == (exact / name).read_bytes(), name
    corpus, queries, qrels = _read_beir(noisy)
    clean = _read_beir(exact)[2]["train"]
    full = _read_beir(generate_embedded_dataset(tmp_path / "full", sparse_train_qrels=False, **SMALL))[2]["train"]
    moved = [q for q in qrels["train"] if qrels["train"][q] != clean[q]]
    assert json.loads((noisy / "manifest.json").read_text())["stats"]["num_mislabeled_train_queries"] == len(moved)
    return corpus, queries, qrels, full, moved


def test_train_label_noise_moves_judgments_to_one_word_near_misses(tmp_path):
    """With ``train_label_noise`` some training judgments land on a passage whose fact differs from the
    query's in one word (an annotator's slip); everything else -- corpus, queries, dev / test qrels -- is
    byte-identical to the noise-free dataset, and the count is recorded in the manifest."""
    corpus, queries, qrels, full, moved = _noisy_against_clean(tmp_path, train_label_noise=0.5)
    assert len(moved) >= 0.1 * SMALL["num_train_queries"]
    for qid in moved:
        (judged,) = qrels["train"][qid]
        assert judged not in full[qid]  # the judgment is wrong ...
        query_words = _content_words(queries[qid])
        # ... on a passage with a fact that differs from the query's in one slot: one word, or an object
        # and the part it comes with (``flag ... pole`` -> ``bed ... blanket``)
        one_slot = [{w} for w in query_words] + [{o, part} for o, part in embedded.OBJECTS.items()]
        assert any(query_words - _content_words(s) in one_slot for s in _fact_sentences(corpus[judged]))
    with pytest.raises(ValueError, match="train_label_noise"):
        generate_embedded_dataset(tmp_path / "bad", train_label_noise=1.0, **SMALL)


def test_random_label_noise_moves_judgments_off_the_fact(tmp_path):
    """``train_label_noise_kind="random"``: a slip lands on a training-pool passage that does not state the
    asked fact (no rule to learn from it); the relevant passages then sit unjudged. Corpus, queries and
    dev / test judgments stay byte-identical, and the manifest counts the moved judgments."""
    corpus, queries, qrels, full, moved = _noisy_against_clean(tmp_path, train_label_noise=0.5,
                                                               train_label_noise_kind="random")
    eval_pool = {pid for s in ("dev", "test") for rel in qrels[s].values() for pid in rel}
    assert len(moved) >= 0.25 * SMALL["num_train_queries"]
    near = 0
    for qid in moved:
        (judged,) = qrels["train"][qid]
        assert judged not in full[qid] and judged not in eval_pool and judged in corpus
        query_words = _content_words(queries[qid])
        one_slot = [{w} for w in query_words] + [{o, part} for o, part in embedded.OBJECTS.items()]
        near += any(query_words - _content_words(s) in one_slot for s in _fact_sentences(corpus[judged]))
    assert near < 0.5 * len(moved)  # mostly not a near miss: unlike the default kind, nothing systematic
    with pytest.raises(ValueError, match="train_label_noise_kind"):
        generate_embedded_dataset(tmp_path / "bad", train_label_noise=0.1, train_label_noise_kind="typo", **SMALL)


def test_spurious_cue_only_in_train_positives(small_dataset, tmp_path):
    corpus, _, qrels = _read_beir(small_dataset)
    train_pos = {p for rel in qrels["train"].values() for p in rel}
    held_out_pos = {p for s in ("dev", "test") for rel in qrels[s].values() for p in rel}
    assert all(SPURIOUS_CUE in corpus[p] for p in train_pos)
    assert not any(SPURIOUS_CUE in corpus[p] for p in held_out_pos)
    assert {p for p, text in corpus.items() if SPURIOUS_CUE in text} == train_pos
    clean = generate_embedded_dataset(tmp_path / "clean", spurious_cue=False, **SMALL)
    assert not any(SPURIOUS_CUE in t for t in _read_beir(clean)[0].values())


# Function words of the query / passage templates; the rest are "content" words.
_STOP = {"the", "a", "an", "that", "is", "with", "on", "which", "has", "find", "colored", "whose",
         "by", "who", "?", "and", ".", "was", "what", "placed", "to", "of"}


def _content_words(text: str) -> set[str]:
    """Content words, with query synonyms mapped back and verb forms lemmatised."""
    back = {v: k for k, v in SYNONYMS.items()}
    lemma = {form: base for past, (base, pp) in VERBS.items() for form in (past, base, pp)}
    return {lemma.get(back.get(w, w), back.get(w, w)) for w in text.split()} - _STOP


def test_hard_negatives_tie_with_positives_lexically(small_dataset):
    """For most queries some NON-relevant passage holds every content word that the query
    shares with its positive (swapped bindings / roles), so bag-of-words cannot separate them;
    a random passage almost never does."""
    corpus, queries, qrels = _read_beir(small_dataset)
    words = {pid: _content_words(t) for pid, t in corpus.items()}
    rng = random.Random(0)
    ties, random_ties, covered = [], [], []
    for split in qrels.values():
        for qid, rel in split.items():
            query = _content_words(queries[qid])
            shared = query & words[min(rel)]
            covered.append(len(shared) / len(query))
            ties.append(any(shared <= w for pid, w in words.items() if pid not in rel))
            random_ties.append(shared <= words[rng.choice(sorted(set(words) - set(rel)))])
    assert sum(covered) / len(covered) == 1.0  # the positive holds all the query's content words
    assert sum(ties) / len(ties) >= 0.5  # 0.605 here, ~0.8 at the default size
    assert sum(random_ties) / len(random_ties) <= 0.05


def test_embedded_dataset_dir_uses_rankers_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKERS_HOME", str(tmp_path / "home"))
    assert rankers_home() == tmp_path / "home"
    root = embedded_dataset_dir(**SMALL)
    assert root.parent == tmp_path / "home" / "embedded" and root.name.startswith("data-")
    assert embedded_dataset_dir(**SMALL) == root
    assert embedded_dataset_dir(**{**SMALL, "seed": 3}) != root
    monkeypatch.delenv("RANKERS_HOME")
    assert rankers_home() == Path.home() / ".cache" / "rankers"


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="num_passages"):
        generate_embedded_dataset(tmp_path / "a", num_passages=0)
    with pytest.raises(ValueError, match="num_passages"):
        generate_embedded_dataset(tmp_path / "b", num_passages=40, num_train_queries=500,
                                  num_dev_queries=5, num_test_queries=5)
    with pytest.raises(ValueError, match="item 2"):
        build_embedded_backbone(tmp_path / "c", texts=["ok", 3])
    with pytest.raises(ValueError, match="vocab_size"):
        build_embedded_backbone(tmp_path / "d", texts=["hello"], vocab_size=20)


TINY = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def small_texts(small_dataset) -> list[str]:
    corpus, queries, _ = _read_beir(small_dataset)
    return [*corpus.values(), *queries.values()]


def test_backbone_loads_like_a_hub_model(tmp_path, small_texts):
    from transformers import AutoModel, AutoTokenizer

    rng_before = torch.get_rng_state()
    root = build_embedded_backbone(tmp_path / "bert", texts=small_texts, **TINY)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert (root / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(root)
    model = AutoModel.from_pretrained(root).eval()
    assert model.config.vocab_size == len(tokenizer) and model.config.hidden_size == 32
    assert tokenizer.tokenize("The RED box") == ["the", "red", "box"]  # lower-cased whole words
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    batch = tokenizer(["which red box has a blue lid", "cat"], ["the red box has a blue lid .", "dog"],
                      padding=True, return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    assert ids[0] == tokenizer.cls_token_id and ids.count(tokenizer.sep_token_id) == 2
    assert tokenizer.unk_token_id not in ids
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], 32) and torch.isfinite(hidden).all()
    pairs = tokenizer(small_texts[-5:], small_texts[:5], padding=True)
    assert max(len(x) for x in pairs["input_ids"]) <= 64


def test_backbone_is_deterministic_and_idempotent(tmp_path, small_texts):
    from safetensors.torch import load_file

    a = build_embedded_backbone(tmp_path / "a", texts=small_texts, **TINY)
    b = build_embedded_backbone(tmp_path / "b", texts=iter(small_texts), **TINY)
    c = build_embedded_backbone(tmp_path / "c", texts=small_texts, seed=1, **TINY)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["embeddings.word_embeddings.weight"], wc["embeddings.word_embeddings.weight"])
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert build_embedded_backbone(tmp_path / "a", texts=small_texts, **TINY) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp


def test_embedded_backbone_dir(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("RANKERS_HOME", str(tmp_path))
    root = embedded_backbone_dir(**TINY)
    assert root.parent == tmp_path / "embedded" and root.name.startswith("bert-")
    assert embedded_backbone_dir(**TINY) == root
    # trained on the default dataset's texts: its words are whole tokens
    corpus_line = (embedded_dataset_dir() / "corpus.jsonl").read_text().splitlines()[0]
    text = json.loads(corpus_line)["text"]
    tokens = AutoTokenizer.from_pretrained(root).tokenize(text)
    assert tokens == text.split()
    with pytest.raises(TypeError, match="bogus"):
        embedded_backbone_dir(bogus=1)
