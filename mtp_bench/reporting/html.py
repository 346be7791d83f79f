"""`mtp-bench report`: one self-contained HTML page (and PNGs) of result files: tables, provenance, plots.

    mtp-bench report results/code-default.json --html report.html
    mtp-bench report results/ntp.json results/mtp2.json results/mtp4.json --html family.html --png figs/

The page holds the comparison table of `mtp-bench compare` (paired tests against the reference
column, Holm over the table), each file's provenance, and figures chosen by what the results
contain (matplotlib, Agg backend, PNG embedded as data: URIs, so the file needs no network and no
other file to be viewed):

    pass@k for two or more k               pass@k against k, one line per column, 95% intervals
    indexed families (head{k}_loss,        the metric against the head index k, one line per column
    head{k}_top1, alpha_cond_{k}, ...)     (per-head held-out loss and top-1; per-head acceptance)
    tau / speedup with info.k              tau and speedup against the heads used (k), one point per column
    info.acceptance_histogram and          specdec's acceptance profile: the share of steps that accepted
    info.acceptance_by_position            0..k-1 drafts, and the mean accepted drafts against the output
                                           position (32-token bins), one series per column
    every other metric                     bars per column with 95% intervals, one panel per metric

With one file, its baseline gets a column too (as `--include-baselines` does for several files).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtp_bench.api.errors import UserError
from mtp_bench.api.version import __version__
from mtp_bench.reporting.compare import comparison_cell, legend, notes
from mtp_bench.reporting.provenance import utc_now
from mtp_bench.reporting.show import format_metric, sandbox_lines

INDEXED = (re.compile(r"(head)(\d+)_(\w+)"), re.compile(r"(\w+?)_(\d+)"))  # head{k}_{what}, {what}_{k}
PASS_AT_K = re.compile(r"pass@(\d+)")
SPEED_VS_K = ("tau", "speedup", "speedup_decode")
PANELS_PER_FIGURE = 12


@dataclass
class Figure:
    name: str  # file stem for --png
    title: str
    caption: str
    png: bytes


# ----------------------------------------------------------------------------- what to plot

def _value(cell: dict | None) -> tuple[float, float, float] | None:
    """(value, low, high) of a metric dict; the interval collapses to the value without one."""
    if cell is None:
        return None
    v = float(cell["value"])
    if not math.isfinite(v):
        return None
    lo, hi = (float(cell["ci95"][0]), float(cell["ci95"][1])) if cell.get("ci95") else (v, v)
    return v, lo, hi


def plan(table: dict) -> dict[str, Any]:
    """Sort the table's rows into plot kinds (pure data; `figures` draws them)."""
    passk: dict[str, dict[int, dict]] = {}  # evaluator -> k -> row
    families: dict[tuple[str, str], dict[int, dict]] = {}  # (evaluator, family label) -> index -> row
    for r in table["rows"]:
        m = PASS_AT_K.fullmatch(r["metric"])
        if m:
            passk.setdefault(r["evaluator"], {})[int(m.group(1))] = r
            continue
        for pat in INDEXED:
            m = pat.fullmatch(r["metric"])
            if m:
                label = f"head{{k}}_{m.group(3)}" if pat is INDEXED[0] else f"{m.group(1)}_{{k}}"
                families.setdefault((r["evaluator"], label), {})[int(m.group(2))] = r
                break
    families = {k: v for k, v in families.items() if len(v) >= 2}
    passk = {ev: ks for ev, ks in passk.items() if len(ks) >= 2}  # pass@1 alone is a bar, not a curve
    in_family = {id(r) for fam in families.values() for r in fam.values()}
    in_passk = {id(r) for ks in passk.values() for r in ks.values()}
    speed: dict[str, list[dict]] = {}
    bars: dict[str, list[dict]] = {}
    for r in table["rows"]:
        if id(r) in in_family or id(r) in in_passk:
            continue
        if r["metric"] in SPEED_VS_K and r["evaluator"] in table.get("k_by_evaluator", {}):
            speed.setdefault(r["evaluator"], []).append(r)
        bars.setdefault(r["evaluator"], []).append(r)
    return {"passk": passk, "families": families, "speed": speed, "bars": bars}


# ----------------------------------------------------------------------------- drawing

def _new_figure(n_panels: int, width: float = 4.2, height: float = 3.0, ncols: int | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    ncols = ncols or min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    fig = MplFigure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    return buf.getvalue()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _line_panel(ax, xs_by_col: list[list[tuple[int, tuple[float, float, float]]]], labels: list[str],
                xlabel: str, ylabel: str, arrow: str, log_x: bool = False) -> None:
    for (pts, label, color) in zip(xs_by_col, labels, _colors(len(labels))):
        if not pts:
            continue
        pts = sorted(pts)
        x = [p[0] for p in pts]
        y = [p[1][0] for p in pts]
        err = [[p[1][0] - p[1][1] for p in pts], [p[1][2] - p[1][0] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, color=color)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{ylabel} {arrow}")
    if log_x:
        ax.set_xscale("log")
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def figures(table: dict) -> list[Figure]:
    labels = [c["label"] for c in table["columns"]]
    p = plan(table)
    out: list[Figure] = []
    ncols = len(labels)

    # 1) pass@k against k
    if p["passk"]:
        fig, axes = _new_figure(len(p["passk"]))
        for ax, (ev, by_k) in zip(axes, p["passk"].items()):
            pts = [[(k, v) for k, r in by_k.items() if (v := _value(r["values"][j])) is not None] for j in range(ncols)]
            _line_panel(ax, pts, labels, "k", "pass@k", "↑", log_x=max(by_k) >= 10)
            ax.set_title(ev)
        out.append(Figure("pass_at_k", "pass@k against k", "Unbiased pass@k per evaluator; bars are 95% intervals "
                          "over problems.", _png(fig)))

    # 2) indexed families: per-head loss / top-1, per-head acceptance
    by_ev: dict[str, list] = {}
    for (ev, fam), rows in p["families"].items():
        by_ev.setdefault(ev, []).append((fam, rows))
    for ev, fams in by_ev.items():
        fig, axes = _new_figure(len(fams))
        for ax, (fam, rows) in zip(axes, fams):
            pts = [[(k, v) for k, r in rows.items() if (v := _value(r["values"][j])) is not None] for j in range(ncols)]
            hib = next(iter(rows.values()))["higher_is_better"]
            _line_panel(ax, pts, labels, "head index k", fam, "↑" if hib else "↓")
            ax.set_title(f"{ev}: {fam}")
        out.append(Figure(f"{ev}_per_head", f"{ev}: per head", "Each metric against the head index it belongs to "
                          "(head k predicts the token k ahead); bars are 95% intervals.", _png(fig)))

    # 3) tau and speedup against the heads used
    for ev, rows in p["speed"].items():
        ks = table["k_by_evaluator"][ev]
        fig, axes = _new_figure(len(rows))
        for ax, r in zip(axes, rows):
            pts = [[(ks[j], v)] if ks[j] is not None and (v := _value(r["values"][j])) is not None else []
                   for j in range(ncols)]
            for (pt, label, color) in zip(pts, labels, _colors(ncols)):
                for k, (v, lo, hi) in pt:
                    ax.errorbar([k], [v], yerr=[[v - lo], [hi - v]], marker="o", capsize=3, label=label, color=color)
            if r["metric"] == "tau":
                top = max([k for k in ks if k is not None] or [1])
                ax.plot([1, top], [1, top], ls="--", color="grey", lw=1, label="tau = k (every draft accepted)")
            ax.set_xlabel("heads used (k)")
            ax.set_ylabel(f"{r['metric']} ↑")
            ax.set_title(f"{ev}: {r['metric']}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        out.append(Figure(f"{ev}_vs_k", f"{ev}: against the heads used", "Self-speculative decoding: tokens per "
                          "forward (tau) and speedup over plain greedy against k, one point per column; bars are "
                          "95% intervals.", _png(fig)))

    # 4) bars with intervals for everything else
    for ev, rows in p["bars"].items():
        for start in range(0, len(rows), PANELS_PER_FIGURE):
            chunk = rows[start:start + PANELS_PER_FIGURE]
            fig, axes = _new_figure(len(chunk), width=3.2, height=2.6, ncols=min(len(chunk), 4))
            for ax, r in zip(axes, chunk):
                vals = [_value(v) for v in r["values"]]
                xs = [j for j, v in enumerate(vals) if v is not None]
                ax.bar(xs, [vals[j][0] for j in xs], color=[_colors(ncols)[j] for j in xs],
                       yerr=[[vals[j][0] - vals[j][1] for j in xs], [vals[j][2] - vals[j][0] for j in xs]], capsize=3)
                ax.set_xticks(range(ncols), labels, rotation=20, ha="right", fontsize=8)
                ax.set_title(f"{r['metric']} {'↑' if r['higher_is_better'] else '↓'}", fontsize=10)
                ax.grid(axis="y", alpha=0.3)
            part = f" ({start // PANELS_PER_FIGURE + 1})" if len(rows) > PANELS_PER_FIGURE else ""
            out.append(Figure(f"{ev}_metrics{start // PANELS_PER_FIGURE + 1 if part else ''}", f"{ev}: metrics{part}",
                              "One panel per metric, one bar per column; error bars are 95% intervals "
                              "(none where the metric has no standard error).", _png(fig)))
    # 5) acceptance profiles: per-step accepted drafts and their decay over the output
    for ev, profiles in (table.get("acceptance") or {}).items():
        fig, (hist_ax, pos_ax) = _new_figure(2, width=5.0)
        colors = _colors(ncols)
        drawn = [(j, prof) for j, prof in enumerate(profiles) if prof]
        width = 0.8 / max(len(drawn), 1)
        for i, (j, prof) in enumerate(drawn):
            hist = prof["acceptance_histogram"]
            total = sum(hist) or 1
            hist_ax.bar([a + (i - (len(drawn) - 1) / 2) * width for a in range(len(hist))], [h / total for h in hist],
                        width=width, color=colors[j], label=labels[j])
            pos = prof.get("acceptance_by_position") or {}
            if pos.get("starts"):
                pos_ax.plot(pos["starts"], pos["mean_accepted"], marker="o", color=colors[j], label=labels[j])
        from matplotlib.ticker import MaxNLocator

        hist_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        hist_ax.set_xlabel("drafts accepted in a step")
        hist_ax.set_ylabel("share of steps")
        hist_ax.set_title(f"{ev}: acceptance histogram")
        bin_w = next((p["acceptance_by_position"].get("bin") for _, p in drawn if p.get("acceptance_by_position")), 32)
        pos_ax.set_xlabel(f"output position of the step's first token ({bin_w}-token bins)")
        pos_ax.set_ylabel("mean drafts accepted ↑")
        pos_ax.set_title(f"{ev}: acceptance over the output")
        for ax in (hist_ax, pos_ax):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        out.append(Figure(f"{ev}_acceptance", f"{ev}: acceptance profile", "Left: how many drafts each decoding step "
                          "accepted (vLLM's per-step accepted-token counts; the bonus token is not counted), as a share "
                          "of all steps of all prompts. Right: the mean accepted drafts of the steps that began in each "
                          "bin of output positions (acceptance that decays on long outputs shows as a falling line).",
                          _png(fig)))
    return out


def acceptance_by_evaluator(columns: list) -> dict[str, list[dict | None]]:
    """Per evaluator whose blocks record an acceptance profile (info.acceptance_histogram, and
    info.acceptance_by_position where present), that profile per column."""
    out: dict[str, list[dict | None]] = {}
    for j, c in enumerate(columns):
        for ev, per_role in c.doc["results"].items():
            info = (per_role.get(c.role) or {}).get("info") or {}
            hist = info.get("acceptance_histogram")
            if isinstance(hist, list) and hist and all(isinstance(h, int) for h in hist):
                out.setdefault(ev, [None] * len(columns))[j] = {
                    "acceptance_histogram": hist, "acceptance_by_position": info.get("acceptance_by_position")}
    return out


# ----------------------------------------------------------------------------- the page

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.better { color: #157a2f; } .worse { color: #b3261e; } .sig { font-weight: bold; }
.note { color: #8a5a00; font-size: 13px; margin: 2px 0; } .small { color: #555; font-size: 12px; }
figure { margin: 16px 0 28px; } figcaption { font-size: 13px; color: #444; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def load_repro(path: str) -> dict:
    """A `mtp-bench repro` result directory (or its result.json) -> its result, with the plot's PNG bytes."""
    p = Path(path)
    result_file = p / "result.json" if p.is_dir() else p
    try:
        doc = json.loads(result_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"repro result not found: {result_file}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read repro result {result_file}: {e}") from None
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("mtp-bench-repro/"):
        raise UserError(f"{result_file} is not a `mtp-bench repro` result (no schema 'mtp-bench-repro/N')")
    plot = result_file.parent / "plot.png"
    return {**doc, "_path": str(result_file), "_plot": plot.read_bytes() if plot.is_file() else None}


def render_repro(repros: list[dict]) -> list[str]:
    """The page's reproductions section: each finding's verdict, the rule's sentence, its own plot."""
    if not repros:
        return []
    parts = ["<h2>Reproductions</h2>"]
    for r in repros:
        parts.append(f"<h3>{_e(r.get('finding'))} ({_e(r.get('budget'))}): {_e(r.get('verdict'))}</h3>"
                     f"<p class='small'>{_e(r['_path'])}; claim: {_e(r.get('claim'))}</p>"
                     f"<p>{_e(r.get('sentence'))}</p>")
        if r.get("to_conclude"):
            parts.append(f"<p class='note'>{_e(r['to_conclude'])}</p>")
        if r["_plot"] is not None:
            data = base64.b64encode(r["_plot"]).decode()
            parts.append(f"<figure><img alt='{_e(r.get('finding'))} repro plot' src='data:image/png;base64,{data}'>"
                         "</figure>")
    return parts


def render_html(table: dict, figs: list[Figure], docs: list[tuple[str, dict]], repros: list[dict] | None = None) -> str:
    cols = table["columns"]
    ref = table["reference"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mtp-bench report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>mtp-bench report</h1><p class='small'>mtp-bench {_e(__version__)}, made {_e(utc_now())} from "
             f"{len(docs)} result file(s)</p>", "<h2>Models</h2><table><tr><th>column</th><th>file</th><th>role</th>"
             "<th>path</th><th>format</th><th>n_future</th><th>params</th><th>weights sha256</th></tr>"]
    for c in cols:
        m = c["model"] or {}
        params = m.get("num_params")
        parts.append(f"<tr><td>{_e(c['label'])}{' (reference)' if cols.index(c) == ref else ''}</td><td>{_e(c['path'])}"
                     f"</td><td>{_e(c['role'])}</td><td>{_e(m.get('path'))}</td><td>{_e(m.get('format'))}</td>"
                     f"<td class='num'>{_e(m.get('n_future'))}</td><td class='num'>"
                     f"{_e(f'{params / 1e6:.2f}M' if isinstance(params, int) else '?')}</td>"
                     f"<td><code>{_e(str(m.get('weights_sha256'))[:12])}</code></td></tr>")
    parts.append(f"</table><h2>Results</h2><p class='small'>Δ = column − {_e(cols[ref]['label'])} (the reference "
                 "column); green: better, red: worse, in the metric's own direction</p>"
                 "<table><tr><th>evaluator</th><th>metric</th>")
    for j, c in enumerate(cols):
        parts.append(f"<th>{_e(c['label'])}{' (ref)' if j == ref else ''}</th>")
        if j != ref:
            parts.append(f"<th>Δ {_e(c['label'])}</th>")
    parts.append("</tr>")
    for r in table["rows"]:
        version = next(v for v in r["versions"] if v)
        mixed = " <span class='note'>(mixed versions)</span>" if r["mixed_versions"] else ""
        parts.append(f"<tr><td>{_e(r['evaluator'])} v{_e(version)}</td><td>{_e(r['metric'])} "
                     f"{'↑' if r['higher_is_better'] else '↓'}{mixed}</td>")
        for j, v in enumerate(r["values"]):
            parts.append(f"<td class='num'>{_e(format_metric(v))}</td>")
            if j != ref:
                comp = r["comparisons"][j]
                text, style = comparison_cell(comp)
                cls = {"green": "better", "red": "worse"}.get(style, "")
                cls += " sig" if comp and comp["significant"] else ""
                ci = comp["test"]["ci95"] if comp else None
                tip = f" title='95% interval of the difference: [{ci[0]:.4g}, {ci[1]:.4g}]'" if ci else ""
                parts.append(f"<td class='num {cls.strip()}'{tip}>{_e(text)}</td>")
        parts.append("</tr>")
    parts.append("</table>")
    parts += [f"<p class='small'>{_e(line)}</p>" for line in legend(table)]
    parts += [f"<p class='note'>{_e(line)}</p>" for line in notes(table)]
    parts.append("<h2>Figures</h2>")
    if not figs:
        parts.append("<p>No metric to plot.</p>")
    for f in figs:
        data = base64.b64encode(f.png).decode()
        parts.append(f"<figure><h3>{_e(f.title)}</h3><img alt='{_e(f.title)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{_e(f.caption)}</figcaption></figure>")
    parts += render_repro(repros or [])
    parts.append("<h2>Provenance</h2>")
    for path, doc in docs:
        prov = doc.get("provenance", {})
        parts.append(f"<h3>{_e(path)}</h3><table>")
        for k in ("command", "git_commit", "mtp_bench_version", "python", "torch", "transformers", "platform", "device",
                  "torch_threads", "seed", "start_time", "duration_s"):
            if k in prov:
                parts.append(f"<tr><th>{_e(k)}</th><td>{_e(prov[k])}</td></tr>")
        for ev, block in doc["results"].items():
            for role, b in block.items():
                parts.append(f"<tr><th>{_e(ev)}/{_e(role)} config</th><td><code>{_e(b.get('config'))}</code></td></tr>")
        parts.append("</table>")
        parts += [f"<p class='small'>{_e(line)}</p>" for line in sandbox_lines(doc)]
        parts += [f"<p class='note'>not run: {_e(k)}: {_e(v)}</p>" for k, v in (doc.get("skipped") or {}).items()]
    parts.append("</body></html>\n")
    return "".join(parts)


def k_by_evaluator(columns: list) -> dict[str, list[int | None]]:
    """Per evaluator whose blocks record the heads used (info.k), that k per column."""
    out: dict[str, list[int | None]] = {}
    for j, c in enumerate(columns):
        for ev, per_role in c.doc["results"].items():
            k = ((per_role.get(c.role) or {}).get("info") or {}).get("k")
            if isinstance(k, int) and not isinstance(k, bool):
                out.setdefault(ev, [None] * len(columns))[j] = k
    return out
