"""Checkpoints: native save/load, Meta's release layout, the Hugging Face export, and bad input."""

import json
from pathlib import Path

import pytest
import torch

from mtp_bench.api.errors import CheckpointError, ConfigError, UnknownNameError
from mtp_bench.cli import main as cli_main
from mtp_bench.reference_model.checkpoint import export_checkpoint, load_checkpoint, save_checkpoint
from mtp_bench.reference_model.model import ModelConfig, Transformer
from mtp_bench.reference_model.tokenizer import byte_tokenizer

SPM_LINES = ["def add(a, b):\n    return a + b", "the quick brown fox jumps over the lazy dog",
             "print('hello world')", "for i in range(10):\n    total += i", "Once upon a time there was a cat."] * 20


def train_spm(prefix: Path) -> Path:
    """A tiny SentencePiece BPE model with Llama's settings (identity normaliser, kept whitespace)."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(SPM_LINES), model_prefix=str(prefix), vocab_size=72,
                                   model_type="bpe", hard_vocab_limit=False, minloglevel=2, unk_id=0, bos_id=1,
                                   eos_id=2, pad_id=-1, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False)
    return prefix.with_suffix(".model")


def meta_state_dict(n_layers: int, n_future: int, dim: int, n_heads: int, n_kv: int, hidden: int, vocab: int):
    """Random weights under the key names and shapes of Meta's release (written out independently
    of our model): `layers` holds trunk + next-token head, `extra_heads` the other heads."""
    g = torch.Generator().manual_seed(1)
    hd = dim // n_heads

    def block(prefix):
        shapes = {"attention.wq.weight": (n_heads * hd, dim), "attention.wk.weight": (n_kv * hd, dim),
                  "attention.wv.weight": (n_kv * hd, dim), "attention.wo.weight": (dim, n_heads * hd),
                  "feed_forward.w1.weight": (hidden, dim), "feed_forward.w2.weight": (dim, hidden),
                  "feed_forward.w3.weight": (hidden, dim), "attention_norm.weight": (dim,), "ffn_norm.weight": (dim,)}
        return {prefix + k: (1 + 0.1 * torch.randn(s, generator=g)) if len(s) == 1 else 0.1 * torch.randn(s, generator=g)
                for k, s in shapes.items()}

    sd = {"tok_embeddings.weight": torch.randn(vocab, dim, generator=g), "norm.weight": torch.ones(dim),
          "output.weight": 0.1 * torch.randn(vocab, dim, generator=g)}
    for i in range(n_layers):
        sd.update(block(f"layers.{i}."))
    for i in range(n_future - 1):
        sd.update(block(f"extra_heads.{i}."))
    return sd


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=259, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=16, max_seq_len=64, n_future=2)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = Transformer(tiny_cfg(n_future=3)).eval()
    path = save_checkpoint(tmp_path / "ckpt", model, byte_tokenizer(), {"step": 7, "loss": 1.5})
    return model, path


# --- native -----------------------------------------------------------------------


def test_native_round_trip_gives_identical_logits(saved):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json", "training.json"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["format"] == "mtp-bench" and cfg["format_version"] == 1 and cfg["n_future"] == 3
    loaded, tok, info = load_checkpoint(path)
    assert info == {"step": 7, "loss": 1.5}
    assert tok.encode("hi there") == byte_tokenizer().encode("hi there")
    x = torch.randint(0, 259, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, return_all_heads=True), model(x, return_all_heads=True), rtol=0, atol=0)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt"]  # no temp dirs left behind


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoint_loads_as_rounded_weights(tmp_path, dtype):
    torch.manual_seed(0)
    model = Transformer(tiny_cfg()).eval()
    path = save_checkpoint(tmp_path / "ckpt", model, byte_tokenizer(), {}, dtype=dtype)
    assert (path / "model.safetensors").stat().st_size < 0.6 * sum(p.numel() * 4 for p in model.parameters())
    loaded, _, _ = load_checkpoint(path, dtype=torch.float32)
    assert loaded.dtype == torch.float32
    ref = model.to(dtype).to(torch.float32)  # the same rounding, done independently
    x = torch.randint(0, 259, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref(x), rtol=0, atol=1e-6)


def test_save_replaces_existing_dir_and_failed_save_keeps_old(saved, monkeypatch):
    model, path = saved
    model2 = Transformer(tiny_cfg(n_future=3))
    save_checkpoint(path, model2, byte_tokenizer(), {"step": 8})
    assert load_checkpoint(path)[2] == {"step": 8}

    class Boom(Exception):
        pass

    tok = byte_tokenizer()
    monkeypatch.setattr(tok, "save", lambda p: (_ for _ in ()).throw(Boom()))
    with pytest.raises(Boom):
        save_checkpoint(path, model, tok, {"step": 9})
    assert load_checkpoint(path)[2] == {"step": 8}  # the old checkpoint is untouched
    assert [p.name for p in path.parent.iterdir()] == ["ckpt"]


def test_missing_dir_and_files_raise_naming_them(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    (path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_checkpoint(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path)


def test_truncated_safetensors_raises(saved):
    _, path = saved
    w = path / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        load_checkpoint(path)


def test_config_weights_mismatch_raises(saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "dim": 64, "n_heads": 8}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match its config: .*shape"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({**cfg, "n_future": 2}))  # one head fewer: extra keys
    with pytest.raises(CheckpointError, match="unexpected 9 key"):
        load_checkpoint(path)


def test_unknown_config_key_raises_config_error_naming_file(saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "n_experts": 8}))
    with pytest.raises(ConfigError, match=r"config\.json.*'n_experts'.*valid keys"):
        load_checkpoint(path)


# --- Meta's release format --------------------------------------------------------------


def write_meta(d: Path, spm_model: Path, vocab: int, n_future: int = 2) -> dict:
    d.mkdir()
    sd = meta_state_dict(n_layers=3, n_future=n_future, dim=32, n_heads=4, n_kv=2, hidden=96, vocab=vocab)
    torch.save(sd, d / "consolidated.pth")
    # Meta's n_layers counts every block: 3 in `layers` (trunk + next-token head) + n_future-1 extra heads
    params = {"dim": 32, "n_layers": 3 + n_future - 1, "n_heads": 4, "n_kv_heads": 2, "vocab_size": vocab, "multiple_of": 32,
              "ffn_dim_multiplier": None, "norm_eps": 1e-5, "rope_theta": 10000.0, "n_future_tokens": n_future}
    (d / "params.json").write_text(json.dumps(params))
    (d / "tokenizer.model").write_bytes(spm_model.read_bytes())
    return sd


def test_meta_checkpoint_loads_with_its_weights(tmp_path):
    import sentencepiece as spm

    spm_model = train_spm(tmp_path / "spm")
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    sd = write_meta(tmp_path / "meta", spm_model, sp.GetPieceSize(), n_future=2)
    model, tok, _ = load_checkpoint(tmp_path / "meta")
    # n_layers=4 counts every block, as ours does: 2 trunk + head 0 in `layers`, 1 extra head
    assert model.config.n_layers == 4 and model.config.n_future == 2 and len(model.layers) == 3
    assert model.config.ffn_hidden_dim == 96
    ref = Transformer(model.config).eval()
    ref.load_state_dict(sd)
    x = torch.tensor([sp.EncodeAsIds("the lazy cat jumps")])
    with torch.no_grad():
        torch.testing.assert_close(model(x, return_all_heads=True), ref(x, return_all_heads=True), rtol=0, atol=0)
    assert tok.encode("print(x)", add_bos=True) == [sp.bos_id()] + sp.EncodeAsIds("print(x)")
    assert tok.decode(sp.EncodeAsIds("print('hello')")) == "print('hello')"


def meta_reference_logits(sd: dict, params: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Every head's logits (B, T, n_future, V), computed the way facebook/multi-token-prediction's
    llama/model.py does, independently of our model: complex-number rotary, explicit causal
    softmax attention, trunk = layers[:-1], heads = [layers[-1]] + extra_heads, each reading the
    trunk output, then the shared norm and output. float64."""
    sd = {k: v.double() for k, v in sd.items()}
    dim, n_heads, eps = params["dim"], params["n_heads"], params["norm_eps"]
    n_kv = params.get("n_kv_heads") or n_heads
    hd, (B, T) = dim // n_heads, tokens.shape
    freqs = 1.0 / (params["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    freqs_cis = torch.polar(torch.ones(T, hd // 2, dtype=torch.float64), torch.outer(torch.arange(T).double(), freqs))

    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def rope(x):  # (B, T, h, hd): consecutive pairs are one complex number
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)

    def block(p, x):
        h = rms(x, sd[p + "attention_norm.weight"])
        q = rope((h @ sd[p + "attention.wq.weight"].T).view(B, T, n_heads, hd)).transpose(1, 2)
        k = rope((h @ sd[p + "attention.wk.weight"].T).view(B, T, n_kv, hd)).transpose(1, 2)
        v = (h @ sd[p + "attention.wv.weight"].T).view(B, T, n_kv, hd).transpose(1, 2)
        k, v = k.repeat_interleave(n_heads // n_kv, 1), v.repeat_interleave(n_heads // n_kv, 1)
        scores = q @ k.transpose(-1, -2) / hd**0.5 + torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, dim)
        x = x + attn @ sd[p + "attention.wo.weight"].T
        h = rms(x, sd[p + "ffn_norm.weight"])
        gate = torch.nn.functional.silu(h @ sd[p + "feed_forward.w1.weight"].T)
        return x + (gate * (h @ sd[p + "feed_forward.w3.weight"].T)) @ sd[p + "feed_forward.w2.weight"].T

    n_future = params["n_future_tokens"]
    n_trunk = params["n_layers"] - n_future  # len(layers) - 1
    h = sd["tok_embeddings.weight"][tokens]
    for i in range(n_trunk):
        h = block(f"layers.{i}.", h)
    heads = [f"layers.{n_trunk}."] + [f"extra_heads.{j}." for j in range(n_future - 1)]
    return torch.stack([rms(block(p, h), sd["norm.weight"]) @ sd["output.weight"].T for p in heads], dim=2)


@pytest.mark.slow
def test_meta_7b_layout_loads_every_head(tmp_path):
    """The 7B_*_4 releases' layout: params.json n_layers=32 and n_future_tokens=4, with 29 blocks
    in `layers` and 3 in `extra_heads` (tiny widths). Logits of all four heads against an
    independent computation of Meta's forward."""
    import sentencepiece as spm

    spm_model = train_spm(tmp_path / "spm")
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    d = tmp_path / "meta7b"
    d.mkdir()
    sd = meta_state_dict(n_layers=29, n_future=4, dim=16, n_heads=2, n_kv=2, hidden=64, vocab=sp.GetPieceSize())
    torch.save(sd, d / "consolidated.pth")
    params = {"dim": 16, "n_layers": 32, "n_heads": 2, "n_kv_heads": None, "vocab_size": -1, "multiple_of": 32,
              "ffn_dim_multiplier": None, "norm_eps": 1e-5, "rope_theta": 10000.0, "n_future_tokens": 4}
    (d / "params.json").write_text(json.dumps(params))
    (d / "tokenizer.model").write_bytes(spm_model.read_bytes())
    model, _, _ = load_checkpoint(d, dtype=torch.float64)
    assert (model.config.n_layers, model.config.n_future, model.config.n_trunk_layers) == (32, 4, 28)
    assert len(model.layers) == 29 and len(model.extra_heads) == 3
    x = torch.tensor([sp.EncodeAsIds("the quick brown fox jumps over the lazy dog")])
    with torch.no_grad():
        ours = model(x, return_all_heads=True)
    theirs = meta_reference_logits(sd, params, x)
    assert ours.shape == theirs.shape == (1, x.shape[1], 4, sp.GetPieceSize())
    # float64 throughout; our rotary angles are float32 (as HF's), hence 1e-6 rather than 1e-12
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_meta_n_layers_counting_only_layers_is_refused_with_the_counts(tmp_path):
    spm_model = train_spm(tmp_path / "spm")
    write_meta(tmp_path / "meta", spm_model, 72, n_future=2)
    p = json.loads((tmp_path / "meta" / "params.json").read_text())
    (tmp_path / "meta" / "params.json").write_text(json.dumps({**p, "n_layers": 3}))  # len(layers) alone: wrong
    with pytest.raises(CheckpointError, match=r"n_layers=3 .*`layers` should hold 2 blocks .* has 3 and 1"):
        load_checkpoint(tmp_path / "meta")


def test_meta_unknown_param_key_raises(tmp_path):
    spm_model = train_spm(tmp_path / "spm")
    write_meta(tmp_path / "meta", spm_model, 72)
    p = json.loads((tmp_path / "meta" / "params.json").read_text())
    (tmp_path / "meta" / "params.json").write_text(json.dumps({**p, "moe": True}))
    with pytest.raises(ConfigError, match=r"params\.json.*'moe'.*valid keys"):
        load_checkpoint(tmp_path / "meta")


def test_meta_vocab_size_minus_one_comes_from_the_weights(tmp_path):
    spm_model = train_spm(tmp_path / "spm")
    write_meta(tmp_path / "meta", spm_model, 72)
    p = json.loads((tmp_path / "meta" / "params.json").read_text())
    del p["n_future_tokens"]
    (tmp_path / "meta" / "params.json").write_text(json.dumps({**p, "vocab_size": -1}))
    # no n_future_tokens = 1 head: all 4 blocks should be in `layers`, and extra_heads.0 is extra
    with pytest.raises(CheckpointError, match=r"`layers` should hold 4 blocks and `extra_heads` 0; consolidated.pth has 3 and 1"):
        load_checkpoint(tmp_path / "meta")
    (tmp_path / "meta" / "params.json").write_text(json.dumps({**p, "vocab_size": -1, "n_future_tokens": 2}))
    model, _, _ = load_checkpoint(tmp_path / "meta")
    assert model.config.vocab_size == 72


# --- Hugging Face export -----------------------------------------------------------------


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_hf_export_reproduces_head_one_logits(tmp_path, n_kv_heads):
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    model = Transformer(tiny_cfg(n_kv_heads=n_kv_heads, n_future=2, rope_theta=500.0)).eval()
    for p in model.parameters():  # make norms non-trivial so a missed norm weight shows
        if p.dim() == 1:
            p.data.uniform_(0.5, 1.5)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, byte_tokenizer(), {})
    out = export_checkpoint(ckpt, tmp_path / "hf", format="hf-llama")
    hf = LlamaForCausalLM.from_pretrained(str(out)).eval()
    assert hf.config.num_hidden_layers == 3 and hf.config.num_key_value_heads == (n_kv_heads or 4)
    x = torch.randint(0, 259, (2, 20))
    with torch.no_grad():
        ours = model(x)[:, :, 0]  # (B, T, V) head 1
        theirs = hf(x).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
    tok = AutoTokenizer.from_pretrained(str(out))
    text = "def f(x):\n    return x  # ok"
    assert tok(text, add_special_tokens=False).input_ids == byte_tokenizer().encode(text)


@pytest.mark.slow
def test_hf_export_of_meta_checkpoint_converts_sentencepiece(tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer, LlamaForCausalLM

    spm_model = train_spm(tmp_path / "spm")
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    write_meta(tmp_path / "meta", spm_model, sp.GetPieceSize(), n_future=3)
    model, _, _ = load_checkpoint(tmp_path / "meta")
    assert cli_main(["export", str(tmp_path / "meta"), "--format", "hf-llama", "--out", str(tmp_path / "hf")]) == 0
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    x = torch.tensor([sp.EncodeAsIds("  for i in range(3):\n      print(i)")])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[:, :, 0], rtol=0, atol=1e-4)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    for text in ["  for i in range(3):\n      print(i)", "The cat", "zebra?! 42"]:
        assert tok(text, add_special_tokens=False).input_ids == sp.EncodeAsIds(text)
    assert tok("The cat").input_ids[0] == sp.bos_id()


@pytest.mark.slow
@pytest.mark.parametrize("head_type", ["causal", "linear"])
def test_hf_export_of_other_head_types_keeps_head_one(tmp_path, head_type):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = Transformer(tiny_cfg(head_type=head_type, n_future=3)).eval()
    ckpt = save_checkpoint(tmp_path / "ckpt", model, byte_tokenizer(), {})
    hf = LlamaForCausalLM.from_pretrained(str(export_checkpoint(ckpt, tmp_path / "hf"))).eval()
    x = torch.randint(0, 259, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[:, :, 0], rtol=0, atol=1e-4)


def test_anticausal_model_refuses_export(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", Transformer(tiny_cfg(head_type="anticausal")), byte_tokenizer(), {})
    with pytest.raises(ConfigError, match="anticausal"):
        export_checkpoint(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_unknown_format_and_bad_path(saved, tmp_path, capsys):
    _, path = saved
    with pytest.raises(UnknownNameError, match="hf-llama"):
        export_checkpoint(path, tmp_path / "out", format="gguf")
    assert cli_main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
