import json

from mtp_bench.generation.cache import JsonlCache, generation_key

BASE = dict(weights_sha256="w" * 64, evaluator="humaneval", evaluator_version="1.0", sample_id="HumanEval/0",
            sample_index=0, gen_config={"max_new_tokens": 8, "temperature": 0.0}, prompt="def f():", seed=None)


def test_values_survive_reopening(tmp_path):
    c = JsonlCache(tmp_path / "g.jsonl")
    c.put("a", {"text": "x", "ids": [1, 2]})
    c.put_many([("b", {"text": "ü"}), ("c", None)])
    again = JsonlCache(tmp_path / "g.jsonl")
    assert again.get("a") == {"text": "x", "ids": [1, 2]} and again.get("b") == {"text": "ü"}
    assert "c" in again and len(again) == 3 and again.skipped == 0


def test_torn_last_line_is_ignored_and_next_append_starts_a_fresh_line(tmp_path):
    p = tmp_path / "g.jsonl"
    c = JsonlCache(p)
    c.put_many([("a", 1), ("b", 2)])
    good = p.read_bytes()
    p.write_bytes(good + b'{"key":"c","value":{"text":"half wri')  # SIGKILL mid-write
    torn = JsonlCache(p)
    assert (torn.get("a"), torn.get("b"), torn.get("c")) == (1, 2, None) and torn.skipped == 1
    torn.put("d", 4)
    after = JsonlCache(p)
    assert (after.get("a"), after.get("b"), after.get("d")) == (1, 2, 4)
    assert after.skipped == 1  # the torn bytes stay one unreadable line, never glued onto "d"
    assert p.read_bytes().endswith(b"\n")


def test_first_record_of_a_key_wins(tmp_path):
    p = tmp_path / "g.jsonl"
    JsonlCache(p).put("k", "first")
    JsonlCache(p).put("k", "second")
    assert JsonlCache(p).get("k") == "first"
    assert len(p.read_text().splitlines()) == 2  # append-only: nothing is rewritten


def test_every_line_is_one_json_object_with_fields(tmp_path):
    p = tmp_path / "g.jsonl"
    JsonlCache(p).put("k", {"v": 1}, fields={"sample_id": "x"})
    (line,) = p.read_text().splitlines()
    assert json.loads(line) == {"key": "k", "value": {"v": 1}, "fields": {"sample_id": "x"}}


def test_generation_key_changes_with_every_field():
    k0 = generation_key(**BASE)
    changes = dict(weights_sha256="v" * 64, evaluator="mbpp", evaluator_version="1.1", sample_id="HumanEval/1",
                   sample_index=1, gen_config={"max_new_tokens": 9, "temperature": 0.0}, prompt="def g():", seed=5)
    for field, value in changes.items():
        assert generation_key(**{**BASE, field: value}) != k0, field
    # dict key order does not matter
    assert generation_key(**{**BASE, "gen_config": {"temperature": 0.0, "max_new_tokens": 8}}) == k0
