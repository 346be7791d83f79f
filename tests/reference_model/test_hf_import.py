"""Hugging Face Llama-family checkpoints imported into the reference transformer: logits equal
transformers' own for the same directory; what is not implemented is refused or runs through
transformers, said."""

import json

import pytest
import torch

import mtp_bench
from mtp_bench.api.errors import CheckpointError, ConfigError
from mtp_bench.models.adapters import HFModel, MTPModel
from mtp_bench.reference_model.hf_import import config_from_hf, state_dict_from_hf
from mtp_bench.reference_model.tokenizer import byte_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_hf(tmp_path, arch: str, **kw):
    """A random tiny HF model directory (weights + byte-level tokenizer), non-trivial norms and biases."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=259, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=True)
    common.update(kw)
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(rope_theta=100000.0, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(rope_theta=1000000.0, **common))
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data.uniform_(0.5, 1.5)
        elif name.endswith(".bias"):
            p.data.normal_(0, 0.3)
    d = tmp_path / arch
    model.save_pretrained(str(d))
    PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer().hf, eos_token="<|eos|>").save_pretrained(str(d))
    return model.eval(), d


@pytest.mark.parametrize("arch,tied", [("llama", True), ("llama", False), ("qwen2", True)])
def test_imported_logits_equal_transformers(tmp_path, arch, tied):
    hf, d = tiny_hf(tmp_path, arch, tie_word_embeddings=tied)
    m = mtp_bench.load(d)
    assert isinstance(m, MTPModel) and m.backend == "reference" and m.format == "hf" and m.n_future == 1
    assert m.module.config.qkv_bias == (arch == "qwen2") and m.module.config.ffn_hidden == 80
    x = torch.randint(0, 259, (2, 30))
    with torch.no_grad():
        theirs = hf(x).logits
    torch.testing.assert_close(m(x)[:, :, 0], theirs, rtol=0, atol=1e-4)
    # incremental decoding with a cache and a left-padded row gives the same logits
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :7] = 0
    cache = m.new_cache(2, 64)
    a = m(x[:, :20], cache=cache, attention_mask=mask[:, :20])
    b = m(x[:, 20:], cache=cache, attention_mask=mask[:, 20:])
    with torch.no_grad():
        alone = hf(x[1:, 7:]).logits
    torch.testing.assert_close(torch.cat([a, b], 1)[1, 7:, 0], alone[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.cat([a, b], 1)[0, :, 0], theirs[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_parameters_are_counted_as_transformers_counts_them(tmp_path, tied):
    """Tied embeddings: the reference model holds the unembedding as a copy, counted once (SmolLM2-135M
    is 134.5M parameters, not 162.8M)."""
    hf, d = tiny_hf(tmp_path, "llama", tie_word_embeddings=tied)
    m = mtp_bench.load(str(d))
    assert m.format == "hf" and m.info["tied_embeddings"] is tied
    assert m.num_params == sum(p.numel() for p in hf.parameters())


def test_export_then_import_round_trips_head_one(tmp_path):
    from mtp_bench.reference_model.checkpoint import export_checkpoint, save_checkpoint
    from mtp_bench.reference_model.model import ModelConfig, Transformer

    torch.manual_seed(1)
    model = Transformer(ModelConfig(vocab_size=259, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=16,
                                    max_seq_len=64, n_future=2)).eval()
    out = export_checkpoint(save_checkpoint(tmp_path / "native", model, byte_tokenizer(), {}), tmp_path / "hf")
    m = mtp_bench.load(out)
    x = torch.randint(0, 259, (1, 25))
    with torch.no_grad():
        torch.testing.assert_close(m(x)[:, :, 0], model(x)[:, :, 0], rtol=0, atol=1e-5)


def test_rope_scaling_runs_through_transformers_and_says_why(tmp_path):
    _, d = tiny_hf(tmp_path, "llama", rope_scaling={"rope_type": "linear", "factor": 2.0})
    m = mtp_bench.load(d)
    assert isinstance(m, HFModel) and m.backend == "transformers"
    assert "rope scaling 'linear' is not implemented" in m.backend_note
    with pytest.raises(ConfigError, match="rope scaling 'linear'"):
        config_from_hf(json.loads((d / "config.json").read_text()), d / "config.json")


def test_bad_hf_configs_and_tensors_are_refused(tmp_path):
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2}
    assert config_from_hf(base).qkv_bias is False
    for bad, msg in [({"model_type": "gpt2"}, "model_type 'gpt2'"), ({"hidden_act": "gelu"}, "hidden_act"),
                     ({"attention_bias": True}, "attention_bias"), ({"head_dim": 8}, "head_dim=8"),
                     ({"num_hidden_layers": None}, "bad value")]:
        with pytest.raises(ConfigError, match=msg):
            config_from_hf({**base, **bad})
    with pytest.raises(ConfigError, match="missing required key 'hidden_size'"):
        config_from_hf({k: v for k, v in base.items() if k != "hidden_size"})
    hf, d = tiny_hf(tmp_path, "llama")
    cfg = config_from_hf(json.loads((d / "config.json").read_text()))
    sd = dict(hf.state_dict())
    with pytest.raises(CheckpointError, match="no place for.*mtp_layers"):
        state_dict_from_hf({**sd, "model.mtp_layers.0.input_proj.weight": torch.zeros(1)}, cfg, True)
    del sd["model.layers.2.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match="missing tensor 'layers.2.mlp.up_proj.weight'"):
        state_dict_from_hf(sd, cfg, True)
