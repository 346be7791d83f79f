"""Prompt modes of the code evaluators: `completion` (the raw prompt, for base models) or `chat` (the
problem in the tokenizer's chat template), and the instructions the chat mode sends.

    completion  the problem's prompt as the model's text to continue: the paper's protocol for
                base models (HumanEval's signature + docstring, MBPP's 3-shot [BEGIN]/[DONE])
    chat        one user turn rendered with the tokenizer's own chat template (with its generation
                prompt, i.e. the assistant turn opened), holding a short instruction and the
                problem; the code is then taken out of the answer (`mtp_bench.scoring.code_extract`)
    auto        chat when the tokenizer has a chat template, completion otherwise (the default)

The instructions (version 1 of each; changing one changes the evaluators' versions):

    FUNCTION_INSTRUCTION (HumanEval, HumanEval+): "Complete the following Python function. Reply
        with the complete function, including its signature, in one ```python code block.\\n\\n
        ```python\\n{prompt}```\\n"
    TASK_INSTRUCTION (MBPP, MBPP+): "Write a Python function for the task below. It must pass the
        tests shown. Reply with the code in one ```python code block.\\n\\nTask: {text}\\n\\n
        Tests:\\n```python\\n{tests}\\n```\\n"

Only models whose tokenizer is a transformers tokenizer can have a chat template (Hugging Face
directories); mtp-bench's native and Meta's checkpoints have none, so `auto` keeps them in
completion mode. The template's sha256 goes into every result (`info.chat_template_sha256`).
"""

from __future__ import annotations

import hashlib

from mtp_bench.api.errors import ConfigError

PROMPT_MODES = ("completion", "chat", "auto")
FUNCTION_INSTRUCTION = ("Complete the following Python function. Reply with the complete function, including its "
                        "signature, in one ```python code block.\n\n```python\n{prompt}```\n")
TASK_INSTRUCTION = ("Write a Python function for the task below. It must pass the tests shown. Reply with the code "
                    "in one ```python code block.\n\nTask: {text}\n\nTests:\n```python\n{tests}\n```\n")


def validate_prompt_mode(mode: str) -> None:
    if mode not in PROMPT_MODES:
        raise ConfigError(f"unknown prompt_mode {mode!r}; valid: {', '.join(PROMPT_MODES)}")


def chat_template(model) -> str | None:
    """The model's chat template (a Jinja string), or None when its tokenizer has none."""
    inner = getattr(model.tokenizer, "tok", None)  # adapters.HFTokenizer wraps the transformers tokenizer
    template = getattr(inner, "chat_template", None)
    if isinstance(template, dict):  # several named templates: transformers uses "default"
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def template_sha256(template: str | None) -> str | None:
    return None if template is None else hashlib.sha256(template.encode()).hexdigest()


def resolve_prompt_mode(requested: str, model, owner: str) -> tuple[str, str | None]:
    """(mode, chat template or None) for this model: `auto` picks chat exactly when there is a template."""
    validate_prompt_mode(requested)
    template = chat_template(model)
    if requested == "chat" and template is None:
        raise ConfigError(f"{owner}: prompt_mode=chat but {model.path}'s tokenizer has no chat template; "
                          "use prompt_mode=completion (or auto)")
    mode = ("chat" if template is not None else "completion") if requested == "auto" else requested
    return mode, (template if mode == "chat" else None)


def render_chat(model, user_text: str) -> str:
    """One user turn in the model's chat template, with the assistant turn opened, as text.

    A template that writes the BOS token itself loses it here when the generation engine adds BOS
    anyway (`generation.uses_bos`), so the prompt never starts with two.
    """
    tok = model.tokenizer.tok
    text = tok.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                   add_generation_prompt=True)
    bos = getattr(tok, "bos_token", None)
    from mtp_bench.generation.engine import uses_bos  # torch: only when a model renders a prompt

    if bos and text.startswith(bos) and uses_bos(model):
        text = text[len(bos):]
    return text


def version(base: str, mode: str) -> str:
    """The evaluator version of a run: `base` in completion mode, `base + "-chat"` in chat mode, so a
    report never compares a chat-mode result with a completion-mode one.

    >>> version("1.1", "completion"), version("1.1", "chat")
    ('1.1', '1.1-chat')
    """
    return base if mode == "completion" else f"{base}-{mode}"


def set_run_version(evaluator, base: str, mode: str) -> str:
    """The version for this run of `evaluator` (see `version`); one evaluator serves the candidate and
    the baseline of a run, and a result holds one version per evaluator, so when `auto` resolves to
    different modes for the two models that is a ConfigError naming the fix."""
    v = version(base, mode)
    seen = getattr(evaluator, "_mode_versions", None)
    if seen is not None and seen != v:
        raise ConfigError(f"{evaluator.name}: the models of this run resolve to different prompt modes "
                          f"(versions {seen} and {v}), which a report cannot compare; set "
                          f"{evaluator.name}.prompt_mode=completion (or chat) for both")
    evaluator._mode_versions = v
    return v
