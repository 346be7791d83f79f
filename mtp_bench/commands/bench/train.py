"""`mtp-bench bench train`: peak memory and step time of one training step, n=1 vs n=4.

The paper's claim (Gloeckle et al. 2024, Section 2 and Figure 2): computing the n heads one at a
time - trunk forward once, then each head's forward+backward in turn, accumulating the gradient
at the trunk output, then one backward through the trunk - keeps only one head's (B, T, V)
logits alive, so an n=4 model trains with about the memory and time of n=1 (compute matched:
the same total number of layers). The naive backward keeps all n heads' logits alive.

Three configurations at the same size: n=1, n=4 sequential, n=4 naive. Each runs in its OWN
subprocess so its peak memory is clean:
  CPU:  peak RSS (VmHWM from /proc/self/status, reset via /proc/self/clear_refs where the
        kernel allows) minus the RSS after the model, optimizer state and batch exist.
  CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() at the same point.
Step = zero_grad + mtp_forward_backward + AdamW step; time = median over the measured steps
after warm-up. Results print as a rich table with the ratios and go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import ConfigError, UserError

TARGETS = {"mem_seq_over_n1": 1.15, "time_seq_over_n1": 1.3}  # from the issue: the sequential trick's promise
CONFIGS = [("n=1", 1, "sequential"), ("n=4 sequential", 4, "sequential"), ("n=4 naive", 4, "naive")]
# one thread: at this size extra threads only add overhead (and noise on a shared machine)
QUICK = dict(dim=64, n_layers=4, n_heads=4, vocab_size=2048, seq_len=64, batch_size=2, warmup=1, steps=3, threads=1)


# -----------------------------------------------------------------------------
# the per-process worker


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_step(spec: dict) -> dict:
    """Build one model, run warm-up + measured training steps, return memory and time figures.

    spec: dim, n_layers, n_heads, vocab_size, seq_len, batch_size, n_future, mode, warmup, steps,
    device ("cpu" | "cuda"), seed, threads (0 = torch default). Meant to run alone in a process.
    """
    import torch

    from mtp_bench.reference_model.model import ModelConfig, Transformer, mtp_forward_backward

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    torch.manual_seed(spec.get("seed", 0))
    cfg = ModelConfig(vocab_size=spec["vocab_size"], dim=spec["dim"], n_layers=spec["n_layers"],
                      n_heads=spec["n_heads"], max_seq_len=spec["seq_len"], n_future=spec["n_future"],
                      multiple_of=min(256, spec["dim"]))
    # 1) model, optimizer (state created up front so it is in the baseline), one fixed batch
    model = Transformer(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    x = torch.randint(0, cfg.vocab_size, (spec["batch_size"], spec["seq_len"]), device=device)  # (B, T)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        if amp is not None:
            with amp:
                loss, _ = mtp_forward_backward(model, x, mode=spec["mode"])
        else:
            loss, _ = mtp_forward_backward(model, x, mode=spec["mode"])
        opt.step()
        return float(loss)

    # 2) baseline memory: weights, optimizer state, batch - everything but the step itself
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        peak_reset = True
    else:
        peak_reset = _reset_peak_rss()
        baseline = _proc_status_kb("VmRSS") * 1024
    # 3) warm-up then measured steps; the peak covers all of them
    losses, times = [], []
    for i in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        losses.append(step())
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _proc_status_kb("VmHWM") * 1024
    median = statistics.median(times)
    # analytic training FLOPs per token (fwd + bwd = 3 x 2 FLOPs per multiply-add): the blocks,
    # causal attention scores, and the shared unembedding run once PER HEAD - at small d and large V
    # that last term is what makes n=4 slower than n=1, whatever the backward order
    block_params = sum(p.numel() for name, p in model.named_parameters() if name.startswith(("layers.", "extra_heads.")))
    flops_per_token = (6 * block_params + 6 * cfg.n_layers * spec["seq_len"] * cfg.dim
                       + 6 * cfg.n_future * cfg.dim * cfg.vocab_size)
    return {
        "n_future": spec["n_future"], "mode": spec["mode"], "device": str(device),
        "num_params": model.num_params(), "memory_metric": "cuda_max_allocated" if device.type == "cuda" else "rss_vmhwm",
        "peak_reset": peak_reset, "baseline_bytes": int(baseline), "peak_bytes": int(peak),
        "step_mem_bytes": int(max(0, peak - baseline)), "step_times_s": times, "median_step_s": median,
        "tokens_per_s": spec["batch_size"] * spec["seq_len"] / median, "losses": losses,
        "torch_threads": torch.get_num_threads(), "flops_per_token": flops_per_token,
    }


def _worker_entry() -> None:
    """`python -c` entry of the subprocess: spec JSON in argv[1], result JSON on the last stdout line."""
    print(json.dumps(measure_step(json.loads(sys.argv[1]))))


# -----------------------------------------------------------------------------
# the driver


def run_in_subprocess(spec: dict, timeout: float) -> dict:
    code = "from mtp_bench.commands.bench.train import _worker_entry; _worker_entry()"
    try:
        r = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"bench train: n={spec['n_future']} {spec['mode']} took over {timeout:.0f}s; "
                        "use --quick or a smaller size, or raise --timeout") from None
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"bench worker n={spec['n_future']} {spec['mode']} failed (exit {r.returncode}): {tail}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ratios(results: dict[str, dict]) -> dict[str, float]:
    n1, seq, naive = results["n=1"], results["n=4 sequential"], results["n=4 naive"]
    return {"mem_seq_over_n1": seq["step_mem_bytes"] / max(1, n1["step_mem_bytes"]),
            "time_seq_over_n1": seq["median_step_s"] / n1["median_step_s"],
            "mem_naive_over_n1": naive["step_mem_bytes"] / max(1, n1["step_mem_bytes"]),
            "time_naive_over_n1": naive["median_step_s"] / n1["median_step_s"],
            "mem_naive_over_seq": naive["step_mem_bytes"] / max(1, seq["step_mem_bytes"]),
            "flops_n4_over_n1": seq["flops_per_token"] / n1["flops_per_token"]}


def _write_json_atomic(path: Path, obj) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = """examples:
  mtp-bench bench train --quick                                  # seconds: a smoke check
  mtp-bench bench train --out results/bench-train.json           # d=512, 8 layers, V=32000, T=512 (minutes on CPU)
  mtp-bench bench train --device cuda --batch-size 16 --out results/bench-train-gpu.json
targets: n=4 sequential memory <= 1.15x n=1 and time <= 1.3x n=1; naive memory clearly higher."""
    parser.add_argument("--dim", type=int, default=512, help="model width (default 512)")
    parser.add_argument("--n-layers", type=int, default=8, help="total layers, constant across n (default 8)")
    parser.add_argument("--n-heads", type=int, default=8, help="attention heads (default 8)")
    parser.add_argument("--vocab-size", type=int, default=32000, help="vocabulary (default 32000)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per row (default 512)")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per step (default 4; fits a 24 GiB GPU)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (default 1)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps; the median is reported (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0 = torch default)")
    parser.add_argument("--quick", action="store_true", help="tiny size (d=64, V=2048, T=64) for a smoke check")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per configuration (default 1800)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")


def main(args: argparse.Namespace) -> int:
    size = dict(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, vocab_size=args.vocab_size,
                seq_len=args.seq_len, batch_size=args.batch_size, warmup=args.warmup, steps=args.steps)
    if args.quick:
        size.update(QUICK)
    if args.device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda but CUDA is not available")
    if size["n_layers"] < 4:
        raise ConfigError(f"--n-layers must be >= 4 (n=4 needs one layer per head), got {size['n_layers']}")
    if min(size["steps"], size["batch_size"], size["seq_len"] - 5, size["dim"]) < 1 or size["warmup"] < 0:
        raise ConfigError("--steps, --batch-size, --dim must be >= 1, --seq-len >= 6, --warmup >= 0")
    if args.out:  # fail on an unwritable path before minutes of work
        out = Path(args.out)
        if out.is_dir():
            raise UserError(f"--out {out} is a directory")
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise UserError(f"--out {out}: directory not writable")

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    results: dict[str, dict] = {}
    for label, n, mode in CONFIGS:
        spec = {"threads": args.threads, **size, "n_future": n, "mode": mode, "device": args.device, "seed": 0}
        with console.status(f"bench train: {label} (d={size['dim']}, V={size['vocab_size']}, B={size['batch_size']}, T={size['seq_len']})"):
            results[label] = run_in_subprocess(spec, args.timeout)
    r = ratios(results)

    mib = 2**20
    table = Table(title=f"training step: d={size['dim']} L={size['n_layers']} V={size['vocab_size']} "
                        f"B={size['batch_size']} T={size['seq_len']} on {args.device}")
    for col in ("config", "params", "step memory (MiB)", "peak (MiB)", "median step (s)", "tokens/s"):
        table.add_column(col, justify="right" if col != "config" else "left")
    for label, res in results.items():
        table.add_row(label, f"{res['num_params']:,}", f"{res['step_mem_bytes'] / mib:,.0f}", f"{res['peak_bytes'] / mib:,.0f}",
                      f"{res['median_step_s']:.3f}", f"{res['tokens_per_s']:,.0f}")
    out_console = Console()
    out_console.print(table)
    ok_mem = r["mem_seq_over_n1"] <= TARGETS["mem_seq_over_n1"]
    ok_time = r["time_seq_over_n1"] <= TARGETS["time_seq_over_n1"]
    out_console.print(f"n=4 sequential / n=1: memory {r['mem_seq_over_n1']:.2f}x (target <= 1.15: {'met' if ok_mem else 'MISSED'}), "
                      f"time {r['time_seq_over_n1']:.2f}x (target <= 1.3: {'met' if ok_time else 'MISSED'})")
    out_console.print(f"n=4 naive / n=1:      memory {r['mem_naive_over_n1']:.2f}x, time {r['time_naive_over_n1']:.2f}x "
                      f"(naive / sequential memory {r['mem_naive_over_seq']:.2f}x)")
    unembed_share = 6 * size["dim"] * size["vocab_size"] / results["n=1"]["flops_per_token"]
    out_console.print(f"analytic FLOPs n=4 / n=1: {r['flops_n4_over_n1']:.2f}x (the unembedding is {unembed_share:.0%} of "
                      "n=1's compute at this size; every head runs it)")
    out_console.print("step memory = peak during the steps minus weights, optimizer state and batch "
                      + ("(CUDA allocator)" if args.device == "cuda" else "(process RSS, VmHWM)"))
    if args.out:
        import torch

        from mtp_bench.api.version import __version__

        _write_json_atomic(Path(args.out), {
            "benchmark": "train", "size": size, "device": args.device, "results": results, "ratios": r,
            "targets": TARGETS, "targets_met": {"mem_seq_over_n1": ok_mem, "time_seq_over_n1": ok_time},
            "provenance": {"mtp_bench": __version__, "torch": torch.__version__, "python": platform.python_version(),
                           "platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "command": " ".join(["mtp-bench"] + sys.argv[1:])},
        })
        out_console.print(f"wrote {args.out}")
    return 0
