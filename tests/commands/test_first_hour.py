"""A new user's first hour (issue 24): mistakes a newcomer makes get one line and exit 2, before any work."""

import json
from pathlib import Path

from mtp_bench.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


def _one_line(capsys) -> tuple[str, str]:
    cap = capsys.readouterr()
    assert len(cap.err.strip().splitlines()) == 1, cap.err
    return cap.out, cap.err


def test_exec_out_under_a_file_fails_before_executing(tmp_path, capsys, monkeypatch):
    from mtp_bench.commands import exec as exec_cmd

    def no_work(*a, **k):
        raise AssertionError("executed although --out cannot be written")
    monkeypatch.setattr(exec_cmd, "describe_isolation", no_work)
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"}) + "\n")
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    assert cli_main(["exec", str(samples), "--dataset", "humaneval", "--out", str(blocker / "out.jsonl")]) == 2
    _, err = _one_line(capsys)
    assert "--out" in err and "file.txt" in err
    assert blocker.read_text() == "a file, not a folder"


def test_exec_out_that_is_a_directory(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"}) + "\n")
    assert cli_main(["exec", str(samples), "--dataset", "humaneval", "--out", str(tmp_path)]) == 2
    _, err = _one_line(capsys)
    assert "is a directory" in err


def test_report_html_under_a_file_fails_before_rendering(tmp_path, capsys, monkeypatch):
    from mtp_bench.commands import report as report_cmd

    def no_work(*a, **k):
        raise AssertionError("rendered although --html cannot be written")
    monkeypatch.setattr(report_cmd, "columns_from_files", no_work)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    rc = cli_main(["report", str(ROOT / "results" / "code-default.json"), "--html", str(blocker / "r.html")])
    assert rc == 2
    _, err = _one_line(capsys)
    assert "--html" in err and "file.txt" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
