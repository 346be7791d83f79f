"""Induction probes: name finding, two-token replacement under byte-level and BPE tokenizers,
the story split, and both probes against independent computations."""

import json
import math
import re

import pytest
import torch

import mtp_bench
from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.cli import main
from mtp_bench.evals import induction as I
from mtp_bench.reference_model.checkpoint import save_checkpoint
from mtp_bench.reference_model.model import ModelConfig, Transformer
from mtp_bench.reference_model.tokenizer import byte_tokenizer, train_bpe

pytestmark = pytest.mark.usefixtures("one_thread")

STORIES = [
    "Once upon a time, there was a girl named Lily. Lily liked to play. One day Lily met Tom. "
    "Tom said, \"Hi Lily!\" Lily and Tom played with Mom in the park.",
    "Ben had a red ball. He gave the ball to Sue. Sue smiled at Ben. Ben and Sue were happy.",
    "The sun was hot. The dog slept under a tree all day. It was a good day.",
    "Max saw a bird. The bird flew to Max and sang. Max laughed.",
]


@pytest.fixture(scope="module")
def stories_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("stories") / "stories.txt"
    # many stories so both splits are populated; numbered so their hashes differ
    body = [f"{s} The end {i}." for i in range(30) for s in STORIES]
    path.write_text("\n<|endoftext|>\n".join(body))
    return path


@pytest.fixture(scope="module")
def bpe():
    return train_bpe([s * 3 for s in STORIES] * 20, vocab_size=400)


def test_find_names_takes_repeated_mid_sentence_capitalised_words():
    assert I.find_names(STORIES[0]) == ["Lily", "Tom"]  # not Once, One, Mom (not names) nor Hi
    assert I.find_names(STORIES[1]) == ["Ben", "Sue"]
    assert I.find_names(STORIES[2]) == []  # The/It only at sentence starts
    assert I.find_names(STORIES[3]) == ["Max"]


@pytest.mark.parametrize("which", ["byte", "bpe"])
def test_replacement_names_are_two_tokens_at_known_positions(which, bpe):
    tok = byte_tokenizer() if which == "byte" else bpe
    pool = I.name_pool(tok, seed=0, size=64)
    assert all(len(I.name_tokens(tok, n)) == 2 for n in pool)
    if which == "byte":
        assert all(len(n) == 2 for n in pool)  # a byte each: two letters
    text, mapping = I.replace_names(STORIES[0], pool, seed=0)
    assert set(mapping) == {"Lily", "Tom"} and len(set(mapping.values())) == 2
    for old, new in mapping.items():  # consistent: every occurrence replaced, whole words only
        assert not re.search(rf"\b{old}\b", text)
        assert len(re.findall(rf"\b{new}\b", text)) == len(re.findall(rf"\b{old}\b", STORIES[0]))
    ids, occ = I.encode_with_names(tok, text, list(mapping.values()))
    assert ids == tok.encode(text)  # the tokenizer's own encoding of the whole story
    assert len(occ) == len(re.findall(r" (" + "|".join(mapping.values()) + r")\b", text))
    for pos, name, _ in occ:
        # independent check: the two tokens decode to the name, preceded by text ending in a space
        assert tok.decode(ids[pos:pos + 2]).strip() == name
        assert tok.decode(ids[:pos + 2]).endswith(" " + name)
    seen = [name for _, name, _ in occ]
    assert [r for _, _, r in occ] == [name in seen[:i] for i, name in enumerate(seen)]


@pytest.mark.slow
def test_replacement_is_seeded_and_per_story():
    tok = byte_tokenizer()
    pool = I.name_pool(tok, seed=0)
    assert I.replace_names(STORIES[1], pool, 0) == I.replace_names(STORIES[1], pool, 0)
    assert I.name_pool(tok, seed=0) != I.name_pool(tok, seed=1)
    alone = I.replace_names(STORIES[1], pool, 0)
    assert I.transform_stories([STORIES[0], STORIES[1]], tok, 0)[1] == alone


def test_train_and_eval_stories_are_disjoint(stories_file, tmp_path):
    stories = I.load_stories(stories_file)
    train, ev = I.split_stories(stories, 0.2)
    assert train and ev and not set(train) & set(ev) and len(train) + len(ev) == len(stories)
    out = tmp_path / "train.jsonl"
    assert main(["data", "induction", "--split", "train", "--source", str(stories_file),
                               "--eval-fraction", "0.2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(train)
    eval_texts = {t for t, _ in I.transform_stories(ev, byte_tokenizer(), 0)}
    assert not {r["text"] for r in rows} & eval_texts
    assert any(r["names"] for r in rows)


def _model(tmp_path, tok, n_future=1, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, max_seq_len=256, n_future=n_future)
    path = save_checkpoint(tmp_path / f"ckpt{n_future}-{seed}", Transformer(cfg), tok, {})
    return mtp_bench.load(path, device="cpu")


def test_names_probe_matches_one_story_at_a_time(tmp_path, stories_file):
    model = _model(tmp_path, byte_tokenizer())
    ev = I.Induction({"source": str(stories_file), "eval_fraction": 0.3, "n_stories": 12, "batch_size": 5})
    out = ev.run(model, RunContext(seed=0, work_dir=tmp_path))
    # reference: each scored story alone, unpadded, through the raw module
    stories = I.load_stories(stories_file)
    _, evs = I.split_stories(stories, 0.3)
    pool = I.name_pool(model.tokenizer, 0)
    hits1 = hits2 = total = scored = 0
    for story in evs:
        text, mp = I.replace_names(story, pool, 0)
        enc = I.encode_with_names(model.tokenizer, text, list(mp.values()))
        if enc is None or not any(r for _, _, r in enc[1]):
            continue
        if scored == 12:
            break
        scored += 1
        ids, occ = enc
        with torch.no_grad():
            logits = model.module(torch.tensor([ids]))[0, :, 0]  # (T, V)
        for p, _, rep in occ:
            if rep:
                hits1 += int(logits[p - 1].argmax()) == ids[p]
                hits2 += int(logits[p].argmax()) == ids[p + 1]
                total += 1
    n_scored = sum(r["n_occurrences"] for r in out.records)
    assert out.metrics["second_token_acc"].n == n_scored == total
    assert out.metrics["second_token_acc"].value == pytest.approx(hits2 / total)
    assert out.metrics["first_token_acc"].value == pytest.approx(hits1 / total)
    assert out.info["n_scored_stories"] == len(out.records) == scored == 12


def test_names_probe_without_stories_is_a_data_error(tmp_path):
    ev = I.Induction({"source": str(tmp_path / "missing.txt")})
    with pytest.raises(DataError):
        ev.run(_model(tmp_path, byte_tokenizer()), RunContext(seed=0, work_dir=tmp_path))


class _Copier:
    """Predicts token t+1 as the token L-1 positions back: perfect on a repeated block of L."""

    def __init__(self, L, vocab=259):
        self.L, self.max_seq_len, self.device = L, 1024, torch.device("cpu")
        self.tokenizer = byte_tokenizer()
        self.V = vocab

    def __call__(self, x, return_all_heads=False):
        B, T = x.shape
        logits = torch.zeros(B, T, 1, self.V)
        for t in range(self.L - 1, T):
            logits[torch.arange(B), t, 0, x[:, t - self.L + 1]] = 10.0
        return logits


def test_random_probe_scores_a_perfect_copier_and_a_uniform_model(tmp_path):
    ev = I.Induction({"probe": "random", "n_seqs": 6, "half_len": 10, "batch_size": 4})
    out = ev.run(_Copier(10), RunContext(seed=0, work_dir=tmp_path))
    assert out.metrics["copy_acc"].value == 1.0 and out.metrics["copy_acc"].n == 6
    assert out.metrics["copy_loss"].value == pytest.approx(math.log(math.exp(10) + 258) - 10, rel=1e-4)

    class Uniform(_Copier):
        def __call__(self, x, return_all_heads=False):
            return torch.zeros(x.shape[0], x.shape[1], 1, self.V)

    u = ev.run(Uniform(10), RunContext(seed=0, work_dir=tmp_path))
    assert u.metrics["copy_loss"].value == pytest.approx(math.log(259), rel=1e-5)
    assert u.metrics["first_copy_loss"].value == pytest.approx(math.log(259), rel=1e-5)


def test_random_probe_puts_bos_first_for_models_trained_with_it(tmp_path):
    class BosCopier(_Copier):
        add_bos = True
        seen = None

        def __call__(self, x, return_all_heads=False):
            BosCopier.seen = x
            return super().__call__(x, return_all_heads)

    ev = I.Induction({"probe": "random", "n_seqs": 3, "half_len": 8})
    out = ev.run(BosCopier(8), RunContext(seed=0, work_dir=tmp_path))
    assert (BosCopier.seen[:, 0] == byte_tokenizer().bos_id).all() and BosCopier.seen.shape[1] == 17
    assert out.metrics["copy_acc"].value == 1.0  # the copies are still scored, one position later


def test_random_probe_draws_printable_tokens_unless_told_otherwise(tmp_path):
    tok = byte_tokenizer()
    printable = I.random_probe_vocab(tok)
    assert "".join(tok.decode([i]) for i in printable) == "".join(chr(c) for c in range(33, 127))  # no space
    assert len(I.random_probe_vocab(tok, "all")) == 256  # every byte; BOS/EOS/pad are never drawn

    class Recorder(_Copier):
        seen = None

        def __call__(self, x, return_all_heads=False):
            Recorder.seen = x
            return super().__call__(x, return_all_heads)

    for vocab, allowed in (("printable", set(printable)), ("all", set(range(256)))):
        out = I.Induction({"probe": "random", "n_seqs": 4, "half_len": 64, "vocab": vocab}).run(
            Recorder(64), RunContext(seed=0, work_dir=tmp_path))
        drawn = set(Recorder.seen.flatten().tolist())
        assert drawn <= allowed and out.info["vocab"] == vocab and out.info["vocab_drawn"] == len(allowed)
    assert max(drawn) >= 128  # "all" does draw bytes no English text has
    with pytest.raises(ConfigError, match="vocab"):
        I.Induction({"probe": "random", "vocab": "ascii"})
