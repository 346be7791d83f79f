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

The package: `findings` (the claims, rule constants and budgets, as data), `rules` (the
verdicts), `pipeline` (the steps), `plots`, `cli`.
"""

from mtp_bench.commands.repro.findings import (
           BUDGETS,
           FINDINGS,
           PLANS,
           RULES,
           SCHEMA,
           TRAIN_SEED_BASE,
           VERDICTS,
           Finding,
)
from mtp_bench.commands.repro.pipeline import _arm_lock, evaluate_arm, prepare_data, run, speedup_prompt_file, train_arm
from mtp_bench.commands.repro.plots import plot
from mtp_bench.commands.repro.rules import compare, decide, decide_memory, decide_speedup, paired_interval, pool_seeds

__all__ = ["BUDGETS", "FINDINGS", "PLANS", "RULES", "SCHEMA", "TRAIN_SEED_BASE", "VERDICTS", "Finding", "_arm_lock",
           "compare", "decide", "decide_memory", "decide_speedup", "evaluate_arm", "paired_interval", "plot",
           "pool_seeds", "prepare_data", "run", "speedup_prompt_file", "train_arm"]
