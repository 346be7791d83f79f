"""JSONL files a user hands in (samples, generations, dataset files): one JSON value a line.

`read_lines` owns the part every reader shares: a missing file, a line that is not JSON, blank
lines skipped, each value given with its 1-based line number, so that the caller's own checks
(which keys, which types) can name the line too. Errors are DataError: one line, exit 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtp_bench.api.errors import DataError


def json_error(e: json.JSONDecodeError, lines: bool = False) -> str:
    """A JSON parse error as words that read whole: json's own `msg` ends mid-sentence for some errors
    ("Invalid control character at"), so the position is always given (column; line too when `lines`).

    >>> try:
    ...     json.loads('{"a": "x' + chr(9) + 'y"}')
    ... except json.JSONDecodeError as e:
    ...     print(json_error(e))
    Invalid control character at column 9
    """
    msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg
    return f"{msg} at line {e.lineno} column {e.colno}" if lines else f"{msg} at column {e.colno}"


def read_lines(path: str | Path, what: str = "file") -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of a JSONL file.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
    ...     _ = fh.write('{"a": 1}\\n\\n[2]\\n')
    >>> list(read_lines(fh.name))
    [(1, {'a': 1}), (3, [2])]
    >>> os.remove(fh.name)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({json_error(e)})") from None
