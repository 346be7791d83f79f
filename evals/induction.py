"""Induction probes (Gloeckle et al. 2024, Section 4.1 and Figure 7; Olsson et al. 2022).

Config field `probe` picks one of two probes.

`names` (the paper's): children's stories in which every character name is replaced, consistently
within a story, by a random name that is exactly two tokens under the evaluated model's tokenizer.
The second token of a name that already appeared earlier in the story can only be predicted by
looking back (induction); the first token of the name is reported beside it.

  Stories: a text file with stories separated by `<|endoftext|>` (config `source`; default
  `DATA_DIR/tinystories/TinyStories-train_first2MiB.txt`, else the hub's `roneneldan/TinyStories`
  validation split). Split (`split_stories`): a story is an evaluation story when the sha256 of
  its text, read as a number in [0, 1), is below `eval_fraction`; the rest are training stories
  (`mtp-bench data induction --split train` writes them, transformed the same way). The rule,
  the counts and the file's sha256 go into the result.
  Names found (`find_names`): a capitalised word [A-Z][a-z]+ is a character name when it occurs
  at least twice in the story, at least once mid-sentence (not after . ! ? a quote, a newline
  or at the start) and is not in `NOT_NAMES` (pronouns, titles like Mom, days, ...).
  Names drawn (`name_pool`, `replace_names`): candidates are random strings, an uppercase letter
  then 1..7 lowercase letters, uniform; a candidate is kept when " Name" is exactly two name
  tokens (`name_tokens`: the tokens of " Name", less a leading token that is the space alone, as
  byte-level tokenizers give). The pool is seeded by `seed`; each story's names are drawn from
  it, without repetition, by a generator seeded by (seed, story hash), so the transformation of
  a story never depends on the other stories.
  Tokenization: the story is encoded in pieces, each scored " Name" on its own, so the name's two
  tokens sit at known positions; a story whose piecewise encoding differs from encoding the
  whole text is dropped (counted in `info`), so the model sees its tokenizer's own encoding.
  Scored occurrences: " Name" (preceded by a space) after an earlier " Name" of the same name.
  Metrics (head 1, teacher forced, argmax): `second_token_acc` (the pure induction token),
  `first_token_acc`, `second_token_loss` (nats); each is a ratio over occurrences (n = number of
  occurrences) with a standard error clustered by story (occurrences in one story are not
  independent).

`random` (no data): sequences of `half_len` tokens drawn uniformly from the vocabulary, repeated
once. `vocab="printable"` (the default, since 1.1) draws from the tokens that decode on their own
to printable, non-blank text without a replacement character: a byte-level model trained on
English never sees most of its 256 byte values, and a token it has never seen cannot be copied
by any mechanism, so drawing them measured the embedding of unseen bytes, not induction (copy
accuracy stayed at chance, 1/256, on every trained byte model). `vocab="all"` draws from every
non-special token, as 1.0 did. `copy_acc` and `copy_loss` score head 1 on tokens 2..L of the second
copy (the first token of the copy cannot be known); `first_copy_loss` scores the first copy for
contrast (about log V for a model that has not memorised random strings). Samples = sequences.

Both probes put a BOS first for models trained with one (`mtp_bench.generation.uses_bos`).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtp_bench.api import EvalOutput, Evaluator, Metric, RunContext, register
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.api.hub import import_datasets
from mtp_bench.generation.engine import uses_bos
from mtp_bench.scoring.metrics import mean_metric, normal_ci95

STORY_SEPARATOR = "<|endoftext|>"
DEFAULT_FILE = ("tinystories", "TinyStories-train_first2MiB.txt")
PROBES = ("names", "random")
VOCABS = ("printable", "all")  # what the random probe draws from (module docstring)
# capitalised words that are not character names in children's stories
NOT_NAMES = frozenset("""
I A The An And But So Then When One Once Every Each This That These Those There Here It He She They We You His
Her Their Our My Your Its Mom Mommy Mum Mummy Mama Dad Daddy Papa Grandma Grandpa Granny Nana Mr Mrs Ms Miss Sir
God Santa Monday Tuesday Wednesday Thursday Friday Saturday Sunday Christmas Halloween Easter Oh Yes No Hi Hello
Bye Please Thank Thanks Wow Look Let Come Go What Why How Who Where Can Do Don Did Is Are Was Were Will Would
Sorry Okay Ok OK Sure After Before Now Today Tomorrow Soon Suddenly Finally At In On Of To For With From By As If
Not All Some Many Most Good Bad Big Little Baby Mister Aunt Uncle Auntie Teacher Doctor King Queen Prince Princess
""".split())
_WORD = re.compile(r"\b[A-Z][a-z]+\b")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ----------------------------------------------------------------------------- stories and split

def load_stories(path: str | Path) -> list[str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"induction: story file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"induction: cannot read {p}: {e}") from None
    stories = [s.strip() for s in text.split(STORY_SEPARATOR)]
    stories = [s for s in stories if s]
    if not stories:
        raise DataError(f"induction: no stories in {p} (separated by {STORY_SEPARATOR!r})")
    return stories


def story_bucket(story: str) -> float:
    """sha256 of the story's text as a number in [0, 1): the split key."""
    return int.from_bytes(hashlib.sha256(story.encode("utf-8")).digest()[:8], "big") / 2**64


def split_stories(stories: list[str], eval_fraction: float) -> tuple[list[str], list[str]]:
    """(train, eval): eval holds the stories whose bucket is below eval_fraction."""
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    train = [s for s in stories if story_bucket(s) >= eval_fraction]
    ev = [s for s in stories if story_bucket(s) < eval_fraction]
    return train, ev


def resolve_source(source: str, data_dir: Path | None) -> tuple[list[str], str]:
    """Stories and a description of where they came from."""
    if source:
        return load_stories(source), str(Path(source).expanduser())
    if data_dir is not None and (data_dir / DEFAULT_FILE[0] / DEFAULT_FILE[1]).is_file():
        path = data_dir / DEFAULT_FILE[0] / DEFAULT_FILE[1]
        return load_stories(path), str(path)
    datasets = import_datasets("induction's stories", "/".join(DEFAULT_FILE) + " (or induction.source=FILE)")
    try:
        ds = datasets.load_dataset("roneneldan/TinyStories", split="validation")
    except Exception as e:  # offline, missing package, hub error
        raise DataError("induction: no stories: set induction.source=FILE, or --data-dir with "
                        f"{'/'.join(DEFAULT_FILE)}, or go online for roneneldan/TinyStories ({type(e).__name__})") from None
    return [s.strip() for s in ds["text"] if s.strip()], "hf:roneneldan/TinyStories/validation"


# ----------------------------------------------------------------------------- names

def _sentence_start(story: str, i: int) -> bool:
    j = i - 1
    while j >= 0 and story[j] == " ":
        j -= 1
    return j < 0 or story[j] in ".!?\"'\n\u201c\u201d"


def find_names(story: str) -> list[str]:
    """Character names of a story (rule in the module docstring), in order of first appearance."""
    counts: dict[str, int] = {}
    mid: set[str] = set()
    for mt in _WORD.finditer(story):
        w = mt.group()
        if w in NOT_NAMES:
            continue
        counts[w] = counts.get(w, 0) + 1
        if not _sentence_start(story, mt.start()):
            mid.add(w)
    return [w for w in counts if counts[w] >= 2 and w in mid]


def name_tokens(tokenizer, name: str) -> list[int]:
    """The tokens of a name as it appears after a space: encode(" Name") less a leading token
    that is the space alone."""
    full = list(tokenizer.encode(" " + name))
    sp = list(tokenizer.encode(" "))
    if len(sp) == 1 and len(full) > 1 and full[0] == sp[0]:
        return full[1:]
    return full


def name_pool(tokenizer, seed: int, size: int = 256, max_tries: int = 200_000) -> list[str]:
    """Up to `size` distinct random names that are exactly two tokens under `tokenizer`."""
    rng = np.random.default_rng([int(seed), 7])
    pool: list[str] = []
    seen: set[str] = set()
    for _ in range(max_tries):
        n = int(rng.integers(2, 9))
        letters = rng.integers(0, 26, size=n)
        cand = _LETTERS[letters[0]].upper() + "".join(_LETTERS[i] for i in letters[1:])
        if cand in seen or cand in NOT_NAMES:
            continue
        seen.add(cand)
        if len(name_tokens(tokenizer, cand)) == 2:
            pool.append(cand)
            if len(pool) >= size:
                break
    if len(pool) < 8:
        raise DataError(f"induction: found only {len(pool)} two-token names for this tokenizer")
    return pool


def replace_names(story: str, pool: list[str], seed: int) -> tuple[str, dict[str, str]]:
    """The story with each character name replaced by a name from the pool (consistently, whole
    words only), and the mapping. Replacements are distinct and do not occur in the story."""
    names = find_names(story)
    if not names:
        return story, {}
    rng = np.random.default_rng([int(seed), int(story_bucket(story) * 2**52)])
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", story)}
    choices = [p for p in pool if p.lower() not in words]
    if len(choices) < len(names):
        return story, {}
    picked = rng.choice(len(choices), size=len(names), replace=False)
    mapping = {n: choices[int(i)] for n, i in zip(names, picked)}
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
    return pattern.sub(lambda mt: mapping[mt.group()], story), mapping


def encode_with_names(tokenizer, story: str, names: list[str]) -> tuple[list[int], list[tuple[int, str, bool]]] | None:
    """Token ids of `story` and, for every " Name" occurrence of a name in `names`, (position of
    its first token, name, whether " Name" appeared before). None when the piecewise encoding is
    not the tokenizer's own encoding of the whole text, or a name is not two tokens."""
    if not names:
        return None
    pattern = re.compile(r" (" + "|".join(re.escape(n) for n in names) + r")\b")
    ids: list[int] = []
    occ: list[tuple[int, str, bool]] = []
    seen: set[str] = set()
    pos = 0
    sp = list(tokenizer.encode(" "))
    for mt in pattern.finditer(story):
        ids.extend(tokenizer.encode(story[pos:mt.start()]) if mt.start() > pos else [])
        nt = name_tokens(tokenizer, mt.group(1))
        if len(nt) != 2:
            return None
        full = list(tokenizer.encode(mt.group()))
        if full != nt:  # the space is a token of its own
            if full != sp + nt:
                return None
            ids.extend(sp)
        occ.append((len(ids), mt.group(1), mt.group(1) in seen))
        ids.extend(nt)
        seen.add(mt.group(1))
        pos = mt.end()
    ids.extend(tokenizer.encode(story[pos:]) if pos < len(story) else [])
    if ids != list(tokenizer.encode(story)):
        return None
    return ids, occ


def transform_stories(stories: list[str], tokenizer, seed: int, pool_size: int = 256) -> list[tuple[str, dict[str, str]]]:
    """Every story with its names replaced (the training corpus and the probe share this)."""
    pool = name_pool(tokenizer, seed, pool_size)
    return [replace_names(s, pool, seed) for s in stories]


def clustered_ratio(hits: list[float], counts: list[int], higher_is_better: bool) -> Metric:
    """sum(hits) / sum(counts) with a standard error clustered by unit (the ratio estimator's
    linearised variance), n = sum(counts).

    >>> m = clustered_ratio([1, 1], [2, 2], True)
    >>> (m.value, m.stderr, m.n)
    (0.5, 0.0, 4)
    """
    total = sum(counts)
    if total == 0:
        raise ValueError("clustered_ratio of no occurrences")
    r = math.fsum(hits) / total
    k = len(counts)
    if k < 2:
        return Metric(value=r, stderr=None, ci95=None, n=total, higher_is_better=higher_is_better)
    nbar = total / k
    var = math.fsum((h - r * c) ** 2 for h, c in zip(hits, counts)) / (k * (k - 1))
    se = math.sqrt(var) / nbar
    return Metric(value=r, stderr=se, ci95=normal_ci95(r, se), n=total, higher_is_better=higher_is_better)


# ----------------------------------------------------------------------------- evaluator

@register
class Induction(Evaluator):
    name = "induction"
    version = "1.1"  # 1.1: the random probe draws printable tokens by default (`vocab`)
    suites = ("synthetic",)
    description = "induction: second token of a repeated two-token name in stories (names) or repeated random tokens"
    caption = ("names: head-1 accuracy on the 2nd token of a repeated two-token name (pure induction); "
               "random: accuracy on the second copy of a random token sequence")

    @dataclass
    class Config:
        probe: str = "names"  # "names" (stories with replaced names) | "random" (no data)
        source: str = ""  # story file (stories split on <|endoftext|>); "" = DATA_DIR/tinystories/..., else the hub
        eval_fraction: float = 0.1  # share of stories held out for evaluation (by hash of their text)
        n_stories: int = 500  # evaluation stories scored (the first in file order; --limit caps it)
        seed: int = 0  # name pool and per-story draws (names); token draws (random)
        pool_size: int = 256  # two-token names in the pool
        n_seqs: int = 64  # random: sequences (--limit caps it)
        half_len: int = 64  # random: tokens per copy (capped at max_seq_len // 2)
        vocab: str = "printable"  # random: "printable" (tokens decoding to printable text) | "all" (non-special)
        batch_size: int = 16  # sequences per forward pass

        def __post_init__(self) -> None:
            if self.probe not in PROBES:
                raise ConfigError(f"induction: probe={self.probe!r} is not one of: {', '.join(PROBES)}")
            for f in ("n_stories", "n_seqs", "batch_size", "pool_size"):
                if getattr(self, f) < 1:
                    raise ConfigError(f"induction: {f} must be >= 1, got {getattr(self, f)}")
            if self.vocab not in VOCABS:
                raise ConfigError(f"induction: vocab={self.vocab!r} is not one of: {', '.join(VOCABS)}")
            if self.half_len < 2:
                raise ConfigError(f"induction: half_len must be >= 2, got {self.half_len}")

    def run(self, model, ctx: RunContext) -> EvalOutput:
        return self._names(model, ctx) if self.config.probe == "names" else self._random(model, ctx)

    # -- names ---------------------------------------------------------------------------

    def _names(self, model, ctx: RunContext) -> EvalOutput:
        cfg = self.config
        tok = model.tokenizer
        # 1) held-out stories, names replaced
        stories, where = resolve_source(cfg.source, ctx.data_dir)
        train, ev = split_stories(stories, cfg.eval_fraction)
        if not ev:
            raise DataError(f"induction: no evaluation story in {where} at eval_fraction={cfg.eval_fraction}")
        pool = name_pool(tok, cfg.seed, cfg.pool_size)
        bos = [tok.bos_id] if uses_bos(model) else []  # models trained with BOS get it first
        max_len = int(model.max_seq_len)
        limit = cfg.n_stories if ctx.limit is None else min(cfg.n_stories, ctx.limit)
        items, dropped, no_repeat = [], 0, 0
        for k, story in enumerate(ev):
            if len(items) >= limit:
                break
            text, mapping = replace_names(story, pool, cfg.seed)
            enc = encode_with_names(tok, text, list(mapping.values()))
            if enc is None:
                dropped += bool(mapping)
                no_repeat += not mapping
                continue
            ids, occ = enc
            ids = (bos + ids)[:max_len]
            scored = [(p + len(bos), nm) for p, nm, rep in occ if rep and 1 <= p + len(bos) and p + len(bos) + 1 < len(ids)]
            if not scored:
                no_repeat += 1
                continue
            items.append((f"story-{k}", ids, scored))
        if not items:
            raise DataError(f"induction: no evaluation story in {where} has a repeated two-token name")
        # 2) teacher-forced head-1 predictions at the two name positions
        records = []
        with ctx.progress(f"induction [{ctx.role}]", len(items)) as bar, torch.inference_mode():
            for start in range(0, len(items), cfg.batch_size):
                chunk = items[start:start + cfg.batch_size]
                T = max(len(ids) for _, ids, _ in chunk)
                pad = tok.pad_id if tok.pad_id is not None else 0
                x = torch.full((len(chunk), T), pad, dtype=torch.long)
                for b, (_, ids, _) in enumerate(chunk):
                    x[b, :len(ids)] = torch.tensor(ids)  # right padding: causal attention never sees it
                logp = torch.log_softmax(model(x.to(model.device))[:, :, 0].float(), dim=-1).cpu()  # (B, T, V)
                for b, (sid, ids, scored) in enumerate(chunk):
                    c1 = c2 = 0
                    loss2 = 0.0
                    for p, _ in scored:
                        c1 += int(logp[b, p - 1].argmax()) == ids[p]
                        c2 += int(logp[b, p].argmax()) == ids[p + 1]
                        loss2 += -float(logp[b, p, ids[p + 1]])
                    records.append({"sample_id": sid, "n_occurrences": len(scored), "first_correct": c1,
                                    "second_correct": c2, "second_loss_sum": loss2, "n_tokens": len(ids),
                                    "names": sorted({nm for _, nm in scored})})
                bar.advance(len(chunk))
        # 3) ratios over occurrences, clustered by story
        counts = [r["n_occurrences"] for r in records]
        metrics = {
            "second_token_acc": clustered_ratio([r["second_correct"] for r in records], counts, True),
            "first_token_acc": clustered_ratio([r["first_correct"] for r in records], counts, True),
            "second_token_loss": clustered_ratio([r["second_loss_sum"] for r in records], counts, False),
        }
        info = {"probe": "names", "source": where, "source_sha256": _sha_of(stories),
                "split": f"sha256(story) < {cfg.eval_fraction} -> eval", "n_stories_total": len(stories),
                "n_train_stories": len(train), "n_eval_stories": len(ev), "n_scored_stories": len(records),
                "n_dropped_noncanonical": dropped, "n_skipped_no_repeat": no_repeat, "pool_size": len(pool),
                "pool_sample": pool[:8], "seed": cfg.seed}
        return EvalOutput(records=records, metrics=metrics, info=info)

    # -- random --------------------------------------------------------------------------

    def _random(self, model, ctx: RunContext) -> EvalOutput:
        cfg = self.config
        tok = model.tokenizer
        o = 1 if uses_bos(model) else 0  # a BOS first for models trained with it
        L = min(cfg.half_len, (int(model.max_seq_len) - o) // 2)
        if L < 2:
            raise ConfigError(f"induction: max_seq_len={model.max_seq_len} leaves no room for two copies")
        vocab = np.array(random_probe_vocab(tok, cfg.vocab), dtype=np.int64)
        if len(vocab) < 2:
            raise ConfigError(f"induction: the tokenizer has {len(vocab)} {cfg.vocab} tokens to draw from")
        n = cfg.n_seqs if ctx.limit is None else min(cfg.n_seqs, ctx.limit)
        rng = np.random.default_rng([int(cfg.seed), 11])
        halves = vocab[rng.integers(0, len(vocab), size=(n, L))]  # (N, L)
        seqs = torch.from_numpy(np.concatenate([np.full((n, o), tok.bos_id or 0, dtype=np.int64), halves, halves],
                                               axis=1))  # (N, o + 2L)
        records = []
        with ctx.progress(f"induction random [{ctx.role}]", n) as bar, torch.inference_mode():
            for start in range(0, n, cfg.batch_size):
                x = seqs[start:start + cfg.batch_size]
                logp = torch.log_softmax(model(x.to(model.device))[:, :, 0].float(), dim=-1).cpu()  # (B, 2L, V)
                tgt = x[:, 1:]  # (B, 2L-1): position t predicts t+1
                lp = logp[:, :-1].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (B, 2L-1)
                hit = logp[:, :-1].argmax(-1) == tgt
                second = slice(o + L, o + 2 * L - 1)  # predicting copy tokens 2..L
                first = slice(o, o + L - 1)
                for b in range(x.shape[0]):
                    records.append({"sample_id": f"seq-{start + b}",
                                    "copy_acc": float(hit[b, second].float().mean()),
                                    "copy_loss": float(-lp[b, second].mean()),
                                    "first_copy_loss": float(-lp[b, first].mean())})
                bar.advance(x.shape[0])
        metrics = {"copy_acc": mean_metric([r["copy_acc"] for r in records], True),
                   "copy_loss": mean_metric([r["copy_loss"] for r in records], False),
                   "first_copy_loss": mean_metric([r["first_copy_loss"] for r in records], False)}
        info = {"probe": "random", "half_len": L, "n_seqs": n, "vocab": cfg.vocab, "vocab_drawn": int(len(vocab)),
                "seed": cfg.seed}
        return EvalOutput(records=records, metrics=metrics, info=info)


def random_probe_vocab(tok, which: str = "printable") -> list[int]:
    """Token ids the random probe draws from: every non-special id ("all"), or those that decode on
    their own to non-blank printable text without U+FFFD ("printable"; module docstring)."""
    special = {i for i in (tok.bos_id, tok.eos_id, tok.pad_id) if i is not None}
    ids = [i for i in range(int(tok.vocab_size)) if i not in special]
    if which == "all":
        return ids
    out = []
    for i in ids:
        text = tok.decode([i])
        if text.strip() and text.isprintable() and "\ufffd" not in text:
            out.append(i)
    return out


def _sha_of(stories: list[str]) -> str:
    h = hashlib.sha256()
    for s in stories:
        h.update(hashlib.sha256(s.encode("utf-8")).digest())
    return h.hexdigest()
