"""The Python API of a run: `mtp_bench.evaluate(model, evals, ...) -> Result`.

    import mtp_bench
    result = mtp_bench.evaluate("reference_model/checkpoints/mtp4-code", ["humaneval", "heads"],
                                baseline="reference_model/checkpoints/ntp-code", limit=8,
                                config={"humaneval": {"max_new_tokens": 64}})
    result.metrics("heads")["head1_loss"].value     # a Metric: value, stderr, ci95, n, direction
    result.write("results/mine.json")               # the result file, its samples JSONL beside it

`mtp-bench run` is this function behind flags; `mtp-bench repro` evaluates its trained arms with
it, and `mtp-bench score` builds its result with the same pieces (`make_evaluators`,
`result_document`). A run, step by step:

    1) resolve what to run: evaluators by name or a suite, each Config from `defaults` under
       `config` ({"humaneval": {"max_new_tokens": 64}} or the CLI's "humaneval.max_new_tokens=64"
       strings, `backend.FIELD=VALUE` for vLLM), and where to write (`out` is checked before any
       work: no model is loaded for a run that could not save its result)
    2) load the candidate and baseline (paths through `mtp_bench.load`, or Model objects as given)
    3) for each model role, for each evaluator: reseed, build the RunContext, run, check the output
       against the contract; generations go through the append-only cache in the work dir, so a
       killed run started again redoes only what is missing. In a suite run an evaluator whose
       data is missing (DataError) is skipped and the result says why; by name it is an error.
    4) the result document with its provenance; with `out`, the samples JSONL then the result
       JSON, both atomically

Under torchrun every rank calls it; ranks > 0 only generate for rank 0 and get None back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mtp_bench.api import hub, paths, registry
from mtp_bench.api.config import config_from_dict, parse_overrides
from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import DataError, UserError
from mtp_bench.api.metric import Metric
from mtp_bench.api.registry import EvalOutput, Evaluator
from mtp_bench.execution.pool import hide_path
from mtp_bench.generation import distributed, vllm
from mtp_bench.generation.cache import open_run_cache
from mtp_bench.models.device import choose_threads
from mtp_bench.models.loader import load
from mtp_bench.reporting import results
from mtp_bench.reporting.provenance import collect, utc_now

ROLES = ("candidate", "baseline")


@dataclass
class Result:
    """What a run gives: the result document (the schema of docs/results.md), each evaluator's
    output per model role (its records in memory, for paired tests), and the generation cache's
    counts (`cache_hits`, `generated`)."""

    doc: dict[str, Any]
    outputs: dict[str, dict[str, EvalOutput]]  # evaluator -> role -> output
    stats: dict[str, int]
    evaluators: list[Evaluator]  # those that ran, as configured

    def metrics(self, evaluator: str, role: str = "candidate") -> dict[str, Metric]:
        """The metrics an evaluator reported for one model role."""
        return results.metrics(self.doc, evaluator, role)

    def samples(self) -> dict[tuple[str, str], list[dict]]:
        """(evaluator, role) -> the per-sample records (what the samples JSONL holds)."""
        return {(ev, role): o.records for ev, per_role in self.outputs.items() for role, o in per_role.items()}

    def write(self, out: str | os.PathLike) -> tuple[Path, Path]:
        """The result file and its samples JSONL beside it (samples first, both atomic)."""
        out_path, samples = results.check_output_path(out)
        results.atomic_write_jsonl(samples, results.sample_rows(self.evaluators, self.outputs))
        results.atomic_write_json(out_path, {**self.doc, "samples_file": samples.name})
        return out_path, samples


# ----------------------------------------------------------------------------- the pieces a run is made of

def make_evaluators(classes: list[type[Evaluator]], overrides: dict[str, dict[str, Any]] | None = None,
                    defaults: dict[str, dict[str, Any]] | None = None) -> list[Evaluator]:
    """One evaluator per class, its Config from `defaults` under `overrides` (both by name)."""
    overrides, defaults = overrides or {}, defaults or {}
    return [cls(config_from_dict(cls.Config, {**defaults.get(cls.name, {}), **overrides.get(cls.name, {})},
                                 owner=cls.name)) for cls in classes]


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data dir (`mtp_bench.api.paths.resolve_data_dir`), hidden from the sandboxed programs."""
    p = paths.resolve_data_dir(data_dir)
    if p is not None:
        hide_path(p)  # benchmark data: never visible to the programs the sandbox runs
    return p


def resolve_work_dir(work_dir: str | os.PathLike | None, out: Path | None, identity: dict[str, Any]) -> Path:
    """`work_dir`, else a deterministic dir under the cache root's runs/ keyed by the absolute
    `out` path (or, without one, by what is run), so rerunning a command finds its cache."""
    if work_dir:
        p = Path(work_dir).expanduser()
    else:
        ident = str(out.resolve()) if out is not None else json.dumps(identity, sort_keys=True)
        p = paths.cache_dir("runs") / hashlib.sha256(ident.encode()).hexdigest()[:16]
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the work dir {str(p)!r}: {e.strerror or e}") from None
    if not os.access(p, os.W_OK):
        raise UserError(f"the work dir {str(p)!r} is not writable")
    return p


def seed_everything(seed: int) -> None:
    """Reseed every global RNG before each evaluator, so its results do not depend on which
    evaluators ran before it."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def result_document(evaluators: list[Evaluator], models: dict[str, dict], outputs: dict[str, dict[str, EvalOutput]],
                    *, suite: str | None, seed: int, device: Any, argv: list[str] | None, start_time: str,
                    t0: float, samples_file: str | None = None, skipped: dict[str, str] | None = None,
                    devices: list[str] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result document: what ran on which models, with its provenance (`extra` goes into it)."""
    prov = collect(seed=seed, device=device, argv=argv, start_time=start_time, duration_s=time.perf_counter() - t0,
                   devices=devices)
    prov.update(extra or {})
    return results.build_result(suite=suite, evaluators=evaluators, models=models, outputs=outputs,
                                provenance=prov, samples_file=samples_file, skipped=skipped or {})


class _Bar:
    def __init__(self, progress: Any, task: Any) -> None:
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._t, n)


@contextlib.contextmanager
def rich_progress(console: Any) -> Iterator[Any]:
    """A live rich Progress (description, bar, done/total, elapsed, ETA) and a factory of bars
    for RunContext.progress."""
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)

    @contextlib.contextmanager
    def factory(description: str, total: int | None) -> Iterator[_Bar]:
        task = progress.add_task(escape(description), total=total)
        yield _Bar(progress, task)

    with progress:
        yield factory


class _Quiet:
    def print(self, *args: Any, **kwargs: Any) -> None:
        pass


# ----------------------------------------------------------------------------- evaluate

def evaluate(model: Any, evals: list[str] | str | None = None, *, suite: str | None = None,
             config: list[str] | dict[str, dict[str, Any]] | None = None,
             defaults: dict[str, dict[str, Any]] | None = None, baseline: Any = None, base: str | None = None,
             limit: int | None = None, seed: int = 0, data_dir: str | os.PathLike | None = None,
             work_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None, cache: bool = True,
             device: str | None = None, dtype: str | None = None, backend: str = "native",
             console: Any = None, progress: bool = False, argv: list[str] | None = None,
             threads: int | str | None = None, out_is_default: bool = False) -> Result | None:
    """Run evaluators on a model (and a baseline); steps 1-4 of the module docstring.

    model, baseline: a checkpoint path (any format `mtp_bench.load` reads; `base` for a heads-only
        one whose base moved) or a loaded Model. evals: names (a list or "a,b"); or `suite`.
    config: per-evaluator Config overrides, {name: {field: value}} or ["name.field=value", ...]
        (`backend.FIELD=VALUE` items set the vLLM engine); `defaults`: settings they override.
    limit: only the first N samples of each evaluator. seed: the run seed (per-sample seeds
        derive from it). data_dir: benchmark data (else $MTP_BENCH_DATA). work_dir: scratch space
        and the generation cache (default: under the cache root, keyed by `out`); cache=False
        ignores the cache. out: write the result file (and its samples) here.
    console: where progress lines and bars go (rich Console; None: nowhere); progress: bars.
    argv: the command line to record in the provenance. threads: torch's intra-op threads: N, or "auto" (the cores the
        machine's load leaves free, `models.device.choose_threads`: `mtp-bench run`'s default), or
        None (as the process has them); recorded in the provenance.
    out_is_default: `out` is a name the caller made up (run's timestamped default), so the work dir
        and its generation cache are keyed by what is run, and a rerun resumes although its name differs.
    """
    group = distributed.from_env(device)  # None for a single process
    try:
        return _evaluate(model, evals, suite, config, defaults, baseline, base, limit, seed, data_dir, work_dir,
                         out, cache, device, dtype, backend, console or _Quiet(), progress, argv, group, threads,
                         out_is_default)
    finally:
        if group is not None:
            group.close()


def _evaluate(model, evals, suite, config, defaults, baseline, base, limit, seed, data_dir, work_dir, out, cache,
              device, dtype, backend_name, console, progress, argv, group, threads, out_is_default) -> Result | None:
    t0, start_iso = time.perf_counter(), utc_now()
    if threads is None:
        n_threads, threads_why = torch.get_num_threads(), "the process's setting"
    else:
        n_threads, threads_why = choose_threads(None if threads == "auto" else int(threads))
    # 1) what to run, where to write
    names = [s.strip() for s in evals.split(",") if s.strip()] if isinstance(evals, str) else evals
    if not names and suite is None:
        raise UserError("give evaluators by name or a suite")
    classes = registry.resolve(suite, names)
    if isinstance(config, dict):
        backend_items, overrides = [], {k: v for k, v in config.items() if k != "backend"}
        backend_items = [f"backend.{k}={v}" for k, v in config.get("backend", {}).items()]
    else:
        eval_items, backend_items = vllm.split_config(list(config or []))
    backend = vllm.resolve(backend_name, backend_items, group)  # None = ours
    if not isinstance(config, dict):
        overrides = parse_overrides(eval_items, classes)
    evaluators = make_evaluators(classes, overrides, defaults)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    out_path, samples = results.check_output_path(out) if out else (None, None)
    data = resolve_data_dir(data_dir)
    torch.set_num_threads(n_threads)  # after every input check; before any model is loaded
    hub_ids = [m for m in (model, baseline) if isinstance(m, str) and not Path(m).expanduser().exists()]
    if data is None or hub_ids:  # something may come from the hub: find out once whether it answers
        hub.go_offline_if_unreachable(lambda line: console.print(line, markup=False, highlight=False))
    identity = {"evals": [e.name for e in evaluators], "configs": [e.config_dict() for e in evaluators],
                "models": [_identity(model), _identity(baseline)], "seed": seed, "limit": limit}
    work = resolve_work_dir(work_dir, None if out_is_default else out_path, identity)
    gen_cache = open_run_cache(work, group.rank if group is not None else 0) if cache else None
    if gen_cache is not None and gen_cache.skipped:
        console.print(f"generation cache: skipped {gen_cache.skipped} unreadable line(s) (a torn write from a "
                      "killed run); those samples are generated again", markup=False, highlight=False)

    # 2) models
    loader = backend.load if backend is not None else load
    kw = {"base": base} if base else {}  # a heads-only checkpoint's base
    dev = group.device if group is not None else device

    def loaded(m: Any) -> Any:
        return loader(m, device=dev, dtype=dtype, **kw) if isinstance(m, (str, os.PathLike)) else m

    models = {"candidate": loaded(model)}
    if baseline is not None:
        models["baseline"] = loaded(baseline)
    if group is not None:
        group.ready(models)
        if not group.is_leader:
            group.serve(models, gen_cache)
            return None
    model_blocks = {role: results.model_info(m) for role, m in models.items()}
    results.dumps(model_blocks)  # an adapter bug (a config that is not JSON) fails now, not after the run

    # 3) run
    outputs: dict[str, dict[str, EvalOutput]] = {}
    stats = {"cache_hits": 0, "generated": 0}
    durations: dict[str, float] = {}  # "evaluator/role" -> seconds
    skipped: dict[str, str] = {}  # evaluator -> why (a suite run skips an evaluator whose data is missing)
    with rich_progress(console) if progress else contextlib.nullcontext(None) as factory:
        for role, m in models.items():
            for ev in evaluators:
                if ev.name in skipped:
                    continue
                seed_everything(seed)
                ctx = RunContext(seed=seed, limit=limit, data_dir=data, work_dir=work, role=role, cache=gen_cache,
                                 distributed=group, generate_fn=backend.generate if backend is not None else None,
                                 **({"progress_factory": factory} if factory else {}))
                console.print(f"{ev.name} v{ev.version} on the {role} ({m.path})", markup=False, highlight=False)
                t_ev = time.perf_counter()
                try:
                    output = ev.run(m, ctx)
                except DataError as e:
                    if suite is None:  # asked for by name: missing data is an error
                        raise
                    # a suite run goes on without it, and the report says why
                    hint = "" if data is not None or "--data-dir" in str(e) else \
                        "; to run it, pass --data-dir DIR (or set $MTP_BENCH_DATA) with the benchmark data"
                    skipped[ev.name] = str(e) + hint
                    outputs.pop(ev.name, None)
                    console.print(f"skipped {ev.name}: {skipped[ev.name]}", markup=False, highlight=False)
                    continue
                durations[f"{ev.name}/{role}"] = round(time.perf_counter() - t_ev, 3)
                results.check_output(ev, output)
                outputs.setdefault(ev.name, {})[role] = output
                for k in stats:
                    stats[k] += ctx.stats[k]

    # 4) the result document; write: samples first, then the result that points at them
    extra: dict[str, Any] = {}
    if group is not None:
        extra["distributed"] = group.provenance()
    if backend is not None:
        extra["generation_backend"] = backend.provenance()
    extra["evaluator_durations_s"] = durations
    extra["data_dir"] = str(data) if data is not None else None
    extra["threads"] = {"torch": n_threads, "chosen_by": threads_why}
    extra["generation_cache"] = {"work_dir": str(work), "enabled": gen_cache is not None, **stats}
    ran = [ev for ev in evaluators if ev.name not in skipped]
    doc = result_document(ran, model_blocks, outputs, suite=suite, seed=seed, device=models["candidate"].device,
                          argv=argv, start_time=start_iso, t0=t0, samples_file=samples.name if samples else None,
                          skipped=skipped, devices=group.devices if group is not None else None, extra=extra)
    if out_path is not None:
        results.atomic_write_jsonl(samples, results.sample_rows(ran, outputs))
        results.atomic_write_json(out_path, doc)
    return Result(doc=doc, outputs=outputs, stats=stats, evaluators=ran)


def _identity(model: Any) -> Any:
    """What names a model in the default work dir's key: its path."""
    if model is None or isinstance(model, (str, os.PathLike)):
        return None if model is None else str(model)
    return str(getattr(model, "path", model))
