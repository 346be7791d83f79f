"""`mtp-bench report --html/--png`: a self-contained page whose plots follow what the results hold,
rendered in a real headless browser (Debian's chromium) where one is installed."""

import base64
import io
import re
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest

from mtp_bench.api.registry import EvalOutput, Evaluator
from mtp_bench.cli import main
from mtp_bench.reporting import html as html_report
from mtp_bench.reporting.compare import build, columns_from_files
from mtp_bench.reporting.results import atomic_write_json, atomic_write_jsonl, build_result, sample_rows
from mtp_bench.scoring.metrics import mean_metric, point_metric

IMG = re.compile(r"<img alt='([^']*)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>")


def _report(tmp_path, files, *extra):
    out = tmp_path / "report.html"
    assert main(["report", *map(str, files), "--html", str(out), *extra]) == 0
    return out


@pytest.mark.slow
def test_page_is_self_contained_with_the_plots_the_results_call_for(shipped_results, tmp_path):
    from PIL import Image

    files = [shipped_results[n] for n in ("ntp-code", "mtp4-code", "mtp8-bytes")]
    page = _report(tmp_path, files).read_text()
    # nothing to fetch: no external script, stylesheet, image or font
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//|file:)""", page)
    images = IMG.findall(page)
    titles = [t for t, _ in images]
    assert titles == ["heads: per head", "specdec: per head", "specdec: against the heads used",
                      "heads: metrics", "specdec: metrics (1)", "specdec: metrics (2)", "humaneval: metrics",
                      "specdec: acceptance profile"]
    for _, data in images:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        assert img.format == "PNG" and img.width > 200 and img.height > 150
    # the table and the provenance are there too
    assert "ntp-code (ref)" in page and "Δ mtp8-bytes" in page and "paired bootstrap" in page
    assert page.count("<th>command</th>") == 3 and page.count("<th>heads/candidate config</th>") == 3


@pytest.mark.slow
def test_png_dir_holds_the_embedded_figures(shipped_results, tmp_path):
    page = _report(tmp_path, [shipped_results["mtp4-code"]], "--png", str(tmp_path / "figs")).read_text()
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert [p.name for p in pngs] == ["01-heads_per_head.png", "02-specdec_per_head.png", "03-specdec_vs_k.png",
                                      "04-heads_metrics.png", "05-specdec_metrics1.png", "06-specdec_metrics2.png",
                                      "07-humaneval_metrics.png", "08-specdec_acceptance.png"]
    assert [base64.b64decode(d) for _, d in IMG.findall(page)] == [p.read_bytes() for p in pngs]


@dataclass
class _NoConfig:
    pass


def _toy(path, name, metrics, info=None):
    ev = type(name, (Evaluator,), {"name": name, "version": "1.0", "suites": ("nl",), "description": name,
                                   "Config": _NoConfig})()
    out = EvalOutput([{"sample_id": "0"}], metrics, info or {})
    doc = build_result(suite=None, evaluators=[ev], models={"candidate": {"path": path.stem}},
                       outputs={name: {"candidate": out}}, provenance={}, samples_file=path.stem + ".samples.jsonl")
    atomic_write_jsonl(path.with_name(path.stem + ".samples.jsonl"), sample_rows([ev], {name: {"candidate": out}}))
    atomic_write_json(path, doc)
    return path


@pytest.mark.slow
def test_plot_kinds_follow_the_metric_names_of_any_evaluator(tmp_path):
    m = lambda v: mean_metric([v, v + 0.1, v - 0.1], True)
    a = _toy(tmp_path / "a.json", "codex", {"pass@1": m(0.2), "pass@10": m(0.5), "pass@100": m(0.7)})
    b = _toy(tmp_path / "b.json", "gsm8k", {"exact_match_strict": m(0.3), "exact_match_flexible": m(0.4)})
    c = _toy(tmp_path / "c.json", "probe", {"layer_1": m(0.1), "layer_2": m(0.2), "layer_3": m(0.3)})
    d = _toy(tmp_path / "d.json", "drafts", {"tau": point_metric(2.5, 10, True), "speedup": m(1.5)}, info={"k": 3})
    table = build(columns_from_files([str(a), str(b), str(c), str(d)]))
    table["k_by_evaluator"] = html_report.k_by_evaluator(columns_from_files([str(a), str(b), str(c), str(d)]))
    plan = html_report.plan(table)
    assert {ev: sorted(ks) for ev, ks in plan["passk"].items()} == {"codex": [1, 10, 100]}
    assert {k: sorted(v) for k, v in plan["families"].items()} == {("probe", "layer_{k}"): [1, 2, 3]}
    assert {ev: [r["metric"] for r in rows] for ev, rows in plan["speed"].items()} == {"drafts": ["tau", "speedup"]}
    assert {ev: [r["metric"] for r in rows] for ev, rows in plan["bars"].items()} == {
        "gsm8k": ["exact_match_strict", "exact_match_flexible"], "drafts": ["tau", "speedup"]}
    figs = html_report.figures(table)
    assert [f.title for f in figs] == ["pass@k against k", "probe: per head", "drafts: against the heads used",
                                       "gsm8k: metrics", "drafts: metrics"]


def test_acceptance_profiles_are_plotted_and_printed(tmp_path, capsys):
    """specdec's info.acceptance_histogram / acceptance_by_position: one figure (histogram, decay over
    the output) in the page, and text lines in `show`."""
    from PIL import Image

    def prof(hist, means):
        return {"k": 3, "acceptance_histogram": hist,
                "acceptance_by_position": {"bin": 32, "starts": [32 * i for i in range(len(means))],
                                           "steps": [5] * len(means), "mean_accepted": means}}
    a = _toy(tmp_path / "a.json", "specdec", {"tau": point_metric(1.6, 10, True)}, info=prof([50, 30, 20], [0.9, 0.6]))
    b = _toy(tmp_path / "b.json", "specdec", {"tau": point_metric(1.2, 10, True)}, info=prof([80, 15, 5], [0.3, 0.2]))
    page = _report(tmp_path, [a, b], "--png", str(tmp_path / "figs")).read_text()
    titles = [t for t, _ in IMG.findall(page)]
    assert "specdec: acceptance profile" in titles
    png = tmp_path / "figs" / f"{titles.index('specdec: acceptance profile') + 1:02d}-specdec_acceptance.png"
    img = Image.open(png)
    assert img.format == "PNG" and img.width > 400
    cols = columns_from_files([str(a), str(b)])
    assert html_report.acceptance_by_evaluator(cols)["specdec"][1]["acceptance_histogram"] == [80, 15, 5]
    capsys.readouterr()
    assert main(["show", str(a)]) == 0
    out = capsys.readouterr().out
    assert "specdec candidate: drafts accepted per step: 0: 50% ▄, 1: 30% ▂, 2: 20% ▂ (100 steps)" in out
    assert "mean drafts accepted by output position (32-token bins): 0: 0.90, 32: 0.60" in out


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.json"), "--html", str(tmp_path / "r.html")]) == 2
    assert "no result file" in capsys.readouterr().err
    a = _toy(tmp_path / "a.json", "x", {"m": point_metric(1.0, 1, True)})
    assert main(["report", str(a)]) == 2
    assert "give --html OUT.html and/or --png DIR" in capsys.readouterr().err
    assert main(["report", str(a), "--html", str(tmp_path / "r.txt")]) == 2
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r.txt").exists()


def test_repro_results_show_their_verdict_and_their_own_plot(tmp_path, capsys):
    import json
    from pathlib import Path

    ROOT_REPRO_EXAMPLE = Path(__file__).resolve().parents[2] / "results" / "repro" / "induction-quick"  # committed
    a = _toy(tmp_path / "a.json", "x", {"m": point_metric(1.0, 1, True)})
    page = _report(tmp_path, [a], "--repro", str(ROOT_REPRO_EXAMPLE)).read_text()
    doc = json.loads((ROOT_REPRO_EXAMPLE / "result.json").read_text())
    assert f"{doc['finding']} ({doc['budget']}): {doc['verdict']}" in page
    plots = {alt: data for alt, data in IMG.findall(page)}
    assert base64.b64decode(plots[f"{doc['finding']} repro plot"]) == (ROOT_REPRO_EXAMPLE / "plot.png").read_bytes()
    assert main(["report", str(a), "--html", str(tmp_path / "r2.html"), "--repro", str(tmp_path)]) == 2
    assert "repro result not found" in capsys.readouterr().err and not (tmp_path / "r2.html").exists()
    (tmp_path / "result.json").write_text(json.dumps({"schema": "something-else"}))
    assert main(["report", str(a), "--html", str(tmp_path / "r2.html"), "--repro", str(tmp_path)]) == 2
    assert "is not a `mtp-bench repro` result" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a real browser

CHECK_IMAGES = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
</script></body>"""


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y --no-install-recommends chromium; .ci/run does)")
    return exe


def _browse(exe, tmp_path, *args):
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_a_headless_browser_renders_the_page_with_every_image(shipped_results, tmp_path):
    from PIL import Image

    exe = _chromium()
    files = [shipped_results[n] for n in ("ntp-code", "mtp4-code", "mtp8-bytes")]
    page = _report(tmp_path, files)
    n_images = len(IMG.findall(page.read_text()))
    # 1) every <img> decoded by the browser: a copy of the page marks naturalWidth > 0 on load
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", CHECK_IMAGES))
    dom = _browse(exe, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-images="{n_images}/{n_images}"' in dom.stdout and n_images == 8
    # 2) a screenshot that is not blank: the page's text, tables and plots put colour on the canvas
    shot = tmp_path / "shot.png"
    res = _browse(exe, tmp_path, "--window-size=1300,2400", f"--screenshot={shot}", page.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)  # (H, W, 3)
    assert img.shape == (2400, 1300, 3)
    non_white = (img.min(axis=2) < 240).mean()
    colours = len(np.unique((img[::4, ::4] // 16).reshape(-1, 3), axis=0))
    assert non_white > 0.05 and colours > 20
    # the plot lines' colours (matplotlib's tab10 blue and orange) are on screen: the figures were drawn
    blue = (np.abs(img - [31, 119, 180]).max(axis=2) < 30).sum()
    orange = (np.abs(img - [255, 127, 14]).max(axis=2) < 30).sum()
    assert blue > 200 and orange > 200
    # 3) the check can fail: one corrupt image is seen as not loaded
    broken = IMG.sub(lambda m: m.group(0).replace(m.group(2)[:40], "A" * 40), probe.read_text(), count=1)
    probe.write_text(broken)
    dom = _browse(exe, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert f'data-images="{n_images - 1}/{n_images}"' in dom.stdout


def test_one_file_report_deltas_run_the_same_way_as_show(tmp_path):
    """One result file with a candidate and a baseline: the page's Δ column is candidate - baseline,
    as in the terminal (`show`), for every metric; the page names the reference column."""
    import html
    import json
    from pathlib import Path

    from mtp_bench.reporting.show import comparison

    src = Path(__file__).resolve().parents[2] / "results" / "code-default.json"
    page = _report(tmp_path, [src]).read_text()
    assert "Δ = column − code-default/baseline (the reference column)" in page
    rows = {(r["evaluator"], r["metric"]): r["delta"] for r in comparison(json.loads(src.read_text()))["rows"]
            if r["delta"] is not None}
    assert rows
    cells = re.findall(r"<tr><td>(\w+) v[^<]*</td><td>([^ <]+) [↑↓][^<]*(?:<span[^>]*>[^<]*</span>)?</td>"
                       r"<td class='num'>[^<]*</td><td class='num[^']*'[^>]*>([^<]*)</td>", page)
    seen = {(ev, html.unescape(m)): txt.split()[0] for ev, m, txt in cells}
    assert set(rows) <= set(seen)
    for key, delta in rows.items():
        assert float(seen[key]) == pytest.approx(delta, rel=1e-2, abs=1e-3), key
