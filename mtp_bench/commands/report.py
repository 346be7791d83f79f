"""`mtp-bench report A.json B.json ... --html OUT.html [--png DIR]`: one self-contained HTML page
(and PNGs) of result files: tables, provenance, plots (`mtp_bench.reporting.html`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtp_bench.api.atomic import atomic_write_bytes
from mtp_bench.api.errors import UserError
from mtp_bench.api.files import check_writable
from mtp_bench.reporting.compare import build, columns_from_files, pick_reference
from mtp_bench.reporting.html import acceptance_by_evaluator, figures, k_by_evaluator, load_repro, render_html


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (f"{p.description or ''}\n\n"
                     "examples:\n"
                     "  mtp-bench report results/code-default.json --html report.html\n"
                     "  mtp-bench report results/ntp.json results/mtp4.json results/mtp8.json --html family.html "
                     "--png figs/\n\n"
                     "The page is self-contained (images embedded): open it anywhere, offline.")
    p.add_argument("results", nargs="+", metavar="RESULT", help="result files (their samples JSONL beside them)")
    p.add_argument("--html", default=None, metavar="OUT.html", help="write the page here")
    p.add_argument("--png", default=None, metavar="DIR", help="also write every figure as a PNG into DIR")
    p.add_argument("--reference", default=None, metavar="COLUMN", help="reference column (label or number)")
    p.add_argument("--repro", action="append", default=[], metavar="DIR",
                   help="a `mtp-bench repro` result directory: its verdict and plot on the page (repeatable)")
    p.add_argument("--include-baselines", action="store_true",
                   help="a column for each file's baseline (always on with a single file)")


def main(args: argparse.Namespace) -> int:
    if not args.html and not args.png:
        raise UserError("give --html OUT.html and/or --png DIR")
    if args.html and not args.html.endswith((".html", ".htm")):
        raise UserError(f"--html must name an .html file, got {args.html!r}")
    if args.html:
        check_writable(args.html, "--html")
    repros = [load_repro(d) for d in args.repro]  # bad input fails before any work
    columns = columns_from_files(args.results, args.include_baselines or len(args.results) == 1)
    # one file: its baseline is the reference, as in the terminal's `show` (delta = candidate - baseline)
    single = len(args.results) == 1 and len(columns) == 2 and columns[1].role == "baseline"
    table = build(columns, pick_reference(columns, args.reference) if args.reference or not single else 1)
    table["k_by_evaluator"] = k_by_evaluator(columns)
    table["acceptance"] = acceptance_by_evaluator(columns)
    figs = figures(table)
    docs = list(dict.fromkeys((c.path, id(c.doc)) for c in columns))
    by_id = {id(c.doc): c.doc for c in columns}
    page = render_html(table, figs, [(path, by_id[i]) for path, i in docs], repros)
    if args.png:
        out = Path(args.png)
        if out.exists() and not out.is_dir():
            raise UserError(f"--png {args.png!r} is not a directory")
        for i, f in enumerate(figs, 1):
            atomic_write_bytes(out / f"{i:02d}-{f.name}.png", f.png)
    if args.html:
        atomic_write_bytes(args.html, page.encode())
    where = " and ".join(x for x in (args.html, f"{len(figs)} PNGs in {args.png}" if args.png else None) if x)
    print(f"wrote {where} ({len(figs)} figures)")
    return 0
