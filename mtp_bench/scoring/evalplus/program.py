"""The code that runs inside the sandbox for EvalPlus's checks: a real module, shipped as text.

The sandbox runs program text in a fresh interpreter that cannot import mtp-bench, so each program
`check.py` builds is this file's source (`SOURCE`, standard library only) followed by one call
whose arguments are Python literals:

    ground truth     _ground_truth(solution, entry, base_json, plus_json, kind, not_none, big)
                     -> the canonical outputs (pickled, base64) and times as JSON after _MARK on stdout
    candidate        globals().update(_candidate(solution, entry, not_none))
                     -> the entry point (and `_mtp_digest_call`) served to the judge's calls
    judged check     _c = _check_setup(kind, inputs_json, expected_b64)
                     _check_loop(..., *_c, globals()[entry], globals()["_mtp_digest_call"])
                     -> in the judge process, where both names are proxies of the candidate's
    one process      the same with the solution loaded between the two (`_load_solution`): the
                     fallback of `judge_plan` for problems that cannot be split

Every module-level name here is a name of the judge's program, so an entry point that shares one
cannot be proxied (`check._splittable`): they all start with an underscore, and imports a check
needs are made inside its functions.
"""

import base64
import json
import math
import pickle
import signal
import sys

_MARK = "\n@@evalplus-ground-truth@@"  # the ground truth's JSON follows the last one on stdout


def _digest(x):
    """sha256 and size of the pickle of `x` (protocol 4, no memo): it stands in for an expected
    output too large to ship."""
    import hashlib

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
    """The argument lists of one problem as the calls receive them (MBPP+'s deserialisation).

    >>> _prepare("tuple_first", [[[1, 2], 3]])
    [[(1, 2), 3]]
    """
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


# ----------------------------------------------------------------------------- ground truth

def _ground_truth(solution, entry, base_json, plus_json, kind, not_none, big):
    """Run the canonical solution on every base and plus input; print _MARK + the outputs (pickled,
    base64), per-input times and the digests of outputs whose pickle exceeds `big` bytes."""
    import copy
    import time

    ns = {}
    exec(compile(solution, "<canonical>", "exec"), ns)
    fn = ns[entry]
    result = {}
    for part, raw in (("base", base_json), ("plus", plus_json)):
        outs, times, digests = [], [], {}
        for i, inp in enumerate(_prepare(kind, json.loads(raw))):
            inp = copy.deepcopy(inp)
            t0 = time.time()
            out = fn(*inp)
            times.append(time.time() - t0)
            if not_none:
                out = out is not None
            d, size = _digest(out)
            if size > big:
                digests[str(i)], out = d, None
            outs.append(out)
            del out
        result[part] = base64.b64encode(pickle.dumps(outs)).decode()
        result[part + "_time"] = times
        result[part + "_digest"] = digests
    sys.stdout.write(_MARK + json.dumps(result))


# ----------------------------------------------------------------------------- the candidate process

class _Sink:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


def _candidate(solution, entry, not_none):
    """The candidate process of a judged check: exec the solution in fresh globals (as EvalPlus
    does) with its output swallowed, at load and in calls; returns the names to serve."""
    sys.stdout = sys.stderr = _Sink()
    ns = {}
    exec(compile(solution, "<solution>", "exec"), ns)
    if entry not in ns:
        return {}
    fn = ns[entry]
    if not_none:  # only "returned something" is compared: a bool crosses, not the object (a re.Match)
        def _as_bool(*args, _fn=fn, **kwargs):
            out = _fn(*args, **kwargs)
            return out if isinstance(out, bool) else out is not None
        fn = _as_bool

    def _mtp_digest_call(*args, _fn=fn):
        """An output too large to cross (the expected one is a digest): only its digest crosses. To
        forge a pass, the digest would have to be the expected one, which only the judge holds."""
        return _digest(_fn(*args))[0]

    return {entry: fn, "_mtp_digest_call": _mtp_digest_call}


# ----------------------------------------------------------------------------- the check

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


def _load_solution(solution, entry):
    """One process (the fallback): the solution exec'd beside the check, its output swallowed.
    Returns (the entry point, the same call answered with its output's digest)."""
    streams = (sys.stdout, sys.stderr)
    sys.stdout = sys.stderr = _Sink()
    ns = {}
    exec(compile(solution, "<solution>", "exec"), ns)
    sys.stdout, sys.stderr = streams
    if entry not in ns:
        raise NameError(entry + " is not defined by the solution")
    fn = ns[entry]
    return fn, lambda *args: _digest(fn(*args))[0]


def _check_setup(kind, inputs_json, expected_b64):
    """The inputs as the calls receive them, and the expected outputs (before any solution runs)."""
    return _prepare(kind, json.loads(inputs_json)), pickle.loads(base64.b64decode(expected_b64))


def _check_loop(dataset, entry, part, inputs, expected, limits, digests, atol, set_eq, not_none, fn, digest_call):
    """Call `fn` on each input in order and compare with the expected output; the first input that
    differs or runs over its time limit raises (the program fails, with that input in the message).

    The expected outputs and the input index are module globals (`_expected`, `_i`), as they were
    when this loop was the program's top level, as in EvalPlus's check: in one process a solution
    can read them off its caller's frame (tests/scoring/test_evalplus.py forges a pass that way), which is
    why the judge holds them in another process."""
    global _expected, _i
    _expected = expected
    streams = (sys.stdout, sys.stderr)
    signal.signal(signal.SIGALRM, _alarm)
    for _i, inp in enumerate(inputs):
        where = part + " input " + str(_i)
        sys.stdout = sys.stderr = _Sink()
        signal.setitimer(signal.ITIMER_REAL, limits[_i])
        try:
            out = (digest_call if str(_i) in digests else fn)(*inp)
        except _InputTimeout:
            raise TimeoutError(where + ": over its time limit of " + str(limits[_i]) + " s") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.stdout, sys.stderr = streams
        if str(_i) in digests:  # too large to ship: the same pickle (type and value), no oracle or atol
            assert out == digests[str(_i)], where + ": output differs (compared by digest)"
            continue
        exp = _expected[_i]
        same = out == exp
        if dataset == "mbpp_plus":
            if entry == "are_equivalent":
                same = True
            elif entry == "sum_div":
                same = same or out == 0
            elif entry == "surface_Area":
                same = same or abs(out - _surface_area(*inp)) <= atol
            elif entry == "digit_distance_nums":
                same = same or out == _digit_distance(*inp)
            elif entry in set_eq:
                same = set(out) == set(exp)
            elif entry in not_none:
                same = (out == exp) if isinstance(out, bool) else (exp == (out is not None))
        if dataset == "humaneval_plus" and entry == "find_zero":
            assert abs(_poly(*inp, out)) <= atol, where + ": not a zero of the polynomial"
            continue
        if atol == 0 and _is_floats(exp):
            atol = 1e-6
        if not same and atol != 0:
            assert type(out) == type(exp), where + ": output of the wrong type"  # noqa: E721  (exact type, as EvalPlus)
            if isinstance(exp, (list, tuple)):
                assert len(out) == len(exp), where + ": output of the wrong length"
            import numpy
            assert numpy.allclose(out, exp, rtol=1e-07, atol=atol), where + ": output differs beyond atol"
        else:
            assert same, where + ": output differs"

