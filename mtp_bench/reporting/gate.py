"""`mtp-bench gate`: a CI regression gate over two result files.

    mtp-bench run --suite code --model CKPT --out results/pr.json
    mtp-bench gate results/pr.json --baseline results/main.json --metrics humaneval.pass@1,heads.head1_loss
    mtp-bench gate results/pr.json --baseline results/main.json --policy gate.toml \\
        --junit gate.xml --markdown gate.md

A metric regresses when the candidate is worse than the baseline in the metric's own direction
(`higher_is_better`) by more than its tolerance AND, unless significance is not required, the
worsening is significant: the paired test of `mtp_bench.reporting.compare` (exact McNemar for pass/fail,
paired bootstrap otherwise, on the samples both files answered; the unpaired z test where they
share none) gives a p-value below alpha after Holm's correction over the gated metrics. So
sampling noise alone does not fail a build, and a real drop on the same problems does, even when
the two 95% intervals overlap. A metric without a standard error is gated on its value alone.
The candidate of each file is compared (a file's own baseline role is not used). Evaluator
versions must match: numbers from different versions do not measure the same thing.

Settings, in increasing precedence: built-in defaults < `--policy gate.toml` < flags given on the
command line (--metrics, --tolerance, --relative, --alpha, --ignore-significance). The policy file
(TOML; documented in the README, an example in docs/gate.example.toml) holds per-metric thresholds:

    [gate]
    metrics = ["humaneval.pass@1", "heads.*"]  # gated metrics (an exact name must exist, a glob may
                                               # match nothing); default: every metric both files have
    skip_timing = true                         # tokens/s, speedups, verify/draft cost: machine-dependent
    correction = "holm"                        # over the gated metrics; or "none"
    [defaults]                                 # every gated metric unless a [metric."..."] says otherwise
    tolerance = 0.0                            # allowed worsening, absolute...
    relative = false                           # ...or a fraction of |baseline value|
    require_significance = true                # false: any worsening beyond the tolerance fails
    alpha = 0.05
    [metric."heads.head*_loss"]                # globs; an exact name overrides the globs that match it
    tolerance = 0.05
    relative = true
    [metric."specdec.degenerate_fraction"]
    skip = true

Reports for CI systems: `--junit FILE.xml` (one test case per gated metric, skipped ones marked,
failures carrying the numbers) and `--markdown FILE.md` (a summary table, e.g. for
$GITHUB_STEP_SUMMARY), each written atomically, whatever the verdict.

Exit codes: 0 = no regression, 1 = at least one regression, 2 = bad input (missing file, unknown
metric, malformed policy, version mismatch).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtp_bench.api.errors import ConfigError, DataError, UnknownNameError, UserError
from mtp_bench.api.metric import Metric
from mtp_bench.reporting.pairing import Side, fmt_p, paired_test
from mtp_bench.reporting.show import _num, format_metric, test_cell
from mtp_bench.scoring.metrics import delta
from mtp_bench.scoring.stats import Difference, holm

# metrics that measure the machine as much as the model (tokens/s, speedups, seconds, cost ratios)
TIMING_METRIC = re.compile(r"(tokens_per_s|speedup|latency|throughput|verify_cost|draft_cost|_seconds$|_s$)")



# ----------------------------------------------------------------------------- policy

@dataclass
class Rule:
    """How one metric is gated."""

    tolerance: float = 0.0  # allowed worsening, absolute (or relative, below)
    relative: bool = False  # tolerance is a fraction of |baseline value|
    require_significance: bool = True  # a worsening must also be significant to fail
    alpha: float = 0.05  # significance level (after the correction)
    skip: bool = False  # not gated at all (reported as skipped)


@dataclass
class Policy:
    metrics: list[str] | None = None  # names or globs; None = every metric both files have
    skip_timing: bool = False  # the flags-only gate checks timing metrics too, as before
    correction: str = "holm"  # "holm" | "none"
    defaults: Rule = field(default_factory=Rule)
    per_metric: dict[str, dict[str, Any]] = field(default_factory=dict)  # pattern -> Rule fields

    def rule(self, name: str) -> Rule:
        """defaults, then every matching glob in file order, then the exact name."""
        merged = dataclasses.asdict(self.defaults)
        for pat, fields in self.per_metric.items():
            if pat != name and fnmatch.fnmatchcase(name, pat):
                merged.update(fields)
        merged.update(self.per_metric.get(name, {}))
        return Rule(**merged)


_RULE_TYPES = {f.name: f.type for f in dataclasses.fields(Rule)}


def _rule_fields(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    out = {}
    for k, v in table.items():
        if k not in _RULE_TYPES:
            raise ConfigError(f"{where}: unknown key {k!r}; valid: {', '.join(_RULE_TYPES)}")
        want = _RULE_TYPES[k]
        if want == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}.{k} must be a number, got {v!r}")
            v = float(v)
            if v < 0 or (k == "alpha" and not 0 < v < 1):
                raise ConfigError(f"{where}.{k} must be {'in (0, 1)' if k == 'alpha' else '>= 0'}, got {v}")
        elif not isinstance(v, bool):
            raise ConfigError(f"{where}.{k} must be true or false, got {v!r}")
        out[k] = v
    return out


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: the same parser, from PyPI (a dependency there)
        import tomli as tomllib
    return tomllib


def load_policy(path: str | Path) -> Policy:
    """Read and validate a gate policy file; anything wrong is one line naming the file."""
    path = Path(path)
    tomllib = _toml()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"no policy file at {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {str(path)!r}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not valid TOML: {e}") from None
    valid = ("gate", "defaults", "metric")
    unknown = [k for k in raw if k not in valid]
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    p = Policy()
    gate = raw.get("gate", {})
    for k, v in gate.items():
        if k == "metrics":
            if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                raise ConfigError(f"{path}: gate.metrics must be a list of metric names or globs")
            p.metrics = list(v)
        elif k == "skip_timing":
            if not isinstance(v, bool):
                raise ConfigError(f"{path}: gate.skip_timing must be true or false")
            p.skip_timing = v
        elif k == "correction":
            if v not in ("holm", "none"):
                raise ConfigError(f"{path}: gate.correction must be \"holm\" or \"none\", got {v!r}")
            p.correction = v
        else:
            raise ConfigError(f"{path}: unknown key gate.{k}; valid: metrics, skip_timing, correction")
    p.defaults = Rule(**_rule_fields(raw.get("defaults", {}), f"{path}: defaults"))
    metric = raw.get("metric", {})
    if not isinstance(metric, dict):
        raise ConfigError(f"{path}: metric must hold tables like [metric.\"humaneval.pass@1\"]")
    p.per_metric = {pat: _rule_fields(t, f"{path}: metric.{pat!r}") for pat, t in metric.items()}
    return p


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


# ----------------------------------------------------------------------------- checks

@dataclass
class Check:
    metric: str  # "evaluator.metric"
    candidate: Metric
    baseline: Metric
    rule: Rule
    worse_by: float  # how much worse the candidate is, in the metric's direction (negative = better)
    allowed: float  # the tolerance in the metric's units
    test: Difference | None  # paired (or unpaired) test, candidate - baseline; None when skipped
    p_adjusted: float | None  # after the policy's correction
    significant: bool | None  # p_adjusted < alpha; None without a p-value
    regressed: bool
    skipped: str | None = None  # why the metric was not gated

    @property
    def verdict(self) -> str:
        return "skipped" if self.skipped else "REGRESSED" if self.regressed else "ok"

    def why(self) -> str:
        """One sentence with the numbers."""
        if self.skipped:
            return f"{self.metric}: skipped ({self.skipped})"

        direction = "higher" if self.candidate.higher_is_better else "lower"
        t = self.test
        sig = ("no p-value (no standard error)" if t is None or t.p is None else
               f"{t.method} p={fmt_p(t.p)}, adjusted {fmt_p(self.p_adjusted)} vs alpha {self.rule.alpha}")
        return (f"{self.metric} ({direction} is better): candidate {self.candidate.value:.6g}, baseline "
                f"{self.baseline.value:.6g}, worse by {self.worse_by:+.6g} (allowed {self.allowed:.6g}); {sig}"
                + ("" if self.rule.require_significance else "; significance not required"))

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "candidate": self.candidate.to_dict(), "baseline": self.baseline.to_dict(),
                "worse_by": self.worse_by, "allowed": self.allowed, "rule": dataclasses.asdict(self.rule),
                "test": self.test.to_dict() if self.test else None, "p_adjusted": self.p_adjusted,
                "significant": self.significant, "regressed": self.regressed, "skipped": self.skipped,
                "verdict": self.verdict}


def _candidate_metrics(doc: dict) -> dict[str, tuple[str, str, Metric]]:
    """"evaluator.metric" -> (evaluator, version, Metric) of a result file's candidate."""
    out = {}
    for ev, per_role in doc["results"].items():
        block = per_role.get("candidate")
        if block is None:
            continue
        for name, m in block["metrics"].items():
            out[f"{ev}.{name}"] = (ev, block["version"], Metric.from_dict(m))
    return out


def _select(patterns: list[str], common: list[str], what: str) -> list[str]:
    chosen: dict[str, None] = {}
    for pat in patterns:
        hits = [m for m in common if fnmatch.fnmatchcase(m, pat)] if _is_glob(pat) else [pat] if pat in common else []
        if not hits and not _is_glob(pat):  # a glob may match nothing (e.g. an evaluator skipped for its data)
            raise UnknownNameError(f"{what} {pat!r} is not in both result files; "
                                   f"common metrics: {', '.join(common) or 'none'}")
        for h in hits:
            chosen.setdefault(h)
    return list(chosen)


def compare(doc: dict, base_doc: dict, policy: Policy | None = None, samples: dict | None = None,
            base_samples: dict | None = None, no_samples_why: str | None = None) -> list[Check]:
    """One Check per gated metric (skipped ones included, marked). `samples`/`base_samples`:
    (evaluator, role) -> records of each file (see `mtp_bench.reporting.pairing.load_samples`)."""
    policy = policy or Policy()
    cand, base = _candidate_metrics(doc), _candidate_metrics(base_doc)
    common = [k for k in cand if k in base]
    names = _select(policy.metrics, common, "metric") if policy.metrics else common
    for pat in policy.per_metric:
        if not _is_glob(pat) and pat not in common:
            raise UnknownNameError(f"policy metric {pat!r} is not in both result files; "
                                   f"common metrics: {', '.join(common) or 'none'}")
    if not names:
        raise UserError("the two result files share no metric to gate")
    checks = []
    for name in names:
        (ev, cv, cm), (_, bv, bm) = cand[name], base[name]
        if cv != bv:
            raise UserError(f"{name}: candidate scored with evaluator version {cv}, baseline with {bv}; "
                            "refusing to gate results of different evaluator versions")
        rule = policy.rule(name)
        d = delta(cm, bm)
        worse_by = -d if cm.higher_is_better else d
        allowed = rule.tolerance * abs(bm.value) if rule.relative else rule.tolerance
        skipped = "policy: skip" if rule.skip else (
            "timing metric, skip_timing" if policy.skip_timing and TIMING_METRIC.search(name.split(".", 1)[1]) else None)
        test = None
        if skipped is None:
            why = no_samples_why or "no samples"
            sides = [Side(d["results"][ev]["candidate"], None if smp is None else smp.get((ev, "candidate")), why)
                     for d, smp in ((doc, samples), (base_doc, base_samples))]
            test = paired_test(name.split(".", 1)[1], *sides)
        checks.append(Check(name, cm, bm, rule, worse_by, allowed, test, None, None, False, skipped))
    tested = [c for c in checks if c.test is not None]
    ps = [c.test.p for c in tested]  # type: ignore[union-attr]
    adjusted = holm(ps) if policy.correction == "holm" else ps
    for c, p in zip(tested, adjusted):
        c.p_adjusted = p
        c.significant = None if p is None else p < c.rule.alpha
        c.regressed = c.worse_by > c.allowed and (not c.rule.require_significance or c.significant is not False)
    return checks


# ----------------------------------------------------------------------------- CI reports

def junit_xml(checks: list[Check], title: str, properties: dict[str, str]) -> bytes:
    """JUnit XML: one <testcase> per gated metric (classname mtp-bench.gate.EVALUATOR, name METRIC);
    a regression is a <failure> with the numbers, a skipped metric is <skipped>."""
    import xml.etree.ElementTree as ET

    failures = sum(c.regressed for c in checks)
    skipped = sum(c.skipped is not None for c in checks)
    root = ET.Element("testsuites", name="mtp-bench gate", tests=str(len(checks)), failures=str(failures),
                      errors="0", skipped=str(skipped))
    suite = ET.SubElement(root, "testsuite", name=title, tests=str(len(checks)), failures=str(failures),
                          errors="0", skipped=str(skipped), time="0")
    props = ET.SubElement(suite, "properties")
    for k, v in properties.items():
        ET.SubElement(props, "property", name=k, value=str(v))
    for c in checks:
        ev, metric = c.metric.split(".", 1)
        case = ET.SubElement(suite, "testcase", classname=f"mtp-bench.gate.{ev}", name=metric, time="0")
        if c.skipped:
            ET.SubElement(case, "skipped", message=c.skipped)
            continue
        if c.regressed:
            fail = ET.SubElement(case, "failure", type="regression",
                                 message=f"{c.metric} regressed: worse by {c.worse_by:+.6g} (allowed {c.allowed:.6g})")
            fail.text = c.why()
        ET.SubElement(case, "system-out").text = c.why()
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(checks: list[Check], title: str, model_lines: list[str]) -> str:
    """A summary table in GitHub-flavoured Markdown."""
    failed = [c for c in checks if c.regressed]
    gated = [c for c in checks if not c.skipped]
    head = (f"{len(failed)} of {len(gated)} gated metrics regressed" if failed else
            f"all {len(gated)} gated metrics ok")
    lines = [f"### mtp-bench gate: {head}", "", f"{_md(title)}", ""]
    lines += [f"- {_md(x)}" for x in model_lines] + [""]
    lines.append("| metric | candidate | baseline | Δ | worse by | allowed | p (test) | verdict |")
    lines.append("|---|--:|--:|--:|--:|--:|--:|---|")
    for c in checks:
        arrow = "↑" if c.candidate.higher_is_better else "↓"
        d = delta(c.candidate, c.baseline)
        row = {"test": c.test.to_dict() if c.test else None, "significant": c.significant}
        verdict = {"REGRESSED": "**REGRESSED**", "ok": "ok", "skipped": f"skipped ({c.skipped})"}[c.verdict]
        lines.append(f"| {_md(c.metric)} {arrow} | {format_metric(c.candidate.to_dict())} | "
                     f"{format_metric(c.baseline.to_dict())} | {'+' if d > 0 else ''}{_num(d)} | "
                     f"{'—' if c.skipped else f'{c.worse_by:+.4g}'} | {'—' if c.skipped else f'{c.allowed:.4g}'} | "
                     f"{test_cell(row) if c.test else '—'} | {verdict} |")
    lines += ["", "p (test): M = exact McNemar (pass/fail, paired), B = paired bootstrap, U = unpaired z "
              "(no shared per-sample values); * = significant after the correction. A metric regresses when "
              "it is worse by more than allowed and (where required) significantly so.", ""]
    return "\n".join(lines)
