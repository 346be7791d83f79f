"""Abstractive summarization scored with ROUGE (rouge-score, Porter stemmer), as in Gloeckle et al.
2024 Section 3.7 and App. H.

Datasets (config field `dataset`), each read from a local JSONL file first, laid out as the shared
data folder lays them out, under the `data_dir` given (the config field, else `--data-dir` /
$MTP_BENCH_DATA), else from the hub through `datasets` unless offline; nothing found -> DataError
(a suite run skips the evaluator and says why):

    xsum           summarization/xsum/XSum-test-1000.jsonl (id, document, summary) | EdinburghNLP/xsum, test
    scitldr        summarization/scitldr/SciTLDR-A_test.jsonl (paper_id, source = list of sentences,
                   target = several references) | allenai/scitldr, config Abstract, test
    cnn_dailymail  summarization/cnn_dailymail/test.jsonl (id, article, highlights) |
                   abisee/cnn_dailymail, config 3.0.0, test

`doc_id` is the 0-based index in the split's file order; records also keep the dataset's own id.
SciTLDR's source sentences are joined with single spaces.

Prompt templates (config field `template`; version 1.0):

    zeroshot  for base models: "{article}\\n\\nTL;DR:"
    kshot     HELM's layout; each of `num_shots` examples is
                  "###\\nArticle: {article}\\n\\nSummarize the above article in {N} sentence{s}.\\n{summary}\\n"
              followed by the document as "###\\nArticle: {article}\\n\\nSummarize the above article in
              {N} sentence{s}.\\n"; N = 1 for XSum and SciTLDR, 3 for CNN/DM. The examples are the last
              `num_shots` documents of the split (download-free), which are then not scored.
    chat      the tokenizer's own chat template (Hugging Face `apply_chat_template`, generation prompt
              added) around one user turn "Summarize the following article in {N} sentence{s}.\\n\\n{article}"
    auto      (default) chat when the model's tokenizer has a chat template, else zeroshot

An article is cut from its end, at token level, so that the whole prompt leaves room for
`max_new_tokens` in the model's context (`fit_prompt`); truncations are counted in `info`.

Generation: greedy by default (`temperature` > 0 samples with per-sample seeds, as everywhere);
stop at a blank line ("\\n\\n"), and for kshot at "###". Cleaning (`clean_summary`): cut at the
stop strings, strip, keep the first paragraph (up to a blank or whitespace-only line).

Metrics (`rouge_scores`): rouge-score's RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"],
use_stemmer=True). ROUGE-Lsum needs sentences: both summary and reference are split by
`split_sentences`, a download-free rule (nltk's punkt data is not available offline): existing
newlines split; within a line, a split after ".", "!" or "?" (optionally followed by a closing
quote or bracket) when whitespace and then an upper-case letter, a digit or an opening quote
follow. It splits after abbreviations such as "Mr." too; rouge1/2/L do not depend on it (their
tokenizer treats newlines as spaces). Several references (SciTLDR): `multi_reference="max"`
(default) takes, per metric, the reference with the best F1 (rouge-score's `score_multi`, HF
`evaluate`); "best_rouge1" scores every metric against the one reference with the best ROUGE-1 F1
(SciTLDR's own script). Each metric is the mean of per-document F1 with its standard error and
normal 95% interval (never rouge-score's BootstrapAggregator, which draws from numpy's global
unseeded RNG). Also `summary_words` (mean words per summary; descriptive, no better direction)
and `empty_fraction` (an empty summary scores 0 on every metric). Precision and recall are in
the records. `rouge_backend="auto"` (default) scores with rouge-score-rs, an independent Rust port
of rouge-score, when it is installed, else with rouge-score itself: tests check that both give
bit-identical per-document precision, recall and F1 on the shared XSum and SciTLDR data (`bench
rouge`: 1000/1000 XSum pairs identical, about 30x faster); `info.rouge_backend` says which ran.
Changing a template, the splitter, the cleaning or the scoring rule changes `version`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mtp_bench.api import EvalOutput, Evaluator, GenRequest, Metric, RunContext, register
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.api.hub import import_datasets
from mtp_bench.api.jsonl import json_error
from mtp_bench.api.paths import data_dirs
from mtp_bench.generation.engine import GenerationConfig, uses_bos
from mtp_bench.scoring.metrics import mean_metric

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclass(frozen=True)
class DatasetSpec:
    local: str  # path under the data dir
    hub: tuple[str, str | None]  # (hub id, config)
    sentences: int  # N in "Summarize the above article in N sentences." (HELM)
    max_new_tokens: int  # default generation budget (HELM: 64 for XSum, 128 for CNN/DM)


DATASETS = {
    "xsum": DatasetSpec("summarization/xsum/XSum-test-1000.jsonl", ("EdinburghNLP/xsum", None), 1, 64),
    "scitldr": DatasetSpec("summarization/scitldr/SciTLDR-A_test.jsonl", ("allenai/scitldr", "Abstract"), 1, 64),
    "cnn_dailymail": DatasetSpec("summarization/cnn_dailymail/test.jsonl", ("abisee/cnn_dailymail", "3.0.0"), 3, 128),
}
TEMPLATES = ("auto", "zeroshot", "kshot", "chat")
BLANK_LINE = "\n\n"
KSHOT_SEPARATOR = "###"


# -----------------------------------------------------------------------------
# ROUGE (pure functions)


_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` by the module docstring's rule; empty pieces dropped.

    >>> split_sentences("Mr Smith left. He said: \\"Bye!\\" Then 3 cats came.\\nNew line")
    ['Mr Smith left.', 'He said: "Bye!"', 'Then 3 cats came.', 'New line']
    >>> split_sentences("3.5 million people. e.g. this")
    ['3.5 million people. e.g. this']
    """
    out = []
    for line in text.split("\n"):
        pos = 0
        for m in _SENT_END.finditer(line):
            out.append(line[pos:m.start() + len(m.group(0).rstrip())])  # keep closing quotes/brackets
            pos = m.end()
        out.append(line[pos:])
    return [s.strip() for s in out if s.strip()]


def for_rougelsum(text: str) -> str:
    """The text as rouge-score's ROUGE-Lsum expects it: one sentence a line."""
    return "\n".join(split_sentences(text))


_SCORERS: dict[str, object] = {}


def resolve_backend(backend: str) -> str:
    """"auto" -> "rouge-score-rs" when it is installed, else "rouge-score"."""
    if backend == "auto":
        import importlib.util

        return "rouge-score-rs" if importlib.util.find_spec("rouge_score_rs") is not None else "rouge-score"
    return backend


def scorer(backend: str = "auto"):
    """A cached RougeScorer of the four types with the Porter stemmer, from rouge-score or its
    Rust port rouge-score-rs (same constructor and Score objects)."""
    backend = resolve_backend(backend)
    if backend not in _SCORERS:
        if backend == "rouge-score":
            from rouge_score.rouge_scorer import RougeScorer
        elif backend == "rouge-score-rs":
            try:
                from rouge_score_rs import RougeScorer
            except ImportError:
                raise ConfigError("rouge_backend='rouge-score-rs' needs `pip install rouge-score-rs`") from None
        else:
            raise ConfigError(f"unknown rouge_backend {backend!r}; valid: rouge-score, rouge-score-rs")
        _SCORERS[backend] = RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return _SCORERS[backend]


def rouge_scores(prediction: str, references: list[str], multi_reference: str = "max",
                 backend: str = "auto") -> dict[str, dict[str, float]]:
    """{rouge type: {"precision", "recall", "fmeasure"}} of one summary against its references.

    multi_reference "max": per type, the reference with the highest F1 (first on ties), as
    rouge-score's score_multi; "best_rouge1": every type against the reference with the highest
    ROUGE-1 F1. An empty prediction scores 0.

    >>> s = rouge_scores("the cat sat on the mat", ["a cat sat on a mat"])
    >>> round(s["rouge1"]["fmeasure"], 4), round(s["rouge2"]["fmeasure"], 4)
    (0.6667, 0.4)
    """
    if not references:
        raise ValueError("rouge_scores needs at least one reference")
    if multi_reference not in ("max", "best_rouge1"):
        raise ConfigError(f"unknown multi_reference {multi_reference!r}; valid: max, best_rouge1")
    sc = scorer(backend)
    pred = for_rougelsum(prediction)
    per_ref = [sc.score(for_rougelsum(ref), pred) for ref in references]  # score(target, prediction)
    out = {}
    if multi_reference == "best_rouge1":
        best = max(range(len(per_ref)), key=lambda i: (per_ref[i]["rouge1"].fmeasure, -i))
    for t in ROUGE_TYPES:
        i = best if multi_reference == "best_rouge1" else \
            max(range(len(per_ref)), key=lambda j: (per_ref[j][t].fmeasure, -j))
        s = per_ref[i][t]
        out[t] = {"precision": float(s.precision), "recall": float(s.recall), "fmeasure": float(s.fmeasure)}
    return out


_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")  # a blank line, or one holding only spaces


def clean_summary(text: str, stop: tuple[str, ...] = (BLANK_LINE,)) -> str:
    """Cut at the first stop string, strip, keep the first paragraph (up to a blank or
    whitespace-only line).

    >>> clean_summary("  The cat sat.\\n\\nNext article: ...")
    'The cat sat.'
    """
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    text = text[: min(hits)] if hits else text
    return _PARAGRAPH_BREAK.split(text.strip(), maxsplit=1)[0].strip()


def word_count(text: str) -> int:
    return len(text.split())


# -----------------------------------------------------------------------------
# data


def _env_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _normalise(row: dict, dataset: str) -> dict:
    if dataset == "xsum":
        return {"id": str(row["id"]), "article": row["document"], "references": [row["summary"]]}
    if dataset == "scitldr":
        source = row["source"]
        article = " ".join(s.strip() for s in source) if isinstance(source, list) else str(source)
        return {"id": str(row["paper_id"]), "article": article, "references": [str(t) for t in row["target"]]}
    return {"id": str(row["id"]), "article": row["article"], "references": [row["highlights"]]}


def load_split(dataset: str, data_dir: Path | str | list | None = None) -> tuple[list[dict], str]:
    """The test split as [{doc_id, id, article, references}] in file order, and where it came from."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown summarization dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    dirs = data_dirs(data_dir)
    looked = [d / spec.local for d in dirs]
    path = next((p for p in looked if p.is_file()), None)
    rows: list[dict]
    if path is not None:
        rows, source = [], str(path)
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({json_error(e)})") from None
    else:
        where = "looked in " + ", ".join(map(str, looked)) if looked else "no local directory was given"
        hint = f"Provide {spec.local} under --data-dir DIR or MTP_BENCH_DATA=DIR, or go online"
        if _env_offline():
            raise DataError(f"{dataset} not found: {where}; the hub was not tried "
                            f"(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE). {hint}")
        datasets = import_datasets(dataset, spec.local)
        hub_id, hub_config = spec.hub
        try:
            rows, source = list(datasets.load_dataset(hub_id, hub_config, split="test")), f"hub:{hub_id}"
        except Exception as e:  # datasets raises many types when offline or the id is unreachable
            raise DataError(f"{dataset} not found: {where}; the hub ({hub_id}) failed: "
                            f"{type(e).__name__}: {' '.join(str(e).split())[:200]}. {hint}") from e
    docs = []
    for i, row in enumerate(rows):
        try:
            doc = _normalise(row, dataset)
        except (KeyError, TypeError) as e:
            raise DataError(f"{source}: record {i} lacks a {dataset} field ({e})") from None
        if not isinstance(doc["article"], str) or not doc["references"] \
                or not all(isinstance(r, str) for r in doc["references"]):
            raise DataError(f"{source}: record {i}: article and references must be strings")
        docs.append({"doc_id": i, **doc})
    if not docs:
        raise DataError(f"{source}: no documents")
    return docs, source


# -----------------------------------------------------------------------------
# prompts


def _sentences_phrase(n: int) -> str:
    return f"{n} sentence" if n == 1 else f"{n} sentences"


def render_zeroshot(article: str) -> str:
    return f"{article}{BLANK_LINE}TL;DR:"


def render_kshot(article: str, shots: list[dict], n_sentences: int) -> str:
    ask = f"Summarize the above article in {_sentences_phrase(n_sentences)}.\n"
    head = "".join(f"{KSHOT_SEPARATOR}\nArticle: {s['article']}{BLANK_LINE}{ask}{s['references'][0]}\n" for s in shots)
    return f"{head}{KSHOT_SEPARATOR}\nArticle: {article}{BLANK_LINE}{ask}"


def render_chat(article: str, hf_tokenizer, n_sentences: int) -> str:
    content = f"Summarize the following article in {_sentences_phrase(n_sentences)}.{BLANK_LINE}{article}"
    return hf_tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                            add_generation_prompt=True)


def chat_tokenizer(model):
    """The transformers tokenizer behind an HF model when it has a chat template, else None."""
    inner = getattr(model.tokenizer, "tok", None)
    return inner if inner is not None and getattr(inner, "chat_template", None) else None


def fit_prompt(encode, decode, render, article: str, budget: int) -> tuple[str, int]:
    """The prompt render(article') where article' is the longest token prefix of the article that
    keeps the whole prompt within `budget` tokens; returns (prompt, article tokens dropped).
    Raises ConfigError when even an empty article does not fit."""
    prompt = render(article)
    if len(encode(prompt)) <= budget:
        return prompt, 0
    ids = encode(article)
    lo, hi = 0, len(ids)  # the number of article tokens kept
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode(render(decode(ids[:mid]).rstrip()))) <= budget:
            lo = mid
        else:
            hi = mid - 1
    prompt = render(decode(ids[:lo]).rstrip())
    if len(encode(prompt)) > budget:
        raise ConfigError(f"the prompt template alone needs more than {budget} tokens (context minus "
                          "max_new_tokens); use fewer shots, a shorter max_new_tokens or the zeroshot template")
    return prompt, len(ids) - lo


# -----------------------------------------------------------------------------
# the evaluator


@register
class Summarization(Evaluator):
    name = "summarization"
    version = "1.0"
    suites = ("nl",)
    description = "abstractive summarization ROUGE-1/2/L/Lsum F1 (XSum, SciTLDR, CNN/DM; rouge-score, stemmed)"
    caption = ("rougeN/L/Lsum: mean over documents of the summary's F1 against its reference (0..1, stemmed); "
               "for scale, XSum's first-sentence baseline scores rouge1 0.158 / rougeL 0.117, and a model that "
               "writes no prose scores about 0; summary_words: mean length (descriptive); empty_fraction: "
               "share of empty summaries")

    @dataclass
    class Config:
        dataset: str = "xsum"  # xsum | scitldr | cnn_dailymail
        template: str = "auto"  # auto | zeroshot | kshot | chat (module docstring)
        num_shots: int = 1  # kshot only; every shot costs a whole article of context
        data_dir: str | None = None  # overrides --data-dir / $MTP_BENCH_DATA for this evaluator
        limit: int | None = None  # score only the first N documents (the zero-config run's subset)
        max_new_tokens: int | None = None  # None = the dataset's (64 XSum/SciTLDR, 128 CNN/DM)
        temperature: float = 0.0  # 0 = greedy
        top_p: float = 1.0  # nucleus sampling when temperature > 0
        batch_size: int = 8  # generation batch; never changes an output
        multi_reference: str = "max"  # max (per metric, rouge-score's score_multi) | best_rouge1 (SciTLDR's script)
        rouge_backend: str = "auto"  # auto (rouge-score-rs if installed) | rouge-score | rouge-score-rs: identical scores

        def __post_init__(self):
            checks = [(self.dataset in DATASETS, f"dataset {self.dataset!r} is not one of {', '.join(DATASETS)}"),
                      (self.template in TEMPLATES, f"template {self.template!r} is not one of {', '.join(TEMPLATES)}"),
                      (self.multi_reference in ("max", "best_rouge1"),
                       f"multi_reference {self.multi_reference!r} is not one of max, best_rouge1"),
                      (self.rouge_backend in ("auto", "rouge-score", "rouge-score-rs"),
                       f"rouge_backend {self.rouge_backend!r} is not one of auto, rouge-score, rouge-score-rs"),
                      (self.num_shots >= 1, f"num_shots must be >= 1, got {self.num_shots}"),
                      (self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}"),
                      (self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
                      (self.temperature >= 0.0, f"temperature must be >= 0, got {self.temperature}"),
                      (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
                      (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")]
            for ok, msg in checks:
                if not ok:
                    raise ConfigError(f"summarization config: {msg}")

    # -- the scoring interface `mtp-bench score` uses ---------------------------------------

    def load_docs(self, data_dir=None) -> list[dict]:
        docs, _ = load_split(self.config.dataset, [d for d in (self.config.data_dir, data_dir) if d])
        return docs

    def score_completion(self, doc: dict, completion: str) -> dict:
        summary = clean_summary(completion, self._stops())
        scores = rouge_scores(summary, doc["references"], self.config.multi_reference, self.config.rouge_backend)
        out = {"summary": summary, "summary_words": word_count(summary), "empty": summary == ""}
        for t, s in scores.items():
            out[t] = s["fmeasure"]
            out[f"{t}_precision"], out[f"{t}_recall"] = s["precision"], s["recall"]
        return out

    def aggregate(self, scored: list[dict]) -> tuple[dict[str, Metric], dict]:
        """Means over documents (one score per document: several samples of one document are averaged)."""
        per_doc: dict[int, list[dict]] = {}
        for r in scored:
            per_doc.setdefault(r["doc_id"], []).append(r)

        def doc_means(key: str) -> list[float]:
            return [sum(float(s[key]) for s in v) / len(v) for v in per_doc.values()]

        metrics = {t: mean_metric(doc_means(t), higher_is_better=True) for t in ROUGE_TYPES}
        metrics["summary_words"] = mean_metric(doc_means("summary_words"), higher_is_better=True)
        metrics["empty_fraction"] = mean_metric(doc_means("empty"), higher_is_better=False)
        return metrics, {"num_documents": len(per_doc), "multi_reference": self.config.multi_reference,
                         "rouge_backend": resolve_backend(self.config.rouge_backend)}

    def _stops(self, template: str | None = None) -> tuple[str, ...]:
        return (BLANK_LINE, KSHOT_SEPARATOR) if (template or self.config.template) == "kshot" else (BLANK_LINE,)

    # -- the run ----------------------------------------------------------------------------

    def run(self, model, ctx: RunContext) -> EvalOutput:
        cfg = self.config
        spec = DATASETS[cfg.dataset]
        # 1) documents (and, for kshot, the examples taken from the end of the split)
        template = cfg.template
        chat_tok = chat_tokenizer(model)
        if template == "auto":
            template = "chat" if chat_tok is not None else "zeroshot"
        if template == "chat" and chat_tok is None:
            raise ConfigError("summarization: template='chat' but the model's tokenizer has no chat template")
        docs, source = load_split(cfg.dataset, [d for d in (cfg.data_dir, ctx.data_dir) if d])
        n_total = len(docs)
        shots: list[dict] = []
        if template == "kshot":
            if cfg.num_shots >= len(docs):
                raise ConfigError(f"summarization: num_shots={cfg.num_shots} leaves no document to score")
            shots, docs = docs[-cfg.num_shots:], docs[: -cfg.num_shots]
        limits = [x for x in (cfg.limit, ctx.limit) if x is not None]
        docs = docs[: min(limits)] if limits else docs
        if not docs:
            raise ConfigError(f"{self.name}: no documents to run")
        # 2) prompts, each article cut from its end to leave room for the summary
        max_new = cfg.max_new_tokens or spec.max_new_tokens
        max_new = min(max_new, max(1, int(model.max_seq_len) // 2))
        budget = int(model.max_seq_len) - max_new - (1 if uses_bos(model) else 0)
        tok = model.tokenizer
        if template == "zeroshot":
            render = render_zeroshot
        elif template == "kshot":
            render = lambda a: render_kshot(a, shots, spec.sentences)  # noqa: E731
        else:
            render = lambda a: render_chat(a, chat_tok, spec.sentences)  # noqa: E731
        prompts, dropped = {}, {}
        for d in docs:
            prompts[d["doc_id"]], dropped[d["doc_id"]] = fit_prompt(tok.encode, tok.decode, render, d["article"], budget)
        # 3) generate (cached, resumable)
        requests = [GenRequest(str(d["doc_id"]), 0, prompts[d["doc_id"]]) for d in docs]
        gen_config = GenerationConfig(max_new_tokens=max_new, temperature=cfg.temperature,
                                      top_p=cfg.top_p if cfg.temperature > 0 else 1.0,
                                      stop=self._stops(template), batch_size=cfg.batch_size)
        generations = ctx.generate(model, requests, gen_config, self)
        # 4) clean and score every summary; 5) aggregate
        records = []
        for d, g in zip(docs, generations):
            records.append({"sample_id": str(d["doc_id"]), "doc_id": d["doc_id"], "id": d["id"],
                            "sample_index": 0, "temperature": cfg.temperature, "completion": g.text,
                            "finish_reason": g.finish_reason, "article_tokens_dropped": dropped[d["doc_id"]],
                            "references": d["references"], **self.score_completion(d, g.text)})
        metrics, info = self.aggregate(records)
        info.update({"dataset": cfg.dataset, "source": source, "template": template, "num_shots": len(shots),
                     "shot_ids": [s["id"] for s in shots], "max_new_tokens": max_new,
                     "articles_truncated": sum(1 for v in dropped.values() if v > 0),
                     "num_documents_in_split": n_total, "limit": min(limits) if limits else None,
                     "reference_words": sum(word_count(r) for d in docs for r in d["references"])
                     / sum(len(d["references"]) for d in docs)})
        return EvalOutput(records=records, metrics=metrics, info=info)
