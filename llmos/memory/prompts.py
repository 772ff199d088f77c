"""Prompt templates as files in /etc/prompts, loaded as LangChain PromptTemplates.

Defaults ship here and are written once (a user's edit is never overwritten). Rendering
with a variable missing is one clear error that names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmos.errors import UserError

if TYPE_CHECKING:
    from langchain_core.prompts import PromptTemplate

    from llmos.memory.fs import MemoryFS

PROMPT_DIR = "/etc/prompts"

# (No `react` template: the ReAct agent's prompt is a JSON-action format built with its
# grammar in llmos/agents/react.py; a template here that it never read only misled.)
DEFAULTS: dict[str, str] = {
    "system": "You are {name}, an agent running on llmos. Be brief and accurate.\n",
    "rag": (
        "Use the context below to answer the question. If the context does not contain "
        "the answer, say you don't know.\n\nContext:\n{context}\n\n"
        "Question: {question}\nAnswer:"
    ),
    "summarize": (
        "Summarize the conversation below in a few sentences, keeping names, facts and "
        "decisions.\n\n{text}\n\nSummary:"
    ),
    "writing": "Write {kind} about {topic}. Style: {style}.\n",
    "dialogue": (
        "{persona}\n\nWhat you know about the user:\n{human}\n\n"
        "Conversation so far:\n{history}\n\nUser: {input}\nAssistant:"
    ),
}


class MissingVariable(UserError):
    pass


def install_defaults(fs: MemoryFS) -> list[str]:
    """Write the shipped templates that are absent; returns the paths written."""
    written = []
    for name, text in DEFAULTS.items():
        path = f"{PROMPT_DIR}/{name}.txt"
        if not fs.exists(path):
            fs.write(path, text)
            written.append(path)
    return written


def load(fs: MemoryFS, name: str, user: str = "root") -> PromptTemplate:
    from langchain_core.prompts import PromptTemplate

    path = f"{PROMPT_DIR}/{name}.txt"
    if not fs.exists(path) and name in DEFAULTS:
        install_defaults(fs)
    return PromptTemplate.from_template(fs.read(path, user))


def render(template: PromptTemplate, **values: Any) -> str:
    missing = [v for v in template.input_variables if v not in values]
    if missing:
        raise MissingVariable(
            f"prompt template needs variable(s) {', '.join(repr(m) for m in missing)}; "
            f"given: {', '.join(sorted(values)) or 'none'}"
        )
    return template.format(**values)
