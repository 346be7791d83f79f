"""Code extraction from chat answers: a table of answers and the code each must give, then sanitize."""

from __future__ import annotations

import pytest

from mtp_bench.scoring.code_extract import (
    as_body,
    chat_solution,
    defines,
    entry_point_of_tests,
    extract_fenced,
    longest_valid_span,
    sanitize,
)

F = "def add(a, b):\n    return a + b"

FENCED = [  # (what the case is, answer, extract_fenced's result)
    ("python fence", f"```python\n{F}\n```", F),
    ("py fence", f"```py\n{F}\n```", F),
    ("Python3 fence, capitalised", f"```Python3\n{F}\n```", F),
    ("unnamed fence", f"```\n{F}\n```", F),
    ("prose around", f"Sure! Here is the function:\n\n```python\n{F}\n```\n\nIt adds two numbers.", F),
    ("first of several blocks", f"```python\n{F}\n```\nTest it:\n```python\nprint(add(1, 2))\n```", F),
    ("another language first", f"```bash\npip install nothing\n```\n```python\n{F}\n```", F),
    ("fence left open (cut by max_new_tokens)", f"Here:\n```python\n{F}\n    # more", F + "\n    # more"),
    ("indented fence markers", f"  ```python\n{F}\n  ```", F),
    ("no fence: the whole answer", F, F),
    ("only another language: the whole answer", "```js\nx = 1\n```", "```js\nx = 1\n```"),
    ("empty answer", "", ""),
]


@pytest.mark.parametrize("case,answer,expected", FENCED, ids=[c[0] for c in FENCED])
def test_extract_fenced(case, answer, expected):
    assert extract_fenced(answer) == expected


SPANS = [  # (case, code, longest_valid_span's result)
    ("valid code is kept whole", F + "\n\nprint(add(1, 2))", F + "\n\nprint(add(1, 2))"),
    ("prose before and after", f"Here it is:\n{F}\nThis returns the sum.", F),
    ("longest of two valid runs", "x = 1\nnot valid here\n" + F + "\nneither here", F),
    ("blank lines do not count towards the length", "a = 1\n\n\n\nbad line\nb = 2\nc = 3", "b = 2\nc = 3"),
    ("nothing valid", "this is prose: not code.", ""),  # (with a comma it would parse: a tuple)
]


@pytest.mark.parametrize("case,code,expected", SPANS, ids=[c[0] for c in SPANS])
def test_longest_valid_span(case, code, expected):
    assert longest_valid_span(code) == expected


PROMPT = 'from typing import List\n\n\ndef helper(x):\n    return x\n\n\ndef add(a: int, b: int) -> int:\n    """Add."""\n'

SOLUTIONS = [  # (case, answer, the solution's part after the prompt)
    ("signature repeated in a fence", f"```python\n{F}\n```", "\n" + F + "\n"),
    ("signature repeated with a test and a print dropped",
     f"```python\n{F}\n\nassert add(1, 2) == 3\nprint(add(2, 2))\n```", "\n" + F + "\n"),
    ("main guard dropped", f"{F}\n\nif __name__ == '__main__':\n    print(add(1, 2))", "\n" + F + "\n"),
    ("body only, indented", "```python\n    return a + b\n```", "    return a + b\n"),
    ("body only, not indented", "```python\nreturn a + b\n```", "    return a + b\n"),
    ("body only, indented deeper, two lines", "        s = a + b\n        return s", "    s = a + b\n    return s\n"),
    ("helper of the answer kept, unused one dropped",
     "```python\nimport math\ndef twice(x):\n    return 2 * x\ndef unused():\n    return 0\n"
     "def add(a, b):\n    return twice(a) // 2 + b\n```",
     "\nimport math\ndef twice(x):\n    return 2 * x\ndef add(a, b):\n    return twice(a) // 2 + b\n"),
]


@pytest.mark.parametrize("case,answer,tail", SOLUTIONS, ids=[c[0] for c in SOLUTIONS])
def test_chat_solution(case, answer, tail):
    solution = chat_solution(PROMPT, answer, "add")
    assert solution == PROMPT + tail
    ns: dict = {}
    exec(compile(solution, "<solution>", "exec"), ns)  # and it runs: the answer's add replaced the stub
    assert ns["add"](2, 3) == 5


def test_chat_solution_keeps_the_prompts_helpers_defined():
    solution = chat_solution(PROMPT, "```python\ndef add(a, b):\n    return helper(a) + b\n```", "add")
    ns: dict = {}
    exec(compile(solution, "<solution>", "exec"), ns)
    assert ns["add"](1, 1) == 2


def test_sanitize_follows_dependencies_through_classes_and_assignments():
    code = ("import re\nfrom math import pi\nK = 3\nclass Box:\n    def get(self):\n        return K\n"
            "def area(r):\n    return pi * r * r * Box().get()\nOTHER = 1\nprint(area(1))\n")
    assert sanitize(code, "area") == ("import re\nfrom math import pi\nK = 3\nclass Box:\n    def get(self):\n"
                                      "        return K\ndef area(r):\n    return pi * r * r * Box().get()")


def test_sanitize_keeps_the_first_definition_and_decorators():
    code = "@staticmethod\ndef f():\n    return 1\ndef f():\n    return 2\n"
    assert sanitize(code, "f") == "@staticmethod\ndef f():\n    return 1"


def test_sanitize_drops_functions_that_return_nothing_but_keeps_generators():
    code = "def show(x):\n    print(x)\ndef gen(n):\n    yield from range(n)\n"
    assert sanitize(code) == "def gen(n):\n    yield from range(n)"


def test_sanitize_without_the_entry_point_keeps_the_code():
    code = "def other():\n    return 1\nprint(other())"
    assert sanitize(code, "missing") == code


def test_defines_and_as_body():
    assert defines(F, "add") and not defines(F, "sub") and not defines("def add(:", "add")
    assert defines("class add:\n    pass", "add")
    assert as_body("\n\n  x = 1\n  return x\n\n") == "    x = 1\n    return x"


def test_entry_point_of_mbpp_tests_skips_builtins():
    assert entry_point_of_tests(["assert math.isclose(area(2), 4)"]) == "area"  # math.isclose is an attribute call
    assert entry_point_of_tests(["assert sorted(uniq([1, 1])) == [1]"]) == "uniq"
    assert entry_point_of_tests(["assert True"]) is None
