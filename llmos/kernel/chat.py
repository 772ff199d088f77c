"""Chat formatting from the model's own chat template (jinja, sandboxed)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from llmos.errors import ChatTemplateError

Message = dict[str, Any]

# Formats for models whose GGUF has no chat template (base models), by name.
BUILTIN_FORMATS: dict[str, str] = {
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}{% for m in messages %}<start_of_turn>"
        "{{ 'model' if m['role'] == 'assistant' else 'user' }}\n{{ m['content'] }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    "plain": (
        "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    ),
}


# Families whose chat format is well known, by GGUF `general.architecture`: used when a GGUF
# carries no template (base models, files converted without one), so a client that picks
# such a model still gets a conversation rather than a 400.
FAMILY_FORMATS: dict[str, str] = {
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma",
    "qwen": "chatml", "qwen2": "chatml", "qwen2moe": "chatml", "qwen3": "chatml",
    "qwen3moe": "chatml",
}  # fmt: skip


@dataclass(frozen=True)
class ChatFormat:
    """How a model's conversations become text, and where that rule came from: the request,
    the `chat_formats` setting, the GGUF's own template, or the model's family."""

    source: Literal["request", "config", "gguf", "family", "none"]
    spec: str | None = None  # a format name, file or jinja text; None for gguf and none

    @property
    def can_chat(self) -> bool:
        return self.source != "none"

    def describe(self) -> str:
        if self.source == "gguf":
            return "the GGUF's chat template"
        if self.source == "none":
            return "none (no chat template; use llm.complete or set chat_formats)"
        spec = self.spec if self.spec in BUILTIN_FORMATS else "custom"
        where = {"request": "given in the request", "config": "from chat_formats",
                 "family": "the model family's format"}[self.source]  # fmt: skip
        return f"{spec} ({where})"


def choose_format(
    *,
    requested: str | None = None,
    configured: str | None = None,
    has_template: bool,
    architecture: str | None,
) -> ChatFormat:
    """The chat format a model uses: what the caller asked, else the config, else the GGUF's
    template, else its family's well-known format."""
    if requested:
        return ChatFormat("request", requested)
    if configured:
        return ChatFormat("config", configured)
    if has_template:
        return ChatFormat("gguf")
    family = FAMILY_FORMATS.get(architecture or "")
    return ChatFormat("family", family) if family else ChatFormat("none")


def resolve_format(spec: str) -> str:
    """A chat format given by name (`chatml`, `gemma`, `plain`), file path, or jinja text."""
    if spec in BUILTIN_FORMATS:
        return BUILTIN_FORMATS[spec]
    if "{" in spec:
        return spec
    from pathlib import Path

    p = Path(spec).expanduser()
    if p.is_file():
        return p.read_text()
    names = ", ".join(BUILTIN_FORMATS)
    raise ChatTemplateError(
        f"unknown chat format {spec!r}: use one of {names}, a file, or jinja text"
    )


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ChatTemplateError(f"chat template refused the messages: {message}")

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc


def render_chat(
    messages: list[Message],
    template: str | None,
    *,
    special: dict[str, str] | None = None,
    add_generation_prompt: bool = True,
    model: str = "model",
) -> str:
    """Render messages with a chat template; a clear error when there is none."""
    if not template:
        raise ChatTemplateError(
            f"model {model!r} has no chat template; give a chat format (chat_format="
            f"{'|'.join(BUILTIN_FORMATS)}, or set chat_formats in the config), or use "
            "llm.complete with a raw prompt"
        )
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ChatTemplateError(f"each message needs 'role' and 'content': {m!r}")
    tmpl = _compile(template)
    try:
        return str(
            tmpl.render(
                messages=messages, add_generation_prompt=add_generation_prompt, **(special or {})
            )
        )
    except ChatTemplateError:
        raise
    except Exception as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
