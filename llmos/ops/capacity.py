"""Capacity planning from queueing theory: how many slots (or replicas) a request rate needs.

A loaded model serves at most `n_seq_max` sequences at once (its slots); a request that finds
every slot busy waits. Seen from outside that is a multi-server queue, and `llmos plan`
answers its questions with the classic formulas below. Everything here is pure arithmetic;
measuring the engine is `llmos/ops/plan_measure.py`.

The model, and what it assumes:

- **Arrivals** are Poisson at `rate` λ requests/s (independent users). Burstier or smoother
  arrivals are described by `ca2`, the squared coefficient of variation of the gaps
  between arrivals (1 for Poisson, 0 for a perfectly regular clock).
- **Service**: a request holds a slot for S seconds (prefill + decode), so a slot serves
  μ = 1/S requests/s. M/M/c assumes S is exponentially distributed; `cs2` (the squared
  coefficient of variation of S) says otherwise: 0 for a fixed prompt and output length
  (`ignore_eos` work), about 1 for outputs whose length varies widely.
- **M/M/c** (Erlang C). With offered load a = λS and c slots, utilisation ρ = a/c must be
  below 1. The probability an arrival waits is Erlang C, C(c, a); the mean wait is
  Wq = C / (cμ − λ); the wait is exponential beyond zero, P(Wq > t) = C·exp(−(cμ − λ)t),
  so its 95th percentile is max(0, ln(C / 0.05) / (cμ − λ)); the mean response time is
  Wq + S.
- **Allen–Cunneen** (G/G/c, an approximation): Wq ≈ Wq(M/M/c) · (ca2 + cs2) / 2. The p95 is
  scaled by the same factor, which is a further approximation (good within tens of percent
  at moderate to high load, poorer when few requests wait).
- **Batching** (the load-dependent correction): the engine decodes its busy slots in one
  batch, and a step with k sequences costs more than a step with one, so S itself grows
  with load. Measured S(k), seconds per request when k run together, is interpolated
  (`service_time_at`), and `effective_service_s` finds the service time consistent with the
  load it causes: the mean number of busy slots is a = λS (at least 1, at most c), so
  S ← S(λS), iterated from S(1) to its fixed point. This treats the busy count as its mean;
  its spread (sometimes 1 busy, sometimes c) is ignored, so it is a first-order correction.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

P95_TAIL = 0.05  # P(wait > p95) for the 95th percentile


def erlang_c(c: int, a: float) -> float:
    """Erlang C: the probability that an arrival waits in an M/M/c queue with `c` servers
    and offered load `a` = λ/μ (in Erlangs).

    Computed through the Erlang B recursion, B(0) = 1, B(k) = a·B(k−1) / (k + a·B(k−1)),
    then C = c·B(c) / (c − a·(1 − B(c))): no factorials or powers, so it stays accurate
    for hundreds of servers. Raises ValueError when c < 1 or a ≥ c (the queue is unstable).
    """
    if c < 1:
        raise ValueError(f"need at least one server, got c={c}")
    if a < 0:
        raise ValueError(f"offered load must be >= 0, got {a}")
    if a >= c:
        raise ValueError(f"offered load {a:g} >= {c} servers: the queue is unstable")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return c * b / (c - a * (1.0 - b))


@dataclass(frozen=True, slots=True)
class QueuePlan:
    """The figures of one multi-server queue; times in seconds."""

    rate: float  # λ, arrivals per second
    service_s: float  # S, mean seconds a request holds a slot
    slots: int  # c
    utilisation: float  # ρ = λS/c
    p_wait: float  # Erlang C: probability an arrival finds every slot busy
    mean_wait_s: float  # Wq (Allen–Cunneen scaled when cs2/ca2 are not 1)
    p95_wait_s: float  # 95th percentile of the wait (scaled likewise)
    mean_response_s: float  # Wq + S
    correction: float  # (ca2 + cs2) / 2, the Allen–Cunneen factor (1: plain M/M/c)
    slots_needed: int | None = None  # smallest c meeting target_p95_s, when one was given

    @property
    def offered_load(self) -> float:
        """a = λS: the mean number of busy slots."""
        return self.rate * self.service_s


def mmc(
    rate: float,
    service_s: float,
    c: int,
    *,
    cs2: float = 1.0,
    ca2: float = 1.0,
    target_p95_s: float | None = None,
) -> QueuePlan:
    """The M/M/c queue (G/G/c by Allen–Cunneen when `cs2` or `ca2` is not 1) at `rate`
    arrivals/s, `service_s` mean service time and `c` slots.

    With μ = 1/S, a = λS, ρ = a/c and C = erlang_c(c, a):
    Wq = C / (cμ − λ); p95 = max(0, ln(C / 0.05) / (cμ − λ)) from P(Wq > t) = C·e^−(cμ−λ)t;
    response = Wq + S. For G/G/c both Wq and p95 are multiplied by (ca2 + cs2) / 2
    (Allen–Cunneen: an approximation; exact for M/M/c). With `target_p95_s`, the plan also
    carries `slots_needed` (see `slots_needed`). Raises ValueError when ρ >= 1.
    """
    if rate < 0 or service_s <= 0:
        raise ValueError(f"need rate >= 0 and service time > 0, got {rate} and {service_s}")
    if cs2 < 0 or ca2 < 0:
        raise ValueError("squared coefficients of variation must be >= 0")
    a = rate * service_s
    p_wait = erlang_c(c, a)
    drain = c / service_s - rate  # cμ − λ: the rate at which a queue empties
    factor = (ca2 + cs2) / 2.0
    wq = p_wait / drain * factor
    p95 = max(0.0, math.log(p_wait / P95_TAIL) / drain) * factor if p_wait > 0 else 0.0
    needed = (
        None
        if target_p95_s is None
        else slots_needed(rate, service_s, target_p95_s, cs2=cs2, ca2=ca2)
    )
    return QueuePlan(
        rate=rate,
        service_s=service_s,
        slots=c,
        utilisation=a / c,
        p_wait=p_wait,
        mean_wait_s=wq,
        p95_wait_s=p95,
        mean_response_s=wq + service_s,
        correction=factor,
        slots_needed=needed,
    )


def slots_needed(
    rate: float,
    service_s: float,
    target_p95_s: float,
    *,
    cs2: float = 1.0,
    ca2: float = 1.0,
    max_slots: int = 4096,
) -> int | None:
    """The smallest number of slots c whose p95 wait (as `mmc` computes it) is at most
    `target_p95_s`; None when the target is negative or no c up to `max_slots` meets it.

    The p95 wait falls as c grows (more servers drain the queue faster, and fewer arrivals
    wait), so the first c that meets the target is the answer; the search starts at the
    smallest stable c, floor(a) + 1."""
    if target_p95_s < 0 or rate < 0 or service_s <= 0:
        return None
    c = max(1, math.floor(rate * service_s) + 1)
    while c <= max_slots:
        if mmc(rate, service_s, c, cs2=cs2, ca2=ca2).p95_wait_s <= target_p95_s:
            return c
        c += 1
    return None


# -- batching: a service time that depends on the load ------------------------------------
def service_time_at(k: float, table: Mapping[int, float]) -> float:
    """Seconds per request when `k` sequences run together, from a measured `table`
    {batch size: seconds per request}: linear between measured sizes, the smallest size's
    figure below it, and beyond the largest the line through the last two points (never
    below the last figure: a bigger batch is not cheaper per request). `k` may be fractional
    (a mean number of busy slots)."""
    if not table:
        raise ValueError("empty service table")
    sizes = sorted(table)
    if k <= sizes[0]:
        return table[sizes[0]]
    for lo, hi in itertools.pairwise(sizes):
        if k <= hi:
            return table[lo] + (table[hi] - table[lo]) * (k - lo) / (hi - lo)
    last = sizes[-1]
    if len(sizes) == 1:
        return table[last]
    prev = sizes[-2]
    slope = (table[last] - table[prev]) / (last - prev)
    return max(table[last], table[last] + slope * (k - last))


def effective_service_s(
    rate: float, table: Mapping[int, float], c: int, *, iterations: int = 50
) -> float:
    """The service time consistent with the load it causes (the load-dependent correction).

    Start from S = S(1); the mean number of busy slots is a = λS, i.e. ρ·c, clamped to
    [1, c]; read S at that concurrency from `table`; repeat until S settles. S(k) grows with
    k, so the iteration climbs monotonically to the smallest fixed point. The result may
    leave ρ = λS/c >= 1: the load cannot be served with `c` slots."""
    if c < 1:
        raise ValueError(f"need at least one slot, got c={c}")
    s = service_time_at(1, table)
    for _ in range(iterations):
        busy = min(float(c), max(1.0, rate * s))
        nxt = service_time_at(busy, table)
        if abs(nxt - s) <= 1e-12 * max(1.0, s):
            return nxt
        s = nxt
    return s


def replicas_needed(
    rate: float,
    table: Mapping[int, float],
    c: int,
    target_p95_s: float,
    *,
    cs2: float = 1.0,
    ca2: float = 1.0,
    max_replicas: int = 1024,
) -> int | None:
    """The fewest replicas of `c` slots each (the rate split evenly, each replica with the
    load-corrected service time) whose p95 wait meets `target_p95_s`; None if none up to
    `max_replicas` does. Poisson arrivals split at random stay Poisson."""
    for r in range(1, max_replicas + 1):
        share = rate / r
        s = effective_service_s(share, table, c)
        if share * s >= c:
            continue
        if mmc(share, s, c, cs2=cs2, ca2=ca2).p95_wait_s <= target_p95_s:
            return r
    return None


def load_corrected_slots_needed(
    rate: float,
    table: Mapping[int, float],
    target_p95_s: float,
    *,
    cs2: float = 1.0,
    ca2: float = 1.0,
    max_slots: int = 256,
) -> int | None:
    """The smallest c whose p95 wait meets `target_p95_s` when the service time is the
    load-corrected one at c slots (`effective_service_s`); None if no c up to `max_slots`
    does. Not always monotone in c (more slots, bigger batches, slower requests), so every
    c is tried in turn."""
    for c in range(1, max_slots + 1):
        s = effective_service_s(rate, table, c)
        if rate * s >= c:
            continue
        if mmc(rate, s, c, cs2=cs2, ca2=ca2).p95_wait_s <= target_p95_s:
            return c
    return None


# -- the engine itself, simulated ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StepCosts:
    """What one engine step costs, measured: a step of k sequences each decoding one token
    takes `decode_s[k]` seconds (interpolated between measured k, as `service_time_at`); a
    step evaluating prompt tokens alone costs `prefill_fixed_s` + `prefill_per_token_s`
    per token; and decodes riding in a step with a prompt add what `mixed_s` measured
    ({d: seconds of a step with one prompt of `prompt_tokens` and d decodes}) beyond the
    prompt alone; unmeasured, a decode step's cost. Prefill and decode cost differently
    per token (a prompt is evaluated as a matrix, a decode token as a vector), which is
    why one S(k) per batch size, measured with k prompts started together, cannot say how
    requests arriving one by one share the engine."""

    decode_s: Mapping[int, float]
    prefill_fixed_s: float
    prefill_per_token_s: float
    mixed_s: Mapping[int, float] | None = None
    prompt_tokens: int = 0

    def prefill_s(self, tokens: int) -> float:
        return self.prefill_fixed_s + self.prefill_per_token_s * tokens

    def step_s(self, decoding: int, prefill_tokens: int) -> float:
        """Seconds of a step with `decoding` one-token decodes and `prefill_tokens` prompt
        tokens."""
        if not prefill_tokens:
            return service_time_at(decoding, self.decode_s) if decoding else 0.0
        out = self.prefill_s(prefill_tokens)
        if decoding:
            if self.mixed_s:
                alone = self.prefill_s(self.prompt_tokens)
                extra = {0: 0.0, **{d: max(0.0, v - alone) for d, v in self.mixed_s.items()}}
                out += service_time_at(decoding, extra)
            else:
                out += service_time_at(decoding, self.decode_s)
        return out

    @classmethod
    def fit(
        cls,
        steps: Mapping[int, tuple[float, float]],
        prompt_tokens: int,
        mixed: Mapping[int, float] | None = None,
        prefill_chunk: int = 256,
    ) -> StepCosts:
        """From {k: (seconds of the prefill step of k prompts started together, seconds of
        one decode step of k)}: the decode table as measured, and a least-squares line
        through the prefill steps (k·prompt_tokens tokens each; fixed part at least 0);
        `mixed` ({d: seconds of one prompt's evaluation beside d decoding}) smoothed to a
        line in d through the prompt alone, as one step's share: a prompt longer than
        `prefill_chunk` took several steps, each carrying the d decodes."""
        if not steps:
            raise ValueError("no step timings to fit")
        xs = [k * prompt_tokens for k in steps]
        ys = [pre for pre, _ in steps.values()]
        if len(steps) == 1:
            per, fixed = ys[0] / xs[0], 0.0
        else:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            sxx = sum((x - mx) ** 2 for x in xs)
            per = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
            fixed = my - per * mx
            if fixed < 0 or per <= 0:  # noise: a line through the origin instead
                per, fixed = sum(ys) / sum(xs), 0.0
        decode = {k: dec for k, (_, dec) in steps.items()}
        alone = fixed + per * prompt_tokens
        chunks = max(1, math.ceil(prompt_tokens / prefill_chunk))
        # decodes riding beside a prompt: a line through the prompt alone (d = 0), least
        # squares over the measured d, so that one noisy figure does not set one size
        ds = [d for d in (mixed or {}) if d > 0]
        ride = (
            max(0.0, sum(d * (mixed[d] - alone) for d in ds) / sum(d * d for d in ds))
            if mixed and ds
            else 0.0
        )
        per_step = {d: alone + ride * d / chunks for d in ds}
        return cls(
            decode_s=decode, prefill_fixed_s=fixed, prefill_per_token_s=per,
            mixed_s=per_step or None, prompt_tokens=prompt_tokens,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Simulated:
    """The figures of a simulated run; times in seconds."""

    rate: float
    slots: int
    mean_wait_s: float
    p95_wait_s: float
    mean_service_s: float  # admission to last token
    utilisation: float  # λ·S/c, as the queue formulas define it
    busy: float  # the share of time the engine was stepping


def simulate(
    rate: float,
    costs: StepCosts,
    c: int,
    prompt_tokens: int,
    output_tokens: int,
    *,
    requests: int = 4000,
    warm_up: int = 200,
    seed: int = 0,
    prefill_chunk: int = 256,
    n_batch: int = 512,
    ca2: float = 1.0,
) -> Simulated:
    """The engine's own schedule, stepped in simulated time: `requests` arrivals at `rate`
    per second (Poisson; `ca2` < 1 draws gamma gaps, smoother), first come first served
    onto `c` slots; each step decodes one token for every sequence past its prompt, then
    gives waiting prompts up to `prefill_chunk` tokens each within `n_batch`, as
    EngineCore builds its batches; the step takes `costs.step_s`. A prompt's last chunk
    yields its first token. The first `warm_up` requests are left out of the figures
    (the queue starts empty). Deterministic for a seed. A load past what the engine
    serves shows as `busy` near 1 and waits that grow with `requests`."""
    import random

    if rate <= 0 or c < 1 or prompt_tokens < 1 or output_tokens < 1 or requests <= warm_up:
        raise ValueError("need rate > 0, c >= 1, token counts >= 1 and requests > warm_up")
    rng = random.Random(seed)
    shape = 1.0 / ca2 if ca2 > 0 else 0.0
    t, arrivals = 0.0, []
    for _ in range(requests):
        t += rng.gammavariate(shape, 1.0 / (shape * rate)) if shape else 1.0 / rate
        arrivals.append(t)
    now, nxt, busy_s = 0.0, 0, 0.0
    waiting: list[int] = []
    running: list[list[int]] = []  # [request, prompt tokens left, output tokens left]
    admitted, finished = [0.0] * requests, [0.0] * requests
    while nxt < requests or waiting or running:
        while nxt < requests and arrivals[nxt] <= now:
            waiting.append(nxt)
            nxt += 1
        while waiting and len(running) < c:
            i = waiting.pop(0)
            admitted[i] = now
            running.append([i, prompt_tokens, output_tokens])
        if not running:
            now = arrivals[nxt]
            continue
        decoding = sum(1 for r in running if r[1] == 0)
        budget, prefill = n_batch - decoding, 0
        chunks = []
        for r in running:
            n = min(r[1], prefill_chunk, budget) if r[1] else 0
            chunks.append(n)
            budget -= n
            prefill += n
        step = costs.step_s(decoding, prefill)
        now += step
        busy_s += step
        for r, n in zip(running, chunks, strict=True):
            if r[1] == 0:
                r[2] -= 1
            elif n:
                r[1] -= n
                r[2] -= r[1] == 0  # the prompt's last chunk samples the first token
        for r in running:
            if r[2] <= 0:
                finished[r[0]] = now
        running = [r for r in running if r[2] > 0]
    keep = range(warm_up, requests)
    waits = sorted(admitted[i] - arrivals[i] for i in keep)
    service = sum(finished[i] - admitted[i] for i in keep) / len(keep)
    return Simulated(
        rate=rate,
        slots=c,
        mean_wait_s=sum(waits) / len(waits),
        p95_wait_s=waits[min(len(waits) - 1, int(0.95 * len(waits)))],
        mean_service_s=service,
        utilisation=rate * service / c,
        busy=busy_s / now,
    )


def simulated_slots_needed(
    rate: float,
    costs: StepCosts,
    prompt_tokens: int,
    output_tokens: int,
    target_p95_s: float,
    *,
    max_slots: int = 64,
    requests: int = 2000,
    **kw: Any,
) -> int | None:
    """The fewest slots whose simulated p95 wait meets `target_p95_s` (None if no count up
    to `max_slots` does). More slots never lengthen the wait for one (each slot's request
    may run slower, in a bigger batch, but that is service, not waiting), so the count is
    found by bisection."""

    def meets(c: int) -> bool:
        sim = simulate(rate, costs, c, prompt_tokens, output_tokens, requests=requests, **kw)
        return sim.p95_wait_s <= target_p95_s

    if not meets(max_slots):
        return None
    lo, hi = 0, max_slots  # meets(hi); not known for lo (0 slots never do)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return hi


def simulated_replicas_needed(
    rate: float,
    costs: StepCosts,
    c: int,
    prompt_tokens: int,
    output_tokens: int,
    target_p95_s: float,
    *,
    max_replicas: int = 64,
    requests: int = 2000,
    **kw: Any,
) -> int | None:
    """The fewest replicas of `c` slots each (the rate split evenly: Poisson arrivals split
    at random stay Poisson) whose simulated p95 wait meets `target_p95_s`."""
    for r in range(1, max_replicas + 1):
        sim = simulate(rate / r, costs, c, prompt_tokens, output_tokens, requests=requests, **kw)
        if sim.p95_wait_s <= target_p95_s:
            return r
    return None


# -- command-line quantities --------------------------------------------------------------
_PER = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}
_UNITS = {"ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """Requests per second from "2/s", "120/min", "30/h" or a bare number (per second)."""
    value, sep, unit = text.strip().partition("/")
    per = _PER.get(unit.strip().lower()) if sep else 1.0
    try:
        n = float(value)
    except ValueError:
        n = math.nan
    if per is None or not math.isfinite(n) or n <= 0:
        raise ValueError(f"expected a rate such as 2/s, 120/min or 0.5, got {text!r}")
    return n / per


def parse_duration(text: str) -> float:
    """Seconds from "5s", "500ms", "2min", "1h" or a bare number (seconds)."""
    s = text.strip().lower()
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num) :] or "s"
    try:
        n = float(num)
    except ValueError:
        n = math.nan
    if unit not in _UNITS or not math.isfinite(n) or n < 0:
        raise ValueError(f"expected a duration such as 5s or 500ms, got {text!r}")
    return n * _UNITS[unit]


def predicted(snap: Mapping[str, object]) -> dict[str, float | None]:
    """Utilisation and the predicted mean wait for a slot of a running engine, from its
    `snapshot()` (the last two minutes' arrival rate, mean service time and its cs2, its
    slots): the Allen-Cunneen G/G/c wait beside the measured one. None where the window
    has too little traffic, or the load is at or past what the slots serve."""
    rate, service, slots = snap.get("arrival_rate"), snap.get("service_s"), snap.get("slots")
    out: dict[str, float | None] = {"utilisation": None, "wait_predicted_s": None}
    if not isinstance(rate, float | int) or not isinstance(service, float | int):
        return out
    if not isinstance(slots, int) or slots < 1 or service <= 0:
        return out
    rho = rate * service / slots
    out["utilisation"] = rho
    if rho < 1:
        cs2 = snap.get("service_cs2")
        cs2 = float(cs2) if isinstance(cs2, float | int) else 1.0
        out["wait_predicted_s"] = mmc(rate, float(service), slots, cs2=cs2).mean_wait_s
    return out
