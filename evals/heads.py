"""Per-head held-out metrics: loss and top-1 accuracy of every output head.

Head i (0-based) at position t predicts token t+1+i. On text the model never trained on, this
shows how much the extra heads know: head 0 is the ordinary next-token model; heads 1..n-1 are
what self-speculative decoding drafts with, so their accuracy bounds its acceptance rate.
An n_future=1 model has one head.

Evaluation text (config `corpus`, default "stdlib"): the documents that the reference trainer
holds out for validation (`reference_model.data.split_documents` with the same `val_fraction`),
so for a model trained with `mtp-bench train` on that corpus the text is truly held out. Each
document is tokenized with the model's own tokenizer, documents are joined with EOS, and the
stream is cut into `n_windows` fixed windows of `seq_len` tokens spread evenly over it. The
windows are the samples: metrics are means over windows with their standard errors.

Losses are in nats per token of the model's own tokenizer, so they compare only between models
sharing a tokenizer; `head1_bits_per_byte` (head-0 loss summed over a window, in bits, divided
by the UTF-8 bytes that window decodes to) compares across tokenizers.

Metrics: head{k}_loss (lower is better) and head{k}_top1 (higher is better) for k = 1..n_future
(a head with a draft vocabulary is scored over the targets in it: info.targets_in_draft_vocab),
1-based as in the paper's tables, plus head1_bits_per_byte.

Acceptance proxy (no decoding, one teacher-forced forward; the figure NVIDIA NeMo computes from
training outputs): at position t, head k's draft is "accepted" when its argmax equals head 1's own
argmax at t+k-1, the token greedy decoding would emit there given the same prefix; chained,
alpha_proxy_k = P(heads 2..k all agree) and tau_proxy = 1 + sum_k alpha_proxy_k: the expected
tokens per step of greedy self-speculative decoding at a position of this text (positions where
every head is defined). On the model's own greedy output the chain at a position is exactly what
a decoding step starting there accepts (tested); tau averages over the positions where steps
happen to start, the proxy over all positions, and other text is not the model's own, so the two
differ (README: by how much, on the shipped checkpoints and the SmolLM2 drafter). It costs one
forward, so CI can gate on it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtp_bench.api import EvalOutput, Evaluator, RunContext, register
from mtp_bench.api.errors import DataError
from mtp_bench.reference_model import data as D
from mtp_bench.scoring.metrics import mean_metric


def agreement_chain(logits: torch.Tensor) -> torch.Tensor:
    """logits (B, T, n, V), teacher-forced (head i at t predicts token t+1+i) -> (B, T-n+1, n-1) bool:
    [b, t, j] = heads 2..j+2 all take, at position t, head 1's own argmax at t+1..t+j+1, i.e. a
    greedy speculative step starting after token t would accept at least j+1 drafts."""
    B, T, n, _ = logits.shape
    m = T - (n - 1)
    preds = [logits[:, : T - i, i].argmax(-1) for i in range(n)]  # head i is defined up to T-1-i
    chain = torch.ones(B, max(m, 0), dtype=torch.bool, device=logits.device)
    out = []
    for i in range(1, n):
        chain = chain & (preds[i][:, :m] == preds[0][:, i : i + m])
        out.append(chain)
    return torch.stack(out, dim=-1) if out else torch.zeros(B, max(m, 0), 0, dtype=torch.bool)


@register
class Heads(Evaluator):
    name = "heads"
    version = "1.0"
    suites = ("code",)
    description = "held-out loss and top-1 accuracy of every output head (head k predicts token t+k)"
    caption = ("head k predicts the token k positions ahead on held-out text; loss in nats/token "
               "(lower is better), top1 = share of positions where its argmax is right")

    @dataclass
    class Config:
        corpus: str = "stdlib"  # "stdlib" | a folder | a .jsonl file: its held-out split is evaluated
        corpus_glob: str = "**/*.py"  # file patterns inside the corpus folder (the trainer's default)
        corpus_field: str = "text"  # JSONL corpora: the field holding each document
        val_fraction: float = 0.02  # must match the trainer's, so the split is the one held out
        seq_len: int = 256  # tokens per window (capped at the model's max_seq_len)
        n_windows: int = 64  # windows evaluated (the samples); --limit caps it
        batch_size: int = 8  # windows per forward pass

    def run(self, model, ctx: RunContext) -> EvalOutput:
        cfg = self.config
        # 1) held-out documents, tokenized with the model's own tokenizer
        docs = D.load_corpus(cfg.corpus, cfg.corpus_glob, cfg.corpus_field)
        _, val_docs = D.split_documents(docs, cfg.val_fraction)
        tok = model.tokenizer
        stream: list[int] = []
        for d in val_docs:
            stream.extend(tok.encode(d.text))
            if tok.eos_id is not None:
                stream.append(tok.eos_id)
        seq_len = min(cfg.seq_len, int(model.max_seq_len))
        n = cfg.n_windows if ctx.limit is None else min(cfg.n_windows, ctx.limit)
        if len(stream) < seq_len:
            raise DataError(f"heads: the held-out split of {cfg.corpus!r} has {len(stream)} tokens, "
                            f"fewer than one window of {seq_len}")
        windows = D.eval_windows(np.asarray(stream, dtype=np.int64), seq_len, n)  # (N, T)

        # 2) per-window, per-head loss and accuracy
        n_heads = int(model.n_future)
        records: list[dict] = []
        with ctx.progress(f"heads [{ctx.role}]", len(windows)) as bar, torch.inference_mode():
            for start in range(0, len(windows), cfg.batch_size):
                x = windows[start:start + cfg.batch_size].to(model.device)  # (B, T)
                logits = model(x, return_all_heads=True)  # (B, T, n_future, V)
                per_head = []
                chain = agreement_chain(logits).float()  # (B, T-n+1, n-1)
                proxy = [chain[:, :, j].mean(1) for j in range(n_heads - 1)]  # per head: (B,)
                for i in range(n_heads):
                    lg = logits[:, : seq_len - 1 - i, i].float()  # (B, T-1-i, V)
                    tgt = x[:, 1 + i:]  # (B, T-1-i)
                    # a head with a draft vocabulary (FR-Spec) has -inf logits outside it: its loss and
                    # top-1 are over the targets it can name (the share is info.targets_in_draft_vocab)
                    named = torch.isfinite(lg.gather(-1, tgt[..., None])[..., 0]).float()  # (B, T-1-i)
                    ce = torch.nn.functional.cross_entropy(lg.transpose(1, 2), tgt, reduction="none")
                    ce = torch.where(named > 0, ce, torch.zeros_like(ce))
                    acc = (lg.argmax(-1) == tgt).float() * named
                    n_named = named.sum(1).clamp_min(1)
                    per_head.append((ce.sum(1), ce.sum(1) / n_named, acc.sum(1) / n_named, named.mean(1)))
                for b in range(x.shape[0]):
                    w = start + b
                    n_bytes = len(tok.decode(x[b, 1:].tolist()).encode("utf-8"))
                    rec = {"sample_id": f"window-{w}", "n_tokens": seq_len, "n_bytes_scored": n_bytes,
                           "loss": [float(p[1][b]) for p in per_head], "top1": [float(p[2][b]) for p in per_head],
                           "head1_bits_per_byte": float(per_head[0][0][b]) / math.log(2) / max(n_bytes, 1),
                           "alpha_proxy": [float(a[b]) for a in proxy],
                           "targets_named": [float(p[3][b]) for p in per_head]}
                    records.append(rec)
                bar.advance(x.shape[0])

        # 3) aggregate: means over windows
        metrics = {}
        for i in range(n_heads):
            metrics[f"head{i + 1}_loss"] = mean_metric([r["loss"][i] for r in records], higher_is_better=False)
            metrics[f"head{i + 1}_top1"] = mean_metric([r["top1"][i] for r in records], higher_is_better=True)
        metrics["head1_bits_per_byte"] = mean_metric([r["head1_bits_per_byte"] for r in records],
                                                     higher_is_better=False)
        for i in range(1, n_heads):
            metrics[f"alpha_proxy_{i + 1}"] = mean_metric([r["alpha_proxy"][i - 1] for r in records], higher_is_better=True)
        for r in records:
            r["tau_proxy"] = 1.0 + sum(r["alpha_proxy"])
        metrics["tau_proxy"] = mean_metric([r["tau_proxy"] for r in records], higher_is_better=True)
        corpus_sha = D.corpus_sha256(docs)  # hashes every document: once
        info = {"corpus": cfg.corpus, "corpus_sha256": corpus_sha, "n_val_docs": len(val_docs),
                "val_tokens": len(stream), "seq_len": seq_len, "n_windows": len(records),
                "held_out_of_training": _held_out_of_training(model, corpus_sha, cfg.val_fraction)}
        named = [float(np.mean([r["targets_named"][i] for r in records])) for i in range(1, n_heads)]
        if any(v < 1.0 for v in named):  # the extra heads draft over a restricted vocabulary
            info["targets_in_draft_vocab"] = [round(v, 6) for v in named]
        return EvalOutput(records=records, metrics=metrics, info=info)


def _held_out_of_training(model, corpus_sha: str, val_fraction: float) -> bool | None:
    """True when the model's training.json says it trained on this very corpus with this split
    (so the evaluated text is exactly its validation split), False when it trained on the same
    corpus with another split, None when unknown (not a native checkpoint, other corpus)."""
    path = Path(str(getattr(model, "path", ""))) / "training.json"
    try:
        corpus = json.loads(path.read_text()).get("corpus") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if corpus.get("sha256") != corpus_sha:
        return None
    return float(corpus.get("val_fraction", -1)) == float(val_fraction)
