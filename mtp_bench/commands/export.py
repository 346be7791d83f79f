"""`mtp-bench export CKPT --format hf-llama --out DIR`: a checkpoint's next-token model (trunk +
head 1) as a Hugging Face LlamaForCausalLM directory any inference engine serves; for a heads-only
checkpoint, its base's own next-token model, unchanged."""

from __future__ import annotations

import argparse

from mtp_bench.models.loader import export_checkpoint
from mtp_bench.reference_model.checkpoint import EXPORT_FORMATS
from mtp_bench.reference_model.pretrained_heads import HEADS_DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Export the next-token model (trunk + head 1) of a checkpoint to another format.\n\n"
        "examples:\n  mtp-bench export ckpt/debug --format hf-llama --out hf/debug\n"
        "  python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('hf/debug')\"\n"
        "  mtp-bench export ckpt/heads --format heads-int8 --out ckpt/heads-int8   # the same heads in a quarter of the bytes")
    parser.add_argument("ckpt", metavar="CKPT", help="native mtp-bench or Meta checkpoint directory")
    parser.add_argument("--format", default="hf-llama",
                        help=f"output format: {', '.join(EXPORT_FORMATS)} (default hf-llama); for a heads checkpoint also "
                             f"{', '.join('heads-' + d for d in HEADS_DTYPES)} (the same heads stored in that dtype)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (replaced atomically)")
    parser.add_argument("--n-future", type=int, default=None, metavar="N",
                        help="heads formats: keep only the first N-1 extra heads (fewer drafts, fewer bytes)")


def main(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.ckpt, args.out, format=args.format, n_future=args.n_future)
    print(f"wrote {args.format} export of {args.ckpt} to {out}")
    return 0
