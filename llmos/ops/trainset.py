"""Training data for `llmos models finetune` and `distill`: JSONL read, checked, tokenized.

Each line is one example, in one of two shapes:

- chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`;
  every assistant message is trained on unless it carries `"weight": 0` (OpenAI's
  fine-tuning format), so earlier turns and worked examples can stay context only;
- raw: `{"prompt": "...", "completion": "..."}`: no chat template, the completion is
  trained on and followed by the end-of-sequence token, as `llm.complete` would use it.

The loss covers only the answer tokens. Tokens come from the base model's own tokenizer
and chat template (the kernel's, through `Tokenizer`), so a trained answer is exactly the
token sequence the model will be asked to continue at inference: the prompt of an assistant
turn is the conversation before it rendered with the generation prompt, and the answer is
what rendering the turn itself adds (its content and end-of-turn marker).

Nothing here imports torch: checking a dataset, its token counts and its hash is fast and
happens before a worker starts.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos.errors import UserError

IGNORE = -100  # the label of a token the loss skips (PyTorch's cross-entropy default)


class DatasetError(UserError):
    """A training file that can't be used: its line number and what is wrong."""


@dataclass(frozen=True)
class Tokenizer:
    """What tokenizing needs from the base model: text to tokens, a conversation to
    prompt text, and its end-of-sequence token."""

    tokenize: Callable[[str, bool], list[int]]  # (text, add_special) -> tokens
    chat_text: Callable[
        [list[dict[str, Any]], bool], tuple[str, bool]
    ]  # (messages, gen) -> (text, add_special)
    eos: int


@dataclass
class Example:
    tokens: list[int]
    labels: list[int]  # IGNORE where the loss skips a token

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class Dataset:
    train: list[Example]
    held_out: list[Example]
    sha256: str
    lines: int
    path: str = ""  # the file, absolute
    truncated: int = 0
    too_long: list[int] = field(default_factory=list)  # line numbers over the context

    @property
    def tokens(self) -> int:
        return sum(len(e.tokens) for e in self.train)


def read_jsonl(
    path: Path,
    check: Callable[[Any, str], None] | None = None,
    *,
    what: str = "training file",
    items: str = "examples",
) -> list[tuple[int, dict[str, Any]]]:
    """The file's objects with their line numbers; a bad line is a `DatasetError` naming
    it. `check(obj, "PATH:LINE")` checks each (default: a training example); `what` and
    `items` word the errors ("no such training file", "no examples")."""
    check = check or check_example
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"no such {what}: {path}")
    out: list[tuple[int, dict[str, Any]]] = []
    with path.open(encoding="utf-8", errors="strict") as fh:
        try:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{n}: not JSON: {exc.msg}") from None
                check(obj, f"{path}:{n}")
                out.append((n, obj))
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not UTF-8 text") from None
    if not out:
        raise DatasetError(f"{path}: no {items} (the file is empty)")
    return out


def check_example(obj: Any, where: str) -> None:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: each line must be a JSON object")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DatasetError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise DatasetError(f"{where}: message {i} needs a string 'content'")
            if m.get("role") not in ("system", "user", "assistant"):
                raise DatasetError(f"{where}: message {i} has role {m.get('role')!r}")
            if m.get("weight", 1) not in (0, 1):
                raise DatasetError(f"{where}: message {i}: weight must be 0 or 1")
        if not any(m["role"] == "assistant" and m.get("weight", 1) for m in msgs):
            raise DatasetError(f"{where}: no assistant message to train on")
    elif "prompt" in obj or "completion" in obj:
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str):
                raise DatasetError(f"{where}: '{key}' must be a string")
        if not obj["completion"]:
            raise DatasetError(f"{where}: empty completion")
    else:
        raise DatasetError(f"{where}: need 'messages', or 'prompt' and 'completion'")


def encode(obj: dict[str, Any], tok: Tokenizer) -> Example:
    """One example's tokens and labels (see the module's docstring)."""
    if "messages" not in obj:
        head = tok.tokenize(obj["prompt"], True)
        tail = [*tok.tokenize(obj["completion"], False), tok.eos]
        return Example(head + tail, [IGNORE] * len(head) + tail)
    msgs = [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]
    weights = [m.get("weight", 1) for m in obj["messages"]]
    tokens: list[int] = []
    labels: list[int] = []
    done = ""  # the text already tokenized
    first = True
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or not weights[i]:
            continue
        prompt, add_special = tok.chat_text(msgs[:i], True)
        full, _ = tok.chat_text(msgs[: i + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DatasetError(
                "the chat template renders earlier turns differently once later ones follow; "
                "train on raw prompt/completion pairs instead"
            )
        context = tok.tokenize(prompt[len(done) :], add_special and first)
        answer = tok.tokenize(full[len(prompt) :], False)
        tokens += context + answer
        labels += [IGNORE] * len(context) + answer
        done, first = full, False
    return Example(tokens, labels)


def load_dataset(
    path: Path,
    tok: Tokenizer,
    *,
    n_ctx: int,
    held_out: float = 0.1,
    truncate: bool = False,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Read, check and tokenize a training file, and split off a held-out part.

    An example longer than `n_ctx` tokens is an error that says how many there are, unless
    `truncate` (then its tail is cut; one that keeps no answer token is dropped)."""
    path = Path(path).expanduser()
    rows = read_jsonl(path)
    examples: list[Example] = []
    long: list[int] = []
    cut = 0
    for k, (n, obj) in enumerate(rows):
        ex = encode(obj, tok)
        if len(ex.tokens) > n_ctx:
            long.append(n)
            if truncate:
                ex = Example(ex.tokens[:n_ctx], ex.labels[:n_ctx])
                cut += 1
                if not ex.trained:
                    continue
        examples.append(ex)
        if progress is not None:
            progress(k + 1, len(rows))
    if long and not truncate:
        shown = ", ".join(map(str, long[:5])) + (" ..." if len(long) > 5 else "")
        raise DatasetError(
            f"{len(long)} of {len(rows)} examples are longer than the {n_ctx}-token context "
            f"(lines {shown}); shorten them, or pass --truncate to cut them"
        )
    if not examples:
        raise DatasetError(f"{path}: no example keeps an answer token")
    train, held = split(examples, held_out, seed)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Dataset(train, held, digest, len(rows), str(path.resolve()), cut, long)


def split(
    items: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded shuffle split: `fraction` held out (at least one when there are 5 or more,
    none below that: a tiny set trains on everything and says so)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_held = round(len(items) * fraction) if len(items) >= 5 else 0
    if fraction > 0 and len(items) >= 5:
        n_held = max(1, n_held)
    held = sorted(order[:n_held])
    keep = sorted(order[n_held:])
    return [items[i] for i in keep], [items[i] for i in held]
