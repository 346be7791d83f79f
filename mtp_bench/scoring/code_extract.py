"""Taking the code out of a chat model's answer: fenced blocks, the longest valid span, sanitizing.

Pure functions over strings (no model, no sandbox), shared by the code evaluators' `chat` prompt
mode. The steps, in the order `chat_solution` applies them:

    1) `extract_fenced`: the body of the first fenced block whose language is Python or unnamed
       (```python, ```py, ```python3 or a bare ```); a fence the generation left open (cut by
       max_new_tokens) runs to the end of the text. No such block: the whole answer.
    2) `longest_valid_span`: when that text does not parse as Python (prose around unfenced code),
       the longest run of whole lines that does, counted in non-blank lines, as EvalPlus's
       `code_extract` chooses it (first such run on ties).
    3) `sanitize`: keep the top-level imports, then the definitions (functions, classes, simple
       assignments) the entry point reaches through the names it uses, in source order, dropping
       tests, prints, `if __name__ == "__main__":` blocks and example calls. This is EvalPlus's
       `sanitize` (tree-sitter there, Python's `ast` here): a first definition of a name wins over
       a later one, and a function counts only if it returns (or yields) something. When nothing
       is left, or the entry point is not defined, the code of step 2 is kept as it is.

`chat_solution` then decides between a whole function and a body: an answer that defines the
entry point replaces the prompt's stub (the prompt stays in front, so its imports and helper
functions are defined); an answer that does not is taken as the function's body and indented
under the prompt's signature (`as_body`).
"""

from __future__ import annotations

import ast
import re
import textwrap

PYTHON_LANGS = ("", "python", "py", "python3", "py3")
_FENCE_LINE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[ \t]*$")


def extract_fenced(text: str) -> str:
    """The body of the first Python (or unnamed) fenced block; the whole text when there is none.

    >>> extract_fenced("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1'
    >>> extract_fenced("x = 1")
    'x = 1'
    """
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = _FENCE_LINE.match(lines[i])
        if m is None:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and _FENCE_LINE.match(lines[j]) is None:
            j += 1
        if m.group(1).lower() in PYTHON_LANGS:
            return "\n".join(lines[i + 1 : j])  # an unclosed fence runs to the end
        i = j + 1  # skip a block in another language (its closing fence too)
    return text


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: null bytes
        return False
    return True


def longest_valid_span(code: str) -> str:
    """The code itself when it parses; else the longest run of lines that parses (by non-blank
    lines; the first on ties); "" when no line does.

    >>> longest_valid_span("Sure! Here it is:\\ndef f():\\n    return 1\\nHope this helps.")
    'def f():\\n    return 1'
    """
    if parses(code):
        return code
    lines = code.split("\n")
    weight = [0]
    for line in lines:  # weight[j] - weight[i] = non-blank lines in lines[i:j]
        weight.append(weight[-1] + (1 if line.strip() else 0))
    best, best_span = 0, (0, 0)
    for i in range(len(lines)):
        if weight[-1] - weight[i] <= best:
            break  # no span from here on can beat the best one
        for j in range(len(lines), i, -1):  # longest first: the first that parses is this i's best
            if weight[j] - weight[i] <= best:
                break
            if parses("\n".join(lines[i:j])):
                best, best_span = weight[j] - weight[i], (i, j)
                break
    return "\n".join(lines[best_span[0] : best_span[1]])


def _returns(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.Return, ast.Yield, ast.YieldFrom)) for n in ast.walk(node))


def _assigned_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def sanitize(code: str, entry_point: str | None = None) -> str:
    """Keep imports and the definitions `entry_point` reaches (every definition when it is None).

    >>> print(sanitize("import math\\ndef f(x):\\n    return g(x)\\ndef g(x):\\n    return x\\n"
    ...                "def unused():\\n    return 0\\nprint(f(2))\\nassert f(1) == 1", "f"))
    import math
    def f(x):
        return g(x)
    def g(x):
        return x
    """
    code = longest_valid_span(code)
    if not code.strip():
        return code
    tree = ast.parse(code)
    lines = code.split("\n")

    def source(node: ast.AST) -> str:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return "\n".join(lines[start - 1 : node.end_lineno])

    imports: list[str] = []
    defs: dict[str, ast.AST] = {}  # name -> first definition
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(source(node))
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = node.name if _returns(node) else None
        elif isinstance(node, ast.ClassDef):
            name = node.name
        else:
            name = _assigned_name(node)
        if name is not None and name not in defs:
            defs[name] = node
    if entry_point is not None and entry_point not in defs:
        return code  # nothing to anchor on: keep what parsed
    keep = set(defs)
    if entry_point is not None:  # names reachable from the entry point through the names each uses
        uses = {name: {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} for name, node in defs.items()}
        keep, todo = {entry_point}, [entry_point]
        while todo:
            for dep in uses[todo.pop()]:
                if dep in defs and dep not in keep:
                    keep.add(dep)
                    todo.append(dep)
    kept = imports + [source(node) for name, node in defs.items() if name in keep]
    kept.sort(key=lambda s: code.index(s))  # source order
    return "\n".join(kept) if kept else code


def defines(code: str, name: str) -> bool:
    """Whether the code (parsed) defines a top-level function or class called `name`."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name
               for n in tree.body)


def as_body(code: str, indent: str = "    ") -> str:
    """A body-only answer as the lines of a function body: common indentation removed, then one
    level added, blank lines at either end dropped.

    >>> as_body("return x + 1")
    '    return x + 1'
    >>> as_body("        y = x\\n        return y")
    '    y = x\\n    return y'
    """
    body = textwrap.dedent(code.strip("\n"))
    return textwrap.indent(body, indent)


def function_solution(prompt: str, code: str, entry_point: str) -> str:
    """The solution source for a HumanEval-style problem from the code of an answer (steps 2-3).

    The code defines the entry point: prompt + "\\n" + the sanitized code (its definition replaces
    the prompt's stub; the prompt's imports and helpers stay defined). It does not: the code is the
    body, so prompt + the code indented one level.
    """
    span = longest_valid_span(code)
    if defines(span, entry_point):
        return prompt + "\n" + sanitize(span, entry_point) + "\n"
    if not prompt.endswith("\n"):
        prompt += "\n"
    return prompt + as_body(code) + "\n"


def chat_solution(prompt: str, answer: str, entry_point: str) -> str:
    """`function_solution` of the answer's first Python block (or the whole answer)."""
    return function_solution(prompt, extract_fenced(answer), entry_point)


def entry_point_of_tests(tests: list[str]) -> str | None:
    """The function MBPP's asserts test: the first called name that is not a builtin.

    >>> entry_point_of_tests(["assert set(similar_elements((3, 4), (4, 5))) == set((4,))"])
    'similar_elements'
    """
    import builtins

    for test in tests:
        try:
            tree = ast.parse(test)
        except (SyntaxError, ValueError):
            continue
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
        for call in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):
            if not hasattr(builtins, call.func.id):
                return call.func.id
    return None
