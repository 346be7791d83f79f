"""Polynomial arithmetic: the ring against sympy's polynomials over GF(7), the generator, the data
command and the evaluator with a scripted fake model."""

import json
from collections import Counter

import numpy as np
import pytest
import sympy

from mtp_bench.api.context import RunContext
from mtp_bench.cli import main
from mtp_bench.evals import arithmetic as A
from mtp_bench.testing import FakeModel

X = sympy.symbols("X")


def _sym(p):
    return sympy.Poly(list(reversed(p)), X, modulus=7)


def _coeffs(poly):
    """c0..c4 of a sympy polynomial after reduction mod X^5 (brute force: drop degrees >= 5)."""
    terms = dict(poly.as_dict())
    return tuple(int(terms.get((k,), 0)) % 7 for k in range(5))


def _brute(program):
    """An independent evaluation: sympy arithmetic over GF(7), full degree, reduced only at the end
    of each operation."""
    if not isinstance(program, dict):
        return _sym(program)
    args = [_brute(a) for a in program["args"]]
    op = program["op"]
    if op == "neg":
        r = -args[0]
    elif op == "add":
        r = args[0] + args[1]
    elif op == "mul":
        r = args[0] * args[1]
    else:
        r = args[0].compose(args[1])
    return _sym(_coeffs(r))


def test_ring_operations_match_sympy_over_gf7():
    rng = np.random.default_rng(0)
    for _ in range(300):
        p, q = (tuple(int(c) for c in rng.integers(0, 7, 5)) for _ in range(2))
        assert A.p_neg(p) == _coeffs(-_sym(p))
        assert A.p_add(p, q) == _coeffs(_sym(p) + _sym(q))
        assert A.p_mul(p, q) == _coeffs(_sym(p) * _sym(q))
        assert A.p_compose(p, q) == _coeffs(_sym(p).compose(_sym(q)))


@pytest.mark.parametrize("m", [1, 3, 7, 10])
def test_random_programs_evaluate_like_the_brute_force(m):
    rng = np.random.default_rng(m)
    for _ in range(40):
        prog = A.random_program(m, rng)
        assert A.count_ops(prog) == m
        assert A.evaluate(prog) == _coeffs(_brute(prog))


def test_ring_laws_hold():
    rng = np.random.default_rng(1)
    x = (0, 1, 0, 0, 0)
    for _ in range(100):
        p, q, r = (tuple(int(c) for c in rng.integers(0, 7, 5)) for _ in range(3))
        assert A.p_mul(p, A.p_add(q, r)) == A.p_add(A.p_mul(p, q), A.p_mul(p, r))
        assert A.p_compose(p, x) == p and A.p_compose(x, p) == p
        r0 = (0, *r[1:])  # truncation commutes with substitution only when the inner constant term is 0
        assert A.p_compose(A.p_compose(p, q), r0) == A.p_compose(p, A.p_compose(q, r0))
        assert A.p_add(p, A.p_neg(p)) == (0, 0, 0, 0, 0)


def test_operators_are_drawn_uniformly():
    rng = np.random.default_rng(2)
    counts = Counter(A.random_program(1, rng)["op"] for _ in range(4000))
    assert set(counts) == set(A.OPS)
    assert all(900 < c < 1100 for c in counts.values())


def test_text_format_round_trips_to_the_program():
    rng = np.random.default_rng(3)
    p = A.make_problem(2, rng)
    assert p["prompt"].endswith(" =") and p["text"] == p["prompt"] + p["answer"]
    assert p["answer"] == " " + " ".join(map(str, p["answer_coeffs"]))
    # whitespace-separated symbols only: operators, parentheses, digits, "="
    assert set(p["prompt"].split()) <= {"neg", "add", "mul", "comp", "(", ")", "=", *map(str, range(7))}


def test_data_command_writes_problems_anyone_can_recompute(tmp_path):
    out = tmp_path / "test.jsonl"
    assert main(["data", "arithmetic", "--split", "test", "--m", "3", "--n", "50", "--seed", "0", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 50
    for r in rows:
        assert {"prompt", "answer", "answer_coeffs", "program", "m"} <= set(r)
        assert list(A.evaluate(r["program"])) == r["answer_coeffs"] and r["m"] == 3
    # the same seed gives the same set; the evaluator's test set is this one
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in A.problems(3, 50, 0, "test")]


@pytest.mark.slow
def test_training_data_holds_no_test_prompt(tmp_path):
    out = tmp_path / "train.jsonl"
    assert main(["data", "arithmetic", "--split", "train", "--m", "1-2", "--n", "3000", "--out", str(out)]) == 0
    train = {json.loads(line)["prompt"] for line in out.read_text().splitlines()}
    test = A.test_prompts(ms=(1, 2))
    assert len(train) > 2000 and not train & test
    # without the exclusion m=1 collides: the check is not vacuous
    raw = {p["prompt"] for p in A.train_problems(1, 3000, seed=1, exclude=set())}
    assert raw & test


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["data", "arithmetic", "--split", "test", "--m", "x", "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "--m expects" in capsys.readouterr().err
    assert not (tmp_path / "a.jsonl").exists()


def test_evaluator_scores_exact_match_per_m(tmp_path):
    probs = {m: A.problems(m, 4, 0, "test") for m in (1, 6)}
    # right on 3 of 4 in domain (one with trailing junk, still right), 1 of 4 out of domain
    responses = {p["prompt"]: p["answer"] for p in probs[1][:2] + probs[6][:1]}
    responses[probs[1][2]["prompt"]] = probs[1][2]["answer"] + " 3 add"
    responses[probs[1][3]["prompt"]] = " 9 9 9 9 9"
    model = FakeModel(responses=responses)
    ev = A.Arithmetic({"ms": (1, 6), "n_per_m": 4, "batch_size": 4})
    out = ev.run(model, RunContext(seed=0, work_dir=tmp_path))
    assert out.metrics["acc_m1"].value == 0.75 and out.metrics["acc_m6"].value == 0.25
    assert out.metrics["acc_in_domain"].value == 0.75 and out.metrics["acc_out_of_domain"].value == 0.25
    assert out.metrics["acc_m1"].n == 4 and out.metrics["acc_m1"].higher_is_better
