"""`mtp-bench repro FINDING --budget B --plan`: what a run would train, as JSON, without training.

Per arm: parameters, training tokens (steps x batch x window), distinct training tokens (the
corpus the trainer windows: the stories x name passes, or the generated problems), epochs over
it, whether names are redrawn on each pass, and the estimated time on a CPU and on one H200
(`findings.THROUGHPUT`, scaled by the parameters it was measured at; an estimate, not a promise).
Distinct tokens are counted from the story file when it is there (the byte tokenizer: one token a
byte, one EOS a document), else from the shipped 2 MiB sample's measured size; arithmetic
problems are 70.2 bytes on average (measured over 10,000, every m), so they are not generated.
"""

from __future__ import annotations

from pathlib import Path

from mtp_bench.api.errors import UserError
from mtp_bench.commands.repro.findings import (
    BUDGETS,
    FINDINGS,
    GPU_MINUTES,
    MAX_EPOCHS,
    PLANS,
    THROUGHPUT,
    THROUGHPUT_PARAMS,
)

SAMPLE_TRAIN_BYTES = 1_834_754  # TinyStories-train_first2MiB.txt: its training stories (bucket >= 0.1), + 1 EOS each
ARITHMETIC_BYTES_PER_PROBLEM = 70.2  # + 1 EOS, measured over 10,000 training problems of m = 1..5


def _parameters(train: dict, n_future: int) -> int:
    """The arm's parameter count, from its config on the meta device (nothing allocated)."""
    import torch

    from mtp_bench.reference_model import train as T
    from mtp_bench.reference_model.model import Transformer
    from mtp_bench.reference_model.tokenizer import byte_tokenizer

    cfg = T.make_config(None, {**train, "n_future": n_future})
    with torch.device("meta"):
        model = Transformer(cfg.model_config(byte_tokenizer().vocab_size))
    return sum(p.numel() for p in model.parameters())


def _story_bytes(source: str | None) -> tuple[int, str]:
    if source and Path(source).is_file():
        from mtp_bench.evals import induction as I

        stories, _ = I.resolve_source(source, None)
        train, _ = I.split_stories(stories, 0.1)
        return sum(len(s.encode()) + 1 for s in train), f"counted in {source}"
    return SAMPLE_TRAIN_BYTES, "the 2 MiB TinyStories sample's measured size (no story file given)"


def describe(finding: str, budget: str, source: str | None = None) -> dict:
    """The plan of `repro FINDING --budget BUDGET` as a JSON-able dict (module docstring)."""
    if finding not in FINDINGS:
        raise UserError(f"unknown finding {finding!r}; findings: {', '.join(FINDINGS)}")
    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")
    if finding == "memory":
        raise UserError("repro memory trains nothing, so it has no plan: it measures `bench train` steps "
                        f"at the sizes in findings.PLANS['memory'] ({budget}: {PLANS['memory'][budget]['size']})")
    f, plan = FINDINGS[finding], PLANS[finding][budget]
    train = plan["train"]
    data = plan["data"]
    passes = int(data.get("name_passes", 1))
    if finding == "arithmetic":
        n_docs = 5 * data["n_train_per_m"]
        corpus, how = round(n_docs * ARITHMETIC_BYTES_PER_PROBLEM), "estimated: problems x 70.2 bytes"
    else:
        corpus, how = _story_bytes(source)
        if data.get("max_train_stories"):
            corpus = round(corpus * min(1.0, data["max_train_stories"] / 2070))  # the sample's 2070 training stories
            how += f", first {data['max_train_stories']} stories (scaled)"
        corpus *= passes
    distinct = round(corpus * (1 - train.get("val_fraction", 0.0)))
    tokens = train["max_steps"] * train["batch_size"] * train.get("grad_accum", 1) * train["seq_len"]
    arms, total = [], {"cpu": 0.0, "h200": 0.0}
    for n in f.arms:
        params = _parameters(train, n)
        est = {}
        for dev in ("cpu", "h200"):
            scale = THROUGHPUT_PARAMS[dev][finding] / params
            rate = THROUGHPUT[dev][finding] * (min(1.0, scale) if dev == "h200" else scale)
            est[dev] = round(tokens / rate, 1)
            total[dev] += est[dev] * len(plan["seeds"])
        arms.append({"arm": f"n={n}", "n_future": n, "parameters": params, "training_tokens": tokens,
                     "distinct_training_tokens": distinct, "epochs": round(tokens / distinct, 2),
                     "names_redrawn_each_pass": finding == "induction" and passes > 1, "name_passes": passes,
                     "estimated_train_s": est})
    return {"finding": finding, "budget": budget, "claim": f.claim, "seeds": list(plan["seeds"]),
            "runs": len(f.arms) * len(plan["seeds"]), "arms": arms,
            "distinct_tokens_from": how, "max_epochs_rule": MAX_EPOCHS if finding != "speedup" else None,
            "estimated_train_s_all_runs": {k: round(v, 1) for k, v in total.items()},
            "gpu_budget_minutes": GPU_MINUTES if budget == "gpu" else None,
            "throughput_tokens_per_s": {dev: {"measured": THROUGHPUT[dev][finding],
                                              "at_parameters": THROUGHPUT_PARAMS[dev][finding]}
                                        for dev in ("cpu", "h200")},
            "train": dict(train), "data": dict(data), "eval": plan.get("eval")}
