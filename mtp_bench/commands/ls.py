"""`mtp-bench ls`: the installed evaluators (built-in and plugins) with their suites and versions."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from mtp_bench.api import registry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = f"{p.description or ''}\n\nexamples:\n  mtp-bench ls\n  mtp-bench ls --json"
    p.add_argument("--json", action="store_true", help="print JSON for machines")


def main(args: argparse.Namespace) -> int:
    registry.load_plugins()
    suites = registry.suites()
    rows = [{"name": n, "suites": list(cls.suites), "version": cls.version, "description": cls.description}
            for n, cls in sorted(registry.REGISTRY.items())]
    if args.json:
        print(json.dumps({"evaluators": rows, "suites": suites}, indent=2))
        return 0
    console = Console()
    if not rows:
        console.print("no evaluators are installed")
        return 0
    table = Table(title="evaluators")
    for col in ("name", "suites", "version", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], ", ".join(r["suites"]), r["version"], r["description"])
    console.print(table)
    for suite, names in suites.items():
        console.print(f"[bold]{suite}[/bold]: {', '.join(names)}")
    return 0
