"""The in-sandbox code of the EvalPlus checks (mtp_bench/scoring/evalplus/program.py), run in this
process: the same functions the sandboxed programs call, without the sandbox."""

import base64
import json
import pickle

import pytest

from mtp_bench.scoring.evalplus import check, program


def expected(outs):
    return base64.b64encode(pickle.dumps(outs)).decode()


def loop(dataset, entry, inputs, outs, fn, atol=0.0, digests=None, limits=None):
    inp, exp = program._check_setup(None, json.dumps(inputs), expected(outs))
    program._check_loop(dataset, entry, "base", inp, exp, limits or [4.0] * len(inputs), digests or {}, atol,
                        ("similar_elements",), ("check_str",), fn, lambda *a: program._digest(fn(*a))[0])


def test_prepare_turns_json_lists_into_the_calls_argument_types():
    assert program._prepare(None, [[1, 2]]) == [[1, 2]]
    assert program._prepare("tuple_args", [[[1, 2], [3]]]) == [[(1, 2), (3,)]]
    assert program._prepare("sets_in_first", [[[[1, 2], []]]]) == [[[{1, 2}, {}]]]
    assert program._prepare("all_tuples", [[[1, [2, 3]]]]) == [((1, (2, 3)),)]
    with pytest.raises(ValueError, match="unknown input kind"):
        program._prepare("bogus", [[1]])


def test_digest_is_the_pickle_of_the_value_whatever_objects_it_shares():
    shared = [1, 2]
    assert program._digest([shared, shared]) == program._digest([[1, 2], [1, 2]])
    assert program._digest((1, 2))[0] != program._digest([1, 2])[0]  # the type is part of it


def test_the_loop_passes_equal_outputs_and_names_the_first_that_differs():
    loop("humaneval_plus", "f", [[1], [2]], [2, 4], lambda x: 2 * x)
    with pytest.raises(AssertionError, match="base input 1: output differs"):
        loop("humaneval_plus", "f", [[1], [2]], [2, 5], lambda x: 2 * x)


def test_floats_compare_within_atol_and_need_the_expected_type():
    loop("humaneval_plus", "f", [[1]], [0.3], lambda x: 0.1 + 0.2)  # atol becomes 1e-6 for floats
    with pytest.raises(AssertionError, match="output of the wrong type"):
        loop("humaneval_plus", "f", [[1]], [0.3], lambda x: "0.3")


def test_special_oracles():
    loop("humaneval_plus", "find_zero", [[[-1.0, 1.0]]], [1.0], lambda xs: 1.0000001, atol=1e-4)
    with pytest.raises(AssertionError, match="not a zero of the polynomial"):
        loop("humaneval_plus", "find_zero", [[[-1.0, 1.0]]], [1.0], lambda xs: 2.0, atol=1e-4)
    loop("mbpp_plus", "similar_elements", [[[1, 2]]], [(1, 2)], lambda a: (2, 1))  # set equality
    loop("mbpp_plus", "check_str", [["x"]], [True], lambda s: True)  # not-None: a bool crosses


def test_large_outputs_compare_by_digest():
    big = list(range(10))
    loop("humaneval_plus", "f", [[0]], [None], lambda x: big, digests={"0": program._digest(big)[0]})
    with pytest.raises(AssertionError, match="compared by digest"):
        loop("humaneval_plus", "f", [[0]], [None], lambda x: big[:-1], digests={"0": program._digest(big)[0]})


def test_an_input_over_its_time_limit_is_a_timeout():
    import time

    with pytest.raises(TimeoutError, match="base input 0: over its time limit of 0.05 s"):
        loop("humaneval_plus", "f", [[0]], [0], lambda x: time.sleep(1), limits=[0.05])


def test_candidate_serves_the_entry_point_and_its_digest_call():
    import sys

    streams = sys.stdout, sys.stderr
    try:
        names = program._candidate("def g(x):\n    print('noise')\n    return None if x else 'm'\n", "g", True)
    finally:
        sys.stdout, sys.stderr = streams
    assert names["g"](0) is True and names["g"](1) is False  # not-None: whether something came back
    assert names["_mtp_digest_call"](0) == program._digest(True)[0]
    assert program._candidate("x = 1\n", "g", False) == {}


def test_one_process_loading_requires_the_entry_point():
    fn, digest_call = program._load_solution("def h(x):\n    return x + 1\n", "h")
    assert fn(1) == 2 and digest_call(1) == program._digest(2)[0]
    with pytest.raises(NameError, match="h is not defined by the solution"):
        program._load_solution("x = 1\n", "h")


def test_ground_truth_prints_outputs_times_and_digests(capsys):
    program._ground_truth("def f(x):\n    return [x] * x\n", "f", json.dumps([[1], [30]]), json.dumps([[2]]), None,
                          False, 40)
    out = json.loads(capsys.readouterr().out.rsplit(program._MARK, 1)[1])
    assert pickle.loads(base64.b64decode(out["base"])) == [[1], None]  # [30] * 30 pickles over 40 bytes
    assert list(out["base_digest"]) == ["1"] and len(out["plus_time"]) == 1


def test_the_programs_are_this_module_and_one_call():
    prog = check.ground_truth_program("humaneval_plus", {"prompt": "def f(x):\n", "canonical_solution": "    return x\n",
                                                         "entry_point": "f", "base_input": [[1]], "plus_input": [],
                                                         "task_id": "HumanEval/0"})
    assert prog.startswith(check.SOURCE) and prog.count("\n_ground_truth(") == 1
    assert "_expected" in check._judge_names() and "_check_loop" in check._judge_names()
