"""Medusa-1 heads on a Llama base load as head_type "medusa": every head's logits equal an
independent computation on transformers' model; specdec drafts with them losslessly."""

import json

import pytest
import torch

import mtp_bench
from mtp_bench.api.errors import CheckpointError, ConfigError
from mtp_bench.generation.speculative import plain_decode, speculative_decode
from mtp_bench.models.adapters import MTPModel
from mtp_bench.reference_model.tokenizer import byte_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


class ResBlock(torch.nn.Module):  # Medusa's: x + SiLU(W x + b)
    def __init__(self, d):
        super().__init__()
        self.linear = torch.nn.Linear(d, d)

    def forward(self, x):
        return x + torch.nn.functional.silu(self.linear(x))


def tiny_medusa(tmp_path, n_heads=3, n_layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=False)).eval()
    base = tmp_path / "base"
    hf.save_pretrained(str(base))
    PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer().hf, eos_token="<|eos|>").save_pretrained(str(base))
    heads = torch.nn.ModuleList(torch.nn.Sequential(*[ResBlock(32) for _ in range(n_layers)],
                                                    torch.nn.Linear(32, 259, bias=False)) for _ in range(n_heads)).eval()
    for p in heads.parameters():
        p.data.normal_(0, 0.3)
    d = tmp_path / "medusa"
    d.mkdir()
    torch.save(heads.state_dict(), d / "medusa_lm_head.pt")
    (d / "config.json").write_text(json.dumps({"medusa_num_heads": n_heads, "medusa_num_layers": n_layers,
                                               "base_model_name_or_path": "../base"}))
    return hf, heads, d


def test_medusa_heads_equal_an_independent_computation(tmp_path):
    hf, heads, d = tiny_medusa(tmp_path)
    m = mtp_bench.load(d)
    assert isinstance(m, MTPModel) and m.format == "medusa" and m.n_future == 4
    x = torch.randint(0, 259, (2, 21))
    got = m(x, return_all_heads=True)  # (B, T, 4, V)
    with torch.no_grad():
        out = hf(x, output_hidden_states=True)
        last = out.hidden_states[-1]  # the base model's final-normed output, what Medusa's heads read
        torch.testing.assert_close(got[:, :, 0], out.logits, rtol=0, atol=1e-4)
        for i, head in enumerate(heads):
            torch.testing.assert_close(got[:, :, 1 + i], head(last), rtol=0, atol=1e-4, msg=f"medusa head {i}")


def test_medusa_heads_draft_losslessly(tmp_path):
    _, _, d = tiny_medusa(tmp_path)
    m = mtp_bench.load(d)
    prompts = [[5, 9, 13, 2], [7, 7]]
    plain = plain_decode(m, prompts, max_new_tokens=12)
    spec = speculative_decode(m, prompts, k=4, max_new_tokens=12)
    assert [s.output_ids for s in spec] == [p.output_ids for p in plain]


def test_medusa_layout_and_base_are_checked(tmp_path):
    _, _, d = tiny_medusa(tmp_path)
    c = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**c, "medusa_num_layers": 1}))
    with pytest.raises(CheckpointError, match="not 3 Medusa-1 heads of 1 ResBlock"):
        mtp_bench.load(d)
    (d / "config.json").write_text(json.dumps({**c, "base_model_name_or_path": "lmsys/vicuna-7b-v1.3"}))
    with pytest.raises(CheckpointError, match="not a local Hugging Face directory"):
        mtp_bench.load(d)
    (d / "config.json").write_text(json.dumps({**c, "medusa_num_heads": 0}))
    with pytest.raises(ConfigError, match="medusa_num_heads"):
        mtp_bench.load(d)
