"""Corpus loading, the held-out split, the token cache and the deterministic window loader."""

import json

import numpy as np
import pytest
import torch

from mtp_bench.api.errors import DataError
from mtp_bench.reference_model import data as D
from mtp_bench.reference_model.tokenizer import byte_tokenizer


def _write(root, files: dict[str, str]):
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def test_stdlib_corpus_is_sorted_library_source_without_tests():
    docs = D.load_corpus("stdlib", "json/*.py,collections/*.py")
    names = [d.name for d in docs]
    assert names == sorted(names)
    assert "json/decoder.py" in names and "collections/abc.py" in names
    full = [d.name for d in D.load_corpus("stdlib")]
    assert "json/decoder.py" in full and "os.py" in full
    assert not any(part in ("test", "tests", "idle_test", "site-packages") for n in full for part in n.split("/"))


def test_folder_and_jsonl_corpora(tmp_path):
    _write(tmp_path / "src", {"b.py": "b = 2\n", "a/x.py": "x = 1\n", "notes.txt": "hi", "empty.py": ""})
    docs = D.load_corpus(str(tmp_path / "src"), "**/*.py")
    assert [(d.name, d.text) for d in docs] == [("a/x.py", "x = 1\n"), ("b.py", "b = 2\n")]  # empty dropped
    assert [d.name for d in D.load_corpus(str(tmp_path / "src"), "*.txt")] == ["notes.txt"]
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"content": "one"}) + "\n\n" + json.dumps({"content": "two"}) + "\n")
    assert [d.text for d in D.load_corpus(str(jl), field="content")] == ["one", "two"]


def test_bad_corpora_raise_data_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty corpus"):
        D.load_corpus(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="not found"):
        D.load_corpus(str(tmp_path / "nope"))
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"body": "b"}) + "\n")
    with pytest.raises(DataError, match=r"c.jsonl:2: no field 'text' \(fields: body\)"):
        D.load_corpus(str(jl))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.py").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="not UTF-8"):
        D.load_corpus(str(tmp_path / "bin"))


def test_split_is_by_document_deterministic_and_stable():
    docs = [D.Document(f"pkg/m{i}.py", f"v = {i}\n") for i in range(400)]
    train, val = D.split_documents(docs, 0.1)
    assert {d.name for d in train}.isdisjoint(d.name for d in val)
    assert len(train) + len(val) == 400 and 15 < len(val) < 70  # ~10% by hash
    r_train, r_val = D.split_documents(list(reversed(docs)), 0.1)
    assert {d.name for d in r_val} == {d.name for d in val}  # input order does not matter
    # adding documents never moves an existing one across the split
    _, val_more = D.split_documents(docs + [D.Document(f"new{i}.py", "n") for i in range(50)], 0.1)
    assert {d.name for d in val} <= {d.name for d in val_more}
    # a tiny corpus still holds one document out
    t2, v2 = D.split_documents(docs[:3], 0.02)
    assert len(v2) == 1 and len(t2) == 2
    with pytest.raises(DataError):
        D.split_documents(docs[:1], 0.02)


def test_corpus_hash_tracks_names_and_contents_not_order():
    docs = [D.Document("a.py", "x"), D.Document("b.py", "y")]
    h = D.corpus_sha256(docs)
    assert h == D.corpus_sha256(list(reversed(docs)))
    assert h != D.corpus_sha256([D.Document("a.py", "x"), D.Document("b.py", "z")])
    assert h != D.corpus_sha256([D.Document("a.py", "x"), D.Document("c.py", "y")])


def test_token_cache_matches_reference_encoding_and_is_reused(tmp_path):
    tok = byte_tokenizer()
    docs = [D.Document("a.py", "ab\n"), D.Document("b.py", "cé")]
    arr = D.tokenize_split(docs, tok, tmp_path, "train")
    expected = list(b"ab\n") + [tok.eos_id] + list("cé".encode()) + [tok.eos_id]
    assert arr.dtype == np.uint16 and arr.tolist() == expected
    files = list((tmp_path / "tokens").iterdir())
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = D.tokenize_split(docs, tok, tmp_path, "train")
    assert again.tolist() == expected and files[0].stat().st_mtime_ns == mtime  # read, not rebuilt
    D.tokenize_split(docs[:1], tok, tmp_path, "train")  # other content -> another cache entry
    assert len(list((tmp_path / "tokens").iterdir())) == 2


def _loader(tokens, **kw):
    args = dict(seq_len=4, batch_size=3, seed=7)
    args.update(kw)
    return D.WindowLoader(tokens, **args)


def test_loader_covers_each_window_once_per_epoch_in_seeded_order():
    tokens = np.arange(50, dtype=np.uint16)  # 12 windows of 4 (2 leftover tokens)
    loader = _loader(tokens)
    rows = torch.cat([loader.next_batch() for _ in range(4)])  # 12 rows = one epoch
    assert rows.shape == (12, 4)
    assert (rows[:, 1:] - rows[:, :-1] == 1).all() and (rows[:, 0] % 4 == 0).all()  # contiguous, aligned
    assert sorted(rows[:, 0].tolist()) == list(range(0, 48, 4))
    fresh, other = _loader(tokens), _loader(tokens, seed=8)
    again = torch.cat([fresh.next_batch() for _ in range(4)])
    assert torch.equal(rows, again)
    assert not torch.equal(rows, torch.cat([other.next_batch() for _ in range(4)]))
    assert not torch.equal(rows, torch.cat([loader.next_batch() for _ in range(4)]))  # epoch 2 reshuffled


def test_loader_resumes_from_its_state():
    tokens = np.arange(200, dtype=np.uint16)
    a = _loader(tokens)
    for _ in range(5):
        a.next_batch()
    b = _loader(tokens)
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        assert torch.equal(a.next_batch(), b.next_batch())
    with pytest.raises(DataError):
        _loader(tokens, seed=1).load_state_dict(a.state_dict())


def test_ranks_get_disjoint_slices_equal_to_one_process_accumulating():
    tokens = np.arange(400, dtype=np.uint16)
    single = _loader(tokens)
    ranks = [_loader(tokens, rank=r, world_size=2) for r in range(2)]
    for _ in range(6):
        expected = torch.cat([single.next_batch(), single.next_batch()])  # grad_accum=2, one process
        got = [r.next_batch() for r in ranks]
        assert set(got[0][:, 0].tolist()).isdisjoint(got[1][:, 0].tolist())
        assert torch.equal(torch.cat(got), expected)


def test_eval_windows_are_fixed_and_too_short_split_fails():
    tokens = np.arange(100, dtype=np.uint16)
    w = D.eval_windows(tokens, 10, 4)
    assert w.shape == (4, 10) and w[:, 0].tolist() == [0, 30, 60, 90]
    assert D.eval_windows(tokens, 10, 50).shape == (10, 10)
    with pytest.raises(DataError, match="validation split"):
        D.eval_windows(tokens[:5], 10, 4)
