"""GSM8K (Cobbe et al. 2021): grade-school math word problems, exact match on the final number.

Data: `gsm8k/test.jsonl` (1319 problems) and `gsm8k/train.jsonl` (7473), keys `question` and
`answer` (the worked solution, ending in `#### N`), read from the `data_dir` given (the config
field, else `--data-dir` / $MTP_BENCH_DATA) as `DIR/gsm8k/FILE` or `DIR/FILE`; otherwise, unless
offline, the hub (`openai/gsm8k`, config `main`, through `datasets`). Nothing found -> DataError
(a suite run then skips GSM8K and says why). `doc_id` = 0-based line index of the test file.
The target is the text after the last `####`, stripped.

Protocols (config field `protocol`; prompt template version 1.0):

    cot8      (default) the 8 chain-of-thought exemplars of Wei et al. 2022, as lm-evaluation-harness's
              `gsm8k_cot`: each exemplar "Q: {question}\\nA: {reasoning} The answer is {N}.", joined
              by a blank line, then "Q: {question}\\nA:". Greedy. Stops: "Q:", "</s>", "<|im_end|>".
              strict-match regex: `The answer is (\\-?[0-9\\.\\,]+).`
    fewshot5  5 exemplars from the train split in GSM8K's own format, as lm-evaluation-harness's
              `gsm8k`: "Question: {question}\\nAnswer: {answer with #### N}", joined by a blank line,
              then "Question: {question}\\nAnswer:". Greedy. Stops: "Question:", "</s>", "<|im_end|>".
              The exemplars are train lines `random.Random(fewshot_seed).sample(range(7473), 5)`, the
              same five for every problem (lm-evaluation-harness draws five per problem from one
              seeded stream; one fixed set keeps a problem's prompt independent of the others).
              strict-match regex: `#### (\\-?[0-9\\.\\,]+)`
    paper     the cot8 prompt, nucleus sampling (top_p 0.95), n=200 samples per problem at each
              temperature 0.1, 0.2, ..., 1.0; pass@k for k = 1, 10, 100 with the unbiased estimator,
              each k at its best temperature (Gloeckle et al. 2024 App. I; the "oracle temperature"
              rule of the code evaluators, `mtp_bench.scoring.passk`).

Extraction, a step of its own (`extract`), with lm-evaluation-harness's definitions
(`lm_eval/tasks/gsm8k/gsm8k*.yaml`, `lm_eval/filters/extraction.py`), reimplemented here:
    0) the completion is cut at the protocol's first stop sequence (a no-op for our own
       generations; `mtp-bench score` gets completions from engines that may not have stopped)
    1) strict-match: the FIRST match of the protocol's answer regex, its group, stripped; none ->
       "[invalid]". Note the cot8 regex ends in an unescaped `.` (any character): lm-evaluation-
       harness's own definition, kept as is, so "The answer is 18" at the very end of an output
       extracts "1" (the `.` eats the "8"), and "The answer is 18." extracts "18".
    2) flexible-extract: the LAST match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, the non-empty group,
       stripped; none -> "[invalid]"
Scoring: lm-evaluation-harness's `exact_match` with `regexes_to_ignore` = `,`, `\\$`,
`(?s).*#### `, `\\.$` (removed in that order from prediction and target alike), then lower case;
equal strings score 1. So "$1,000." matches 1000, but "18.0" does not match 18 (no numeric parse,
as in lm-evaluation-harness).

Metrics: `exact_match_strict`, `exact_match_flexible` (mean over problems of the share of
correct samples in the first sampling run, the lowest temperature of `paper`; with greedy n=1 the
share of problems solved), `maj@n_strict` / `maj@n_flexible`
when n > 1 (majority vote of the normalised extractions, ties to the answer seen first; best
temperature), and `pass@k_strict` / `pass@k_flexible` when a sampling run reports k > 1 or n > 1.
Changing a template, exemplar, stop sequence, regex or normalisation changes `version`.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mtp_bench.api import EvalOutput, Evaluator, GenRequest, Metric, RunContext, register
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.api.hub import import_datasets
from mtp_bench.api.jsonl import read_lines
from mtp_bench.api.paths import data_dirs
from mtp_bench.generation.engine import GenerationConfig
from mtp_bench.scoring.metrics import mean_metric
from mtp_bench.scoring.passk import PROTOCOLS as SAMPLING
from mtp_bench.scoring.passk import SamplingRun, as_tuple, sampling_runs, score

HUB_ID, HUB_CONFIG = "openai/gsm8k", "main"
FILES = {"test": "test.jsonl", "train": "train.jsonl"}
INVALID = "[invalid]"

# The 8 exemplars of Wei et al. 2022 (Table 20), as lm-evaluation-harness's gsm8k_cot gives them.
COT_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
     "now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
     "computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
)


@dataclass(frozen=True)
class PromptStyle:
    question_prefix: str  # "Q: " | "Question: "
    answer_prefix: str  # "\nA:" | "\nAnswer:"
    stop: tuple[str, ...]
    strict: re.Pattern  # the protocol's answer regex (strict-match)


STYLES = {
    "cot": PromptStyle("Q: ", "\nA:", ("Q:", "</s>", "<|im_end|>"), re.compile(r"The answer is (\-?[0-9\.\,]+).")),
    "hash": PromptStyle("Question: ", "\nAnswer:", ("Question:", "</s>", "<|im_end|>"),
                        re.compile(r"#### (\-?[0-9\.\,]+)")),
}
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
REGEXES_TO_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))
# protocol -> (prompt style, exemplars, sampling protocol of mtp_bench.scoring.passk)
PROTOCOLS = {"cot8": ("cot", "cot8", "quick"), "fewshot5": ("hash", "train5", "quick"), "paper": ("cot", "cot8", "paper")}
FEWSHOT_DELIMITER = "\n\n"


# -----------------------------------------------------------------------------
# extraction and scoring (pure functions)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the first stop sequence.

    >>> cut_at_stop(" 3 + 2 = 5. The answer is 5.\\n\\nQ: next", ("Q:",))
    ' 3 + 2 = 5. The answer is 5.\\n\\n'
    """
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(hits)] if hits else text


def _pick(match) -> str:
    """A findall item: a string, or a tuple of groups of which the first non-empty one counts."""
    if isinstance(match, tuple):
        match = next((m for m in match if m), None)
        if match is None:
            return INVALID
    return match.strip()


def extract_strict(text: str, style: str = "cot") -> str:
    """strict-match: the first match of the protocol's answer regex, else "[invalid]".

    >>> extract_strict("So 2 + 2 = 4. The answer is 4.")
    '4'
    >>> extract_strict("#### 1,234", style="hash")
    '1,234'
    """
    found = STYLES[style].strict.findall(text)
    return _pick(found[0]) if found else INVALID


def extract_flexible(text: str) -> str:
    """flexible-extract: the last number-like match, else "[invalid]".

    >>> extract_flexible("She pays $1,200 in total, 3 times.")
    '3'
    >>> extract_flexible("no digits here")
    '[invalid]'
    """
    found = FLEXIBLE.findall(text)
    return _pick(found[-1]) if found else INVALID


def normalize(s: str) -> str:
    """lm-evaluation-harness's exact_match normalisation for GSM8K: drop ",", "$", everything up
    to "#### ", one trailing "."; lower case.

    >>> normalize("$1,000.")
    '1000'
    >>> normalize("He made 9 * 2 = 18.\\n#### 18")
    '18'
    """
    for rx in REGEXES_TO_IGNORE:
        s = rx.sub("", s)
    return s.lower()


def exact_match(prediction: str, target: str) -> bool:
    """Whether the prediction equals the target after `normalize` (both sides).

    >>> exact_match("$18.", "18"), exact_match("18.0", "18")
    (True, False)
    """
    return normalize(prediction) == normalize(target)


def target_of(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after the last "####", stripped.

    >>> target_of("Janet sells 9 eggs.\\n#### 18")
    '18'
    """
    return answer.split("####")[-1].strip()


def extract(completion: str, style: str) -> dict:
    """Steps 0-2 of the module docstring on one completion: both extractions."""
    text = cut_at_stop(completion, STYLES[style].stop)
    return {"extracted_strict": extract_strict(text, style), "extracted_flexible": extract_flexible(text)}


def score_completion(completion: str, target: str, style: str) -> dict:
    """Per-sample scores of one completion against the target (what `mtp-bench score` writes)."""
    ex = extract(completion, style)
    return {**ex, "target": target,
            "exact_match_strict": exact_match(ex["extracted_strict"], target),
            "exact_match_flexible": exact_match(ex["extracted_flexible"], target)}


def majority(answers: list[str]) -> str:
    """The most common normalised answer; ties go to the one seen first; "[invalid]" never wins
    over a real answer.

    >>> majority(["5", "$5", "7", "7"])
    '5'
    """
    norm = [normalize(a) for a in answers if a != INVALID]
    if not norm:
        return INVALID
    counts = Counter(norm)
    best = max(counts.values())
    return next(a for a in norm if counts[a] == best)


# -----------------------------------------------------------------------------
# data and prompts


def _env_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, rec in read_lines(path, "GSM8K file"):
        if not isinstance(rec, dict) or not isinstance(rec.get("question"), str) \
                or not isinstance(rec.get("answer"), str):
            raise DataError(f"{path}:{lineno}: expected an object with string 'question' and 'answer'")
        rows.append({"question": rec["question"], "answer": rec["answer"]})
    return rows


def load_split(data_dir: Path | str | list | None = None, split: str = "test") -> list[dict]:
    """The split's problems in file order: [{question, answer}]. Local file first, then the hub."""
    if split not in FILES:
        raise ConfigError(f"unknown gsm8k split {split!r}; valid: {', '.join(FILES)}")
    dirs = data_dirs(data_dir)
    looked = [p for d in dirs for p in (d / "gsm8k" / FILES[split], d / FILES[split])]
    path = next((p for p in looked if p.is_file()), None)
    if path is not None:
        return _read_jsonl(path)
    where = "looked in " + ", ".join(map(str, looked)) if looked else "no local directory was given"
    hint = (f"Provide gsm8k/{FILES[split]} with --data-dir DIR or MTP_BENCH_DATA=DIR, or go online")
    if _env_offline():
        raise DataError(f"GSM8K ({split}) not found: {where}; the hub was not tried "
                        f"(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE). {hint}")
    datasets = import_datasets(f"GSM8K ({split})", f"gsm8k/{FILES[split]}")
    try:
        ds = datasets.load_dataset(HUB_ID, HUB_CONFIG, split=split)
    except Exception as e:  # datasets raises many types when offline or the id is unreachable
        raise DataError(f"GSM8K ({split}) not found: {where}; the hub ({HUB_ID}) failed: "
                        f"{type(e).__name__}: {' '.join(str(e).split())[:200]}. {hint}") from e
    return [{"question": r["question"], "answer": r["answer"]} for r in ds]


def exemplars(kind: str, data_dir=None, fewshot_seed: int = 1234) -> list[tuple[str, str]]:
    """(question, answer) pairs of the protocol's few-shot prompt."""
    if kind == "cot8":
        return list(COT_EXEMPLARS)
    train = load_split(data_dir, "train")
    idx = random.Random(fewshot_seed).sample(range(len(train)), 5)
    return [(train[i]["question"], train[i]["answer"]) for i in idx]


def build_prompt(question: str, shots: list[tuple[str, str]], style: str) -> str:
    """Exemplars "{prefix}{q}{answer prefix} {a}" joined by a blank line, then the open question."""
    st = STYLES[style]
    parts = [f"{st.question_prefix}{q}{st.answer_prefix} {a}" for q, a in shots]
    parts.append(f"{st.question_prefix}{question}{st.answer_prefix}")
    return FEWSHOT_DELIMITER.join(parts)


# -----------------------------------------------------------------------------
# the evaluator


@register
class GSM8K(Evaluator):
    name = "gsm8k"
    version = "1.0"
    suites = ("nl",)
    description = "GSM8K exact match (1319 test problems; 8-shot chain of thought, lm-eval extraction)"
    caption = ("exact_match: share of problems whose final number equals the reference after lm-eval's "
               "normalisation; strict = the answer in the protocol's format, flexible = the last number in the "
               "output; a model that never learnt word problems (such as the shipped code models) scores 0")

    @dataclass
    class Config:
        protocol: str = "cot8"  # cot8 | fewshot5 | paper (module docstring)
        data_dir: str | None = None  # overrides --data-dir / $MTP_BENCH_DATA for this evaluator
        fewshot_seed: int = 1234  # fewshot5: which train problems are the exemplars
        limit: int | None = None  # only the first N problems (the zero-config run's subset)
        n: int | None = None  # samples per problem and temperature; None = the protocol's
        temperatures: tuple[float, ...] | None = None  # None = the protocol's; else one run each
        k: tuple[int, ...] | None = None  # pass@k to report; None = the protocol's; k > n is skipped
        top_p: float = 0.95  # nucleus sampling when sampling; unused when greedy
        max_new_tokens: int = 256  # the exemplars' reasoning is under 80 tokens
        batch_size: int = 8  # generation batch; never changes an output

        def __post_init__(self):
            if self.protocol not in PROTOCOLS:
                raise ConfigError(f"gsm8k config: unknown protocol {self.protocol!r}; valid: {', '.join(PROTOCOLS)}")
            self.temperatures = as_tuple(self.temperatures, float, "temperatures")
            self.k = as_tuple(self.k, int, "k")
            if not 0.0 < self.top_p <= 1.0:
                raise ConfigError(f"gsm8k config: top_p must be in (0, 1], got {self.top_p}")
            if self.max_new_tokens < 1 or self.batch_size < 1 or (self.n is not None and self.n < 1) \
                    or (self.limit is not None and self.limit < 1):
                raise ConfigError("gsm8k config: max_new_tokens, batch_size, n and limit must be >= 1")
            try:
                sampling_runs(PROTOCOLS[self.protocol][2], self.n, self.temperatures, self.k)
            except ConfigError as e:
                raise ConfigError(f"gsm8k config: {e}") from None

    @property
    def style(self) -> str:
        return PROTOCOLS[self.config.protocol][0]

    # -- the scoring interface `mtp-bench score` uses ---------------------------------------

    def load_docs(self, data_dir=None) -> list[dict]:
        """The test split, doc_id = index: [{doc_id, question, answer, target}]."""
        rows = load_split([d for d in (self.config.data_dir, data_dir) if d], "test")
        return [{"doc_id": i, **r, "target": target_of(r["answer"])} for i, r in enumerate(rows)]

    def score_completion(self, doc: dict, completion: str) -> dict:
        return score_completion(completion, doc["target"], self.style)

    def aggregate(self, scored: list[dict]) -> tuple[dict[str, Metric], dict]:
        """Metrics from scored samples (each with doc_id, temperature, exact_match_*, extracted_*)."""
        by_temp: dict[float, dict[int, list[dict]]] = {}
        for r in scored:
            by_temp.setdefault(float(r.get("temperature", 0.0)), {}).setdefault(r["doc_id"], []).append(r)
        temps = list(by_temp)
        first = by_temp[temps[0]]
        metrics: dict[str, Metric] = {}
        info: dict = {"num_problems": len(first), "temperatures": temps}
        for kind in ("strict", "flexible"):
            metrics[f"exact_match_{kind}"] = mean_metric(
                [sum(s[f"exact_match_{kind}"] for s in v) / len(v) for v in first.values()], higher_is_better=True)
        n = min(len(v) for per_doc in by_temp.values() for v in per_doc.values())
        if n > 1:
            for kind in ("strict", "flexible"):
                best, best_t = None, None
                for t, per_doc in by_temp.items():
                    votes = [float(exact_match(majority([s[f"extracted_{kind}"] for s in v]), v[0]["target"]))
                             for v in per_doc.values()]
                    m = mean_metric(votes, higher_is_better=True)
                    if best is None or m.value > best.value:
                        best, best_t = m, t
                metrics[f"maj@{n}_{kind}"] = best
                info.setdefault("maj_best_temperature", {})[kind] = best_t
        ks = self._ks(n)
        if n > 1 or ks != [1]:
            runs = [SamplingRun(t, n, tuple(k for k in ks if k <= n)) for t in temps]
            for kind in ("strict", "flexible"):
                passed = {t: {d: [bool(s[f"exact_match_{kind}"]) for s in v] for d, v in per_doc.items()}
                          for t, per_doc in by_temp.items()}
                m, extra = score([r for r in runs if r.ks], passed)
                metrics.update({f"{name}_{kind}": v for name, v in m.items()})
                info.setdefault("pass_best_temperature", {})[kind] = extra["best_temperature"]
        return metrics, info

    def _ks(self, n: int) -> list[int]:
        """The k of pass@k to report for n samples per problem: config k, else the protocol's."""
        ks = self.config.k or {k for r in SAMPLING[PROTOCOLS[self.config.protocol][2]] for k in r.ks}
        return sorted({k for k in ks if k <= n}) or [1]

    # -- the run ----------------------------------------------------------------------------

    def run(self, model, ctx: RunContext) -> EvalOutput:
        cfg = self.config
        style, shot_kind, passk_protocol = PROTOCOLS[cfg.protocol]
        # 1) problems and exemplars
        all_docs = self.load_docs(ctx.data_dir)
        limits = [x for x in (cfg.limit, ctx.limit) if x is not None]
        docs = all_docs[: min(limits)] if limits else all_docs
        if not docs:
            raise ConfigError(f"{self.name}: no problems to run")
        shots = exemplars(shot_kind, [d for d in (cfg.data_dir, ctx.data_dir) if d], cfg.fewshot_seed)
        prompts = {d["doc_id"]: build_prompt(d["question"], shots, style) for d in docs}
        # 2) generate every sampling run (cached, resumable); the engine cuts long prompts from the left
        runs, skipped = sampling_runs(passk_protocol, cfg.n, cfg.temperatures, cfg.k)
        max_new = min(cfg.max_new_tokens, max(1, int(model.max_seq_len) // 2))
        records, truncated = [], 0
        for r in runs:
            requests = [GenRequest(str(d["doc_id"]), i, prompts[d["doc_id"]]) for d in docs for i in range(r.n)]
            gen_config = GenerationConfig(max_new_tokens=max_new, temperature=r.temperature,
                                          top_p=cfg.top_p if r.temperature > 0 else 1.0,
                                          stop=STYLES[style].stop, batch_size=cfg.batch_size)
            generations = ctx.generate(model, requests, gen_config, self)
            truncated += sum(1 for g in generations if getattr(g, "prompt_truncated", 0))
            by_id = {d["doc_id"]: d for d in docs}
            for req, g in zip(requests, generations):
                doc = by_id[int(req.sample_id)]
                # 3) extract and score each sample
                records.append({"sample_id": req.sample_id, "doc_id": doc["doc_id"], "sample_index": req.sample_index,
                                "temperature": r.temperature, "question": doc["question"],
                                "completion": cut_at_stop(g.text, STYLES[style].stop),
                                "finish_reason": g.finish_reason, **self.score_completion(doc, g.text)})
        # 4) aggregate
        metrics, info = self.aggregate(records)
        info.update({"protocol": cfg.protocol, "max_new_tokens": max_new, "prompts_truncated": truncated,
                     "k_skipped_above_n": skipped, "num_shots": len(shots),
                     "limit": min(limits) if limits else None,
                     "num_test_problems": len(all_docs)})
        return EvalOutput(records=records, metrics=metrics, info=info)
