"""Polynomial arithmetic in the ring F7[X]/(X^5) (Gloeckle et al. 2024, Section 4.2, Figure 8).

The ring: polynomials of degree < 5 with coefficients mod 7; products and compositions are
reduced mod X^5 (terms of degree >= 5 dropped). A polynomial is its 5 coefficients c0..c4.
Four operations: unary negation `neg`, addition `add`, multiplication `mul`, composition `comp`
(`comp P Q` is P(Q(X)) mod X^5).

Problems (`make_problem`): an expression tree with exactly m operations. Each internal node's
operator is drawn uniformly from the four; a binary node splits the remaining m-1 operations
between its operands uniformly (left gets k in 0..m-1); every leaf's 5 coefficients are uniform
in 0..6. m = 1..5 is in domain (what training data holds), m = 6..10 out of domain.

Text format (version 1.0), whitespace-separated symbols so byte and BPE tokenizers see the same
units, expression in prefix (Polish) notation, leaves as `( c0 c1 c2 c3 c4 )`:

    prompt:  "add ( 1 0 3 0 0 ) neg ( 2 2 0 0 6 ) ="
    answer:  " 6 5 3 0 1"          (the result's coefficients c0..c4)

A training document is prompt + answer (the trainer ends every document with EOS).

Test set: for each m, `n_per_m` problems (default 2000) from the generator seeded with
(seed, m, "test"); training data (`mtp-bench data arithmetic --split train`) comes from the same
generator under (seed, m, "train") with another seed and drops any problem whose prompt is in the
default test set, so no test prompt occurs in training data.

Scoring: greedy decoding up to EOS or a newline; the answer is extracted as the first 5
whitespace-separated symbols of the generated text (`extract_answer`) and must equal the 5
coefficients exactly.
Metrics: acc_m{m} per m, acc_in_domain (mean over all in-domain problems, equal numbers per m),
acc_out_of_domain; standard errors over problems.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtp_bench.api import EvalOutput, Evaluator, GenRequest, RunContext, register
from mtp_bench.api.errors import ConfigError
from mtp_bench.generation.engine import GenerationConfig
from mtp_bench.scoring.metrics import mean_metric

P = 7  # coefficients live in F7
DEG = 5  # polynomials mod X^5: 5 coefficients c0..c4
OPS = ("neg", "add", "mul", "compose")  # program op names; the text uses SYMBOLS
SYMBOLS = {"neg": "neg", "add": "add", "mul": "mul", "compose": "comp"}
ARITY = {"neg": 1, "add": 2, "mul": 2, "compose": 2}
IN_DOMAIN = (1, 2, 3, 4, 5)
OUT_OF_DOMAIN = (6, 7, 8, 9, 10)
TEST_SEED = 0  # the default test set: seed 0, DEFAULT_N_TEST problems per m in 1..10
DEFAULT_N_TEST = 2000
_SPLIT_TAG = {"test": 0, "train": 1}

Poly = tuple[int, int, int, int, int]


# ----------------------------------------------------------------------------- the ring

def p_neg(p: Poly) -> Poly:
    """-p.

    >>> p_neg((1, 0, 3, 0, 6))
    (6, 0, 4, 0, 1)
    """
    return tuple((-c) % P for c in p)  # type: ignore[return-value]


def p_add(p: Poly, q: Poly) -> Poly:
    """p + q.

    >>> p_add((6, 1, 0, 0, 0), (2, 6, 0, 0, 1))
    (1, 0, 0, 0, 1)
    """
    return tuple((a + b) % P for a, b in zip(p, q))  # type: ignore[return-value]


def p_mul(p: Poly, q: Poly) -> Poly:
    """p * q mod X^5: coefficient k sums p_i q_j over i + j = k < 5.

    >>> p_mul((1, 1, 0, 0, 0), (1, 1, 0, 0, 0))  # (1 + X)^2
    (1, 2, 1, 0, 0)
    >>> p_mul((0, 0, 0, 1, 0), (0, 0, 1, 0, 0))  # X^3 * X^2 = X^5 = 0
    (0, 0, 0, 0, 0)
    """
    out = [0] * DEG
    for i, a in enumerate(p):
        for j in range(DEG - i):
            out[i + j] += a * q[j]
    return tuple(c % P for c in out)  # type: ignore[return-value]


def p_compose(p: Poly, q: Poly) -> Poly:
    """p(q(X)) mod X^5, by Horner's rule: ((p4 q + p3) q + p2) q + ...

    >>> p_compose((0, 0, 1, 0, 0), (1, 1, 0, 0, 0))  # (1 + X)^2
    (1, 2, 1, 0, 0)
    """
    out: Poly = (0, 0, 0, 0, 0)
    for c in reversed(p):
        out = p_add(p_mul(out, q), (c, 0, 0, 0, 0))
    return out


_APPLY = {"neg": lambda a: p_neg(a[0]), "add": lambda a: p_add(*a), "mul": lambda a: p_mul(*a),
          "compose": lambda a: p_compose(*a)}


def evaluate(program) -> Poly:
    """The value of a program: a 5-coefficient leaf, or {"op": ..., "args": [...]}."""
    if isinstance(program, dict):
        return _APPLY[program["op"]]([evaluate(a) for a in program["args"]])
    return tuple(int(c) % P for c in program)  # type: ignore[return-value]


def count_ops(program) -> int:
    return 1 + sum(count_ops(a) for a in program["args"]) if isinstance(program, dict) else 0


# ----------------------------------------------------------------------------- problems

def random_program(m: int, rng: np.random.Generator):
    """An expression with exactly m operations (see the module docstring for the distribution)."""
    if m == 0:
        return [int(c) for c in rng.integers(0, P, size=DEG)]
    op = OPS[int(rng.integers(0, len(OPS)))]
    if ARITY[op] == 1:
        return {"op": op, "args": [random_program(m - 1, rng)]}
    k = int(rng.integers(0, m))  # operations in the left operand: 0..m-1
    return {"op": op, "args": [random_program(k, rng), random_program(m - 1 - k, rng)]}


def format_program(program) -> str:
    """Prefix notation: `comp ( 1 2 0 0 0 ) neg ( 0 1 0 0 0 )`."""
    if isinstance(program, dict):
        return " ".join([SYMBOLS[program["op"]], *(format_program(a) for a in program["args"])])
    return "( " + " ".join(str(int(c)) for c in program) + " )"


def format_answer(coeffs: Poly) -> str:
    return " " + " ".join(str(c) for c in coeffs)


def make_problem(m: int, rng: np.random.Generator, problem_id: str = "") -> dict:
    """One problem: the JSONL record of `mtp-bench data arithmetic`."""
    program = random_program(m, rng)
    coeffs = evaluate(program)
    prompt = format_program(program) + " ="
    answer = format_answer(coeffs)
    return {"id": problem_id, "m": m, "prompt": prompt, "answer": answer, "answer_coeffs": list(coeffs),
            "program": program, "text": prompt + answer}


def problems(m: int, n: int, seed: int, split: str) -> list[dict]:
    """n problems with m operations from the generator seeded (seed, m, split)."""
    if split not in _SPLIT_TAG:
        raise ConfigError(f"split must be one of {', '.join(_SPLIT_TAG)}, got {split!r}")
    if m < 1:
        raise ConfigError(f"m must be >= 1, got {m}")
    rng = np.random.default_rng([int(seed), int(m), _SPLIT_TAG[split]])
    return [make_problem(m, rng, f"{split}-s{seed}-m{m}-{i}") for i in range(n)]


def test_prompts(ms=IN_DOMAIN + OUT_OF_DOMAIN, n: int = DEFAULT_N_TEST, seed: int = TEST_SEED) -> set[str]:
    return {p["prompt"] for m in ms for p in problems(m, n, seed, "test")}


def train_problems(m: int, n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """n training problems with m operations, none of whose prompts is in `exclude` (default:
    the default test set's problems with m operations; a prompt determines its m, so no other
    test prompt can collide), drawn on from the same stream until n are found."""
    if seed == TEST_SEED:
        raise ConfigError(f"training seed {seed} is the test seed; pick another")
    if exclude is None:
        exclude = test_prompts(ms=(m,))
    rng = np.random.default_rng([int(seed), int(m), _SPLIT_TAG["train"]])
    out: list[dict] = []
    i = 0
    while len(out) < n:
        p = make_problem(m, rng, f"train-s{seed}-m{m}-{i}")
        i += 1
        if p["prompt"] not in exclude:
            out.append(p)
        elif i > 100 * n + 1000:
            raise ConfigError(f"m={m}: the test set covers almost every problem; cannot draw {n} training problems")
    return out


def extract_answer(text: str) -> str:
    """The generated answer: the first DEG (5) whitespace-separated symbols before the first
    newline, single-spaced (the answer has a fixed length, so what follows it is ignored).

    >>> extract_answer(" 1 2  3 4 0 add\\nadd")
    '1 2 3 4 0'
    >>> extract_answer(" 1 2")
    '1 2'
    """
    return " ".join(text.split("\n", 1)[0].split()[:DEG])


# ----------------------------------------------------------------------------- evaluator

@register
class Arithmetic(Evaluator):
    name = "arithmetic"
    version = "1.0"
    suites = ("synthetic",)
    description = "polynomial arithmetic in F7[X]/(X^5): exact-match accuracy per number of operations m"
    caption = ("acc_m{m}: greedy exact match of the 5 result coefficients, m operations; in domain m=1..5, "
               "out of domain m=6..10")

    @dataclass
    class Config:
        ms: tuple[int, ...] = IN_DOMAIN + OUT_OF_DOMAIN  # operation counts evaluated
        in_domain_max: int = 5  # m <= this is in domain (the training distribution)
        n_per_m: int = DEFAULT_N_TEST  # test problems per m (--limit caps it)
        seed: int = TEST_SEED  # test-set seed; the default set is what training data is checked against
        batch_size: int = 64  # prompts per generation batch
        max_new_tokens: int = 16  # the answer is 10 bytes (" c0 c1 c2 c3 c4")

        def __post_init__(self) -> None:
            if not self.ms or any(int(m) < 1 for m in self.ms):
                raise ConfigError(f"arithmetic: ms must be operation counts >= 1, got {self.ms}")
            if self.n_per_m < 1:
                raise ConfigError(f"arithmetic: n_per_m must be >= 1, got {self.n_per_m}")

    def run(self, model, ctx: RunContext) -> EvalOutput:
        cfg = self.config
        n = cfg.n_per_m if ctx.limit is None else min(cfg.n_per_m, ctx.limit)
        # 1) the fixed test set
        probs = [p for m in cfg.ms for p in problems(int(m), n, cfg.seed, "test")]
        # 2) greedy generations (cached)
        gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0, stop=("\n",),
                                   batch_size=cfg.batch_size)
        gens = ctx.generate(model, [GenRequest(p["id"], 0, p["prompt"]) for p in probs], gen_cfg, self)
        # 3) extract and score
        records = []
        for p, g in zip(probs, gens):
            got = extract_answer(g.text)
            want = p["answer"].strip()
            records.append({"sample_id": p["id"], "m": p["m"], "in_domain": p["m"] <= cfg.in_domain_max,
                            "prompt": p["prompt"], "answer": want, "generated": g.text, "extracted": got,
                            "correct": got == want})
        metrics = {}
        for m in cfg.ms:
            metrics[f"acc_m{m}"] = mean_metric([r["correct"] for r in records if r["m"] == m], higher_is_better=True)
        for key, flag in (("acc_in_domain", True), ("acc_out_of_domain", False)):
            vals = [r["correct"] for r in records if r["in_domain"] == flag]
            if vals:
                metrics[key] = mean_metric(vals, higher_is_better=True)
        info = {"n_per_m": n, "ms": list(cfg.ms), "seed": cfg.seed, "format": "prefix, `( c0 c1 c2 c3 c4 )` leaves, `=`"}
        return EvalOutput(records=records, metrics=metrics, info=info)
