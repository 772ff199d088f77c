"""Routes: which of a route's models serves a request (the `routes` setting, a name such
as "auto" for a list of models, most capable first).

The policy, deterministic given its inputs:

1. Needs. A model that cannot serve the request is left out:
   - the prompt and its `max_tokens` must fit the model's context (a local model's
     per-sequence context; a remote one's `--ctx`). The prompt's length is exact for
     token ids, counted with a loaded local candidate's tokenizer for text, and otherwise
     estimated at four bytes a token; a model the estimate keeps wrongly fails before any
     output, and the next one serves;
   - chat messages need a chat format (a GGUF template or its family's well-known one; a
     remote server applies its own);
   - a grammar or a JSON schema needs a model that follows it: local models do, a remote
     one as `models add-remote`'s probe found (not probed: passed through).
2. Size against priority: the models as listed, or smallest first for a process at
   `route_low_nice` or above (background work).
3. Availability: a remote model marked down, or with `route_queue_limit` requests waiting,
   goes to the end (tried only if all else fails).

The first that is left serves; one that fails before any output hands the request to the
next. When none meets the needs the request fails at once, saying what each lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmos.errors import GenerationError, UserError


class NoModelFits(GenerationError, UserError):
    """No model of a route can serve the request (too long, a chat, a grammar...)."""


@dataclass(frozen=True)
class Needs:
    """What a request asks of the model that serves it."""

    tokens: int  # the prompt's tokens (maybe estimated) and its max_tokens
    chat: bool = False
    grammar: bool = False
    json_schema: bool = False
    estimated: bool = False  # `tokens` counts an estimate of the prompt


@dataclass(frozen=True)
class Fit:
    """What a model can serve now."""

    ctx: int  # the longest sequence, prompt and output
    chat: bool = True
    grammar: bool | None = True  # None: not known (not probed); passed through
    json_schema: bool | None = True
    down: str | None = None  # a remote model marked down
    waiting: int = 0  # requests queued at a remote model beyond its limit
    absent: bool = False  # not in the catalog


def unmet(needs: Needs, fit: Fit) -> str | None:
    """Why a model cannot serve a request, or None when it can."""
    if fit.absent:
        return "not in the catalog"
    if needs.tokens > fit.ctx:
        about = "~" if needs.estimated else ""
        return f"context {fit.ctx} < {about}{needs.tokens} tokens"
    if needs.chat and not fit.chat:
        return "no chat format"
    if needs.grammar and fit.grammar is False:
        return "does not follow grammars"
    if needs.json_schema and fit.json_schema is False:
        return "does not follow JSON schemas"
    return None


def choose(
    route: str,
    models: list[str],
    fits: dict[str, Fit],
    needs: Needs,
    *,
    nice: int,
    low_nice: int,
    queue_limit: int,
) -> tuple[list[str], str]:
    """The models to try, in order, and why the first (see the module's policy), for a
    process at `nice`."""
    low = nice >= low_nice
    order = list(reversed(models)) if low else list(models)
    ready, later, notes, unfit = [], [], [], []
    for m in order:
        fit = fits[m]
        lack = unmet(needs, fit)
        if lack is not None:
            unfit.append(f"{m} ({lack})")
        elif fit.down is not None:
            later.append(m)
            notes.append(f"{m} down")
        elif fit.waiting >= queue_limit:
            later.append(m)
            notes.append(f"{m} queue {fit.waiting}")
        else:
            ready.append(m)
    if not models:
        raise GenerationError(f"route {route!r} names no model")
    if not ready and not later:
        raise NoModelFits(f"route {route}: no model can serve this request: {', '.join(unfit)}")
    first = (ready or later)[0]
    why = f"route {route}: {first}" + (f" (nice {nice}: smallest first)" if low else "")
    skipped = notes + unfit
    if skipped:
        why += f"; skipped {', '.join(skipped)}"
    return ready + later, why
