"""The shared JSONL reader: line numbers, blank lines, one-line errors."""

import doctest

import pytest

from mtp_bench.api import jsonl
from mtp_bench.api.errors import DataError


def test_doctest_runs():
    assert doctest.testmod(jsonl).failed == 0


def test_missing_file_and_bad_line_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"^samples file not found: .*nope\.jsonl$"):
        list(jsonl.read_lines(tmp_path / "nope.jsonl", "samples file"))
    f = tmp_path / "bad.jsonl"
    f.write_text('{"ok": 1}\n\n{"broken": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        list(jsonl.read_lines(f))
