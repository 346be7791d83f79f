"""`mtp-bench repro FINDING`: train the compared arms from scratch, evaluate them, decide a verdict.

    mtp-bench repro induction                       # n=1 vs n=2 on stories with two-token names
    mtp-bench repro arithmetic --budget smoke       # n=1 vs n=2 vs n=4 on F7[X]/(X^5); pipeline check
    mtp-bench repro arithmetic --budget full --device cuda
    mtp-bench repro speedup                         # an n=4 model drafting with k = 1..4 heads (Table S2)
    mtp-bench repro memory                          # peak training memory, n=1 vs n=4 sequential vs naive

Findings (Gloeckle et al. 2024, Section 4, Section 2, Table S2):
  induction   2-token prediction improves induction in small models (Figure 7): arms n=1 and n=2,
              metric induction.second_token_acc (names probe), the random-token probe beside it
  arithmetic  multi-token prediction improves polynomial arithmetic (Figure 8): arms n=1, 2, 4,
              metric arithmetic.acc_in_domain (m = 1..5), out of domain beside it
  speedup     self-speculative decoding (Table S2): one n=4 arm trained on TinyStories, decoded by
              `specdec` on held-out stories with k = 1..4 heads: tau, speedup, acceptance per k
  memory      the sequential backward (Section 2, Figure 2): `bench train`'s worker measures the
              training step's peak memory and time of n=1, n=4 sequential and n=4 naive

A run, step by step:
  1) data: the training corpus as JSONL in the work dir (the names-replaced training stories;
     arithmetic problems m = 1..5 with no test prompt among them, which is checked)
  2) for each arm and seed: train with the project's trainer (`reference_model.train.train`);
     arms are compute matched as in the paper: the same total depth (trunk + heads) and the
     same data, steps and batch; only n_future differs. A finished checkpoint is reused and an
     interrupted one resumed, so a killed repro rerun with the same arguments continues.
  3) evaluate every checkpoint with the evaluators (results cached in the work dir)
  4) the verdict, by `decide` (the rule below, fixed before any run was looked at)
  5) the result directory: result.json, plot.png; the console says the verdict in a sentence

The verdict rule (`decide`, constants in `RULES`). For each MTP arm against the n=1 arm:
  gap    = mean over seeds of the MTP arm's metric - the same for n=1
  spread = the larger of the two arms' seed ranges (max - min over seeds)
  paired = 95% interval of the metric's difference over evaluation samples, both arms averaged
           over seeds, samples paired (same stories / problems)
  better  if gap > spread and paired excludes 0 from below
  worse   if -gap > spread and paired excludes 0 from above
  no_gain if not better and the paired interval's upper end is below `min_effect`
           (an improvement as large as min_effect is ruled out)
Verdict: `inconclusive` if no arm reaches `floor` (the models did not learn the task: nothing
can be said); else `reproduced` if every MTP arm is better; `not_reproduced` if every MTP arm is
worse or no_gain; else `inconclusive`. The smoke budget proves the pipeline only: its verdict is
always `inconclusive` and says so (the rule's outcome is recorded beside it).

speedup and memory compare no arms, so they have rules of their own (`decide_speedup`,
`decide_memory`, constants in `RULES`), also fixed before any run was looked at:

speedup. One n=4 arm, trained like the arms above (byte tokenizer, the TinyStories stories whose
sha256 bucket is >= 0.1, as `induction` splits them); `specdec` decodes the held-out stories'
openings (bucket < 0.1: never trained on) greedily, k = 1..4 heads used, lossless checked. Per k,
over seeds: the mean, the seed spread (max - min) and a 95% interval of the mean (each seed's
prompt-level standard error, combined as sqrt(sum se^2) / seeds).
  degenerate  the mean degenerate_fraction (outputs ending in a loop of <= 2 distinct tokens, which
              any drafter predicts) is above `max_degenerate`
  tau_rises   tau(4) - tau(2) > the larger seed spread of the two, and tau(2) - 1 > tau(2)'s spread
  faster      at the k > 1 with the largest mean speedup, the interval's lower end is above 1 and
              every seed's speedup is above 1
Verdict: `inconclusive` if degenerate; else `reproduced` if tau_rises and faster; `not_reproduced`
if the mean speedup at every k > 1 is <= 1; else `inconclusive`.

memory. `bench train`'s worker (one subprocess a measurement: n=1, n=4 sequential, n=4 naive,
`repeats` rounds, interleaved) at a size where the logits dominate (vocabulary >> dim); step
memory = the step's peak minus weights, optimizer state and batch. m1, mseq, mnaive = means over
repeats; spread = the largest max - min over repeats of the three.
  discriminates  mnaive - m1 > max(spread, tolerance * m1): at this size the naive backward costs
                 clearly more than n=1, so the test can tell the two backwards apart
Verdict: `inconclusive` if a peak could not be reset (CPU, /proc/self/clear_refs) or not
discriminates; else `reproduced` if mseq <= (1 + tolerance) * m1; `not_reproduced` if
mseq - m1 >= mnaive - m1 - spread (the sequential backward saves nothing beyond the noise); else
`inconclusive`. Step-time ratios are recorded beside the verdict, not part of it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtp_bench.api import registry
from mtp_bench.api.atomic import atomic_write_bytes
from mtp_bench.api.errors import ConfigError, DataError, UserError
from mtp_bench.api.paths import cache_root
from mtp_bench.evaluation import evaluate
from mtp_bench.models.loader import load as load_model
from mtp_bench.reporting.results import atomic_write_json

SCHEMA = "mtp-bench-repro/1"
BUDGETS = ("smoke", "quick", "full")
VERDICTS = ("reproduced", "not_reproduced", "inconclusive")

# fixed before any run: see the module docstring
RULES: dict[str, dict[str, float]] = {
    # names probe, byte-level names: chance on the 2nd letter of a name is about 1/26
    "induction": {"floor": 0.10, "min_effect": 0.05},
    # exact match of 5 coefficients: chance is 7^-5
    "arithmetic": {"floor": 0.05, "min_effect": 0.02},
    # a model looping on one or two tokens makes any drafter look good (this project's shipped
    # models did): above half such outputs, tau and speedup say nothing about the heads
    "speedup": {"max_degenerate": 0.5},
    # n=4 sequential within 15% of n=1's step memory (`bench train`'s target)
    "memory": {"tolerance": 0.15},
}


@dataclass(frozen=True)
class Finding:
    name: str
    claim: str
    arms: tuple[int, ...]  # n_future of each arm; the first is the next-token baseline
    evaluator: str
    metric: str  # the primary metric of `evaluator`
    secondary: tuple[str, ...]  # evaluator.metric shown beside it


FINDINGS: dict[str, Finding] = {
    "induction": Finding("induction", "2-token prediction improves induction in small models (paper Fig. 7)",
                         (1, 2), "induction", "second_token_acc",
                         ("induction.first_token_acc", "induction_random.copy_acc")),
    "arithmetic": Finding("arithmetic", "multi-token prediction improves polynomial arithmetic (paper Fig. 8)",
                          (1, 2, 4), "arithmetic", "acc_in_domain", ("arithmetic.acc_out_of_domain",)),
    "speedup": Finding("speedup", "an n=4 model decodes faster by drafting with its own heads; tau and speedup "
                       "rise with heads used (paper Table S2)", (4,), "specdec", "speedup",
                       ("specdec.tau", "specdec.alpha_cond_2", "specdec.degenerate_fraction")),
    "memory": Finding("memory", "the sequential backward trains an n=4 model in about n=1's memory; the naive "
                      "one does not (paper Section 2, Fig. 2)", (1, 4), "bench train", "step_mem_bytes",
                      ("median_step_s",)),
}

_SMALL = dict(multiple_of=16, eval_interval=0, log_interval=50, tokenizer="byte", val_fraction=0.02)
# specdec as `repro speedup` runs it: greedy (lossless checked), batch 1, on the held-out stories'
# openings (prompt_set text, source = the work dir's prompt file); no HF peers (not the claim)
_SPECDEC = dict(prompt_set="text", temperature=0.0, batch_size=1, warmup=1, peers=False)
# Budgets, fixed before any run. Per finding: train (TrainConfig overrides), eval (evaluator
# config), data (corpus sizes), seeds. quick fits 30 minutes on 2 idle CPU cores for each finding
# (measured idle: 17k tokens/s for the induction arms, 27k for the arithmetic ones).
# History, stated because the verdicts depend on it: quick was first cut, for time only, to
# 250 steps of dim 96 / 64 (the shared machine then ran 7-11 jobs on 2 cores). That run ended
# `inconclusive` because no arm learned either task (every arithmetic arm answered "0 0 0 0 0";
# names 2nd-token accuracy 0.04). quick was then set back to what 30 idle minutes allow, with
# the rule unchanged: induction dim 128 / 512-byte windows / 500 steps (4.1M tokens an arm),
# arithmetic dim 96 / 800 steps (3.3M tokens) on 10,000 training problems per m.
PLANS: dict[str, dict[str, dict[str, Any]]] = {
    "induction": {
        "smoke": {"seeds": (0, 1), "data": {"max_train_stories": 80},
                  "train": dict(_SMALL, dim=32, n_layers=3, n_heads=2, seq_len=64, batch_size=4, max_steps=4,
                                lr=3e-3, warmup_steps=1, eval_batches=1, ckpt_interval=2),
                  "eval": {"n_stories": 20}, "eval_random": {"n_seqs": 8, "half_len": 16}},
        "quick": {"seeds": (0, 1), "data": {"max_train_stories": 0},
                  "train": dict(_SMALL, dim=128, n_layers=4, n_heads=4, multiple_of=32, seq_len=512, batch_size=16,
                                max_steps=500, lr=2e-3, warmup_steps=50, eval_batches=4, ckpt_interval=100),
                  "eval": {"n_stories": 500}, "eval_random": {"n_seqs": 64, "half_len": 64}},
        "full": {"seeds": (0, 1, 2), "data": {"max_train_stories": 0},
                 "train": dict(_SMALL, dim=256, n_layers=6, n_heads=8, multiple_of=64, seq_len=512, batch_size=32,
                               max_steps=4000, lr=1e-3, warmup_steps=200, eval_batches=8, ckpt_interval=500),
                 "eval": {"n_stories": 2000}, "eval_random": {"n_seqs": 256, "half_len": 128}},
    },
    "arithmetic": {
        "smoke": {"seeds": (0, 1), "data": {"n_train_per_m": 60},
                  "train": dict(_SMALL, dim=32, n_layers=5, n_heads=2, seq_len=64, batch_size=4, max_steps=4,
                                lr=3e-3, warmup_steps=1, eval_batches=1, ckpt_interval=2),
                  "eval": {"n_per_m": 4, "batch_size": 64}},
        "quick": {"seeds": (0, 1), "data": {"n_train_per_m": 10_000},
                  "train": dict(_SMALL, dim=96, n_layers=6, n_heads=4, multiple_of=32, seq_len=256, batch_size=16,
                                max_steps=800, lr=2e-3, warmup_steps=50, eval_batches=4, ckpt_interval=100),
                  "eval": {"n_per_m": 200, "batch_size": 100}},
        "full": {"seeds": (0, 1, 2), "data": {"n_train_per_m": 100_000},
                 "train": dict(_SMALL, dim=384, n_layers=8, n_heads=6, multiple_of=64, seq_len=256, batch_size=64,
                               max_steps=20_000, lr=1e-3, warmup_steps=500, eval_batches=8, ckpt_interval=1000),
                 "eval": {"n_per_m": 2000, "batch_size": 256}},
    },
    # speedup: one n=4 arm (trunk n_layers - 4, then 4 one-block heads); ks = heads used by specdec.
    # Prompts: up to 200 bytes, so seq_len >= 200 + max_new_tokens + 4 keeps them whole (smoke cuts
    # them). The 2 MiB sample holds 1.8M training bytes: quick is 8.2M tokens (~4.5 epochs; measured
    # 0.72x the induction arms' throughput, so ~12k tokens/s, ~11 min a seed on an idle core), full
    # 25M (~13 epochs; pass --source with a larger TinyStories file for more data).
    "speedup": {
        "smoke": {"seeds": (0, 1), "ks": (1, 2, 3, 4), "data": {"max_train_stories": 80},
                  "train": dict(_SMALL, dim=32, n_layers=5, n_heads=2, seq_len=128, batch_size=4, max_steps=4,
                                lr=3e-3, warmup_steps=1, eval_batches=1, ckpt_interval=2),
                  "eval": dict(_SPECDEC, n_prompts=2, max_new_tokens=16)},
        "quick": {"seeds": (0, 1), "ks": (1, 2, 3, 4), "data": {"max_train_stories": 0},
                  "train": dict(_SMALL, dim=128, n_layers=6, n_heads=4, multiple_of=32, seq_len=512, batch_size=16,
                                max_steps=1000, lr=2e-3, warmup_steps=50, eval_batches=4, ckpt_interval=100),
                  "eval": dict(_SPECDEC, n_prompts=100, max_new_tokens=128)},
        "full": {"seeds": (0, 1, 2), "ks": (1, 2, 3, 4), "data": {"max_train_stories": 0},
                 "train": dict(_SMALL, dim=256, n_layers=8, n_heads=8, multiple_of=64, seq_len=512, batch_size=32,
                               max_steps=1500, lr=1e-3, warmup_steps=100, eval_batches=8, ckpt_interval=250),
                 "eval": dict(_SPECDEC, n_prompts=200, max_new_tokens=256)},
    },
    # memory: `bench train` sizes (no training beyond the measured steps). Logits dominate: one
    # head's (B, T, V) fp32 logits are 4*256*32000*4 bytes = 131 MB at quick, while a block's
    # activations are O(B*T*dim); threads=1 per process on CPU (quieter timings on a shared machine).
    "memory": {
        "smoke": {"repeats": 2, "timeout_s": 300,
                  "size": dict(dim=64, n_layers=4, n_heads=4, vocab_size=2048, seq_len=64, batch_size=2,
                               warmup=1, steps=2, threads=1)},
        "quick": {"repeats": 5, "timeout_s": 900,
                  "size": dict(dim=128, n_layers=4, n_heads=4, vocab_size=32000, seq_len=256, batch_size=4,
                               warmup=1, steps=3, threads=1)},
        "full": {"repeats": 3, "timeout_s": 1800,
                 "size": dict(dim=512, n_layers=8, n_heads=8, vocab_size=32000, seq_len=2048, batch_size=8,
                              warmup=2, steps=5, threads=0)},
    },
}
TRAIN_SEED_BASE = 1000  # arm seed s trains with seed 1000 + s (init and data order), the same for every arm


# ----------------------------------------------------------------------------- the rule

def compare(mtp: list[float], ntp: list[float], paired: tuple[float, float] | None,
            min_effect: float) -> dict[str, Any]:
    """One MTP arm against the next-token arm (module docstring). Returns gap, spread, outcome.

    >>> compare([0.5, 0.6], [0.2, 0.25], (0.2, 0.4), 0.05)["outcome"]
    'better'
    >>> compare([0.2, 0.21], [0.2, 0.22], (-0.01, 0.01), 0.05)["outcome"]
    'no_gain'
    """
    gap = sum(mtp) / len(mtp) - sum(ntp) / len(ntp)
    spread = max(max(mtp) - min(mtp), max(ntp) - min(ntp))
    lo, hi = paired if paired is not None else (-math.inf, math.inf)
    if gap > spread and lo > 0:
        outcome = "better"
    elif -gap > spread and hi < 0:
        outcome = "worse"
    elif hi < min_effect:
        outcome = "no_gain"
    else:
        outcome = "unclear"
    return {"gap": gap, "spread": spread, "paired_ci95": None if paired is None else list(paired), "outcome": outcome}


def decide(arm_means: dict[str, float], comparisons: dict[str, dict[str, Any]], floor: float) -> str:
    """The verdict from the comparisons (module docstring).

    >>> decide({"n=1": 0.01, "n=2": 0.02}, {"n=2": {"outcome": "better"}}, floor=0.1)
    'inconclusive'
    >>> decide({"n=1": 0.3, "n=2": 0.5}, {"n=2": {"outcome": "better"}}, floor=0.1)
    'reproduced'
    >>> decide({"n=1": 0.3, "n=2": 0.3}, {"n=2": {"outcome": "no_gain"}}, floor=0.1)
    'not_reproduced'
    """
    if max(arm_means.values()) < floor:
        return "inconclusive"
    outcomes = [c["outcome"] for c in comparisons.values()]
    if all(o == "better" for o in outcomes):
        return "reproduced"
    if all(o in ("worse", "no_gain") for o in outcomes):
        return "not_reproduced"
    return "inconclusive"


def paired_interval(per_seed_a: list[dict[str, tuple[float, int]]], per_seed_b: list[dict[str, tuple[float, int]]]):
    """95% interval of (a - b) over samples: each sample's hits averaged over seeds, per arm,
    paired by sample id; a ratio with a standard error clustered by sample (hits/count units)."""
    from mtp_bench.evals.induction import clustered_ratio

    ids = sorted(set.intersection(*(set(d) for d in per_seed_a + per_seed_b)))
    if not ids:
        raise ValueError("no evaluation sample is shared by the compared arms")
    diffs, counts = [], []
    for i in ids:
        a = sum(d[i][0] for d in per_seed_a) / len(per_seed_a)
        b = sum(d[i][0] for d in per_seed_b) / len(per_seed_b)
        diffs.append(a - b)
        counts.append(per_seed_a[0][i][1])
    return clustered_ratio(diffs, counts, higher_is_better=True)


def pool_seeds(metrics: list[dict]) -> dict[str, Any]:
    """One metric over seeds (its per-seed dicts: value, stderr): values, mean, seed spread, and
    the mean's standard error and 95% interval from the seeds' own errors, sqrt(sum se^2) / S
    (None when a seed has none, e.g. tau = 1 by definition at k = 1).

    >>> p = pool_seeds([{"value": 1.0, "stderr": 0.3}, {"value": 2.0, "stderr": 0.4}])
    >>> p["mean"], p["spread"], p["stderr"]
    (1.5, 1.0, 0.25)
    """
    from mtp_bench.scoring.metrics import normal_ci95

    vals = [float(m["value"]) for m in metrics]
    mean = sum(vals) / len(vals)
    ses = [m.get("stderr") for m in metrics]
    se = None if any(x is None for x in ses) else math.sqrt(math.fsum(x * x for x in ses)) / len(ses)
    ci = normal_ci95(mean, se)
    return {"values": vals, "mean": mean, "spread": max(vals) - min(vals), "stderr": se,
            "ci95": None if ci is None else list(ci)}


def decide_speedup(tau: dict[int, dict], speedup: dict[int, dict], degenerate: float,
                   max_degenerate: float) -> dict[str, Any]:
    """The speedup verdict (module docstring) from `pool_seeds` dicts per heads used k (2 and 4
    among them). Returns the verdict and each check.

    >>> t = {2: {"mean": 1.5, "spread": 0.1}, 4: {"mean": 2.0, "spread": 0.1}}
    >>> sp = {2: {"mean": 1.3, "values": [1.25, 1.35], "ci95": [1.2, 1.4]},
    ...       4: {"mean": 1.1, "values": [1.1, 1.1], "ci95": [1.0, 1.2]}}
    >>> decide_speedup(t, sp, 0.1, 0.5)["verdict"], decide_speedup(t, sp, 0.9, 0.5)["verdict"]
    ('reproduced', 'inconclusive')
    """
    kmax = max(tau)
    t2, tk = tau[2], tau[kmax]
    tau_rises = tk["mean"] - t2["mean"] > max(tk["spread"], t2["spread"]) and t2["mean"] - 1 > t2["spread"]
    drafted = [k for k in speedup if k > 1]
    best = max(drafted, key=lambda k: speedup[k]["mean"])
    b = speedup[best]
    faster = b["ci95"] is not None and b["ci95"][0] > 1 and min(b["values"]) > 1
    slower = all(speedup[k]["mean"] <= 1 for k in drafted)
    is_degenerate = degenerate > max_degenerate
    if is_degenerate:
        verdict = "inconclusive"
    elif tau_rises and faster:
        verdict = "reproduced"
    elif slower:
        verdict = "not_reproduced"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "degenerate": is_degenerate, "degenerate_fraction": degenerate,
            "tau_rises": tau_rises, "best_k": best, "faster": faster, "no_k_faster": slower}


def decide_memory(m1: float, mseq: float, mnaive: float, spread: float, tolerance: float,
                  peak_reset: bool = True) -> dict[str, Any]:
    """The memory verdict (module docstring) from the mean step memories and the repeat spread.

    >>> decide_memory(100, 105, 400, 5, 0.15)["verdict"], decide_memory(100, 396, 400, 5, 0.15)["verdict"]
    ('reproduced', 'not_reproduced')
    >>> decide_memory(100, 104, 110, 5, 0.15)["verdict"]  # naive costs no more than the tolerance
    'inconclusive'
    """
    discriminates = mnaive - m1 > max(spread, tolerance * m1)
    within = mseq <= (1 + tolerance) * m1
    no_saving = mseq - m1 >= mnaive - m1 - spread
    if not peak_reset or not discriminates:
        verdict = "inconclusive"
    elif within:
        verdict = "reproduced"
    elif no_saving:
        verdict = "not_reproduced"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "peak_reset": peak_reset, "discriminates": discriminates,
            "seq_within_tolerance": within, "seq_saves_nothing": no_saving}


# ----------------------------------------------------------------------------- steps

def _units(finding: str, records: list[dict]) -> dict[str, tuple[float, int]]:
    """sample id -> (hits, count) of the primary metric, for pairing."""
    if finding == "induction":
        return {r["sample_id"]: (float(r["second_correct"]), int(r["n_occurrences"])) for r in records}
    return {r["sample_id"]: (float(r["correct"]), 1) for r in records if r["in_domain"]}


def prepare_data(finding: str, plan: dict, work: Path, source: str) -> tuple[Path, dict]:
    """Step 1: the training corpus (JSONL, field text) and what it holds."""
    from mtp_bench.commands.data import write_jsonl

    out = work / "data" / f"{finding}-train.jsonl"
    info_path = work / "data" / f"{finding}-train.info.json"
    if out.is_file() and info_path.is_file():
        return out, json.loads(info_path.read_text())
    if finding == "induction":
        from mtp_bench.evals import induction as I
        from mtp_bench.reference_model.tokenizer import byte_tokenizer

        stories, where = I.resolve_source(source, None)
        train, ev = I.split_stories(stories, 0.1)
        k = plan["data"]["max_train_stories"]
        train = train[:k] if k else train
        rows = [{"text": t} for t, _ in I.transform_stories(train, byte_tokenizer(), seed=0)]
        eval_set = set(ev)
        overlap = sum(s in eval_set for s in train)
        info = {"source": where, "source_sha256": I._sha_of(stories), "n_train_stories": len(rows),
                "n_eval_stories": len(ev), "split": "sha256(story) < 0.1 -> eval", "tokenizer": "byte",
                "train_eval_overlap": overlap, "names_seed": 0}
    elif finding == "speedup":
        from mtp_bench.evals import induction as I
        from mtp_bench.evals.specdec import text_prompts

        stories, where = I.resolve_source(source, None)
        train, ev = I.split_stories(stories, 0.1)  # the same split as `induction`
        k = plan["data"]["max_train_stories"]
        train = train[:k] if k else train
        rows = [{"text": t} for t in train]  # the stories as they are (no name replacement)
        eval_set = set(ev)
        overlap = sum(s in eval_set for s in train)
        # the prompt file: the held-out stories, whole; specdec cuts each to its opening sentences
        prompts_path = speedup_prompt_file(work)
        atomic_write_bytes(prompts_path, "".join(s + I.STORY_SEPARATOR + "\n" for s in ev).encode())
        prompts = text_prompts(None, str(prompts_path))
        # TinyStories reuses openings ("Once upon a time, there was a little girl named Lily."): the
        # stories are disjoint, but an opening may also begin a training story; counted, not hidden
        seen = sum(any(t.startswith(p) for t in train) for _, p in prompts)
        info = {"source": where, "source_sha256": I._sha_of(stories), "n_train_stories": len(rows),
                "n_eval_stories": len(ev), "split": "sha256(story) < 0.1 -> held out (prompts)", "tokenizer": "byte",
                "train_eval_overlap": overlap, "prompt_file": prompts_path.name, "n_prompts_available": len(prompts),
                "prompt_openings_also_opening_a_training_story": seen}
    else:
        from mtp_bench.evals import arithmetic as A

        n = plan["data"]["n_train_per_m"]
        test = A.test_prompts(ms=A.IN_DOMAIN)  # a prompt determines its m: other test prompts cannot collide
        probs = [p for m in A.IN_DOMAIN for p in A.train_problems(m, n, seed=1)]
        overlap = sum(p["prompt"] in test for p in probs)
        rows = [{"text": p["text"]} for p in probs]
        info = {"n_train_per_m": n, "ms": list(A.IN_DOMAIN), "seed": 1, "train_test_overlap": overlap,
                "checked_against": f"test seed {A.TEST_SEED}, {A.DEFAULT_N_TEST} per m, m=1..5"}
    if overlap:
        raise DataError(f"{finding}: {overlap} training items are in the evaluation set")
    write_jsonl(out, rows)
    write_jsonl(info_path, [info])  # one line of JSON, atomically
    return out, info


def speedup_prompt_file(work: Path) -> Path:
    """The held-out stories `repro speedup` decodes (stories separated by <|endoftext|>)."""
    return work / "data" / "speedup-prompts.txt"


def train_arm(cfg_overrides: dict, out: Path, verbose: bool) -> dict:
    """Step 2: train one arm (or reuse / resume it); returns its training summary."""
    from mtp_bench.reference_model import train as T

    cfg = T.make_config(None, {**cfg_overrides, "out": str(out)})
    done = out / "training.json"
    if done.is_file():
        info = json.loads(done.read_text())
        diff = sorted(k for k, v in cfg.to_dict().items() if k not in T.RESUME_MUTABLE and info["config"].get(k) != v)
        if diff:
            raise ConfigError(f"{out} was trained with another config ({', '.join(diff)}); use another --work-dir")
    else:
        with _arm_lock(out):
            T.train(cfg, resume=T.state_path(out).is_file(), verbose=verbose)
        info = json.loads(done.read_text())
    return {"checkpoint": str(out), "steps": info["steps"], "tokens_seen": info["tokens_seen"],
            "num_params": info["num_params"], "duration_s": info["duration_s"], "seed": info["seed"],
            "final_val_loss": info["final"]["val"]["loss"], "command": info["command"]}


@contextlib.contextmanager
def _arm_lock(out: Path):
    """OUT.lock holds the pid of the process training OUT, so two workers never train one arm;
    a lock left by a dead process (a killed run) is taken over."""
    lock = out.parent / f"{out.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale
                continue
            except PermissionError:
                pass
            raise UserError(f"{out} is being trained by process {pid}; wait for it or stop it") from None
    else:
        raise UserError(f"cannot take the lock {lock}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def evaluate_arm(name: str, config: dict, ckpt: Path, device: str, work: Path, data_dir: Path | None) -> dict:
    """Step 3: one evaluator on one checkpoint (`mtp_bench.evaluate`), cached by (weights, evaluator,
    version, config)."""
    cls = registry.get(name)
    ev = cls(config)
    model = load_model(ckpt, device=device)
    key = hashlib.sha256(json.dumps([model.weights_sha256, name, cls.version, ev.config_dict()],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = work / "evals" / f"{ckpt.name}-{name}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = evaluate(model, [name], config={name: config}, seed=0, data_dir=data_dir, work_dir=work,
                   cache=False).outputs[name]["candidate"]
    doc = {"evaluator": name, "version": cls.version, "config": ev.config_dict(),
           "weights_sha256": model.weights_sha256, "metrics": {k: m.to_dict() for k, m in out.metrics.items()},
           "info": out.info, "records": out.records}
    atomic_write_json(path, doc)
    return doc


# ----------------------------------------------------------------------------- the run

def run(finding: str, budget: str = "quick", work_dir: str | None = None, out_dir: str | None = None,
        device: str = "cpu", source: str = "", data_dir: str | None = None, verbose: bool = True,
        argv: list[str] | None = None, only_arm: int | None = None, only_seed: int | None = None) -> dict:
    """Steps 1-5; returns the result document (also written to OUT/result.json).

    only_arm=N (and/or only_seed=S) runs steps 1-3 for that arm (seed) alone: a worker, so that
    several processes or machines train different arms into one work dir; a run without them
    then reuses what they trained."""
    from mtp_bench.reporting.provenance import collect, utc_now
    from mtp_bench.reporting.results import atomic_write_json
    from mtp_bench.scoring.metrics import mean

    if finding not in FINDINGS:
        raise UserError(f"unknown finding {finding!r}; findings: {', '.join(FINDINGS)}")
    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")
    f, plan, rule = FINDINGS[finding], PLANS[finding][budget], RULES[finding]
    if finding == "memory" and (only_arm is not None or only_seed is not None):
        raise UserError("repro memory measures its configurations one at a time (parallel workers would "
                        "disturb each other's timings): --arm and --seed are for the findings that train")
    if only_arm is not None and only_arm not in f.arms:
        raise UserError(f"--arm {only_arm}: {finding}'s arms are n_future = {', '.join(map(str, f.arms))}")
    if only_seed is not None and only_seed not in plan["seeds"]:
        raise UserError(f"--seed {only_seed}: the {budget} budget's seeds are {', '.join(map(str, plan['seeds']))}")
    worker = only_arm is not None or only_seed is not None
    t0, started = time.perf_counter(), utc_now()
    work = Path(work_dir) if work_dir else _default_cache() / "repro" / f"{finding}-{budget}"
    out = Path(out_dir) if out_dir else Path("results") / "repro" / f"{finding}-{budget}"
    for p in (work, out):
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {p}: {e.strerror or e}") from None
    ddir = _resolve_data_dir(data_dir)
    if finding in ("induction", "speedup") and not source:
        from mtp_bench.evals.induction import DEFAULT_FILE

        if ddir is None or not (ddir / DEFAULT_FILE[0] / DEFAULT_FILE[1]).is_file():
            raise DataError(f"repro {finding} needs stories: --source FILE or --data-dir DIR holding "
                            f"{'/'.join(DEFAULT_FILE)}")
        source = str(ddir / DEFAULT_FILE[0] / DEFAULT_FILE[1])
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if verbose else (lambda s: None)
    ctx = _Run(f, budget, plan, rule, work, out, device, ddir, say, verbose, argv, t0, started)
    if finding == "speedup":
        return run_speedup(ctx, source, only_seed, only_arm is not None or only_seed is not None)
    if finding == "memory":
        return run_memory(ctx)

    # 1) data
    corpus, data_info = prepare_data(finding, plan, work, source)
    say(f"repro {finding} --budget {budget}: data {corpus}")
    # 2) + 3) arms
    eval_cfg = {**plan["eval"], **({"source": source} if finding == "induction" else {})}
    arms: dict[str, dict] = {}
    units: dict[str, list[dict]] = {}
    for n in f.arms:
        if only_arm is not None and n != only_arm:
            continue
        arm = f"n={n}"
        arms[arm] = {"n_future": n, "seeds": {}}
        units[arm] = []
        for s in plan["seeds"]:
            if only_seed is not None and s != only_seed:
                continue
            ckpt = work / "ckpt" / f"n{n}-s{s}"
            say(f"[{arm} seed {s}] train -> {ckpt}")
            tr = train_arm({**plan["train"], "n_future": n, "seed": TRAIN_SEED_BASE + s, "corpus": str(corpus),
                            "cache_dir": str(work / "cache"), "device": device}, ckpt, verbose)
            say(f"[{arm} seed {s}] evaluate")
            ev = evaluate_arm(f.evaluator, eval_cfg, ckpt, device, work, ddir)
            metrics = {f"{f.evaluator}.{k}": v for k, v in ev["metrics"].items()}
            if finding == "induction":
                rnd = evaluate_arm("induction", {"probe": "random", **plan["eval_random"]}, ckpt, device, work, ddir)
                metrics.update({f"induction_random.{k}": v for k, v in rnd["metrics"].items()})
            arms[arm]["seeds"][str(s)] = {"train": tr, "weights_sha256": ev["weights_sha256"], "metrics": metrics,
                                          "eval_info": ev["info"]}
            units[arm].append(_units(finding, ev["records"]))
        if worker:
            continue
        vals = [arms[arm]["seeds"][str(s)]["metrics"][f"{f.evaluator}.{f.metric}"]["value"] for s in plan["seeds"]]
        arms[arm].update({"values": vals, "mean": mean(vals), "spread": max(vals) - min(vals)})

    if worker:
        msg = "trained and evaluated " + ", ".join(f"{a} seeds {', '.join(v['seeds'])}" for a, v in arms.items()) + \
            "; run without --arm/--seed to combine the arms"
        return {"sentence": msg, "to_conclude": "", "arms": arms}

    # 4) verdict
    base = f"n={f.arms[0]}"
    comparisons = {}
    for n in f.arms[1:]:
        arm = f"n={n}"
        paired = paired_interval(units[arm], units[base])
        c = compare(arms[arm]["values"], arms[base]["values"], paired.ci95, rule["min_effect"])
        c["paired"] = paired.to_dict()
        comparisons[f"{arm} vs {base}"] = c
    rule_verdict = decide({a: arms[a]["mean"] for a in arms}, comparisons, rule["floor"])
    verdict = "inconclusive" if budget == "smoke" else rule_verdict
    sentence, needed = explain(f, budget, verdict, rule_verdict, arms, comparisons, rule)

    # 5) result directory
    doc = {"schema": SCHEMA, "finding": finding, "claim": f.claim, "budget": budget, "verdict": verdict,
           "rule_verdict": rule_verdict, "sentence": sentence, "to_conclude": needed,
           "metric": f"{f.evaluator}.{f.metric}", "secondary": list(f.secondary),
           "rule": {**rule, "text": RULE_TEXT}, "arms": arms, "comparisons": comparisons,
           "plan": _jsonable(plan), "eval_config": eval_cfg, "data": data_info,
           "provenance": collect(seed=TRAIN_SEED_BASE, device=device, argv=argv, start_time=started,
                                 duration_s=time.perf_counter() - t0)}
    atomic_write_json(out / "result.json", doc)
    atomic_write_bytes(out / "plot.png", plot(doc))
    say(f"wrote {out / 'result.json'} and {out / 'plot.png'}")
    return doc


RULE_TEXT = ("per MTP arm vs n=1: better if gap > seed spread and the paired 95% interval > 0; worse if -gap > "
             "spread and the interval < 0; no_gain if the interval's upper end < min_effect. inconclusive if no "
             "arm reaches floor; reproduced if every MTP arm is better; not_reproduced if every one is worse or "
             "no_gain; else inconclusive. smoke: always inconclusive (pipeline only).")


def explain(f: Finding, budget: str, verdict: str, rule_verdict: str, arms: dict, comparisons: dict,
            rule: dict) -> tuple[str, str]:
    """The verdict in a sentence, and what would make an inconclusive one conclusive."""
    means = ", ".join(f"{a} {arms[a]['mean']:.3f}" for a in arms)
    parts = "; ".join(f"{k}: {c['outcome']} (gap {c['gap']:+.3f}, seed spread {c['spread']:.3f}, paired 95% "
                      f"[{c['paired']['ci95'][0]:+.3f}, {c['paired']['ci95'][1]:+.3f}])"
                      if c["paired"]["ci95"] else f"{k}: {c['outcome']}" for k, c in comparisons.items())
    head = f"{f.name} ({budget}): {verdict}. {f.evaluator}.{f.metric} means: {means}. {parts}."
    if budget == "smoke":
        return (head + " The smoke budget proves the pipeline only; it says nothing about the finding "
                f"(the rule alone would say {rule_verdict}).", "run --budget quick (CPU) or full (GPU)")
    if verdict != "inconclusive":
        return head, ""
    if max(arms[a]["mean"] for a in arms) < rule["floor"]:
        need = (f"no arm reached the floor {rule['floor']}: the models did not learn the task at this budget; "
                "train longer or larger (--budget full on a GPU)")
    else:
        need = ("the arms differ by less than the seed spread or the paired interval straddles the effect; "
                "more seeds (smaller spread) and more evaluation samples (narrower interval) would decide it")
    return head, need


# ----------------------------------------------------------------------------- speedup and memory

SPEEDUP_RULE_TEXT = ("one n=4 arm, specdec with k = 1..4 heads on held-out stories; per k over seeds: mean, seed "
                     "spread, 95% interval (sqrt(sum se^2)/seeds). inconclusive if mean degenerate_fraction > "
                     "max_degenerate; reproduced if tau(4) - tau(2) > their seed spread and tau(2) - 1 > its spread, "
                     "and the best k's speedup interval is above 1 with every seed above 1; not_reproduced if the "
                     "mean speedup at every k > 1 is <= 1; else inconclusive. smoke: always inconclusive.")
MEMORY_RULE_TEXT = ("bench train's step memory (peak - weights, optimizer, batch), means over repeats m1, mseq, "
                    "mnaive, spread = largest repeat range. inconclusive if a peak was not reset or mnaive - m1 <= "
                    "max(spread, tolerance * m1); reproduced if mseq <= (1 + tolerance) * m1; not_reproduced if "
                    "mseq - m1 >= mnaive - m1 - spread; else inconclusive. smoke: always inconclusive.")
_SMOKE_NOTE = " The smoke budget proves the pipeline only; it says nothing about the finding"


@dataclass(frozen=True)
class _Run:
    """What `run` resolved for a finding without arms to compare (speedup, memory)."""

    finding: Finding
    budget: str
    plan: dict
    rule: dict
    work: Path
    out: Path
    device: str
    data_dir: Path | None
    say: Any
    verbose: bool
    argv: list[str] | None
    t0: float
    started: str


def run_speedup(r: _Run, source: str, only_seed: int | None, worker: bool) -> dict:
    """Steps 1-5 for `speedup`: train the n=4 arm per seed, specdec at every k, the rule."""
    from mtp_bench.evals.specdec import text_prompts

    f, plan = r.finding, r.plan
    # 1) data: training stories, and the held-out stories as the prompt file
    corpus, data_info = prepare_data("speedup", plan, r.work, source)
    prompts = speedup_prompt_file(r.work)
    r.say(f"repro speedup --budget {r.budget}: data {corpus}, prompts {prompts}")
    eval_cfg = {**plan["eval"], "source": str(prompts)}
    opening = dict(text_prompts(None, str(prompts)))
    n, ks = f.arms[0], plan["ks"]
    arm = f"n={n}"
    seeds: dict[str, dict] = {}
    for s in plan["seeds"]:
        if only_seed is not None and s != only_seed:
            continue
        # 2) train (or reuse / resume), as the arms of the other findings
        ckpt = r.work / "ckpt" / f"n{n}-s{s}"
        r.say(f"[{arm} seed {s}] train -> {ckpt}")
        tr = train_arm({**plan["train"], "n_future": n, "seed": TRAIN_SEED_BASE + s, "corpus": str(corpus),
                        "cache_dir": str(r.work / "cache"), "device": r.device}, ckpt, r.verbose)
        # 3) specdec with k heads used, each k cached on its own
        per_k = {}
        for k in ks:
            r.say(f"[{arm} seed {s}] specdec k={k}")
            ev = evaluate_arm("specdec", {**eval_cfg, "k": k}, ckpt, r.device, r.work, r.data_dir)
            per_k[str(k)] = {"metrics": ev["metrics"], "info": ev["info"]}
        # greedy outputs are the same at every k (lossless): a few of them, to see what was drafted
        samples = [{"sample_id": x["sample_id"], "prompt": opening.get(x["sample_id"]), "completion": x["completion"],
                    "degenerate": x["degenerate"]} for x in ev["records"][:3]]
        seeds[str(s)] = {"train": tr, "weights_sha256": ev["weights_sha256"], "per_k": per_k, "samples": samples}
    arms = {arm: {"n_future": n, "seeds": seeds}}
    if worker:
        return {"sentence": f"trained and evaluated {arm} seeds {', '.join(seeds)}; run without --arm/--seed to "
                            "combine the seeds", "to_conclude": "", "arms": arms}

    # 4) per k over seeds, then the rule
    def pooled(k: int, name: str) -> dict | None:
        ms = [seeds[str(s)]["per_k"][str(k)]["metrics"].get(name) for s in plan["seeds"]]
        return pool_seeds(ms) if all(m is not None for m in ms) else None

    names = ("tau", "speedup", "speedup_decode", "verify_cost", "forwards_per_token", "tokens_per_s",
             "plain_tokens_per_s", "degenerate_fraction", "lossless_fraction")
    per_k_all = {}
    for k in ks:
        wanted = (*names, *(f"alpha_{c}_{i}" for c in ("cond", "uncond") for i in range(2, k + 1)))
        per_k_all[str(k)] = {m: p for m in wanted if (p := pooled(k, m)) is not None}
    degenerate = per_k_all[str(max(ks))]["degenerate_fraction"]["mean"]
    checks = decide_speedup({k: per_k_all[str(k)]["tau"] for k in ks}, {k: per_k_all[str(k)]["speedup"] for k in ks},
                            degenerate, r.rule["max_degenerate"])
    verdict = "inconclusive" if r.budget == "smoke" else checks["verdict"]
    sentence, needed = explain_speedup(r.budget, verdict, checks, per_k_all, ks, r.rule)
    # 5) result directory
    doc = {"schema": SCHEMA, "finding": "speedup", "claim": f.claim, "budget": r.budget, "verdict": verdict,
           "rule_verdict": checks["verdict"], "sentence": sentence, "to_conclude": needed,
           "metric": f"{f.evaluator}.{f.metric}", "secondary": list(f.secondary),
           "rule": {**r.rule, "text": SPEEDUP_RULE_TEXT}, "checks": checks, "ks": list(ks), "per_k": per_k_all,
           "arms": arms, "plan": _jsonable(plan), "eval_config": eval_cfg, "data": data_info}
    return _finish(r, doc)


def explain_speedup(budget: str, verdict: str, checks: dict, per_k: dict, ks, rule: dict) -> tuple[str, str]:
    """The speedup verdict in a sentence, and what would make an inconclusive one conclusive."""
    tau = ", ".join(f"{per_k[str(k)]['tau']['mean']:.2f}" for k in ks)
    sp = ", ".join(f"{per_k[str(k)]['speedup']['mean']:.2f}" for k in ks)
    b = per_k[str(checks["best_k"])]["speedup"]
    ci = f", 95% [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}]" if b["ci95"] else ""
    top = per_k[str(max(ks))]
    acc = [f"head {i} {top[f'alpha_cond_{i}']['mean']:.2f}" for i in range(2, max(ks) + 1) if f"alpha_cond_{i}" in top]
    alpha = f" Acceptance at k={max(ks)} (alpha_cond): {', '.join(acc)}." if acc else ""
    head = (f"speedup ({budget}): {verdict}. n=4 model, heads used k = {', '.join(map(str, ks))} (means over seeds): "
            f"tau {tau}; speedup {sp}. Best k={checks['best_k']}: {b['mean']:.2f}x{ci}, seeds "
            f"{', '.join(f'{v:.2f}' for v in b['values'])}.{alpha} tau rises beyond the seed spread: "
            f"{'yes' if checks['tau_rises'] else 'no'}; degenerate outputs {checks['degenerate_fraction']:.0%} "
            f"(limit {rule['max_degenerate']:.0%}).")
    if budget == "smoke":
        return head + _SMOKE_NOTE + f" (the rule alone would say {checks['verdict']}).", \
            "run --budget quick (CPU) or full (GPU)"
    if verdict != "inconclusive":
        return head, ""
    if checks["degenerate"]:
        need = ("most greedy continuations end in a loop of one or two tokens, which any drafter predicts: a "
                "better-trained model (longer training, --budget full on a GPU) before tau and speedup mean anything")
    elif not checks["tau_rises"]:
        need = "tau does not rise with heads used beyond the seed spread: more seeds, or a better-trained model"
    else:
        need = ("tau rises but the best speedup's interval includes 1 or a seed is not faster: more prompts (a "
                "narrower interval), a quiet machine, or a GPU (--budget full --device cuda)")
    return head, need


def measure_cached(spec: dict, work: Path, timeout: float) -> dict:
    """One `bench train` measurement in its own subprocess (its worker, reused), cached in the work
    dir by spec, so that a killed run continues with the measurements it has."""
    import hashlib

    from mtp_bench.commands.bench.train import run_in_subprocess
    from mtp_bench.reporting.results import atomic_write_json

    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = work / "memory" / f"n{spec['n_future']}-{spec['mode']}-r{spec['seed']}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    res = run_in_subprocess(spec, timeout)
    atomic_write_json(path, res)
    return res


def run_memory(r: _Run) -> dict:
    """Steps for `memory`: bench train's worker per config and repeat, interleaved; the rule."""
    from mtp_bench.commands.bench import train as B

    plan, rule = r.plan, r.rule
    if r.device != "cpu" and not r.device.startswith("cuda"):
        raise ConfigError(f"repro memory: --device must be cpu or cuda[:N], got {r.device!r}")
    if r.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {r.device} but CUDA is not available")
    size = plan["size"]
    configs = {label: {"n_future": n, "mode": mode, "repeats": []} for label, n, mode in B.CONFIGS}
    # 1) rounds of the three configs, so that a drifting machine load hits all of them alike
    for i in range(plan["repeats"]):
        for label, n, mode in B.CONFIGS:
            r.say(f"[{label} repeat {i}] bench train step (d={size['dim']}, V={size['vocab_size']}, "
                  f"B={size['batch_size']}, T={size['seq_len']})")
            spec = {**size, "n_future": n, "mode": mode, "device": r.device, "seed": i}
            configs[label]["repeats"].append(measure_cached(spec, r.work, plan["timeout_s"]))
    # 2) means and spreads over repeats, bench train's ratios of the means, the rule
    for c in configs.values():
        c["step_mem_bytes"] = pool_seeds([{"value": x["step_mem_bytes"]} for x in c["repeats"]])
        c["median_step_s"] = pool_seeds([{"value": x["median_step_s"]} for x in c["repeats"]])
    means = {label: {"step_mem_bytes": c["step_mem_bytes"]["mean"], "median_step_s": c["median_step_s"]["mean"],
                     "flops_per_token": c["repeats"][0]["flops_per_token"]} for label, c in configs.items()}
    ratios = B.ratios(means)
    spread = max(c["step_mem_bytes"]["spread"] for c in configs.values())
    m1, mseq, mnaive = (means[k]["step_mem_bytes"] for k in ("n=1", "n=4 sequential", "n=4 naive"))
    peak_reset = all(x["peak_reset"] for c in configs.values() for x in c["repeats"])
    checks = decide_memory(m1, mseq, mnaive, spread, rule["tolerance"], peak_reset)
    checks["repeat_spread_bytes"] = spread
    verdict = "inconclusive" if r.budget == "smoke" else checks["verdict"]
    sentence, needed = explain_memory(r.budget, verdict, checks, means, ratios, plan, rule,
                                      configs["n=1"]["repeats"][0]["memory_metric"])
    f = r.finding
    doc = {"schema": SCHEMA, "finding": "memory", "claim": f.claim, "budget": r.budget, "verdict": verdict,
           "rule_verdict": checks["verdict"], "sentence": sentence, "to_conclude": needed,
           "metric": "bench_train.step_mem_bytes", "secondary": ["bench_train.median_step_s"],
           "rule": {**rule, "text": MEMORY_RULE_TEXT}, "checks": checks, "size": dict(size), "configs": configs,
           "ratios": ratios, "plan": _jsonable(plan), "data": None}
    return _finish(r, doc)


def explain_memory(budget: str, verdict: str, checks: dict, means: dict, ratios: dict, plan: dict, rule: dict,
                   metric: str) -> tuple[str, str]:
    """The memory verdict in a sentence, and what would make an inconclusive one conclusive."""
    mib = 2**20
    m = {k: v["step_mem_bytes"] / mib for k, v in means.items()}
    size = plan["size"]
    head = (f"memory ({budget}): {verdict}. Training-step memory ({metric}, minus weights, optimizer state and batch; "
            f"d={size['dim']}, V={size['vocab_size']}, B={size['batch_size']}, T={size['seq_len']}; means of "
            f"{plan['repeats']} repeats): n=1 {m['n=1']:.1f} MiB, n=4 sequential {m['n=4 sequential']:.1f} MiB "
            f"({ratios['mem_seq_over_n1']:.2f}x), n=4 naive {m['n=4 naive']:.1f} MiB ({ratios['mem_naive_over_n1']:.2f}x); "
            f"repeat spread {checks['repeat_spread_bytes'] / mib:.1f} MiB, tolerance {rule['tolerance']:.0%}. Step time "
            f"vs n=1 (beside the rule): sequential {ratios['time_seq_over_n1']:.2f}x, naive "
            f"{ratios['time_naive_over_n1']:.2f}x (analytic FLOPs {ratios['flops_n4_over_n1']:.2f}x).")
    if budget == "smoke":
        return head + _SMOKE_NOTE + f" (the rule alone would say {checks['verdict']}).", \
            "run --budget quick (CPU) or full (GPU)"
    if verdict != "inconclusive":
        return head, ""
    if not checks["peak_reset"]:
        need = ("the peak RSS could not be reset after setup (/proc/self/clear_refs refused): measure on a Linux "
                "that allows it, or on CUDA (--budget full --device cuda)")
    elif not checks["discriminates"]:
        need = ("at this size the naive backward does not cost clearly more than n=1 (the logits do not dominate, "
                "or the repeats are noisy): a larger vocabulary or batch x seq_len (--budget full), or more repeats")
    else:
        need = ("the sequential backward saved memory but stayed above n=1 + tolerance: look at what else grows "
                "with n (the heads' activations at this size), or measure at a size where the logits dominate more")
    return head, need


def _finish(r: _Run, doc: dict) -> dict:
    """Provenance, then result.json and plot.png in the result dir."""
    from mtp_bench.reporting.provenance import collect
    from mtp_bench.reporting.results import atomic_write_json

    doc["provenance"] = collect(seed=TRAIN_SEED_BASE, device=r.device, argv=r.argv, start_time=r.started,
                                duration_s=time.perf_counter() - r.t0)
    atomic_write_json(r.out / "result.json", doc)
    atomic_write_bytes(r.out / "plot.png", plot(doc))
    r.say(f"wrote {r.out / 'result.json'} and {r.out / 'plot.png'}")
    return doc


def _plot_speedup(doc: dict, plt):
    """Table S2 as two panels: tau and speedup against heads used, each seed and the mean."""
    ks, per_k = doc["ks"], doc["per_k"]
    seeds = doc["arms"]["n=4"]["seeds"]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), dpi=100)
    for ax, key, label in ((axes[0], "tau", "tau (tokens per forward)"), (axes[1], "speedup", "speedup vs greedy")):
        for s, rec in seeds.items():
            ax.plot(ks, [rec["per_k"][str(k)]["metrics"][key]["value"] for k in ks], color="#1f77b4", alpha=0.3,
                    linewidth=0.8, marker=".", label=f"seed {s}" if s == next(iter(seeds)) else None)
        mean = [per_k[str(k)][key]["mean"] for k in ks]
        err = [[m - (per_k[str(k)][key]["ci95"] or [m, m])[0] for k, m in zip(ks, mean)],
               [(per_k[str(k)][key]["ci95"] or [m, m])[1] - m for k, m in zip(ks, mean)]]
        ax.errorbar(ks, mean, yerr=err, color="#1f77b4", marker="o", linewidth=2, capsize=3, label="mean, 95%")
        ax.axhline(1.0, color="#888888", linestyle="--", linewidth=0.8)
        if key == "tau":
            ax.plot(ks, ks, color="#cccccc", linestyle=":", linewidth=0.8, label="tau = k (bound)")
        ax.set_xticks(ks)
        ax.set_xlabel("heads used k")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    deg = doc["checks"]["degenerate_fraction"]
    return fig, f" (degenerate outputs {deg:.0%})"


def _plot_memory(doc: dict, plt):
    """Bars of the training step's peak memory (and time) per config, each repeat a dot."""
    mib = 2**20
    configs = doc["configs"]
    colors = {"n=1": "#444444", "n=4 sequential": "#1f77b4", "n=4 naive": "#d62728"}
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), dpi=100)
    for ax, key, scale, label in ((axes[0], "step_mem_bytes", mib, "step memory (MiB)"),
                                  (axes[1], "median_step_s", 1.0, "median step time (s)")):
        for i, (name, c) in enumerate(configs.items()):
            ax.bar(i, c[key]["mean"] / scale, color=colors.get(name), alpha=0.6)
            ax.scatter([i] * len(c[key]["values"]), [v / scale for v in c[key]["values"]], color="black", s=8)
        ax.set_xticks(range(len(configs)), list(configs), fontsize=8)
        ax.set_title(label, fontsize=9)
    limit = configs["n=1"]["step_mem_bytes"]["mean"] * (1 + doc["rule"]["tolerance"]) / mib
    axes[0].axhline(limit, color="#888888", linestyle="--", linewidth=0.8,
                    label=f"n=1 + {doc['rule']['tolerance']:.0%}")
    axes[0].legend(fontsize=7)
    s = doc["size"]
    return fig, f" (d={s['dim']}, V={s['vocab_size']}, B={s['batch_size']}, T={s['seq_len']})"


def plot(doc: dict) -> bytes:
    """A PNG in the style of the paper's figure: per-arm points per seed and the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if doc["finding"] in ("speedup", "memory"):
        fig, note = (_plot_speedup if doc["finding"] == "speedup" else _plot_memory)(doc, plt)
        fig.suptitle(f"{doc['finding']} ({doc['budget']}): {doc['verdict']}{note}", fontsize=10)
        fig.tight_layout()
        return _png(fig, plt)
    arms = doc["arms"]
    colors = {"n=1": "#444444", "n=2": "#d62728", "n=4": "#1f77b4"}
    if doc["finding"] == "arithmetic":
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        ms = doc["eval_config"].get("ms") or list(range(1, 11))
        for arm, a in arms.items():
            per_seed = [[s["metrics"][f"arithmetic.acc_m{m}"]["value"] for m in ms] for s in a["seeds"].values()]
            avg = [sum(col) / len(col) for col in zip(*per_seed)]
            ax.plot(ms, avg, marker="o", label=arm, color=colors.get(arm))
            for row in per_seed:
                ax.plot(ms, row, color=colors.get(arm), alpha=0.25, linewidth=0.8)
        ax.axvspan(5.5, max(ms) + 0.5, color="#eeeeee", zorder=0)
        ax.text(5.6, ax.get_ylim()[1] * 0.95 or 0.01, "out of domain", fontsize=8, va="top")
        ax.set_xlabel("number of operations m")
        ax.set_ylabel("exact-match accuracy")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), dpi=100)
        for ax, key, label in ((axes[0], "induction.second_token_acc", "names: 2nd-token accuracy"),
                               (axes[1], "induction_random.copy_acc", "random: copy accuracy")):
            for i, (arm, a) in enumerate(arms.items()):
                vals = [s["metrics"][key]["value"] for s in a["seeds"].values()]
                ax.scatter([i] * len(vals), vals, color=colors.get(arm), alpha=0.6)
                ax.plot([i - 0.2, i + 0.2], [sum(vals) / len(vals)] * 2, color=colors.get(arm), linewidth=2)
            ax.set_xticks(range(len(arms)), list(arms))
            ax.set_xlim(-0.6, len(arms) - 0.4)
            ax.set_title(label, fontsize=9)
        axes[0].set_ylabel("accuracy")
        ax = axes[0]
    fig.suptitle(f"{doc['finding']} ({doc['budget']}): {doc['verdict']}", fontsize=10)
    if doc["finding"] == "arithmetic":
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig, plt)


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _default_cache() -> Path:
    return cache_root()


def _resolve_data_dir(data_dir: str | None) -> Path | None:
    from mtp_bench.evaluation import resolve_data_dir

    d = resolve_data_dir(data_dir)
    if d is None:  # the checkout's sibling shared/data, where this project keeps its benchmark data
        guess = Path(__file__).resolve().parents[3] / "shared" / "data"
        d = guess if guess.is_dir() else None
    return d


# ----------------------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = f"{p.description or ''}\n\n" + __doc__.split("\n\n")[1]
    p.epilog = ("findings: " + ", ".join(FINDINGS) + "\nverdict rule (induction, arithmetic):\n  " + RULE_TEXT
                + "\nverdict rule (speedup):\n  " + SPEEDUP_RULE_TEXT + "\nverdict rule (memory):\n  " + MEMORY_RULE_TEXT)
    p.add_argument("finding", help=" | ".join(FINDINGS))
    p.add_argument("--budget", default="quick", choices=BUDGETS,
                   help="smoke (< 3 min, pipeline only) | quick (30 min on 2 CPU cores, default) | full (GPU)")
    p.add_argument("--out", default=None, metavar="DIR", help="result dir (default results/repro/FINDING-BUDGET)")
    p.add_argument("--work-dir", default=None, help="checkpoints and caches (default ~/.cache/mtp-bench/repro/FINDING-BUDGET)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (training uses bf16 on CUDA)")
    p.add_argument("--source", default="", help="induction, speedup: story file (default DATA_DIR/tinystories/...)")
    p.add_argument("--data-dir", default=None, help="benchmark data folder (default $MTP_BENCH_DATA)")
    p.add_argument("--arm", type=int, default=None, metavar="N",
                   help="train and evaluate only the arm n_future=N (parallel workers on one --work-dir)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="train and evaluate only seed S of each arm (parallel workers on one --work-dir; "
                        "not memory)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    doc = run(args.finding, args.budget, args.work_dir, args.out, args.device, args.source, args.data_dir,
              verbose=not args.quiet, argv=sys.argv[1:], only_arm=args.arm, only_seed=args.seed)
    print(doc["sentence"])
    if doc["to_conclude"]:
        print(f"to make it conclusive: {doc['to_conclude']}")
    return 0
