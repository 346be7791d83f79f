"""The steps of `mtp-bench repro`: data, training each arm, evaluating it, the verdict, the
result directory (the package docstring numbers them)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtp_bench.api import registry
from mtp_bench.api.atomic import atomic_write_bytes
from mtp_bench.api.errors import ConfigError, DataError, UserError
from mtp_bench.api.paths import cache_root
from mtp_bench.commands.bench import train as B
from mtp_bench.commands.data import write_jsonl
from mtp_bench.commands.repro.findings import BUDGETS, FINDINGS, PLANS, RULES, SCHEMA, TRAIN_SEED_BASE, Finding
from mtp_bench.commands.repro.plots import plot
from mtp_bench.commands.repro.rules import (
    MEMORY_RULE_TEXT,
    RULE_TEXT,
    SPEEDUP_RULE_TEXT,
    compare,
    decide,
    decide_memory,
    decide_speedup,
    explain,
    explain_memory,
    explain_speedup,
    paired_interval,
    pool_seeds,
)
from mtp_bench.evals import arithmetic as A
from mtp_bench.evals import induction as I
from mtp_bench.evals.specdec import text_prompts
from mtp_bench.evaluation import evaluate, resolve_data_dir
from mtp_bench.models.loader import load as load_model
from mtp_bench.reference_model import train as T
from mtp_bench.reference_model.tokenizer import byte_tokenizer
from mtp_bench.reporting.provenance import collect, utc_now
from mtp_bench.reporting.results import atomic_write_json
from mtp_bench.scoring.metrics import mean


def _units(finding: str, records: list[dict]) -> dict[str, tuple[float, int]]:
    """sample id -> (hits, count) of the primary metric, for pairing."""
    if finding == "induction":
        return {r["sample_id"]: (float(r["second_correct"]), int(r["n_occurrences"])) for r in records}
    return {r["sample_id"]: (float(r["correct"]), 1) for r in records if r["in_domain"]}


def prepare_data(finding: str, plan: dict, work: Path, source: str) -> tuple[Path, dict]:
    """Step 1: the training corpus (JSONL, field text) and what it holds."""
    # named by the data plan, so a changed plan never reuses an earlier corpus
    tag = hashlib.sha256(json.dumps(plan["data"], sort_keys=True).encode()).hexdigest()[:8]
    out = work / "data" / f"{finding}-{tag}-train.jsonl"
    info_path = work / "data" / f"{finding}-{tag}-train.info.json"
    if out.is_file() and info_path.is_file():
        return out, json.loads(info_path.read_text())
    if finding == "induction":
        stories, where = I.resolve_source(source, None)
        train, ev = I.split_stories(stories, 0.1)
        k = plan["data"]["max_train_stories"]
        train = train[:k] if k else train
        # every pass over the stories draws its names afresh (names seed = the pass), so no arm sees one
        # text with the same names more than twice: the finding is copying names from context, not recall.
        # A story without names reads the same on every pass: it is kept twice, not once a pass.
        passes = int(plan["data"].get("name_passes", 1))
        seen: dict[str, int] = {}
        rows = []
        for p in range(passes):
            for t, _ in I.transform_stories(train, byte_tokenizer(), seed=p):
                seen[t] = seen.get(t, 0) + 1
                if seen[t] <= 2:
                    rows.append({"text": t})
        eval_set = set(ev)
        overlap = sum(s in eval_set for s in train)
        info = {"source": where, "source_sha256": I._sha_of(stories), "n_train_stories": len(train),
                "n_eval_stories": len(ev), "split": "sha256(story) < 0.1 -> eval", "tokenizer": "byte",
                "train_eval_overlap": overlap, "names_seed": list(range(passes)), "name_passes": passes,
                "n_documents": len(rows), "n_bytes": sum(len(r["text"].encode()) + 1 for r in rows)}
    elif finding == "speedup":
        stories, where = I.resolve_source(source, None)
        train, ev = I.split_stories(stories, 0.1)  # the same split as `induction`
        k = plan["data"]["max_train_stories"]
        train = train[:k] if k else train
        rows = [{"text": t} for t in train]  # the stories as they are (no name replacement)
        eval_set = set(ev)
        overlap = sum(s in eval_set for s in train)
        # the prompt file: the held-out stories, whole; specdec cuts each to its opening sentences
        prompts_path = speedup_prompt_file(work)
        atomic_write_bytes(prompts_path, "".join(s + I.STORY_SEPARATOR + "\n" for s in ev).encode())
        prompts = text_prompts(None, str(prompts_path))
        # TinyStories reuses openings ("Once upon a time, there was a little girl named Lily."): the
        # stories are disjoint, but an opening may also begin a training story; counted, not hidden
        seen = sum(any(t.startswith(p) for t in train) for _, p in prompts)
        info = {"source": where, "source_sha256": I._sha_of(stories), "n_train_stories": len(rows),
                "n_eval_stories": len(ev), "split": "sha256(story) < 0.1 -> held out (prompts)", "tokenizer": "byte",
                "train_eval_overlap": overlap, "prompt_file": prompts_path.name, "n_prompts_available": len(prompts),
                "prompt_openings_also_opening_a_training_story": seen}
    else:
        n = plan["data"]["n_train_per_m"]
        test = A.test_prompts(ms=A.IN_DOMAIN)  # a prompt determines its m: other test prompts cannot collide
        probs = [p for m in A.IN_DOMAIN for p in A.train_problems(m, n, seed=1)]
        overlap = sum(p["prompt"] in test for p in probs)
        rows = [{"text": p["text"]} for p in probs]
        info = {"n_train_per_m": n, "ms": list(A.IN_DOMAIN), "seed": 1, "train_test_overlap": overlap,
                "n_documents": len(rows), "n_bytes": sum(len(r["text"].encode()) + 1 for r in rows),
                "checked_against": f"test seed {A.TEST_SEED}, {A.DEFAULT_N_TEST} per m, m=1..5"}
    if overlap:
        raise DataError(f"{finding}: {overlap} training items are in the evaluation set")
    write_jsonl(out, rows)
    write_jsonl(info_path, [info])  # one line of JSON, atomically
    return out, info


def speedup_prompt_file(work: Path) -> Path:
    """The held-out stories `repro speedup` decodes (stories separated by <|endoftext|>)."""
    return work / "data" / "speedup-prompts.txt"


def train_arm(cfg_overrides: dict, out: Path, verbose: bool) -> dict:
    """Step 2: train one arm (or reuse / resume it); returns its training summary."""
    cfg = T.make_config(None, {**cfg_overrides, "out": str(out)})
    done = out / "training.json"
    if done.is_file():
        info = json.loads(done.read_text())
        diff = sorted(k for k, v in cfg.to_dict().items() if k not in T.RESUME_MUTABLE and info["config"].get(k) != v)
        if diff:
            raise ConfigError(f"{out} was trained with another config ({', '.join(diff)}); use another --work-dir")
    else:
        with _arm_lock(out):
            T.train(cfg, resume=T.state_path(out).is_file(), verbose=verbose)
        info = json.loads(done.read_text())
    return {"checkpoint": str(out), "steps": info["steps"], "tokens_seen": info["tokens_seen"],
            "num_params": info["num_params"], "duration_s": info["duration_s"], "seed": info["seed"],
            "final_val_loss": info["final"]["val"]["loss"], "command": info["command"]}


@contextlib.contextmanager
def _arm_lock(out: Path):
    """OUT.lock holds the pid of the process training OUT, so two workers never train one arm;
    a lock left by a dead process (a killed run) is taken over."""
    lock = out.parent / f"{out.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale
                continue
            except PermissionError:
                pass
            raise UserError(f"{out} is being trained by process {pid}; wait for it or stop it") from None
    else:
        raise UserError(f"cannot take the lock {lock}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def evaluate_arm(name: str, config: dict, ckpt: Path, device: str, work: Path, data_dir: Path | None) -> dict:
    """Step 3: one evaluator on one checkpoint (`mtp_bench.evaluate`), cached by (weights, evaluator,
    version, config)."""
    cls = registry.get(name)
    ev = cls(config)
    model = load_model(ckpt, device=device)
    key = hashlib.sha256(json.dumps([model.weights_sha256, name, cls.version, ev.config_dict()],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = work / "evals" / f"{ckpt.name}-{name}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = evaluate(model, [name], config={name: config}, seed=0, data_dir=data_dir, work_dir=work,
                   cache=False).outputs[name]["candidate"]
    doc = {"evaluator": name, "version": cls.version, "config": ev.config_dict(),
           "weights_sha256": model.weights_sha256, "metrics": {k: m.to_dict() for k, m in out.metrics.items()},
           "info": out.info, "records": out.records}
    atomic_write_json(path, doc)
    return doc


def run(finding: str, budget: str = "quick", work_dir: str | None = None, out_dir: str | None = None,
        device: str = "cpu", source: str = "", data_dir: str | None = None, verbose: bool = True,
        argv: list[str] | None = None, only_arm: int | None = None, only_seed: int | None = None) -> dict:
    """Steps 1-5; returns the result document (also written to OUT/result.json).

    only_arm=N (and/or only_seed=S) runs steps 1-3 for that arm (seed) alone: a worker, so that
    several processes or machines train different arms into one work dir; a run without them
    then reuses what they trained."""
    if finding not in FINDINGS:
        raise UserError(f"unknown finding {finding!r}; findings: {', '.join(FINDINGS)}")
    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")
    f, plan, rule = FINDINGS[finding], PLANS[finding][budget], RULES[finding]
    if finding == "memory" and (only_arm is not None or only_seed is not None):
        raise UserError("repro memory measures its configurations one at a time (parallel workers would "
                        "disturb each other's timings): --arm and --seed are for the findings that train")
    if only_arm is not None and only_arm not in f.arms:
        raise UserError(f"--arm {only_arm}: {finding}'s arms are n_future = {', '.join(map(str, f.arms))}")
    if only_seed is not None and only_seed not in plan["seeds"]:
        raise UserError(f"--seed {only_seed}: the {budget} budget's seeds are {', '.join(map(str, plan['seeds']))}")
    worker = only_arm is not None or only_seed is not None
    t0, started = time.perf_counter(), utc_now()
    work = Path(work_dir) if work_dir else _default_cache() / "repro" / f"{finding}-{budget}"
    out = Path(out_dir) if out_dir else Path("results") / "repro" / f"{finding}-{budget}"
    for p in (work, out):
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {p}: {e.strerror or e}") from None
    ddir = _resolve_data_dir(data_dir)
    if finding in ("induction", "speedup") and not source:
        if ddir is None or not (ddir / I.DEFAULT_FILE[0] / I.DEFAULT_FILE[1]).is_file():
            raise DataError(f"repro {finding} needs stories: --source FILE or --data-dir DIR holding "
                            f"{'/'.join(I.DEFAULT_FILE)}")
        source = str(ddir / I.DEFAULT_FILE[0] / I.DEFAULT_FILE[1])
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if verbose else (lambda s: None)
    ctx = _Run(f, budget, plan, rule, work, out, device, ddir, say, verbose, argv, t0, started)
    if finding == "speedup":
        return run_speedup(ctx, source, only_seed, only_arm is not None or only_seed is not None)
    if finding == "memory":
        return run_memory(ctx)

    # 1) data
    corpus, data_info = prepare_data(finding, plan, work, source)
    say(f"repro {finding} --budget {budget}: data {corpus}")
    # 2) + 3) arms
    eval_cfg = {**plan["eval"], **({"source": source} if finding == "induction" else {})}
    arms: dict[str, dict] = {}
    units: dict[str, list[dict]] = {}
    for n in f.arms:
        if only_arm is not None and n != only_arm:
            continue
        arm = f"n={n}"
        arms[arm] = {"n_future": n, "seeds": {}}
        units[arm] = []
        for s in plan["seeds"]:
            if only_seed is not None and s != only_seed:
                continue
            ckpt = work / "ckpt" / f"n{n}-s{s}"
            say(f"[{arm} seed {s}] train -> {ckpt}")
            tr = train_arm({**plan["train"], "n_future": n, "seed": TRAIN_SEED_BASE + s, "corpus": str(corpus),
                            "cache_dir": str(work / "cache"), "device": device}, ckpt, verbose)
            say(f"[{arm} seed {s}] evaluate")
            ev = evaluate_arm(f.evaluator, eval_cfg, ckpt, device, work, ddir)
            metrics = {f"{f.evaluator}.{k}": v for k, v in ev["metrics"].items()}
            if finding == "induction":
                rnd = evaluate_arm("induction", {"probe": "random", **plan["eval_random"]}, ckpt, device, work, ddir)
                metrics.update({f"induction_random.{k}": v for k, v in rnd["metrics"].items()})
            arms[arm]["seeds"][str(s)] = {"train": tr, "weights_sha256": ev["weights_sha256"], "metrics": metrics,
                                          "eval_info": ev["info"]}
            units[arm].append(_units(finding, ev["records"]))
        if worker:
            continue
        vals = [arms[arm]["seeds"][str(s)]["metrics"][f"{f.evaluator}.{f.metric}"]["value"] for s in plan["seeds"]]
        arms[arm].update({"values": vals, "mean": mean(vals), "spread": max(vals) - min(vals)})

    if worker:
        msg = "trained and evaluated " + ", ".join(f"{a} seeds {', '.join(v['seeds'])}" for a, v in arms.items()) + \
            "; run without --arm/--seed to combine the arms"
        return {"sentence": msg, "to_conclude": "", "arms": arms}

    # 4) verdict
    base = f"n={f.arms[0]}"
    comparisons = {}
    for n in f.arms[1:]:
        arm = f"n={n}"
        paired = paired_interval(units[arm], units[base])
        c = compare(arms[arm]["values"], arms[base]["values"], paired.ci95, rule["min_effect"])
        c["paired"] = paired.to_dict()
        comparisons[f"{arm} vs {base}"] = c
    rule_verdict = decide({a: arms[a]["mean"] for a in arms}, comparisons, rule["floor"])
    verdict = "inconclusive" if budget == "smoke" else rule_verdict
    sentence, needed = explain(f, budget, verdict, rule_verdict, arms, comparisons, rule)

    # 5) result directory
    doc = {"schema": SCHEMA, "finding": finding, "claim": f.claim, "budget": budget, "verdict": verdict,
           "rule_verdict": rule_verdict, "sentence": sentence, "to_conclude": needed,
           "metric": f"{f.evaluator}.{f.metric}", "secondary": list(f.secondary),
           "rule": {**rule, "text": RULE_TEXT}, "arms": arms, "comparisons": comparisons,
           "plan": _jsonable(plan), "eval_config": eval_cfg, "data": data_info,
           "provenance": collect(seed=TRAIN_SEED_BASE, device=device, argv=argv, start_time=started,
                                 duration_s=time.perf_counter() - t0)}
    atomic_write_json(out / "result.json", doc)
    atomic_write_bytes(out / "plot.png", plot(doc))
    say(f"wrote {out / 'result.json'} and {out / 'plot.png'}")
    return doc


@dataclass(frozen=True)
class _Run:
    """What `run` resolved for a finding without arms to compare (speedup, memory)."""

    finding: Finding
    budget: str
    plan: dict
    rule: dict
    work: Path
    out: Path
    device: str
    data_dir: Path | None
    say: Any
    verbose: bool
    argv: list[str] | None
    t0: float
    started: str


def run_speedup(r: _Run, source: str, only_seed: int | None, worker: bool) -> dict:
    """Steps 1-5 for `speedup`: train the n=4 arm per seed, specdec at every k, the rule."""
    f, plan = r.finding, r.plan
    # 1) data: training stories, and the held-out stories as the prompt file
    corpus, data_info = prepare_data("speedup", plan, r.work, source)
    prompts = speedup_prompt_file(r.work)
    r.say(f"repro speedup --budget {r.budget}: data {corpus}, prompts {prompts}")
    eval_cfg = {**plan["eval"], "source": str(prompts)}
    opening = dict(text_prompts(None, str(prompts)))
    n, ks = f.arms[0], plan["ks"]
    arm = f"n={n}"
    seeds: dict[str, dict] = {}
    for s in plan["seeds"]:
        if only_seed is not None and s != only_seed:
            continue
        # 2) train (or reuse / resume), as the arms of the other findings
        ckpt = r.work / "ckpt" / f"n{n}-s{s}"
        r.say(f"[{arm} seed {s}] train -> {ckpt}")
        tr = train_arm({**plan["train"], "n_future": n, "seed": TRAIN_SEED_BASE + s, "corpus": str(corpus),
                        "cache_dir": str(r.work / "cache"), "device": r.device}, ckpt, r.verbose)
        # 3) specdec with k heads used, each k cached on its own
        per_k = {}
        for k in ks:
            r.say(f"[{arm} seed {s}] specdec k={k}")
            ev = evaluate_arm("specdec", {**eval_cfg, "k": k}, ckpt, r.device, r.work, r.data_dir)
            per_k[str(k)] = {"metrics": ev["metrics"], "info": ev["info"]}
        # greedy outputs are the same at every k (lossless): a few of them, to see what was drafted
        samples = [{"sample_id": x["sample_id"], "prompt": opening.get(x["sample_id"]), "completion": x["completion"],
                    "degenerate": x["degenerate"]} for x in ev["records"][:3]]
        seeds[str(s)] = {"train": tr, "weights_sha256": ev["weights_sha256"], "per_k": per_k, "samples": samples}
    arms = {arm: {"n_future": n, "seeds": seeds}}
    if worker:
        return {"sentence": f"trained and evaluated {arm} seeds {', '.join(seeds)}; run without --arm/--seed to "
                            "combine the seeds", "to_conclude": "", "arms": arms}

    # 4) per k over seeds, then the rule
    def pooled(k: int, name: str) -> dict | None:
        ms = [seeds[str(s)]["per_k"][str(k)]["metrics"].get(name) for s in plan["seeds"]]
        return pool_seeds(ms) if all(m is not None for m in ms) else None

    names = ("tau", "speedup", "speedup_decode", "verify_cost", "forwards_per_token", "tokens_per_s",
             "plain_tokens_per_s", "degenerate_fraction", "lossless_fraction")
    per_k_all = {}
    for k in ks:
        wanted = (*names, *(f"alpha_{c}_{i}" for c in ("cond", "uncond") for i in range(2, k + 1)))
        per_k_all[str(k)] = {m: p for m in wanted if (p := pooled(k, m)) is not None}
    degenerate = per_k_all[str(max(ks))]["degenerate_fraction"]["mean"]
    checks = decide_speedup({k: per_k_all[str(k)]["tau"] for k in ks}, {k: per_k_all[str(k)]["speedup"] for k in ks},
                            degenerate, r.rule["max_degenerate"])
    verdict = "inconclusive" if r.budget == "smoke" else checks["verdict"]
    sentence, needed = explain_speedup(r.budget, verdict, checks, per_k_all, ks, r.rule)
    # 5) result directory
    doc = {"schema": SCHEMA, "finding": "speedup", "claim": f.claim, "budget": r.budget, "verdict": verdict,
           "rule_verdict": checks["verdict"], "sentence": sentence, "to_conclude": needed,
           "metric": f"{f.evaluator}.{f.metric}", "secondary": list(f.secondary),
           "rule": {**r.rule, "text": SPEEDUP_RULE_TEXT}, "checks": checks, "ks": list(ks), "per_k": per_k_all,
           "arms": arms, "plan": _jsonable(plan), "eval_config": eval_cfg, "data": data_info}
    return _finish(r, doc)


def measure_cached(spec: dict, work: Path, timeout: float) -> dict:
    """One `bench train` measurement in its own subprocess (its worker, reused), cached in the work
    dir by spec, so that a killed run continues with the measurements it has."""
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = work / "memory" / f"n{spec['n_future']}-{spec['mode']}-r{spec['seed']}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    res = B.run_in_subprocess(spec, timeout)
    atomic_write_json(path, res)
    return res


def run_memory(r: _Run) -> dict:
    """Steps for `memory`: bench train's worker per config and repeat, interleaved; the rule."""
    plan, rule = r.plan, r.rule
    if r.device != "cpu" and not r.device.startswith("cuda"):
        raise ConfigError(f"repro memory: --device must be cpu or cuda[:N], got {r.device!r}")
    if r.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {r.device} but CUDA is not available")
    size = plan["size"]
    configs = {label: {"n_future": n, "mode": mode, "repeats": []} for label, n, mode in B.CONFIGS}
    # 1) rounds of the three configs, so that a drifting machine load hits all of them alike
    for i in range(plan["repeats"]):
        for label, n, mode in B.CONFIGS:
            r.say(f"[{label} repeat {i}] bench train step (d={size['dim']}, V={size['vocab_size']}, "
                  f"B={size['batch_size']}, T={size['seq_len']})")
            spec = {**size, "n_future": n, "mode": mode, "device": r.device, "seed": i}
            configs[label]["repeats"].append(measure_cached(spec, r.work, plan["timeout_s"]))
    # 2) means and spreads over repeats, bench train's ratios of the means, the rule
    for c in configs.values():
        c["step_mem_bytes"] = pool_seeds([{"value": x["step_mem_bytes"]} for x in c["repeats"]])
        c["median_step_s"] = pool_seeds([{"value": x["median_step_s"]} for x in c["repeats"]])
    means = {label: {"step_mem_bytes": c["step_mem_bytes"]["mean"], "median_step_s": c["median_step_s"]["mean"],
                     "flops_per_token": c["repeats"][0]["flops_per_token"]} for label, c in configs.items()}
    ratios = B.ratios(means)
    spread = max(c["step_mem_bytes"]["spread"] for c in configs.values())
    m1, mseq, mnaive = (means[k]["step_mem_bytes"] for k in ("n=1", "n=4 sequential", "n=4 naive"))
    peak_reset = all(x["peak_reset"] for c in configs.values() for x in c["repeats"])
    checks = decide_memory(m1, mseq, mnaive, spread, rule["tolerance"], peak_reset)
    checks["repeat_spread_bytes"] = spread
    verdict = "inconclusive" if r.budget == "smoke" else checks["verdict"]
    sentence, needed = explain_memory(r.budget, verdict, checks, means, ratios, plan, rule,
                                      configs["n=1"]["repeats"][0]["memory_metric"])
    f = r.finding
    doc = {"schema": SCHEMA, "finding": "memory", "claim": f.claim, "budget": r.budget, "verdict": verdict,
           "rule_verdict": checks["verdict"], "sentence": sentence, "to_conclude": needed,
           "metric": "bench_train.step_mem_bytes", "secondary": ["bench_train.median_step_s"],
           "rule": {**rule, "text": MEMORY_RULE_TEXT}, "checks": checks, "size": dict(size), "configs": configs,
           "ratios": ratios, "plan": _jsonable(plan), "data": None}
    return _finish(r, doc)


def _finish(r: _Run, doc: dict) -> dict:
    """Provenance, then result.json and plot.png in the result dir."""
    doc["provenance"] = collect(seed=TRAIN_SEED_BASE, device=r.device, argv=r.argv, start_time=r.started,
                                duration_s=time.perf_counter() - r.t0)
    atomic_write_json(r.out / "result.json", doc)
    atomic_write_bytes(r.out / "plot.png", plot(doc))
    r.say(f"wrote {r.out / 'result.json'} and {r.out / 'plot.png'}")
    return doc


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _default_cache() -> Path:
    return cache_root()


def _resolve_data_dir(data_dir: str | None) -> Path | None:

    d = resolve_data_dir(data_dir)
    if d is None:  # the checkout's sibling shared/data, where this project keeps its benchmark data
        guess = Path(__file__).resolve().parents[3] / "shared" / "data"
        d = guess if guess.is_dir() else None
    return d
