"""The `assistant` agent: one answer per process, with MemGPT-style memory in its home.

Each process answers one user message for an agent (default `assistant`) and leaves the
conversation on disk, so the next process carries on where this one stopped:

- the core memory blocks (`persona`, `human`) are pinned in the system prompt;
- the live turns come back from `/home/<agent>/state.json` (the recall log keeps every turn,
  the state file only those still in the live context);
- both turns of the exchange are appended to the recall log;
- past 75% of the model's per-sequence context, the older turns are folded into the
  summary by the model itself (the `summarize` template in /etc/prompts).

"remember that ..." is handled by a rule, not by the model, so even a 135M model keeps the
fact: it is appended to the `human` block and acknowledged without generating.
"""

from __future__ import annotations

import asyncio
import json
import re
import weakref
from typing import Any

from llmos.agents.programs import one_line_failure, options
from llmos.core.context import Context
from llmos.errors import BadArguments
from llmos.memory import prompts
from llmos.memory.core import Conversation, core_append, core_read
from llmos.memory.fs import MemoryFS
from llmos.memory.syscalls import audited_memory

DEFAULT_AGENT = "assistant"
DEFAULT_PERSONA = (
    "I am the llmos assistant, running on this computer. I answer briefly and accurately."
)
SUMMARY_MAX_TOKENS = 200
ACK = "OK, I will remember that."
_AGENT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# "remember that I ...", "remember: ...", but not "remember when ...?" (a question).
_REMEMBER = re.compile(
    r"^\s*(?:please\s+)?remember(?:\s+that\s+|\s*:\s*)(?P<fact>\S.*?)[\s.!]*$", re.I | re.S
)


def remembered_fact(message: str) -> str | None:
    """The fact a "remember that ..." message states, or None for any other message."""
    m = _REMEMBER.match(message)
    if m is None or message.rstrip().endswith("?"):
        return None
    return m.group("fact").strip()


def system_prompt(core: dict[str, str], summary: str) -> str:
    """The pinned part of every prompt: persona, what is known of the user, the summary."""
    parts = [core.get("persona", "").strip() or DEFAULT_PERSONA]
    if human := core.get("human", "").strip():
        parts.append(f"What you know about the user:\n{human}")
    if summary.strip():
        parts.append(f"Summary of the earlier conversation:\n{summary.strip()}")
    return "\n\n".join(parts)


_turn_locks: weakref.WeakKeyDictionary[Any, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


def agent_turn(kernel: Any, agent: str) -> asyncio.Lock:
    """One exchange at a time per agent and kernel: two processes answering for the same
    agent would each load the live turns and the later save would drop the other's."""
    return _turn_locks.setdefault(kernel, {}).setdefault(agent, asyncio.Lock())


def state_path(agent: str) -> str:
    return f"/home/{agent}/state.json"


def _load_turns(fs: MemoryFS, agent: str) -> list[tuple[str, str]]:
    path = state_path(agent)
    if not fs.exists(path):
        return []
    try:
        data = json.loads(fs.read(path, agent))
        return [(str(r), str(t)) for r, t in data.get("turns", [])]
    except (ValueError, TypeError, AttributeError):  # a hand-edited file: start afresh
        return []


def _save_turns(fs: MemoryFS, agent: str, turns: list[tuple[str, str]]) -> None:
    fs.write(state_path(agent), json.dumps({"turns": [list(t) for t in turns]}), agent)


async def open_conversation(ctx: Context, agent: str) -> Conversation:
    """The agent's conversation: its live turns reloaded, the window and tokenizer of the
    process's model (the per-sequence context, which `seq_ctx_max` caps)."""

    if not _AGENT.fullmatch(agent):
        raise BadArguments(f"bad agent name {agent!r}: use lowercase letters, digits, - and _")
    fs = audited_memory(ctx)  # its memory reads and writes are audit rows of this process
    if not core_read(fs, agent)["persona"].strip():
        core_append(fs, agent, "persona", DEFAULT_PERSONA)  # seeded once; the user may edit it
    engine = await ctx.kernel.engine(ctx.model)

    def count(text: str) -> int:
        return len(engine.tokenize(text, add_special=False))

    conv = Conversation(fs=fs, agent=agent, window=engine.seq_ctx_max, count=count)
    conv.turns = _load_turns(fs, agent)
    return conv


async def assistant_program(
    ctx: Context, message: str, agent: str = DEFAULT_AGENT, opts: dict[str, Any] | None = None
) -> Any:
    """Answer one user message as `agent`, with its memory; streams the answer to stdout.

    `opts` may set max_tokens, temperature and seed of the answer (by default it may use
    what the prompt leaves of the context, up to the engine's default)."""
    async with agent_turn(ctx.kernel, agent):  # a second question waits for this answer
        return await _answer(ctx, message, agent, opts)


async def _answer(ctx: Context, message: str, agent: str, opts: dict[str, Any] | None) -> Any:

    with one_line_failure(ctx):
        conv = await open_conversation(ctx, agent)
        fs = conv.fs
        if (fact := remembered_fact(message)) is not None:
            core_append(fs, agent, "human", f"- {fact}")
            ctx.write(ACK)
            conv.add("user", message)
            conv.add("assistant", ACK)
            _save_turns(fs, agent, conv.turns)
            return {"text": ACK, "remembered": fact}

        template = prompts.load(fs, "summarize", agent)

        async def summarize(text: str) -> str:
            r = await ctx.sys.llm.chat(
                messages=[{"role": "user", "content": prompts.render(template, text=text)}],
                max_tokens=min(SUMMARY_MAX_TOKENS, conv.window // 4), temperature=0.2,
                stream=False,
            )  # fmt: skip
            return str(r.text)

        conv.add("user", message)
        while await conv.compact(summarize):  # each pass folds the older half of the turns
            pass
        # What was folded stays folded even if the answer fails; the question joins the live
        # turns only with its answer.
        _save_turns(fs, agent, conv.turns[:-1])
        system = system_prompt(core_read(fs, agent), conv.summary())
        messages = [{"role": "system", "content": system}]
        messages += [{"role": role, "content": text} for role, text in conv.turns]
        r = await ctx.sys.llm.chat(messages=messages, **options(opts))
    conv.add("assistant", r.text)
    _save_turns(fs, agent, conv.turns)
    return r.model_dump()
