"""HumanEval+ and MBPP+ (EvalPlus, Liu et al. 2023): data, ground truth and differential testing
in the mtp-bench sandbox, and `mtp-bench exec --dataset humaneval_plus|mbpp_plus`.

Data: EvalPlus's release files, found as DIR/evalplus/FILE, DIR/FILE or DIR being the file, for DIR
in the given data dirs then $MTP_BENCH_DATA (nothing found -> DataError listing where it looked):

    humaneval_plus  HumanEvalPlus-v0.1.10.jsonl.gz  164 problems
    mbpp_plus       MbppPlus-v0.2.0.jsonl.gz        378 problems

Each problem has `base_input` (the original benchmark's test inputs) and `plus_input` (EvalPlus's
extra ones), argument lists in JSON; MBPP+ turns some of them into tuples, sets or complex numbers
before the call (`MBPP_INPUT_KINDS`, the table of EvalPlus's `mbpp_deserialize_inputs`).

The semantics are EvalPlus's `evaluate` (v0.3.1), re-implemented here:

    1) ground truth: the canonical solution (prompt + canonical_solution) runs on every input; its
       outputs and per-input wall times are the oracle. It runs in the sandbox too (one program
       per problem, the outputs pickled and returned base64 on stdout, never unpickled by the
       harness), and is cached in ~/.cache/mtp-bench/evalplus/ by the data file's sha256.
    2) a sample is checked twice, on the base inputs and on the plus inputs, each time by one
       sandboxed run split in two processes (`mtp_bench.judge`): the candidate process execs the
       solution in fresh globals with stdout/stderr swallowed and serves calls of the entry point;
       the judge process holds the inputs and expected outputs, calls the entry point on each
       input in order (each call a request, its arguments and result crossing as plain data,
       `mtp_bench.wire`), compares, and stops at the first input that fails:
       - time limit per input: max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR x the canonical time)
         (4 s and 4x, EvalPlus's defaults), by SIGALRM; the whole program has
         min(60, sum of the limits) + 2 s of wall clock, as EvalPlus joins its process, except
         that the 60 s cap grows to 4x the canonical solution's total time when that is more
         (`program_timeout`: on a slow or loaded machine Mbpp/599's canonical solution alone
         needs more than 60 s, and it could never pass)
       - the output matches when it equals the expected one; else, when the problem has an
         `atol` (or the expected value is a float or a list/tuple of floats, when atol becomes
         1e-6 for this and every later input, as in EvalPlus), when it has the expected type and
         length and numpy.allclose(out, exp, rtol=1e-7, atol=atol) holds
       - an expected output whose pickle exceeds BIG_OUTPUT_BYTES (1 MiB: a few inputs of
         HumanEval/15, /130, Mbpp/255...) is shipped as the sha256 of its pickle (protocol 4, no
         memo) and matches only an output that pickles alike: same types and value, no atol, no
         oracle (stricter than EvalPlus's ==, e.g. for a set built in another order); judged
         apart, only the digest of the candidate's output crosses for such an input
       - EvalPlus's special oracles: HumanEval/32 find_zero passes when |poly(xs, out)| <= atol;
         MBPP+ set-equality tasks (`MBPP_SET_EQ`), not-None tasks (`MBPP_NOT_NONE`, whose oracle
         is "returns something"), are_equivalent (always), sum_div (0 accepted), surface_Area and
         digit_distance_nums (a second reference formula accepted)
    3) base pass = every base input matches; base+plus pass = base pass and every plus input matches.

Samples: `{task_id, solution}` (a full program) or `{task_id, completion}` (appended to the prompt),
EvalPlus's format. Differences from EvalPlus: the isolation is mtp-bench's sandbox (namespaces,
4 GiB address space, as EvalPlus; EvalPlus adds `reliability_guard`, which disables os.system,
subprocess and the like inside the program), and the verdict comes from a judge process the
solution cannot reach: EvalPlus compares in the solution's own process, where a solution can read
the expected outputs off its caller's frame or return an object whose `__eq__` always says True.
A consequence: an output must be plain data (numbers, strings, bytes, the builtin containers,
Counter/OrderedDict/defaultdict/deque); a solution returning, say, a numpy array or its own class
fails where EvalPlus might accept it. A task is split only when its canonical solution passes
judged apart (`judge_plan`, cached with the ground truth); the others (none in either release, see
the README) are checked in one process, marked `isolation: single-process` and counted.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
import symtable
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import ConfigError, DataError, UnknownNameError
from mtp_bench.api.paths import cache_dir, data_dirs
from mtp_bench.api.registry import EvalOutput, Evaluator

FILES = {"humaneval_plus": ("HumanEvalPlus-v0.1.10.jsonl.gz", 164), "mbpp_plus": ("MbppPlus-v0.2.0.jsonl.gz", 378)}
MIN_TIME_LIMIT_S = 4.0  # EvalPlus's DEFAULT_MIN_TIME_LIMIT
TIME_LIMIT_FACTOR = 4.0  # EvalPlus's DEFAULT_GT_TIME_LIMIT_FACTOR
TASK_TIMEOUT_CAP_S = 60.0  # EvalPlus's EVALPLUS_TIMEOUT_PER_TASK default
GROUND_TRUTH_TIMEOUT_S = 300.0  # one canonical solution on all of its inputs (Mbpp/255: ~15 s idle)
BIG_OUTPUT_BYTES = 1 << 20  # expected outputs whose pickle is larger are shipped as a sha256 digest
CHECK_MEMORY_MB = 4096  # address space of a check program: EvalPlus's 4 GiB (the sandbox's default is 2)
GROUND_TRUTH_VERSION = "2"  # bump when the ground-truth program changes (invalidates the cache)
JUDGE_PLAN_VERSION = "3"  # bump when the judged check program changes (invalidates `judge_plan`'s cache)

MBPP_SET_EQ = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
               "intersection_array", "find_dissimilar", "Diff")
MBPP_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")

# MBPP+ task number -> how its JSON arguments become the call's arguments (see _PREPARE below)
_KINDS: dict[str, tuple[int, ...]] = {
    "tuple_args": (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726,
                   740, 744, 809),
    "tuples_in_args": (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),
    "tuples_in_first": (75, 413, 444, 753),
    "tuple_second": (106, 750),
    "sets_in_first": (115,),
    "float_complex": (124,),
    "tuple_first": (250, 405, 446, 617, 720, 763, 808),
    "tuple_of_tuples": (259, 401, 445),
    "tuple_of_mixed": (278,),
    "tuple_first_of_three": (307,),
    "dict_of_tuples": (722,),
    "complex_first": (252,),
    "all_tuples": (580, 615, 791),
}
MBPP_INPUT_KINDS: dict[int, str] = {n: kind for kind, ns in _KINDS.items() for n in ns}

# Runs inside the sandbox: the argument lists of one problem as the calls receive them, and the
# digest that stands in for an expected output too large to ship (BIG_OUTPUT_BYTES).
_PREPARE = r'''
def _digest(x):
    import hashlib, pickle
    h, size = hashlib.sha256(), [0]
    class _Sink:
        def write(self, b):
            h.update(b)
            size[0] += len(b)
    p = pickle.Pickler(_Sink(), protocol=4)
    p.fast = True  # no memo: equal values pickle alike whatever objects they share
    p.dump(x)
    return h.hexdigest(), size[0]

def _prepare(kind, inputs):
    def tup_all(x):
        return tuple(tup_all(v) for v in x) if isinstance(x, list) else x
    if kind is None:
        return inputs
    if kind == "tuple_args":
        return [[tuple(a) for a in inp] for inp in inputs]
    if kind == "tuples_in_args":
        return [[[tuple(x) for x in a] for a in inp] for inp in inputs]
    if kind == "tuples_in_first":
        return [[[tuple(x) for x in inp[0]], inp[1]] for inp in inputs]
    if kind == "tuple_second":
        return [[inp[0], tuple(inp[1])] for inp in inputs]
    if kind == "sets_in_first":  # an empty list becomes {} (a dict), as in EvalPlus
        return [[[set(x) if isinstance(x, list) and len(x) else {} for x in inp[0]]] for inp in inputs]
    if kind == "float_complex":
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if kind == "tuple_first":
        return [[tuple(inp[0]), inp[1]] for inp in inputs]
    if kind == "tuple_of_tuples":
        return [[tuple(tuple(x) for x in a) for a in inp] for inp in inputs]
    if kind == "tuple_of_mixed":
        return [[tuple(tuple(x) if isinstance(x, list) else x for x in inp[0])] for inp in inputs]
    if kind == "tuple_first_of_three":
        return [[tuple(inp[0]), inp[1], inp[2]] for inp in inputs]
    if kind == "dict_of_tuples":
        return [[{k: tuple(v) for k, v in inp[0].items()}] + inp[1:] for inp in inputs]
    if kind == "complex_first":
        return [[complex(inp[0])] for inp in inputs]
    if kind == "all_tuples":
        return [tup_all(inp) for inp in inputs]
    raise ValueError("unknown input kind " + repr(kind))
'''

_MARK = "\n@@evalplus-ground-truth@@"  # the ground truth's JSON follows the last one on stdout
_GROUND_TRUTH = r'''
import base64, copy, json, pickle, sys, time
_MARK = "\n@@evalplus-ground-truth@@"
_ns = {}
exec(compile(__SOLUTION__, "<canonical>", "exec"), _ns)
_fn = _ns[__ENTRY__]
_result = {}
for _part, _raw in (("base", __BASE__), ("plus", __PLUS__)):
    _outs, _times, _digests = [], [], {}
    for _i, _inp in enumerate(_prepare(__KIND__, json.loads(_raw))):
        _inp = copy.deepcopy(_inp)
        _t0 = time.time()
        _out = _fn(*_inp)
        _times.append(time.time() - _t0)
        if __NOT_NONE__:
            _out = _out is not None
        _d, _size = _digest(_out)
        if _size > __BIG__:
            _digests[str(_i)], _out = _d, None
        _outs.append(_out)
        del _out
    _result[_part] = base64.b64encode(pickle.dumps(_outs)).decode()
    _result[_part + "_time"] = _times
    _result[_part + "_digest"] = _digests
sys.stdout.write(_MARK + json.dumps(_result))
'''

# The check of one part (base or plus) of one sample. Judged apart (the default), the candidate
# process holds only the solution (_CANDIDATE) and the judge runs _CHECK_SETUP + _CHECK_LOOP, every
# call of the entry point a request to the candidate whose answer crosses as plain data
# (mtp_bench.wire): the expected outputs, the comparison and the verdict never share a process with
# the solution. In one process (the fallback, `judge_plan`), _CHECK_LOAD execs the solution beside them.
_CANDIDATE = r'''
import sys as _sys

class _Sink:
    def write(self, s):
        return len(s)
    def flush(self):
        pass

_sys.stdout = _sys.stderr = _Sink()  # EvalPlus swallows the solution's output, at load and in calls
_ns = {}
exec(compile(__SOLUTION__, "<solution>", "exec"), _ns)  # fresh globals, as EvalPlus execs it
if __ENTRY__ in _ns:
    globals()[__ENTRY__] = _ns[__ENTRY__]
    if __NOT_NONE__:  # only "returned something" is compared: a bool crosses, not the object (a re.Match)
        def _as_bool(*args, _fn=_ns[__ENTRY__], **kwargs):
            out = _fn(*args, **kwargs)
            return out if isinstance(out, bool) else out is not None
        globals()[__ENTRY__] = _as_bool

    def _mtp_digest_call(*args, _fn=globals()[__ENTRY__]):
        """An output too large to cross (the expected one is a digest): only its digest crosses. To
        forge a pass, the digest would have to be the expected one, which only the judge holds."""
        return _digest(_fn(*args))[0]
'''

_CHECK_SETUP = r'''
import base64, json, math, pickle, signal, sys
_DATASET, _ENTRY, _PART = __DATASET__, __ENTRY__, __PART__
_inputs = _prepare(__KIND__, json.loads(__INPUTS__))
_expected = pickle.loads(base64.b64decode(__EXPECTED__))
_limits = __LIMITS__
_digests = __DIGESTS__
_atol = __ATOL__

class _Sink:
    def write(self, s):
        return len(s)
    def flush(self):
        pass

class _InputTimeout(Exception):
    pass

def _alarm(signum, frame):
    raise _InputTimeout()

def _is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(v, float) for v in x)
    if type(x).__module__ == "numpy" and type(x).__name__ == "ndarray":
        return str(x.dtype) in ("float64", "float32")
    return False

def _poly(xs, x):
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))

def _surface_area(base_edge, height):
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 4 * (base_edge * slant) / 2)

def _digit_distance(a, b):
    sa, sb = str(a), str(b)
    n = max(len(sa), len(sb))
    return sum(abs(int(x) - int(y)) for x, y in zip(sa.zfill(n), sb.zfill(n)))

_out_streams = (sys.stdout, sys.stderr)
'''

_CHECK_LOAD = r'''
sys.stdout = sys.stderr = _Sink()
_ns = {}
exec(compile(__SOLUTION__, "<solution>", "exec"), _ns)
sys.stdout, sys.stderr = _out_streams
if _ENTRY not in _ns:
    raise NameError(_ENTRY + " is not defined by the solution")
_fn = _ns[_ENTRY]
_digest_call = lambda *args: _digest(_fn(*args))[0]
'''

_CHECK_JUDGED = r'''
_fn = globals()[_ENTRY]  # the proxy: a call is a request to the candidate process
_digest_call = globals()["_mtp_digest_call"]  # the same call, answered with the digest of its output
'''

_CHECK_LOOP = r'''
signal.signal(signal.SIGALRM, _alarm)
for _i, _inp in enumerate(_inputs):
    _where = _PART + " input " + str(_i)
    sys.stdout = sys.stderr = _Sink()
    signal.setitimer(signal.ITIMER_REAL, _limits[_i])
    try:
        _out = (_digest_call if str(_i) in _digests else _fn)(*_inp)
    except _InputTimeout:
        raise TimeoutError(_where + ": over its time limit of " + str(_limits[_i]) + " s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout, sys.stderr = _out_streams
    if str(_i) in _digests:  # too large to ship: the same pickle (type and value), no oracle or atol
        assert _out == _digests[str(_i)], _where + ": output differs (compared by digest)"
        continue
    _exp = _expected[_i]
    _same = _out == _exp
    if _DATASET == "mbpp_plus":
        if _ENTRY == "are_equivalent":
            _same = True
        elif _ENTRY == "sum_div":
            _same = _same or _out == 0
        elif _ENTRY == "surface_Area":
            _same = _same or abs(_out - _surface_area(*_inp)) <= _atol
        elif _ENTRY == "digit_distance_nums":
            _same = _same or _out == _digit_distance(*_inp)
        elif _ENTRY in __SET_EQ__:
            _same = set(_out) == set(_exp)
        elif _ENTRY in __NOT_NONE__:
            _same = (_out == _exp) if isinstance(_out, bool) else (_exp == (_out is not None))
    if _DATASET == "humaneval_plus" and _ENTRY == "find_zero":
        assert abs(_poly(*_inp, _out)) <= _atol, _where + ": not a zero of the polynomial"
        continue
    if _atol == 0 and _is_floats(_exp):
        _atol = 1e-6
    if not _same and _atol != 0:
        assert type(_out) == type(_exp), _where + ": output of the wrong type"
        if isinstance(_exp, (list, tuple)):
            assert len(_out) == len(_exp), _where + ": output of the wrong length"
        import numpy
        assert numpy.allclose(_out, _exp, rtol=1e-07, atol=_atol), _where + ": output differs beyond atol"
    else:
        assert _same, _where + ": output differs"
'''
ISOLATIONS = ("judge", "single-process")


# -----------------------------------------------------------------------------
# data


def data_file(dataset: str, data_dir=None) -> Path:
    """Where the dataset's release file is (DataError naming every place looked at when nowhere)."""
    if dataset not in FILES:
        raise UnknownNameError(f"unknown EvalPlus dataset {dataset!r}; known: {', '.join(FILES)}")
    name = FILES[dataset][0]
    looked = []
    for d in data_dirs(data_dir):
        looked += [d] if d.is_file() else [d / "evalplus" / name, d / name]
    for p in looked:
        if p.is_file():
            from mtp_bench.execution.pool import hide_path

            hide_path(p)  # its canonical solutions and inputs: never visible to the sandboxed programs
            return p
    where = "looked in " + ", ".join(map(str, looked)) if looked else "no data directory was given"
    raise DataError(f"{dataset} data not found: {where}. Provide {name} with --data-dir DIR or "
                    f"MTP_BENCH_DATA=DIR (as DIR/evalplus/{name})")


def load_problems(dataset: str, data_dir=None) -> dict[str, dict]:
    """task_id -> problem (task_id, prompt, entry_point, canonical_solution, base_input, plus_input,
    atol, ...), in file order; every problem also gets `sha256` of the file it came from."""
    path = data_file(dataset, data_dir)
    raw = path.read_bytes()
    try:
        text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"could not read {dataset} from {path}: {type(e).__name__}: {e}") from None
    need = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")
    problems: dict[str, dict] = {}
    for i, row in enumerate(rows, 1):
        missing = [k for k in need if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataError(f"{path}: record {i} lacks {', '.join(missing)}")
        problems[row["task_id"]] = row
    expected = FILES[dataset][1]
    if len(problems) != expected:
        raise DataError(f"{path}: expected {expected} {dataset} problems, found {len(problems)}")
    digest = hashlib.sha256(raw).hexdigest()
    for p in problems.values():
        p["sha256"] = digest
    return problems


def input_kind(dataset: str, task_id: str) -> str | None:
    if dataset != "mbpp_plus":
        return None
    return MBPP_INPUT_KINDS.get(int(task_id.split("/")[-1]))


# -----------------------------------------------------------------------------
# ground truth


def ground_truth_program(dataset: str, problem: dict) -> str:
    """The trusted program of step 1: canonical outputs (pickled, base64) and times as JSON on stdout."""
    fill = {
        "__SOLUTION__": repr(problem["prompt"] + problem["canonical_solution"]),
        "__ENTRY__": repr(problem["entry_point"]),
        "__BASE__": repr(json.dumps(problem["base_input"])),
        "__PLUS__": repr(json.dumps(problem["plus_input"])),
        "__KIND__": repr(input_kind(dataset, problem["task_id"])),
        "__NOT_NONE__": repr(dataset == "mbpp_plus" and problem["entry_point"] in MBPP_NOT_NONE),
        "__BIG__": repr(BIG_OUTPUT_BYTES),
    }
    return _PREPARE + _substitute(_GROUND_TRUTH, fill)


def _substitute(template: str, fill: dict[str, str]) -> str:
    """Fill the placeholders in one pass, so a value that happens to contain one stays as it is."""
    return re.sub("|".join(map(re.escape, fill)), lambda m: fill[m.group(0)], template)


def _cache_dir() -> Path:
    return cache_dir("evalplus")


def _cache_path(dataset: str, digest: str, suffix: str = "") -> Path:
    """Where a data file's (sha256 `digest`) ground truth, or what is derived from it, is cached."""
    py = "".join(map(str, sys.version_info[:2]))
    return _cache_dir() / f"{dataset}-{digest[:16]}-py{py}-v{GROUND_TRUTH_VERSION}{suffix}.json"


def _read_cache(path: Path, use: bool) -> dict:
    """A cached JSON object, or {} when not used, absent, torn or foreign (then recomputed)."""
    if not use or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_cache(path: Path, obj: dict) -> None:
    from mtp_bench.api.atomic import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:
        fh.write(json.dumps(obj))


def ground_truth(dataset: str, problems: dict[str, dict], task_ids: list[str] | None = None,
                 workers: int | None = None, cache: bool = True, progress=None) -> dict[str, dict]:
    """task_id -> {"base", "plus" (base64 pickles of the expected outputs), "base_time", "plus_time"}
    for `task_ids` (default: every problem).

    Computed in the sandbox and cached by the data file's sha256 (only missing tasks are computed);
    a canonical solution that fails to run is a DataError (the data is broken, not a model)."""
    from mtp_bench.execution.pool import SandboxConfig, run_programs

    ids = list(problems) if task_ids is None else list(task_ids)
    path = _cache_path(dataset, problems[ids[0]]["sha256"])
    truth: dict[str, dict] = _read_cache(path, cache)
    todo = [t for t in ids if t not in truth]
    if todo:
        config = SandboxConfig(timeout_s=GROUND_TRUTH_TIMEOUT_S, max_output_bytes=256 << 20, memory_mb=4096)
        results = run_programs([ground_truth_program(dataset, problems[t]) for t in todo], config=config,
                               workers=workers, progress=progress)
        for tid, res in zip(todo, results):
            if not res.passed or _MARK not in res.stdout:
                raise DataError(f"{dataset} {tid}: the canonical solution did not run to completion "
                                f"({res.status}: {res.detail})")
            truth[tid] = json.loads(res.stdout.rsplit(_MARK, 1)[1])
        if cache:
            _write_cache(path, truth)
    return {t: truth[t] for t in ids}


# -----------------------------------------------------------------------------
# checking samples


def time_limits(ref_times: list[float]) -> list[float]:
    """Per-input limits, EvalPlus's: max(4 s, 4 x the canonical time).

    >>> time_limits([0.001, 2.0])
    [4.0, 8.0]
    """
    return [max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR * t) for t in ref_times]


def program_timeout(limits: list[float], ref_times: list[float], cap_s: float = TASK_TIMEOUT_CAP_S) -> float:
    """Wall clock for one check program: min(cap, sum of the limits) + 2 s, as EvalPlus joins its
    process, where cap = max(cap_s, TIME_LIMIT_FACTOR x the canonical solution's total time): EvalPlus
    caps at 60 s, which a canonical solution that itself needs 15 s or more on this machine (Mbpp/599,
    sums of ranges of 10^8, under load) cannot meet.

    >>> program_timeout([4.0] * 3, [0.0] * 3), program_timeout([4.0] * 100, [0.0] * 100)
    (14.0, 62.0)
    >>> program_timeout([8.0] * 20, [2.0] * 20)
    162.0
    """
    cap = max(cap_s, TIME_LIMIT_FACTOR * sum(ref_times))
    return min(cap, sum(limits)) + 2.0


def check_program(dataset: str, problem: dict, truth: dict, solution: str, part: str,
                  cap_s: float = TASK_TIMEOUT_CAP_S, isolation: str = "judge"):
    """The sandboxed program of step 2 for one part ("base" or "plus"), and its wall-clock timeout.

    isolation "judge" (the default): a `Program` whose candidate process holds only the solution and
    whose judge process holds the inputs, the expected outputs and the comparison; "single-process":
    one program text with all of it (the fallback for problems `judge_plan` cannot split)."""
    from mtp_bench.execution.judge import Program

    if part not in ("base", "plus"):
        raise ConfigError(f"part must be 'base' or 'plus', got {part!r}")
    if isolation not in ISOLATIONS:
        raise ConfigError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    ref_times = truth[problem["task_id"]][f"{part}_time"]
    limits = time_limits(ref_times)
    fill = {
        "__DATASET__": repr(dataset), "__ENTRY__": repr(problem["entry_point"]), "__PART__": repr(part),
        "__KIND__": repr(input_kind(dataset, problem["task_id"])),
        "__INPUTS__": repr(json.dumps(problem[f"{part}_input"])),
        "__EXPECTED__": repr(truth[problem["task_id"]][part]),
        "__LIMITS__": repr(limits), "__ATOL__": repr(problem["atol"]),
        "__DIGESTS__": repr(truth[problem["task_id"]][f"{part}_digest"]),
        "__SET_EQ__": repr(MBPP_SET_EQ), "__NOT_NONE__": repr(MBPP_NOT_NONE),
        "__SOLUTION__": repr(solution),
    }
    timeout = program_timeout(limits, ref_times, cap_s)
    if isolation == "single-process":
        return _PREPARE + _substitute(_CHECK_SETUP + _CHECK_LOAD + _CHECK_LOOP, fill), timeout
    tests = _PREPARE + _substitute(_CHECK_SETUP + _CHECK_JUDGED + _CHECK_LOOP, fill)
    not_none = dataset == "mbpp_plus" and problem["entry_point"] in MBPP_NOT_NONE
    candidate = _PREPARE + _substitute(_CANDIDATE, {"__SOLUTION__": fill["__SOLUTION__"], "__ENTRY__": fill["__ENTRY__"],
                                         "__NOT_NONE__": repr(not_none)})
    return Program(candidate, tests, names=(problem["entry_point"], "_mtp_digest_call")), timeout


def _splittable(entry: str) -> str | None:
    """Why a problem's entry point cannot be proxied by name in the judge, or None."""
    if not entry.isidentifier():
        return f"the entry point {entry!r} is not an identifier"
    if entry in _judge_names() or entry == "_mtp_digest_call":
        return f"the entry point {entry!r} is a name of the judge's check program"
    return None


@functools.lru_cache(maxsize=1)
def _judge_names() -> frozenset[str]:
    """Every name the judged check program binds at module level (its helpers, loop variables)."""
    table = symtable.symtable(_PREPARE + _CHECK_SETUP + _CHECK_JUDGED + _CHECK_LOOP, "<check>", "exec")
    return frozenset(s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace())


def judge_plan(dataset: str, problems: dict[str, dict], truth: dict[str, dict], task_ids: list[str],
               workers: int | None = None, cache: bool = True) -> dict[str, str]:
    """task_id -> why its samples must be checked in one process, for the tasks that cannot be split.

    Decided from the dataset alone, never from a sample: a task is split (judged apart) when its
    canonical solution passes the judged check on its base and plus inputs, i.e. when every output
    it returns crosses between processes as plain data and compares as it did in its own process.
    A canonical solution that fails judged apart for another reason than a time limit falls back,
    with that failure as the reason. Cached beside the ground truth (by the data file's sha256)."""
    digest = problems[task_ids[0]]["sha256"] if task_ids else ""
    path = _cache_path(dataset, digest, f"-judge{JUDGE_PLAN_VERSION}")
    plan: dict[str, str | None] = _read_cache(path, cache)
    todo = [t for t in task_ids if t not in plan]
    plan.update({t: _splittable(problems[t]["entry_point"]) for t in todo})
    check = [t for t in todo if plan[t] is None]
    verdicts = check_solutions(dataset, problems, truth,
                               [(t, problems[t]["prompt"] + problems[t]["canonical_solution"]) for t in check], workers)
    for tid, v in zip(check, verdicts):
        fail = next((v[p] for p in ("base", "plus") if not v[p]["passed"] and v[p]["status"] != "timeout"), None)
        if fail is not None:
            plan[tid] = f"the canonical solution fails judged apart: {fail['detail']}"[:300]
    if cache and todo:
        _write_cache(path, plan)
    return {t: plan[t] for t in task_ids if plan[t]}


def check_solutions(dataset: str, problems: dict[str, dict], truth: dict[str, dict],
                    samples: list[tuple[str, str]], workers: int | None = None, cache_dir: Path | None = None,
                    bar=None, cap_s: float = TASK_TIMEOUT_CAP_S, single_process: dict[str, str] | None = None) -> list[dict]:
    """Verdicts of (task_id, solution) samples, in order: {"base": verdict, "plus": verdict} with each
    verdict as mtp_bench.passk.execute gives it (passed, status, detail, duration_s, isolation);
    "plus" is the plus inputs alone, so a sample's base+plus pass is base["passed"] and plus["passed"].

    Every task is judged apart except those in `single_process` (task_id -> reason, `judge_plan`).
    Programs are grouped by their timeout and run through `passk.execute` (identical programs run
    once; verdicts cached in `cache_dir` when given, so a resumed run executes nothing twice)."""
    from mtp_bench.scoring.passk import execute

    single_process = single_process or {}
    jobs: dict[float, list[tuple[int, str, object]]] = {}  # timeout -> [(sample index, part, program)]
    for i, (tid, solution) in enumerate(samples):
        isolation = "single-process" if tid in single_process else "judge"
        for part in ("base", "plus"):
            program, timeout = check_program(dataset, problems[tid], truth, solution, part, cap_s, isolation)
            jobs.setdefault(timeout, []).append((i, part, program))
    out: list[dict] = [{} for _ in samples]
    for timeout, group in sorted(jobs.items()):
        cache_path = None if cache_dir is None else Path(cache_dir) / f"{dataset}-exec-{timeout:g}s.jsonl"
        verdicts = execute([p for _, _, p in group], timeout, workers, cache_path, bar=bar,
                           memory_mb=CHECK_MEMORY_MB)
        for (i, part, _), v in zip(group, verdicts):
            out[i][part] = v
    return out


def generate_check_score(evaluator, model, ctx, dataset: str, problems: dict[str, dict], task_ids: list[str],
                         prompts: dict[str, str], stop: tuple[str, ...], to_solution) -> tuple[list[dict], dict, dict]:
    """The plus evaluators' pipeline, as `passk.generate_execute_score` but checked EvalPlus's way.

    1) generate every sampling run of the protocol (cached and resumable through ctx.generate)
    2) ground truth for these tasks (cached), then every sample's solution (`to_solution(task_id,
       generated text)`) checked on the base inputs and on the plus inputs (verdicts cached)
    3) score: base_pass@k (base inputs) and plus_pass@k (base + plus inputs) per run, best run per k
    Returns (records, metrics, info)."""
    from mtp_bench.execution.pool import isolation_report
    from mtp_bench.scoring.passk import generate_runs, score

    cfg = evaluator.config
    # 1)
    runs, skipped, generated, truncated, max_new = generate_runs(evaluator, model, ctx, task_ids, prompts, stop)
    samples = [(r, q.sample_id, q.sample_index, g.text, g.finish_reason) for r, q, g in generated]
    # 2)
    truth = ground_truth(dataset, problems, task_ids, workers=cfg.workers)
    single = judge_plan(dataset, problems, truth, task_ids, workers=cfg.workers)
    solutions = [to_solution(tid, text) for _, tid, _, text, _ in samples]
    with ctx.progress(f"{evaluator.name} [{ctx.role}]: execute", 2 * len(samples)) as bar:
        verdicts = check_solutions(dataset, problems, truth, [(s[1], sol) for s, sol in zip(samples, solutions)],
                                   cfg.workers, Path(ctx.work_dir), bar, cap_s=cfg.timeout_s, single_process=single)
    # 3)
    base = {r.temperature: {tid: [] for tid in task_ids} for r in runs}
    plus = {r.temperature: {tid: [] for tid in task_ids} for r in runs}
    for (r, tid, *_), v in zip(samples, verdicts):
        base[r.temperature][tid].append(v["base"]["passed"])
        plus[r.temperature][tid].append(v["base"]["passed"] and v["plus"]["passed"])
    base_metrics, base_info = score(runs, base)
    plus_metrics, plus_info = score(runs, plus)
    metrics = {}
    for name in base_metrics:  # side by side: base_pass@1, plus_pass@1, base_pass@10, ...
        metrics[f"base_{name}"], metrics[f"plus_{name}"] = base_metrics[name], plus_metrics[name]
    records = []
    for (r, tid, i, text, finish), solution, v in zip(samples, solutions, verdicts):
        fail = next((v[p] for p in ("base", "plus") if not v[p]["passed"]), None)
        records.append({
            "sample_id": tid, "task_id": tid, "sample_index": i, "temperature": r.temperature,
            "prompt": prompts[tid], "generation": text, "solution": solution, "finish_reason": finish,
            "base_passed": v["base"]["passed"], "plus_passed": v["plus"]["passed"],
            "passed": v["base"]["passed"] and v["plus"]["passed"],
            "status": "passed" if fail is None else fail["status"], "detail": "" if fail is None else fail["detail"],
            "isolation": v["base"].get("isolation", "single-process"),
        })
    n_base = sum(sum(sum(v) for v in per.values()) for per in base.values())
    n_plus = sum(sum(sum(v) for v in per.values()) for per in plus.values())
    info = {"best_temperature": {**{f"base_{k}": t for k, t in base_info["best_temperature"].items()},
                                 **{f"plus_{k}": t for k, t in plus_info["best_temperature"].items()}},
            "runs": {"base": base_info["runs"], "plus": plus_info["runs"]},
            "base_passes": n_base, "plus_passes": n_plus, "passes_taken_away_by_plus": n_base - n_plus,
            "max_new_tokens": max_new, "prompts_truncated": truncated, "protocol": cfg.protocol,
            "num_problems": len(task_ids), "k_skipped_above_n": skipped,
            # tasks whose samples are checked in one process, and why (`judge_plan`); the rest judged apart
            "single_process_problems": len(single), "single_process_reasons": single,
            "data_sha256": problems[task_ids[0]]["sha256"],
            "time_limits": {"min_s": MIN_TIME_LIMIT_S, "factor": TIME_LIMIT_FACTOR, "program_cap_s": cfg.timeout_s},
            "sandbox": isolation_report()}
    return records, metrics, info


# -----------------------------------------------------------------------------
# the evaluators humaneval_plus and mbpp_plus (evals/), which differ only in their data, prompts,
# stops and how a chat answer becomes a solution


@dataclass
class PlusConfig:
    """The plus evaluators' config; a subclass names its evaluator in `owner` (error messages)."""

    owner: ClassVar[str] = "evalplus"
    protocol: str = "quick"  # quick | standard | paper (evals/humaneval.py docstring)
    prompt_mode: str = "auto"  # completion | chat | auto (chat when the tokenizer has a chat template)
    data_dir: str | None = None  # overrides --data-dir / $MTP_BENCH_DATA for this evaluator
    n: int | None = None  # samples per task and temperature; None = the protocol's
    temperatures: tuple[float, ...] | None = None  # None = the protocol's; else one run each, best per k
    k: tuple[int, ...] | None = None  # pass@k to report; None = the protocol's; k > n is skipped
    top_p: float = 0.95  # nucleus sampling; unused when greedy
    max_new_tokens: int = 512  # long enough for every canonical solution
    batch_size: int = 8  # generation batch; results don't depend on it (per-sample seeds)
    timeout_s: float = 60.0  # cap on one check program's wall clock before EvalPlus's +2 s (its default)
    workers: int | None = None  # sandbox processes; None = the sandbox's default (all cores)

    def __post_init__(self):
        from mtp_bench.generation import chat
        from mtp_bench.scoring.passk import validate_sampling_config

        try:
            validate_sampling_config(self)
            chat.validate_prompt_mode(self.prompt_mode)
        except ConfigError as e:
            raise ConfigError(f"{self.owner} config: {e}") from None


class PlusEvaluator(Evaluator):
    """HumanEval+ / MBPP+: load the dataset, build the prompts of the resolved prompt mode, then
    `generate_check_score`. A subclass sets `dataset`, `base_version` (its VERSION), `stop_sequences`
    (completion mode) and `build_chat_prompt` / `chat_solution` (chat mode)."""

    dataset: ClassVar[str]
    base_version: ClassVar[str]
    stop_sequences: ClassVar[tuple[str, ...]]
    Config = PlusConfig

    def build_chat_prompt(self, model, problem: dict) -> str:
        raise NotImplementedError

    def chat_solution(self, problem: dict, text: str) -> str:
        raise NotImplementedError

    def run(self, model, ctx: RunContext) -> EvalOutput:
        from mtp_bench.generation import chat

        cfg = self.config
        problems = load_problems(self.dataset, [d for d in (cfg.data_dir, ctx.data_dir) if d])
        task_ids = list(problems)[: ctx.limit] if ctx.limit is not None else list(problems)
        if not task_ids:
            raise ConfigError(f"{self.name}: no problems to run (limit={ctx.limit})")
        mode, template = chat.resolve_prompt_mode(cfg.prompt_mode, model, self.name)
        self.version = chat.set_run_version(self, self.base_version, mode)
        if mode == "chat":
            prompts = {t: self.build_chat_prompt(model, problems[t]) for t in task_ids}
            stop: tuple[str, ...] = ()
            to_solution = lambda t, text: self.chat_solution(problems[t], text)  # noqa: E731
        else:
            prompts = {t: completion_prompt(problems[t]) for t in task_ids}
            stop = self.stop_sequences
            to_solution = lambda t, text: prompts[t] + text  # noqa: E731
        records, metrics, info = generate_check_score(self, model, ctx, self.dataset, problems, task_ids, prompts,
                                                      stop, to_solution)
        info.update({"prompt_mode": mode, "chat_template_sha256": chat.template_sha256(template)})
        return EvalOutput(records=records, metrics=metrics, info=info)


def completion_prompt(problem: dict) -> str:
    """EvalPlus's direct-completion prompt: the problem's prompt, stripped, and a newline."""
    return problem["prompt"].strip() + "\n"


def solution_of(problem: dict, sample: dict) -> str:
    """A sample's full solution: its `solution`, else the prompt + its `completion` (EvalPlus's rule)."""
    if isinstance(sample.get("solution"), str):
        return sample["solution"]
    return problem["prompt"] + sample["completion"]
