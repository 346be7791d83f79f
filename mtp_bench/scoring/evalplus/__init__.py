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
       sandboxed run split in two processes (`mtp_bench.execution.judge`): the candidate process execs the
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

The package: `data` (the files and tables), `program` (the code that runs in the sandbox, a real
module shipped as text), `check` (ground truth, the check, `judge_plan`, the evaluators' pipeline),
`evaluator` (the plus evaluators' base). `mtp-bench exec --dataset humaneval_plus|mbpp_plus` is
in mtp_bench/commands/exec.py.
"""

from mtp_bench.scoring.evalplus.check import (
    ISOLATIONS,
    SOURCE,
    check_program,
    check_solutions,
    generate_check_score,
    ground_truth,
    ground_truth_program,
    judge_plan,
    program_timeout,
    time_limits,
)
from mtp_bench.scoring.evalplus.data import (
    BIG_OUTPUT_BYTES,
    FILES,
    MBPP_INPUT_KINDS,
    MBPP_NOT_NONE,
    MBPP_SET_EQ,
    MIN_TIME_LIMIT_S,
    TASK_TIMEOUT_CAP_S,
    TIME_LIMIT_FACTOR,
    data_file,
    input_kind,
    load_problems,
)
from mtp_bench.scoring.evalplus.evaluator import PlusConfig, PlusEvaluator, completion_prompt, solution_of

_PREPARE = SOURCE  # exec'd, it defines _prepare (and every other helper of the sandboxed programs)

__all__ = ["BIG_OUTPUT_BYTES", "FILES", "ISOLATIONS", "MBPP_INPUT_KINDS", "MBPP_NOT_NONE", "MBPP_SET_EQ",
           "MIN_TIME_LIMIT_S", "SOURCE", "TASK_TIMEOUT_CAP_S", "TIME_LIMIT_FACTOR", "PlusConfig", "PlusEvaluator",
           "check_program", "check_solutions", "completion_prompt", "data_file", "generate_check_score",
           "ground_truth", "ground_truth_program", "input_kind", "judge_plan", "load_problems", "program_timeout",
           "solution_of", "time_limits"]
