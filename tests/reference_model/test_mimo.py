"""MiMo-style checkpoints (Qwen2 + model.mtp_layers.*) load as sequential MTP modules whose
teacher-forced logits equal an independent computation with transformers' Qwen2 pieces;
DeepSeek-V3 / GLM-4.5 MTP layers are refused with what is missing."""

import json

import pytest
import torch

import mtp_bench
from mtp_bench.api.errors import CheckpointError, ConfigError
from mtp_bench.generation.speculative import plain_decode, speculative_decode
from mtp_bench.models.adapters import MTPModel
from mtp_bench.reference_model.tokenizer import byte_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

N_MTP = 2


class MTPLayer(torch.nn.Module):
    """One MiMo MTP layer in MiMo's parameter names, built from transformers' Qwen2 modules."""

    def __init__(self, config):
        from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm

        super().__init__()
        d, eps = config.hidden_size, config.rms_norm_eps
        self.token_layernorm, self.hidden_layernorm = Qwen2RMSNorm(d, eps), Qwen2RMSNorm(d, eps)
        self.input_proj = torch.nn.Linear(2 * d, d, bias=False)
        self.final_layernorm = Qwen2RMSNorm(d, eps)
        self.block = Qwen2DecoderLayer(config, layer_idx=0)


def tiny_mimo(tmp_path, tied: bool = False):
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=259, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                      num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=640000.0,
                      tie_word_embeddings=tied)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(cfg).eval()
    layers = torch.nn.ModuleList(MTPLayer(cfg) for _ in range(N_MTP)).eval()
    for name, p in [*hf.named_parameters(), *layers.named_parameters()]:
        if name.endswith("norm.weight"):
            p.data.uniform_(0.5, 1.5)
        elif name.endswith(".bias"):
            p.data.normal_(0, 0.3)
        elif "input_proj" in name:
            p.data.normal_(0, 0.1)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items() if not (tied and k == "lm_head.weight")}
    for j, layer in enumerate(layers):
        for k, v in layer.state_dict().items():
            sd[f"model.mtp_layers.{j}.{k.removeprefix('block.')}"] = v.contiguous()  # MiMo: block tensors unprefixed
    d = tmp_path / "mimo"
    d.mkdir()
    from safetensors.torch import save_file

    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    c = {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}
    c.update(model_type="mimo", architectures=["MiMoForCausalLM"], attention_bias=True, num_nextn_predict_layers=N_MTP,
             rope_theta=640000.0, use_sliding_window=False, use_mrope=False)
    (d / "config.json").write_text(json.dumps(c))
    PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer().hf, eos_token="<|eos|>").save_pretrained(str(d))
    return hf, layers, d


def reference_logits(hf, layers, x: torch.Tensor) -> list[torch.Tensor]:
    """Head 0 and each MTP layer's teacher-forced logits, with transformers' modules: layer j reads
    the main model's last decoder-layer output (before model.norm) or layer j-1's final_layernorm'd
    output, and the embeddings of the tokens j+1 ahead, on the length T-j-1 sequence."""
    captured = {}
    handle = hf.model.layers[-1].register_forward_hook(lambda _m, _i, out: captured.update(h=out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        out = [hf(x).logits]
        handle.remove()
        h = captured["h"]
        T = x.shape[1]
        for j, layer in enumerate(layers):
            n = T - j - 1
            e = hf.model.embed_tokens(x[:, j + 1 :])
            inp = layer.input_proj(torch.cat([layer.hidden_layernorm(h[:, :n]), layer.token_layernorm(e)], dim=-1))
            pos = torch.arange(n)[None]
            mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
            z = layer.block(inp, attention_mask=mask, position_ids=pos, position_embeddings=hf.model.rotary_emb(inp, pos))
            z = z[0] if isinstance(z, tuple) else z
            h = layer.final_layernorm(z)
            out.append(hf.lm_head(h))
    return out


@pytest.mark.parametrize("tied", [False, True])
def test_mimo_modules_equal_transformers_qwen2_pieces(tmp_path, tied):
    hf, layers, d = tiny_mimo(tmp_path, tied)
    m = mtp_bench.load(d)
    assert isinstance(m, MTPModel) and m.format == "mimo" and m.n_future == 1 + N_MTP
    cfg = m.module.config
    assert (cfg.head_type, cfg.mtp_concat, cfg.mtp_chain_normed, cfg.mtp_zero_first_embedding, cfg.qkv_bias) == \
        ("sequential", "hidden_first", True, False, True)
    x = torch.randint(0, 259, (2, 17))
    got = m(x, return_all_heads=True)  # (B, T, 3, V)
    ref = reference_logits(hf, layers, x)
    for k, r in enumerate(ref):
        n = 17 - k
        torch.testing.assert_close(got[:, :n, k], r[:, :n], rtol=0, atol=1e-4, msg=f"head {k}")
        assert torch.isnan(got[:, n:, k]).all()


def test_mimo_drafts_losslessly(tmp_path):
    _, _, d = tiny_mimo(tmp_path)
    m = mtp_bench.load(d)
    prompts = [[5, 9, 13, 2], [7, 7]]
    plain = plain_decode(m, prompts, max_new_tokens=12)
    for k, reuse in ((3, False), (4, True)):
        spec = speculative_decode(m, prompts, k=k, max_new_tokens=12, reuse_last=reuse)
        assert [s.output_ids for s in spec] == [p.output_ids for p in plain]


def test_mimo_layer_count_must_match_the_weights(tmp_path):
    _, _, d = tiny_mimo(tmp_path)
    c = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**c, "num_nextn_predict_layers": 3}))
    with pytest.raises(CheckpointError, match="num_nextn_predict_layers=3 but the weights hold MTP layers"):
        mtp_bench.load(d)


@pytest.mark.parametrize("model_type,missing", [("deepseek_v3", "multi-head latent attention"),
                                                ("glm4_moe", "mixture-of-experts")])
def test_deepseek_and_glm_mtp_layers_are_refused_naming_what_is_missing(tmp_path, model_type, missing):
    from transformers import PreTrainedTokenizerFast

    d = tmp_path / model_type
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": model_type, "num_hidden_layers": 61,
                                               "num_nextn_predict_layers": 1, "hidden_size": 64}))
    PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer().hf, eos_token="<|eos|>").save_pretrained(str(d))
    with pytest.raises(ConfigError, match=rf"{missing}.*model\.layers\.61|model\.layers\.61.*{missing}"):
        mtp_bench.load(d)
