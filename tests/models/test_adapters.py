"""mtp_bench.load: one Model protocol over native, Meta and Hugging Face checkpoints."""

import copy
import hashlib
import json

import pytest
import torch

import mtp_bench
from mtp_bench.api import files
from mtp_bench.api.errors import CheckpointError, UnknownNameError
from mtp_bench.api.protocols import KVCache, Model
from mtp_bench.reference_model.checkpoint import export_checkpoint, save_checkpoint
from mtp_bench.reference_model.model import ModelConfig, Transformer

LINES = ["def add(a, b):\n    return a + b", "the quick brown fox jumps over the lazy dog",
         "print('hello world')", "for i in range(10):\n    total += i"] * 20


@pytest.fixture(autouse=True)
def _sha_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_BENCH_CACHE_DIR", str(tmp_path / "cache"))
    files._SHA_MEMO.clear()


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """The same weights as a Meta dir, a native checkpoint and a Hugging Face export."""
    import sentencepiece as spm

    from mtp_bench.reference_model.checkpoint import SentencePieceTokenizer

    root = tmp_path_factory.mktemp("three")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(LINES), model_prefix=str(root / "spm"), vocab_size=64,
                                   model_type="bpe", hard_vocab_limit=False, minloglevel=2, unk_id=0, bos_id=1, eos_id=2,
                                   pad_id=-1, normalization_rule_name="identity", remove_extra_whitespaces=False)
    sp = spm.SentencePieceProcessor(model_file=str(root / "spm.model"))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=sp.GetPieceSize(), dim=32, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=16,
                      max_seq_len=64, n_future=2)
    model = Transformer(cfg).eval()
    meta = root / "meta"
    meta.mkdir()
    torch.save(model.state_dict(), meta / "consolidated.pth")
    (meta / "params.json").write_text(json.dumps({"dim": 32, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2,
                                                  "vocab_size": cfg.vocab_size, "multiple_of": 16, "norm_eps": 1e-5,
                                                  "rope_theta": 10000.0, "n_future_tokens": 2, "max_seq_len": 64}))
    (meta / "tokenizer.model").write_bytes((root / "spm.model").read_bytes())

    class SpmWithSave(SentencePieceTokenizer):  # the native format stores a tokenizer.json
        def save(self, path):
            from mtp_bench.reference_model.checkpoint import _spm_to_hf

            _spm_to_hf(self).backend_tokenizer.save(str(path))

    native = save_checkpoint(root / "native", model, SpmWithSave(root / "spm.model"), {"step": 1})
    hf = export_checkpoint(native, root / "hf")
    return model, sp, {"meta": meta, "native": native, "hf": hf}


def test_three_formats_give_equal_head_one_logits(three):
    model, sp, paths = three
    x = torch.tensor([sp.EncodeAsIds("the lazy fox says hello")])
    with torch.no_grad():
        ref = model(x, return_all_heads=True)  # (1, T, 2, V)
    for fmt, path in paths.items():
        m = mtp_bench.load(path)
        assert isinstance(m, Model) and m.format == fmt and m.path == str(path)
        assert m.device == torch.device("cpu") and m.dtype == torch.float32 and m.max_seq_len == 64
        assert m.n_future == (1 if fmt == "hf" else 2)
        assert m.tokenizer.encode("the lazy fox") == sp.EncodeAsIds("the lazy fox")
        assert m.tokenizer.decode(sp.EncodeAsIds("print(x)")) == "print(x)"
        if fmt == "meta":  # native (and its export) name specials <|bos|>/<|eos|> (reference_model.tokenizer)
            assert m.tokenizer.eos_id == sp.eos_id() and m.tokenizer.bos_id == sp.bos_id()
        json.dumps(m.config)
        logits = m(x)
        assert logits.shape == (1, x.shape[1], 1, sp.GetPieceSize()) and logits.dtype == torch.float32
        torch.testing.assert_close(logits[:, :, 0], ref[:, :, 0], rtol=0, atol=1e-4)
        if fmt != "hf":
            torch.testing.assert_close(m(x, return_all_heads=True), ref, rtol=0, atol=1e-5)
            assert m.num_params == model.num_params()
        else:  # the export drops the extra head
            assert m.num_params == model.num_params() - sum(p.numel() for p in model.extra_heads.parameters())


def test_weights_sha256_is_the_file_hash_and_is_cached(three, tmp_path):
    _, _, paths = three
    m = mtp_bench.load(paths["native"])
    expected = hashlib.sha256((paths["native"] / "model.safetensors").read_bytes()).hexdigest()
    assert m.weights_sha256 == expected
    assert mtp_bench.load(paths["meta"]).weights_sha256 == hashlib.sha256((paths["meta"] / "consolidated.pth").read_bytes()).hexdigest()
    # a later load reads the digest from the on-disk cache instead of rehashing: plant a marker there
    cache_file = tmp_path / "cache" / "weights_sha256.json"
    disk = json.loads(cache_file.read_text())
    key = next(k for k, v in disk.items() if v == expected)
    disk[key] = "cached-marker"
    cache_file.write_text(json.dumps(disk))
    files._SHA_MEMO.clear()
    assert mtp_bench.load(paths["native"]).weights_sha256 == "cached-marker"


def test_weights_sha256_changes_when_the_file_changes(tmp_path):
    w = tmp_path / "w.bin"
    w.write_bytes(b"a" * 10)
    first = files.weights_sha256([w])
    w.write_bytes(b"b" * 11)
    assert files.weights_sha256([w]) == hashlib.sha256(b"b" * 11).hexdigest() != first


def test_hf_adapter_left_padded_batch_equals_rows_alone(three):
    _, sp, paths = three
    m = mtp_bench.load(paths["hf"])
    rows = [sp.EncodeAsIds(t) for t in ("the quick brown fox", "print(x)", "def add")]
    T = max(map(len, rows))
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, T - len(row):], mask[r, T - len(row):] = torch.tensor(row), 1
    batched = m(ids, attention_mask=mask)
    # with a cache: padded prefill, two decode steps, then a rejected draft rolled back and redone
    cache = m.new_cache(3, 32)
    assert isinstance(cache, KVCache)
    m(ids, attention_mask=mask, cache=cache)
    nxt = torch.tensor([[5, 6], [7, 8], [9, 10]])
    step = m(nxt, cache=cache)
    m(torch.tensor([[11], [12], [13]]), cache=cache)
    cache.truncate(T + 1)
    redo = m(nxt[:, 1:], cache=cache)
    assert cache.length == T + 2
    for r, row in enumerate(rows):
        alone = m(torch.tensor([row + nxt[r].tolist()]))[0]
        torch.testing.assert_close(batched[r, T - len(row):], alone[: len(row)], rtol=0, atol=1e-5)
        torch.testing.assert_close(step[r], alone[len(row):], rtol=0, atol=1e-5)
        torch.testing.assert_close(redo[r], alone[-1:], rtol=0, atol=1e-5)


def test_native_adapter_cache_and_bf16(three):
    model, sp, paths = three
    m = mtp_bench.load(paths["native"], dtype="bfloat16")
    assert m.dtype == torch.bfloat16
    x = torch.tensor([sp.EncodeAsIds("the lazy fox says hello")])
    out = m(x, return_all_heads=True)
    assert out.dtype == torch.float32
    with torch.no_grad():
        ref = copy.deepcopy(model).to(torch.bfloat16)(x, return_all_heads=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    cache = m.new_cache(1, 32)
    steps = torch.cat([m(x[:, t:t + 1], cache=cache, return_all_heads=True) for t in range(x.shape[1])], dim=1)
    torch.testing.assert_close(steps, out, rtol=0, atol=0.15)  # bf16 rounding differs between the two paths


@pytest.mark.parametrize("make", ["missing", "empty_dir", "file", "bad_config", "hub_id_offline"])
def test_bad_paths_raise_checkpoint_error(tmp_path, make, monkeypatch):
    p = tmp_path / "x"
    if make == "hub_id_offline":  # a relative "org/name" that is not a directory: a hub id, refused offline
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.chdir(tmp_path)
        p = "no-such-org/no-such-model"
    if make == "empty_dir":
        p.mkdir()
    elif make == "file":
        p.write_text("hello")
    elif make == "bad_config":
        p.mkdir()
        (p / "config.json").write_text(json.dumps({"hidden": 3}))
    with pytest.raises(CheckpointError, match="looked for a native mtp-bench checkpoint"):
        mtp_bench.load(p)


def test_unknown_dtype_lists_known(three):
    with pytest.raises(UnknownNameError, match="bfloat16"):
        mtp_bench.load(three[2]["native"], dtype="float8")
