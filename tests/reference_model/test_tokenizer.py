"""Tokenizers: exact round trips (code whitespace included) and identical ids through transformers."""

import sysconfig
from pathlib import Path

import pytest

from mtp_bench.api.errors import CheckpointError, ConfigError
from mtp_bench.reference_model.tokenizer import byte_tokenizer, load_tokenizer, train_bpe

CODE = '''def f(x,  y=2):\n\t"""Doc."""\n    if x:\n        return [i ** y for i in range(x)]  # tail   \n\n\n    return {}\r\n'''
ODD = "héllo wörld 日本語 🙂\x00\x7f\u200b  \t\n<|eos|> literal specials stay text"


@pytest.fixture(scope="module")
def stdlib_texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8") for p in sorted((root / "json").glob("*.py"))]


@pytest.fixture(scope="module")
def bpe(stdlib_texts):
    return train_bpe(stdlib_texts, vocab_size=600)


def test_byte_tokenizer_ids_are_utf8_bytes_plus_specials():
    tok = byte_tokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)
    for text in (CODE, ODD):
        assert tok.encode(text) == list(text.encode("utf-8"))  # independent reference: the UTF-8 bytes
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("ab", add_bos=True) == [256, 97, 98]
    from mtp_bench.api.protocols import Tokenizer as TokenizerProtocol

    assert isinstance(tok, TokenizerProtocol)


def test_bpe_round_trips_python_source_exactly(bpe, stdlib_texts):
    assert bpe.vocab_size == 600
    assert {bpe.bos_id, bpe.eos_id, bpe.pad_id} == {0, 1, 2}
    for text in stdlib_texts + [CODE, ODD]:
        assert bpe.decode(bpe.encode(text)) == text
    # it actually learnt merges: source compresses well below one token per byte
    src = "\n".join(stdlib_texts)
    assert len(bpe.encode(src)) < 0.6 * len(src.encode())


def test_special_strings_in_text_are_not_special_ids(bpe):
    ids = bpe.encode("x <|eos|> y")
    assert bpe.eos_id not in ids and bpe.decode(ids) == "x <|eos|> y"


def test_decode_drops_special_ids(bpe):
    ids = bpe.encode("a = 1") + [bpe.eos_id] + bpe.encode("b")
    assert bpe.decode(ids) == "a = 1b"


def test_saved_tokenizer_loads_identically_in_transformers(bpe, tmp_path):
    from transformers import PreTrainedTokenizerFast

    for name, tok in (("bpe", bpe), ("byte", byte_tokenizer())):
        path = tmp_path / f"{name}.json"
        tok.save(path)
        again = load_tokenizer(path)
        hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
        assert len(hf) == tok.vocab_size
        assert hf.convert_tokens_to_ids("<|eos|>") == tok.eos_id
        for text in (CODE, "héllo wörld 🙂\n\tx = {'a': [1, 2]}\n"):
            ids = tok.encode(text)
            assert again.encode(text) == ids
            assert hf(text, add_special_tokens=False)["input_ids"] == ids
            assert hf.decode(ids) == text


def test_bad_inputs_raise_typed_errors(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        train_bpe(["x"], vocab_size=100)
    with pytest.raises(CheckpointError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read tokenizer"):
        load_tokenizer(tmp_path)
