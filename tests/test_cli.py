import subprocess
import sys

from mtp_bench.cli import main


def test_help_lists_every_command(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in ("run", "ls", "show", "train", "export", "exec", "gate", "bench"):
        assert name in out


def test_unknown_command_exits_2():
    proc = subprocess.run([sys.executable, "-m", "mtp_bench", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
