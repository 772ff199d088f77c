"""The engine: continuous batching over a Backend, driven by a token-level scheduler.

One `EngineCore` serves one loaded model. Every `step()`:

1. applies queued commands (submit, kill, stop, cont, renice) from any thread;
2. asks the scheduler `Policy` which sequences hold the `n_slots` slots; a sequence that
   loses its slot is swapped out (its KV state saved to host RAM, nothing recomputed) and
   one that gains a slot is swapped in or admitted, reusing a shared prompt prefix from a
   live or cached slot when there is one;
3. builds one batch: the next token of every decoding sequence plus prompt chunks of
   prefilling ones (chunked prefill, so a long prompt never freezes the others);
4. decodes it once, samples each sequence with its own sampler chain, and hands text to
   the waiting consumers (one loop callback per step, not per token).

`start()` runs steps on a dedicated thread (the backend's C calls release the GIL);
tests call `step()` directly with an injected clock.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from llmos.core.sampling import SamplingParams
from llmos.errors import ContextOverflow, GenerationError
from llmos.kernel.backend import Backend, BatchEntry, DecodeNoSpace
from llmos.kernel.scheduler import Policy

Clock = Callable[[], float]


class SeqState(Enum):
    WAITING = "waiting"  # admitted to the engine, no KV yet
    PREFILL = "prefill"  # holds a slot, prompt partly evaluated
    DECODE = "decode"  # holds a slot, generating
    SWAPPED = "swapped"  # KV saved to host RAM, no slot
    DONE = "done"


@dataclass(slots=True)
class SeqStats:
    submitted: float = 0.0
    admitted: float | None = None
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens taken from a shared prefix, not evaluated
    generated: int = 0
    swaps: int = 0
    prefilled: int = 0  # prompt tokens this sequence had evaluated (decoded in a batch)
    drafted: int = 0  # speculation: tokens drafted from the context and verified
    accepted: int = 0  # ... and of those, the ones the model agreed with
    forced: int = 0  # fast-forward: tokens of grammar-forced text appended and verified
    forced_kept: int = 0  # ... and of those, the ones the model agreed with

    @property
    def recomputed(self) -> int:
        """Prompt tokens evaluated more than once, measured: a swap restores KV state
        instead of re-evaluating, and a reused prefix is not evaluated, so this stays 0."""
        return max(0, self.prefilled - (self.prompt_tokens - self.reused_tokens))

    @property
    def queue_wait(self) -> float | None:
        return None if self.admitted is None else self.admitted - self.submitted

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.submitted

    @property
    def tokens_per_s(self) -> float | None:
        if self.first_token is None or self.generated < 2:
            return None
        end = self.finished if self.finished is not None else time.monotonic()
        span = end - self.first_token
        return (self.generated - 1) / span if span > 0 else None

    @property
    def turnaround(self) -> float | None:
        return None if self.finished is None else self.finished - self.submitted

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue_wait": self.queue_wait,
            "ttft": self.ttft,
            "prompt_tokens": self.prompt_tokens,
            "reused_tokens": self.reused_tokens,
            "generated": self.generated,
            "tokens_per_s": self.tokens_per_s,
            "swaps": self.swaps,
            "recomputed": self.recomputed,
            "turnaround": self.turnaround,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "forced": self.forced,
            "forced_kept": self.forced_kept,
        }


@dataclass(slots=True)
class TokenEvent:
    text: str
    token: int


@dataclass(slots=True)
class DoneEvent:
    reason: str  # "stop" (EOG or stop string), "length", "killed", "error"
    stats: SeqStats
    error: BaseException | None = None


Event = TokenEvent | DoneEvent
Sink = Callable[[list[Event]], None]


@dataclass(eq=False, slots=True)
class Sequence:
    id: int
    prompt: list[int]
    params: SamplingParams
    max_new: int
    nice: int
    sink: Sink
    owner: int | None = None
    adapter: str | None = None  # the LoRA adapter's path; a batch holds one adapter set
    tokens: list[int] = field(default_factory=list)  # positions 0..n_past-1 are in the KV
    n_past: int = 0
    pending: int | None = None  # sampled, not yet evaluated
    slot: int | None = None
    state: SeqState = SeqState.WAITING
    paused: bool = False
    sampler: Any = None
    saved: bytes | None = None
    rr: int = 0
    quantum_used: int = 0
    boost: int = 0
    wait_since: float = 0.0
    text: str = ""
    emitted: int = 0
    decoder: Any = None
    stats: SeqStats = field(default_factory=SeqStats)
    # speculation from the context (prompt lookup): on or off for this sequence, the draft
    # length it has earned, and an index of its n-grams (n-gram -> where it last ended)
    spec: bool = False
    spec_len: int = 0
    ngrams: dict[tuple[int, ...], int] = field(default_factory=dict)
    indexed: int = 0  # n-grams ending before this token index are in `ngrams`
    ff: bool = False  # fast-forward: append the text its grammar forces, verified

    @property
    def resident(self) -> bool:
        return self.slot is not None

    @property
    def runnable(self) -> bool:
        return not self.paused and self.state is not SeqState.DONE


@dataclass(slots=True)
class EngineStats:
    steps: int = 0
    tokens_decoded: int = 0
    tokens_prefilled: int = 0
    swaps_out: int = 0
    swaps_in: int = 0
    prefix_hits: int = 0
    drafted: int = 0
    accepted: int = 0
    forced: int = 0
    forced_kept: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        span = max(1e-9, time.monotonic() - self.started)
        return {
            "steps": self.steps,
            "steps_per_s": self.steps / span,
            "tokens_decoded": self.tokens_decoded,
            "tokens_prefilled": self.tokens_prefilled,
            "swaps_out": self.swaps_out,
            "swaps_in": self.swaps_in,
            "prefix_hits": self.prefix_hits,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "forced": self.forced,
            "forced_kept": self.forced_kept,
        }


class LoadWindow:
    """The last `span_s` seconds of traffic: arrivals, and each served request's wait for a
    slot and its service time (admission to end). `figures` gives what a queueing model
    needs (llmos/ops/capacity.py turns them into utilisation and a predicted wait)."""

    def __init__(self, span_s: float = 120.0) -> None:
        self.span_s = span_s
        self.arrivals: deque[float] = deque()
        self.done: deque[tuple[float, float, float]] = deque()  # (when, wait, service)

    def arrived(self, now: float) -> None:
        self.arrivals.append(now)

    def served(self, now: float, wait: float, service: float) -> None:
        self.done.append((now, max(0.0, wait), max(0.0, service)))

    def figures(self, now: float) -> dict[str, Any]:
        cut = now - self.span_s
        while self.arrivals and self.arrivals[0] < cut:
            self.arrivals.popleft()
        while self.done and self.done[0][0] < cut:
            self.done.popleft()
        span = min(self.span_s, now - self.arrivals[0]) if self.arrivals else 0.0
        out: dict[str, Any] = {
            "arrival_rate": len(self.arrivals) / span if span > 1.0 else None,
            "wait_measured_s": None, "service_s": None, "service_cs2": None,
        }  # fmt: skip
        if self.done:
            waits = [w for _, w, _ in self.done]
            services = [sv for _, _, sv in self.done]
            mean = sum(services) / len(services)
            out["wait_measured_s"] = sum(waits) / len(waits)
            out["service_s"] = mean
            if mean > 0 and len(services) > 1:
                var = sum((x - mean) ** 2 for x in services) / len(services)
                out["service_cs2"] = var / mean**2
        return out


class _AsyncSink:
    """Delivers a sequence's events to an asyncio queue on its loop (thread-safe)."""

    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()

    def __call__(self, events: list[Event]) -> None:
        self.queue.put_nowait(events)


class Generation:
    """A running generation: iterate it for text chunks; `.text`, `.reason`, `.stats` after."""

    def __init__(self, engine: EngineCore, seq: Sequence, sink: _AsyncSink) -> None:
        self.engine = engine
        self.seq = seq
        self._sink = sink
        self.text = ""
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.stats = seq.stats

    @property
    def id(self) -> int:
        return self.seq.id

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while self.reason is None:
                events = await self._sink.queue.get()
                for ev in events:
                    if isinstance(ev, TokenEvent):
                        self.tokens.append(ev.token)
                        if ev.text:
                            self.text += ev.text
                            yield ev.text
                    else:
                        self.reason = ev.reason
                        if ev.error is not None:
                            raise ev.error
        finally:
            if self.reason is None:  # consumer left early or was cancelled: free the KV now
                self.engine.kill(self.seq.id)

    async def result(self) -> str:
        async for _ in self:
            pass
        return self.text


class EngineCore:
    def __init__(
        self,
        backend: Backend,
        *,
        policy: Policy | None = None,
        n_batch: int = 512,
        prefill_chunk: int = 256,
        kv_budget: int | None = None,
        seq_ctx_max: int | None = None,
        prefix_min_tokens: int = 32,
        max_tokens_default: int = 512,
        speculation: str = "auto",
        spec_min_prompt: int = 256,
        spec_max_draft: int = 8,
        spec_batch_tokens: int = 32,
        spec_ngram: int = 3,
        fast_forward: bool = True,
        ff_max_tokens: int = 16,
        adapter_quantum: int = 8,
        timer: Clock = time.perf_counter,
        coalesce_s: float = 0.003,
        burst_gap_s: float = 0.001,
        clock: Clock = time.monotonic,
    ) -> None:
        self.backend = backend
        self.policy = policy or Policy()
        self.n_batch = n_batch
        self.prefill_chunk = min(prefill_chunk, n_batch)
        self.kv_budget = min(kv_budget or backend.n_ctx, backend.n_ctx)
        self.seq_ctx_max = min(seq_ctx_max or backend.n_ctx, self.kv_budget, backend.n_ctx_seq)
        self.prefix_min = prefix_min_tokens
        self.max_tokens_default = max_tokens_default
        self.speculation = speculation  # "auto" (long prompts), "on" or "off", unless a call says
        self.spec_min_prompt = spec_min_prompt
        self.spec_max_draft = spec_max_draft
        self.spec_batch_tokens = spec_batch_tokens
        self.spec_ngram = spec_ngram
        self.fast_forward = fast_forward
        self.ff_max_tokens = ff_max_tokens
        self.coalesce_s = coalesce_s
        self.burst_gap_s = burst_gap_s
        self.clock = clock
        self.stats = EngineStats()
        self.seqs: dict[int, Sequence] = {}
        self.slots: list[Sequence | None] = [None] * backend.n_slots
        self.cached: dict[int, list[int]] = {}  # free slot -> tokens still in its KV
        self.cached_adapter: dict[int, str | None] = {}  # ... and the adapter they were made with
        self.adapter: str | None = None  # the adapter set on the backend
        self._served: dict[str | None, int] = {}  # adapter group -> step it last ran
        self._group_steps = 0  # steps the current adapter group has run in a row
        # does drafting pay here? seconds per output token of steps with drafts and of
        # plain decode steps (moving averages), measured with `timer`
        self.timer = timer
        self.cost: dict[bool, float] = {}
        self.cost_n: dict[bool, int] = {False: 0, True: 0}
        self._probe = 0
        # the cost of a step, fitted on every step: seconds = fixed + per_token * tokens
        # (decayed sums of 1, x, y, x*x, x*y); fast-forward weighs its drafts with it
        self._fit = [0.0, 0.0, 0.0, 0.0, 0.0]
        self._load = LoadWindow()  # arrivals, waits and service times: for `top`, /metrics
        self.adapter_quantum = adapter_quantum
        self._ids = itertools.count(1)
        self._rr = itertools.count(1)
        self._commands: deque[Callable[[], None]] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.step_error: BaseException | None = None

    # -- public API (any thread) ------------------------------------------------------
    @property
    def name(self) -> str:
        return self.backend.name

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self.backend.tokenize(text, add_special=add_special)

    def submit(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        *,
        sink: Sink,
        nice: int = 0,
        owner: int | None = None,
        adapter: str | None = None,
    ) -> Sequence:
        """Queue a generation; raise ContextOverflow now if it can never fit. `adapter`
        (a LoRA GGUF's path) applies to this sequence alone."""
        params = params or SamplingParams()
        tokens = self.backend.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise GenerationError("empty prompt")
        room = self.seq_ctx_max - len(tokens)
        if room < 1:
            raise ContextOverflow(
                f"prompt of {len(tokens)} tokens does not fit the {self.seq_ctx_max}-token context"
            )
        if params.max_tokens is not None and params.max_tokens > room:
            raise ContextOverflow(
                f"prompt ({len(tokens)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"{self.seq_ctx_max}-token context"
            )
        max_new = params.max_tokens or min(self.max_tokens_default, room)
        # Built here, in the caller's thread: a bad grammar or schema fails this call alone.
        sampler = self.backend.new_sampler(params)
        seq = Sequence(
            id=next(self._ids), prompt=tokens, params=params, max_new=max_new,
            nice=nice, sink=sink, owner=owner, tokens=list(tokens), sampler=sampler,
            adapter=adapter,
        )  # fmt: skip
        seq.stats.submitted = self.clock()
        seq.stats.prompt_tokens = len(tokens)
        seq.spec = self._speculates(params, len(tokens))
        seq.spec_len = self.spec_max_draft // 2
        seq.ff = self.fast_forward and (
            params.grammar is not None or params.json_schema is not None
        )
        seq.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._command(lambda: self._add(seq))
        return seq

    def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        *,
        nice: int = 0,
        owner: int | None = None,
        adapter: str | None = None,
    ) -> Generation:
        """Submit from asyncio code; iterate the result for streamed text."""
        sink = _AsyncSink(asyncio.get_running_loop())
        seq = self.submit(prompt, params, sink=sink, nice=nice, owner=owner, adapter=adapter)
        return Generation(self, seq, sink)

    def kill(self, seq_id: int) -> None:
        self._command(lambda: self._finish_id(seq_id, "killed"))

    def pause(self, seq_id: int) -> None:
        self._command(lambda: self._set_paused(seq_id, True))

    def resume(self, seq_id: int) -> None:
        self._command(lambda: self._set_paused(seq_id, False))

    def renice(self, seq_id: int, nice: int) -> None:
        def apply() -> None:
            if (seq := self.seqs.get(seq_id)) is not None:
                seq.nice = nice

        self._command(apply)

    def snapshot(self) -> dict[str, Any]:
        """Kernel-wide figures for `top` (read without stopping the loop)."""
        live = [s for s in list(self.seqs.values()) if s.state is not SeqState.DONE]
        return {
            "model": self.name,
            "active": sum(1 for s in live if s.resident and not s.paused),
            "waiting": sum(1 for s in live if not s.resident),
            "slots": len(self.slots),
            "kv_cells_used": self.kv_used(),
            "kv_cells": self.kv_budget,
            **self.stats.as_dict(),
            **self._load.figures(self.clock()),
        }

    def kv_used(self) -> int:
        used = sum(s.n_past for s in self.slots if s is not None)
        return used + sum(len(t) for t in self.cached.values())

    # -- threading ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name=f"engine-{self.name}", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for seq in list(self.seqs.values()):
            self._finish(seq, "killed")
        self._flush()
        self.backend.close()

    def _command(self, fn: Callable[[], None]) -> None:
        with self._cv:
            self._commands.append(fn)
            self._cv.notify()

    def _has_work(self) -> bool:
        return any(s.runnable for s in self.seqs.values())

    def _run(self) -> None:
        while True:
            with self._cv:
                idle = not self._has_work()
                while not self._stopping and not self._commands and not self._has_work():
                    self._cv.wait()
                if self._stopping:
                    return
                if idle:
                    self._gather_burst()
                    if self._stopping:
                        return
            try:
                self.step()
            except Exception as exc:  # a backend failure fails the live sequences, not the kernel
                self.step_error = exc
                for seq in list(self.seqs.values()):
                    self._finish(seq, "error", exc)
                self._flush()

    def _gather_burst(self) -> None:
        """Woken from idle: requests usually come in bursts (a parent spawning workers, a
        client's parallel calls), so wait while more keep arriving, `burst_gap_s` apart and
        `coalesce_s` in all, and prefill them in one batch instead of the first alone."""
        deadline = time.monotonic() + self.coalesce_s
        seen = len(self._commands)
        while (left := deadline - time.monotonic()) > 0:
            self._cv.wait(min(left, self.burst_gap_s))
            if len(self._commands) == seen or self._stopping:
                return
            seen = len(self._commands)

    # -- the step -----------------------------------------------------------------------
    def step(self) -> int:
        """Run one engine step; return the number of tokens evaluated."""
        self._out: dict[int, tuple[Sink, list[Event]]] = getattr(self, "_out", {})
        while True:
            with self._cv:
                if not self._commands:
                    break
                fn = self._commands.popleft()
            fn()
        now = self.clock()
        self._schedule(now)
        entries, seqs = self._build_batch()
        if not entries:
            self._flush()
            return 0
        while True:
            try:
                self._use_adapter(seqs[0].adapter)
                t0 = self.timer()
                indices = self.backend.decode(entries)
                spent = self.timer() - t0
                break
            except DecodeNoSpace:
                if not self._relieve(seqs):
                    for s in seqs:
                        self._finish(
                            s, "error", ContextOverflow("KV cache full even for one sequence")
                        )
                    self._flush()
                    return 0
                entries, seqs = self._build_batch()
                if not entries:
                    self._flush()
                    return 0
        n = 0
        now = self.clock()
        decoded_before = self.stats.tokens_decoded
        for entry, seq, idx in zip(entries, seqs, indices, strict=True):
            k = len(entry.tokens)
            n += k
            if entry.draft:
                self._verify(seq, entry, idx)
                continue
            seq.n_past += k
            if seq.state is SeqState.DECODE:
                self.stats.tokens_decoded += k
                seq.pending = None
            else:
                self.stats.tokens_prefilled += k
                seq.stats.prefilled += k
            if idx >= 0:
                token = self.backend.sample(seq.sampler, idx)
                if seq.state is SeqState.PREFILL:
                    seq.state = SeqState.DECODE
                    seq.stats.first_token = now
                self._on_token(seq, token)
        self.stats.steps += 1
        self._fit_step(sum(len(e.tokens) for e in entries), spent)  # prefill steps too
        if all(
            s.state is not SeqState.PREFILL and e.pos >= len(s.prompt) - 1
            for e, s in zip(entries, seqs, strict=True)
        ):
            if not any(e.forced for e in entries):  # the speculation gate weighs lookups
                self._measure(
                    any(e.draft for e in entries), spent, self.stats.tokens_decoded - decoded_before
                )
        self._flush()
        return n

    def _schedule(self, now: float) -> None:
        runnable = [s for s in self.seqs.values() if s.runnable]
        waiting = any(not s.resident for s in runnable)
        q = self.policy.quantum_tokens
        for s in runnable:  # a used-up quantum sends a resident to the back of its class
            if s.resident and s.quantum_used >= q and waiting and s.rr != -1:
                s.rr = next(self._rr)
        chosen = self.policy.select(runnable, len(self.slots), now)
        chosen_ids = {s.id for s in chosen}
        for s in chosen:
            if s.resident and s.quantum_used >= q:  # kept: a fresh quantum
                s.quantum_used = 0
                s.boost = 0
        # Evict residents that were not chosen (paused ones only when a slot is needed).
        need = sum(1 for s in chosen if not s.resident)
        free = sum(1 for x in self.slots if x is None)
        for res in self.slots:
            if res is None or res.id in chosen_ids:
                continue
            if res.paused and need <= free:
                continue
            self._swap_out(res, now)
            free += 1
        for s in chosen:
            if not s.resident:
                self._admit(s, now)
        self._fit_budget(now)

    def _fit_budget(self, now: float) -> None:
        """Keep the next step's KV growth inside the budget: drop cached prefixes first,
        then swap out the least deserving residents (never silently truncate anyone)."""
        growing = sum(
            1 for s in self.slots if s is not None and not s.paused and s.state is SeqState.DECODE
        )
        while self.kv_used() + growing > self.kv_budget:
            if self.cached:
                self._drop_cache(next(iter(self.cached)))
                continue
            residents = [s for s in self.slots if s is not None]
            if len(residents) <= 1:
                return
            worst = next((s for s in residents if s.paused), None) or max(
                residents, key=lambda s: self.policy.key(s, now)
            )
            if not worst.paused and worst.state is SeqState.DECODE:
                growing -= 1
            self._swap_out(worst, now)

    def _free_slot(self) -> int | None:
        empty = [i for i, x in enumerate(self.slots) if x is None and i not in self.cached]
        if empty:
            return empty[0]
        cached = [i for i, x in enumerate(self.slots) if x is None]
        if cached:  # evict the oldest cached prefix
            slot = next(iter(k for k in self.cached if k in cached))
            self._drop_cache(slot)
            return slot
        return None

    def _drop_cache(self, slot: int) -> None:
        self.cached_adapter.pop(slot, None)
        if self.cached.pop(slot, None) is not None:
            self.backend.seq_rm(slot, -1, -1)

    def _admit(self, seq: Sequence, now: float) -> None:
        if seq.state is SeqState.WAITING:
            if self._defer_for_prefix(seq):
                return
            donor_slot, lcp = self._best_prefix(seq)
            if donor_slot is not None and donor_slot in self.cached:
                slot = donor_slot  # take over a cached slot: keep its first lcp cells
                self.cached.pop(slot)
                self.cached_adapter.pop(slot, None)
                self.backend.seq_rm(slot, lcp, -1)
            else:
                got = self._free_slot()
                if got is None:
                    return
                slot = got
                if donor_slot is not None:
                    self.backend.seq_cp(donor_slot, slot, 0, lcp)
            cells = len(seq.prompt) - lcp
            if self.kv_used() + cells > self.kv_budget and not self._make_room(cells, seq):
                self.backend.seq_rm(slot, -1, -1)
                return
            if lcp:
                self.stats.prefix_hits += 1
                seq.stats.reused_tokens = lcp
            seq.n_past = lcp
            seq.state = SeqState.PREFILL
            seq.stats.admitted = now
        else:  # SWAPPED: restore the saved KV state, nothing recomputed
            assert seq.saved is not None
            if self.kv_used() + seq.n_past > self.kv_budget and not self._make_room(
                seq.n_past, seq
            ):
                return
            got = self._free_slot()
            if got is None:
                return
            slot = got
            self.backend.seq_load(slot, seq.saved)
            seq.saved = None
            seq.state = SeqState.DECODE if seq.pending is not None else SeqState.PREFILL
            self.stats.swaps_in += 1
        seq.slot = slot
        self.slots[slot] = seq
        seq.boost = self.policy.aging_boost(seq, now)
        seq.quantum_used = 0

    def _make_room(self, cells: int, for_seq: Sequence) -> bool:
        """Free KV cells: drop cached prefixes, then swap out less deserving residents."""
        for slot in list(self.cached):
            if self.kv_used() + cells <= self.kv_budget:
                return True
            self._drop_cache(slot)
        now = self.clock()
        mine = self.policy.key(for_seq, now)
        victims = sorted(
            (s for s in self.slots if s is not None and s is not for_seq),
            key=lambda s: self.policy.key(s, now),
            reverse=True,
        )
        for v in victims:
            if self.kv_used() + cells <= self.kv_budget:
                return True
            if self.policy.key(v, now) > mine or v.paused:
                self._swap_out(v, now)
        return self.kv_used() + cells <= self.kv_budget

    def _relieve(self, in_batch: list[Sequence]) -> bool:
        """The backend found no KV room for a batch: free some; False if nothing can go."""
        if self.cached:
            self._drop_cache(next(iter(self.cached)))
            return True
        residents = [s for s in self.slots if s is not None]
        if len(residents) <= 1:
            return False
        now = self.clock()
        worst = max(residents, key=lambda s: self.policy.key(s, now))
        self._swap_out(worst, now)
        return True

    def _swap_out(self, seq: Sequence, now: float) -> None:
        slot = seq.slot
        assert slot is not None
        if seq.n_past > 0:
            seq.saved = self.backend.seq_save(slot)
            seq.state = SeqState.SWAPPED
            seq.stats.swaps += 1
            self.stats.swaps_out += 1
        else:
            seq.state = SeqState.WAITING
        self.backend.seq_rm(slot, -1, -1)
        self.slots[slot] = None
        seq.slot = None
        seq.wait_since = now

    def _lcp(self, a: Seq[int], b: Seq[int], limit: int) -> int:
        n = min(len(a), len(b), limit)
        i = 0
        while i < n and a[i] == b[i]:
            i += 1
        return i

    def _best_prefix(self, seq: Sequence) -> tuple[int | None, int]:
        limit = len(seq.prompt) - 1  # at least one prompt token is evaluated for logits
        best: tuple[int | None, int] = (None, 0)
        for slot, res in enumerate(self.slots):  # KV made under one adapter serves only it
            if res is not None and res.n_past and res.adapter == seq.adapter:
                n = self._lcp(seq.prompt, res.tokens, min(limit, res.n_past))
                if n > best[1]:
                    best = (slot, n)
        for slot, toks in self.cached.items():
            if self.cached_adapter.get(slot) != seq.adapter:
                continue
            n = self._lcp(seq.prompt, toks, limit)
            if n > best[1] or (n == best[1] and n and best[0] not in self.cached):
                best = (slot, n)
        return best if best[1] >= self.prefix_min else (None, 0)

    def _defer_for_prefix(self, seq: Sequence) -> bool:
        """Wait for a resident still prefilling a prefix we share, rather than evaluate it twice."""
        for res in self.slots:
            if res is not None and res.state is SeqState.PREFILL and res.adapter == seq.adapter:
                n = self._lcp(seq.prompt, res.prompt, len(seq.prompt) - 1)
                if n >= self.prefix_min and res.n_past < n:
                    return True
        return False

    def _group(self) -> tuple[bool, str | None]:
        """The adapter set this step runs: llama.cpp applies a context's adapters to every
        token of a batch, so a batch holds one set. With residents in several sets, the
        current set keeps up to `adapter_quantum` steps in a row (a switch makes llama.cpp
        rebuild its graph: ~3 ms here, half a 1-token step), then the one that ran
        longest ago goes (round robin; the best priority breaks a tie), so every set
        advances; within a set, sequences keep their order by priority."""
        now = self.clock()
        groups: dict[str | None, Any] = {}
        for s in self.slots:
            if s is None or s.paused or s.state not in (SeqState.DECODE, SeqState.PREFILL):
                continue
            key = self.policy.key(s, now)
            if s.adapter not in groups or key < groups[s.adapter]:
                groups[s.adapter] = key
        if len(groups) <= 1:
            return False, None
        current = self.adapter
        if current in groups and self._group_steps < self.adapter_quantum:
            pick = current  # switching costs a graph rebuild: a set keeps a few steps
        else:
            pick = min(groups, key=lambda a: (self._served.get(a, -1), groups[a]))
        self._group_steps = self._group_steps + 1 if pick == current else 1
        self._served[pick] = self.stats.steps
        return True, pick

    def _use_adapter(self, adapter: str | None) -> None:
        if adapter != self.adapter:
            self.backend.set_adapter(adapter)
            self.adapter = adapter

    def _build_batch(self) -> tuple[list[BatchEntry], list[Sequence]]:
        entries: list[BatchEntry] = []
        seqs: list[Sequence] = []
        budget = self.n_batch
        used = self.kv_used()
        split, group = self._group()
        for seq in self.slots:
            if seq is None or seq.paused or seq.state is not SeqState.DECODE:
                continue
            if split and seq.adapter != group:
                continue
            assert seq.pending is not None and seq.slot is not None
            entries.append(BatchEntry(seq.slot, [seq.pending], seq.n_past, True))
            seqs.append(seq)
            budget -= 1
            used += 1
        # Fast-forward: the text a sequence's grammar forces goes in as drafts, verified
        # like any draft (so the output is the one token-by-token decoding gives); nearly
        # all of it is kept, so it may use the whole batch.
        ratio = self._fixed_per_token()
        for entry, seq in zip(entries, seqs, strict=True):
            room = min(budget, self.kv_budget - used)
            if not seq.ff or room <= 0 or not self._forcing_pays(seq, len(entries), ratio):
                continue
            draft = self._forced_draft(seq, min(room, self.ff_max_tokens))
            if draft:
                entry.tokens.extend(draft)
                entry.draft = len(draft)
                entry.forced = True
                budget -= len(draft)
                used += len(draft)
        # Drafts ride in the tokens the batch can take without slowing anyone: up to
        # `spec_batch_tokens` in all, the decoding sequences' own tokens counted first.
        spare = min(budget, self.spec_batch_tokens - len(entries), self.kv_budget - used)
        pays = spare <= 0 or not any(s.spec for s in seqs) or self._drafting_pays()
        for entry, seq in zip(entries, seqs, strict=True):
            if spare <= 0:
                break
            if entry.forced:
                continue
            # the engine's own choice follows the measured cost; a call's explicit
            # speculate=True drafts regardless
            if not seq.spec or not (pays or seq.params.speculate):
                continue
            draft = self._draft(seq, min(spare, seq.spec_len))
            if draft:
                entry.tokens.extend(draft)
                entry.draft = len(draft)
                spare -= len(draft)
                budget -= len(draft)
                used += len(draft)
        now = self.clock()
        prefilling = sorted(
            (
                s
                for s in self.slots
                if s is not None and not s.paused and s.state is SeqState.PREFILL
            ),
            key=lambda s: self.policy.key(s, now),
        )
        for seq in prefilling:
            if budget <= 0:
                break
            if split and seq.adapter != group:
                continue
            assert seq.slot is not None
            left = len(seq.prompt) - seq.n_past
            n = min(left, self.prefill_chunk, budget, max(0, self.kv_budget - used))
            if n <= 0:
                continue
            chunk = seq.prompt[seq.n_past : seq.n_past + n]
            entries.append(BatchEntry(seq.slot, chunk, seq.n_past, n == left))
            seqs.append(seq)
            budget -= n
            used += n
        return entries, seqs

    # -- speculation from the context --------------------------------------------------
    def _speculates(self, params: SamplingParams, prompt_len: int) -> bool:
        if params.speculate is not None:
            return params.speculate
        if self.speculation == "auto":  # only where verifying in a batch is exact (below)
            exact = getattr(self.backend, "exact_batches", True)
            return exact and prompt_len >= self.spec_min_prompt
        return self.speculation == "on"

    def _measure(self, drafted: bool, spent: float, made: int) -> None:
        """Seconds per output token of a decode-only step, averaged by kind."""
        if made <= 0:
            return
        x = spent / made
        prev = self.cost.get(drafted)
        self.cost[drafted] = x if prev is None else 0.9 * prev + 0.1 * x
        self.cost_n[drafted] += 1

    def _drafting_pays(self) -> bool:
        """Drafts cost a bigger batch; on hardware (or a model size, a context length)
        where a token in a batch costs nearly as much as a step of its own, accepted
        drafts don't repay that. Once both kinds of step have been measured a few times,
        drafting stops while its steps cost more per output token than plain ones, with a
        probe every 64 steps to notice a change (a shorter context, another load)."""
        if min(self.cost_n.values()) < 8:
            return True
        if self.cost[True] <= self.cost[False]:
            return True
        self._probe += 1
        return self._probe % 64 == 0

    def _draft(self, seq: Sequence, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the
        sequence's last `spec_ngram` tokens (its pending token included), from its prompt
        and output alike: the tokens a copy would continue with."""
        n = self.spec_ngram
        toks = seq.tokens
        end = len(toks) - 1  # index n-grams ending before the last token: not the key itself
        grams = seq.ngrams
        for i in range(max(seq.indexed, n), end + 1):
            grams[tuple(toks[i - n : i])] = i
        seq.indexed = max(seq.indexed, end + 1)
        # no drafting past the answer's end or the context: those tokens would be wasted
        limit = min(limit, seq.max_new - seq.stats.generated - 1, self.seq_ctx_max - seq.n_past - 2)
        if len(toks) <= n or limit <= 0:
            return []
        at = grams.get(tuple(toks[-n:]))
        return [] if at is None else toks[at : at + limit]

    def _fit_step(self, tokens: int, spent: float) -> None:
        f = self._fit
        for i, v in enumerate((1.0, tokens, spent, tokens * tokens, tokens * spent)):
            f[i] = 0.98 * f[i] + v

    def _fixed_per_token(self) -> float:
        """A step's fixed cost over its cost per token (weights read once, the Python
        around it; the per-token compute), fitted on the steps so far; 1 until steps of
        several sizes have been seen. On this 2-core CPU it is about 1 (1 token
        ~9 ms, 13 tokens ~65 ms); on a GPU it is far larger. Prompt chunks count like any
        tokens in a batch, and give the spread of sizes the fit needs."""
        n, sx, sy, sxx, sxy = self._fit
        if n < 8:
            return 1.0
        var = sxx / n - (sx / n) ** 2
        if var < 0.25:
            return 1.0
        per_token = (sxy / n - sx / n * sy / n) / var
        fixed = sy / n - per_token * sx / n
        if per_token <= 0:
            return 100.0
        return min(100.0, max(0.0, fixed / per_token))

    @staticmethod
    def _forcing_pays(seq: Sequence, batch: int, ratio: float) -> bool:
        """A forced token costs one token's compute now; kept (probability p, this
        sequence's record so far, 0.9 before it has one), it saves a token later and its
        share (1/batch) of a step's fixed cost. So it pays while p·(1 + ratio/batch) > 1:
        always for one sequence, not for a full batch of sequences whose forced text the
        model often spells otherwise (then the total work only grows)."""
        p = (seq.stats.forced_kept + 9) / (seq.stats.forced + 10)
        return p * (1 + ratio / batch) > 1

    def _forced_draft(self, seq: Sequence, limit: int) -> list[int]:
        """The tokens of the text the sequence's grammar forces next, as the tokenizer
        spells it. The model might spell it otherwise (`"` then `action` rather than
        `"action`): verification then keeps the tokens up to where it differs and takes
        the model's own token there, so the output is still the token-by-token one."""
        # (the pending token is the last of `tokens`)
        limit = min(
            limit, seq.max_new - seq.stats.generated - 1, self.seq_ctx_max - len(seq.tokens) - 1
        )
        if limit <= 0:
            return []
        text = self.backend.forced_text(seq.sampler, 4 * limit)
        if not text:
            return []
        return self.backend.tokenize(text, add_special=False, parse_special=False)[:limit]

    def _verify(self, seq: Sequence, entry: BatchEntry, idx: int) -> None:
        """Sample the batch's positions in order, keeping each draft token the sample
        agrees with; the first disagreement is the next token, as plain decoding would
        have sampled it. For a drafted token d this is the standard acceptance rule: the
        sampled token is d with the model's probability of d, else a token drawn from the
        rest of its distribution, so the output is distributed as without speculation
        (and at temperature 0 it is the same text). Rejected drafts leave the KV."""
        draft = entry.tokens[len(entry.tokens) - entry.draft :]
        slot = seq.slot
        assert slot is not None
        seq.n_past += 1  # the pending token
        seq.pending = None
        self.stats.tokens_decoded += 1
        accepted = 0
        for i in range(len(draft) + 1):
            token = self.backend.sample(seq.sampler, idx + i)
            agrees = i < len(draft) and token == draft[i]
            if agrees:  # its KV, evaluated in this batch, is right: it is no longer pending
                accepted += 1
            self._on_token(seq, token)
            if seq.state is SeqState.DONE:
                break
            if not agrees:
                break
            seq.n_past += 1
            seq.pending = None
            self.stats.tokens_decoded += 1
        if seq.slot is not None or slot in self.cached:  # the rejected drafts' cells go
            self.backend.seq_rm(slot, seq.n_past, -1)
        if entry.forced:
            seq.stats.forced += len(draft)
            seq.stats.forced_kept += accepted
            self.stats.forced += len(draft)
            self.stats.forced_kept += accepted
            return
        seq.stats.drafted += len(draft)
        seq.stats.accepted += accepted
        self.stats.drafted += len(draft)
        self.stats.accepted += accepted
        # the draft length follows what is accepted; a sequence whose drafts keep failing
        # stops drafting (a verify that keeps nothing costs a slower step)
        if accepted == len(draft):
            seq.spec_len = min(self.spec_max_draft, seq.spec_len + 2)
        else:
            seq.spec_len = max(1, accepted + 1)
        if seq.stats.drafted >= 32 and seq.stats.accepted < 0.25 * seq.stats.drafted:
            seq.spec = False

    # -- tokens out ---------------------------------------------------------------------
    def _on_token(self, seq: Sequence, token: int) -> None:
        seq.stats.generated += 1
        seq.quantum_used += 1
        if self.backend.is_eog(token) and not seq.params.ignore_eos:
            self._emit(seq, token, final=True)
            self._finish(seq, "stop")
            return
        seq.tokens.append(token)
        seq.pending = token
        seq.text += seq.decoder.decode(self.backend.token_bytes(token))
        stop_at = self._find_stop(seq)
        if stop_at is not None:
            seq.text = seq.text[:stop_at]
            self._emit(seq, token, final=True)
            self._finish(seq, "stop")
        elif seq.stats.generated >= seq.max_new:
            self._emit(seq, token, final=True)
            self._finish(seq, "length")
        elif seq.n_past + 1 >= self.seq_ctx_max:
            self._emit(seq, token, final=True)
            self._finish(seq, "length")
        else:
            self._emit(seq, token, final=False)

    def _find_stop(self, seq: Sequence) -> int | None:
        stops = seq.params.stop
        if not stops:
            return None
        longest = max(len(s) for s in stops)
        start = max(0, seq.emitted - longest)
        hits = [i for s in stops if (i := seq.text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _emit(self, seq: Sequence, token: int, *, final: bool) -> None:
        if final:
            seq.text += (
                seq.decoder.decode(b"", final=True) if seq.state is not SeqState.DONE else ""
            )
            upto = len(seq.text)
        elif seq.params.stop:
            upto = max(seq.emitted, len(seq.text) - max(len(s) for s in seq.params.stop) + 1)
        else:
            upto = len(seq.text)
        chunk = seq.text[seq.emitted : upto]
        seq.emitted = upto
        self._deliver(seq, TokenEvent(chunk, token))

    def _deliver(self, seq: Sequence, event: Event) -> None:
        entry = self._out.get(seq.id)
        if entry is None:
            self._out[seq.id] = (seq.sink, [event])
        else:
            entry[1].append(event)

    def _flush(self) -> None:
        out = getattr(self, "_out", None)
        if not out:
            return
        self._out = {}
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_AsyncSink, list[Event]]]] = {}
        for sink, events in out.values():
            if isinstance(sink, _AsyncSink):
                by_loop.setdefault(sink.loop, []).append((sink, events))
            else:
                sink(events)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, items)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                pass

    def _finish_id(self, seq_id: int, reason: str) -> None:
        seq = self.seqs.get(seq_id)
        if seq is not None:
            self._finish(seq, reason)

    def _finish(self, seq: Sequence, reason: str, error: BaseException | None = None) -> None:
        if seq.state is SeqState.DONE:
            return
        keep = reason in ("stop", "length")
        if seq.slot is not None:
            slot = seq.slot
            self.slots[slot] = None
            seq.slot = None
            if keep and seq.n_past >= self.prefix_min:  # keep its KV as a prefix cache
                self.cached[slot] = seq.tokens[: seq.n_past]
                self.cached_adapter[slot] = seq.adapter
            else:
                self.backend.seq_rm(slot, -1, -1)
        if seq.sampler is not None:
            self.backend.free_sampler(seq.sampler)
            seq.sampler = None
        seq.saved = None
        seq.state = SeqState.DONE
        now = seq.stats.finished = self.clock()
        self.seqs.pop(seq.id, None)
        st = seq.stats
        if keep and st.admitted is not None:  # a served request: its wait and service time
            self._load.served(now, st.admitted - st.submitted, now - st.admitted)
        self._deliver(seq, DoneEvent(reason, seq.stats, error))

    def _add(self, seq: Sequence) -> None:
        seq.rr = next(self._rr)
        seq.wait_since = self.clock()
        self.seqs[seq.id] = seq
        self._load.arrived(seq.wait_since)

    def _set_paused(self, seq_id: int, paused: bool) -> None:
        seq = self.seqs.get(seq_id)
        if seq is not None:
            seq.paused = paused
            if not paused and not seq.resident:
                seq.wait_since = self.clock()


def _deliver_all(items: list[tuple[_AsyncSink, list[Event]]]) -> None:
    for sink, events in items:
        sink(events)
