"""Result files: the versioned schema, atomic writes, and loading with validation.

A run writes two files (schema documented in the README, "Result files"):
    results/NAME.json           aggregate metrics per evaluator and model role, models, provenance
    results/NAME.samples.jsonl  one line per sample: evaluator, role, prompt, completion, score...
Both are written atomically (temp file in the same directory, fsync, os.replace), samples
first, so a crash or Ctrl-C never leaves a half-written result behind, and a result file never
points at samples that are not there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mtp_bench.api.atomic import atomic_write_bytes
from mtp_bench.api.errors import DataError, UserError
from mtp_bench.api.files import check_writable
from mtp_bench.api.jsonl import json_error
from mtp_bench.api.metric import Metric
from mtp_bench.api.registry import EvalOutput, Evaluator

SCHEMA_VERSION = 1
ROLES = ("candidate", "baseline")
RESERVED_SAMPLE_KEYS = ("evaluator", "evaluator_version", "role")


# ----------------------------------------------------------------------------- paths + atomic IO

def samples_path(out: Path) -> Path:
    """results/NAME.json -> results/NAME.samples.jsonl"""
    out = Path(out)
    return out.with_name(out.name[: -len(".json")] + ".samples.jsonl")


def check_output_path(out: str | Path) -> tuple[Path, Path]:
    """Validate --out before any work starts: it ends in .json, is not a directory, and its
    directory exists (or can be created) and is writable. Returns (result path, samples path)."""
    out = Path(out).expanduser()
    if out.suffix != ".json" or out.name == ".json":
        raise UserError(f"--out must name a .json file (e.g. results/NAME.json), got {str(out)!r}")
    if out.is_dir():
        raise UserError(f"--out {str(out)!r} is a directory; give a file name like {out}/NAME.json")
    check_writable(out, "--out")
    return out, samples_path(out)


def dumps(obj: Any) -> str:
    """Strict JSON (no NaN/inf), indented, keys in insertion order, newline at the end."""
    return json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, dumps(obj).encode())


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, allow_nan=False, ensure_ascii=False) + "\n"
                                     for r in rows).encode())


# ----------------------------------------------------------------------------- building results

def model_info(model: Any) -> dict[str, Any]:
    """The model block of a result: where it came from and what it is."""
    return {
        "path": str(model.path),
        "format": str(model.format),
        "weights_sha256": str(model.weights_sha256),
        "n_future": int(model.n_future),
        "num_params": int(model.num_params),
        "config": model.config,
    }


def check_output(evaluator: Evaluator, out: Any) -> None:
    """An evaluator's output must follow the contract; a violation is a bug in the evaluator,
    caught right after it runs rather than when the result is written."""
    who = f"evaluator {evaluator.name!r}"
    if not isinstance(out, EvalOutput):
        raise TypeError(f"{who} returned {type(out).__name__}, expected EvalOutput")
    if not isinstance(out.metrics, dict) or not out.metrics:
        raise TypeError(f"{who} returned no metrics")
    for k, m in out.metrics.items():
        if not isinstance(k, str) or not isinstance(m, Metric):
            raise TypeError(f"{who}: metric {k!r} is {type(m).__name__}, expected Metric")
    if not isinstance(out.records, list):
        raise TypeError(f"{who}: records must be a list")
    for i, r in enumerate(out.records):
        if not isinstance(r, dict) or not isinstance(r.get("sample_id"), str):
            raise TypeError(f"{who}: record {i} needs a str 'sample_id'")
        clash = [k for k in RESERVED_SAMPLE_KEYS if k in r]
        if clash:
            raise TypeError(f"{who}: record {i} uses reserved keys {clash}")
    for what, obj in (("records", out.records), ("info", out.info)):
        try:
            json.dumps(obj, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{who}: {what} are not strict JSON: {e}") from None


def build_result(*, suite: str | None, evaluators: list[Evaluator], models: dict[str, dict],
                 outputs: dict[str, dict[str, EvalOutput]], provenance: dict[str, Any],
                 samples_file: str | None, skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """The result document (schema_version 1). outputs: evaluator name -> role -> EvalOutput.
    skipped: evaluators of the suite that did not run, with the reason (e.g. data not available)."""
    results: dict[str, dict] = {}
    for ev in evaluators:
        per_role = {}
        for role in ROLES:
            if role in outputs.get(ev.name, {}):
                o = outputs[ev.name][role]
                per_role[role] = {
                    "version": ev.version,
                    "config": ev.config_dict(),
                    "metrics": {k: m.to_dict() for k, m in o.metrics.items()},
                    "info": o.info,
                    "n_records": len(o.records),
                }
        results[ev.name] = per_role
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "evals": [ev.name for ev in evaluators],
        "evaluators": {ev.name: {"version": ev.version, "suites": list(ev.suites), "description": ev.description,
                                 "caption": ev.caption} for ev in evaluators},
        "models": models,
        "results": results,
        "skipped": dict(skipped or {}),
        "samples_file": samples_file,
        "provenance": provenance,
    }


def sample_rows(evaluators: list[Evaluator], outputs: dict[str, dict[str, EvalOutput]]) -> Iterable[dict]:
    """The samples JSONL rows: evaluator, version and role first, then the record as given."""
    for ev in evaluators:
        for role in ROLES:
            o = outputs.get(ev.name, {}).get(role)
            if o is None:
                continue
            for r in o.records:
                yield {"evaluator": ev.name, "evaluator_version": ev.version, "role": role, **r}


# ----------------------------------------------------------------------------- loading

def load_result(path: str | Path) -> dict[str, Any]:
    """Read and validate a result file; anything wrong is one DataError line naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"no result file at {str(path)!r}") from None
    except IsADirectoryError:
        raise DataError(f"{str(path)!r} is a directory, not a result file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {str(path)!r}: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{str(path)!r} is not valid JSON ({json_error(e, lines=True)})") from None
    try:
        validate(doc)
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(f"{str(path)!r} is not an mtp-bench result file: {e}") from None
    return doc


def validate(doc: Any) -> None:
    """Check the structure of a schema-1 result document; raise ValueError saying what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("the top level is not a JSON object")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"schema_version is {doc.get('schema_version')!r}, this mtp-bench reads {SCHEMA_VERSION}")
    for key, typ in (("evals", list), ("evaluators", dict), ("models", dict), ("results", dict),
                     ("provenance", dict)):
        if not isinstance(doc.get(key), typ):
            raise ValueError(f"{key!r} is missing or not a {typ.__name__}")
    if "candidate" not in doc["models"]:
        raise ValueError("models has no 'candidate'")
    for role in doc["models"]:
        if role not in ROLES:
            raise ValueError(f"unknown model role {role!r}")
    for name in doc["evals"]:
        if name not in doc["results"] or name not in doc["evaluators"]:
            raise ValueError(f"evaluator {name!r} is listed in evals but has no results")
        for role, block in doc["results"][name].items():
            if role not in doc["models"]:
                raise ValueError(f"{name}: results for role {role!r} but no such model")
            if not isinstance(block.get("version"), str) or not isinstance(block.get("metrics"), dict):
                raise ValueError(f"{name}/{role}: needs 'version' and 'metrics'")
            for m in block["metrics"].values():
                Metric.from_dict(m)


def metrics(doc: dict[str, Any], evaluator: str, role: str) -> dict[str, Metric]:
    block = doc["results"].get(evaluator, {}).get(role)
    if block is None:
        return {}
    return {k: Metric.from_dict(v) for k, v in block["metrics"].items()}


def metric_values(doc: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """(evaluator, role, metric) -> value: what "identical metrics" means in determinism checks."""
    out = {}
    for ev, per_role in doc["results"].items():
        for role, block in per_role.items():
            for k, m in block["metrics"].items():
                v = m["value"]
                out[(ev, role, k)] = float(v) if not isinstance(v, float) or not math.isnan(v) else v
    return out
