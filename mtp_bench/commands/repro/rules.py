"""The verdict rules of `mtp-bench repro` (the package docstring states them): one MTP arm
against the next-token arm, the verdict of a finding, and the sentences that say it."""

from __future__ import annotations

import math
from typing import Any

from mtp_bench.commands.repro.findings import Finding
from mtp_bench.evals.induction import clustered_ratio
from mtp_bench.scoring.metrics import normal_ci95


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
