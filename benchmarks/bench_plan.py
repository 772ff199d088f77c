"""`llmos plan` against reality (issue 16): predicted and measured waits under Poisson load.

The real engine (the packaged model, `--slots` slots) first has its service table measured
as `llmos plan` measures it (seconds per request at each concurrency). Then, for each
target utilisation (0.5, 0.7, 0.85), an open-loop Poisson arrival process (`--requests`
requests, loopback only, in-process) drives the engine at the rate that the load-corrected
model says gives that utilisation. The measured mean wait for a slot (submission to
admission) is compared with three predictions:

- M/M/c with the service time of one request alone, S(1) (the textbook model);
- M/M/c with the load-corrected service time (batching slows each request as load grows);
- the same with the Allen–Cunneen G/G/c factor (ca2 + cs2)/2, cs2 measured from the run's
  own service times (fixed-length outputs make them nearly constant, not exponential);
- G/G/c with the mean service time the run itself measured: the queue formula alone,
  separated from the service-time model;
- the engine simulated (`capacity.simulate`): its own schedule stepped in simulated time,
  each step costing what the same measurement runs timed (a decode step of k sequences;
  a prompt step by its tokens). This is the corrected model: no queue formula, the
  batching itself. The arrival rates are the ones at which it puts utilisation (λS/c)
  at each target.

Requests are fixed-size (`--prompt-tokens`, `--output-tokens`, no early end). The engine
runs with a quantum longer than a request, so a waiting request never preempts a running
one: the queue `llmos plan` models (first come, first served onto c slots).

    LLMOS_N_THREADS=1 python benchmarks/bench_plan.py [--slots 4] [--requests 300] [--loads 0.5,0.7,0.85]

On a 2-core machine give llama.cpp one thread: with both cores its threads compete with
the engine's Python thread and the arrival driver, and the step timings drift by tens of
percent between the measurement and the run (RESULTS.md, runs A and B).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import engine

SIM_REQUESTS = 10_000  # simulated arrivals, the same for choosing the rate and predicting


def solve_rate(target: float, costs: Any, c: int, prompt: int, output: int) -> float:
    """The arrival rate at which the simulated engine's utilisation is `target` (bisection
    over one seed's arrivals, so the utilisation is monotone in the rate)."""
    from llmos.ops.capacity import simulate

    lo, hi = 1e-3, c / (output * costs.step_s(c, 0) / c)
    for _ in range(30):
        mid = (lo + hi) / 2
        rho = simulate(mid, costs, c, prompt, output, requests=SIM_REQUESTS).utilisation
        lo, hi = (mid, hi) if rho < target else (lo, mid)
    return lo


def drive(core: Any, rate: float, n: int, prompt: int, output: int, seed: int) -> list[Any]:
    """Submit `n` requests at Poisson arrival times of `rate`/s; wait for all of them."""
    from llmos.core.sampling import SamplingParams
    from llmos.kernel.engine import DoneEvent
    from llmos.ops.plan_measure import _prompt

    rng = random.Random(seed)
    left = [n]
    done = threading.Event()
    lock = threading.Lock()

    def sink(events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, DoneEvent):
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()

    params = SamplingParams(temperature=0, max_tokens=output, ignore_eos=True)
    prompts = [_prompt(core, prompt, f"{seed}-{i}") for i in range(n)]
    seqs = []
    t = time.perf_counter()
    for p in prompts:
        t += rng.expovariate(rate)
        time.sleep(max(0.0, t - time.perf_counter()))
        seqs.append(core.submit(p, params, sink=sink))
    if not done.wait(600):
        raise SystemExit("the run did not finish in 600 s")
    return seqs


def main() -> None:
    from llmos.ops.capacity import StepCosts, effective_service_s, mmc, simulate
    from llmos.ops.plan_measure import measure_engine

    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=24)
    ap.add_argument("--loads", default="0.5,0.7,0.85")
    args = ap.parse_args()
    c = args.slots

    def make() -> Any:
        return engine(c, quantum=10_000)

    def measure() -> tuple[Any, Any]:
        """The engine measured as `llmos plan` measures it, and its step costs."""
        m = measure_engine(
            make, args.prompt_tokens, args.output_tokens, list(range(1, c + 1)), repeats=3
        )
        costs = StepCosts.fit(m.steps, args.prompt_tokens, m.mixed)
        print("service table (s per request at k together):", {k: round(v, 3) for k, v in m.table.items()})  # fmt: skip
        print(
            "steps: decode (ms) " + ", ".join(f"{k}: {v * 1000:.1f}" for k, v in costs.decode_s.items())
            + f"; prompt step {costs.prefill_fixed_s * 1000:.1f} ms + {costs.prefill_per_token_s * 1000:.2f} ms/token"
            + "; a prompt beside d decoding (ms) " + ", ".join(f"{d}: {v * 1000:.1f}" for d, v in m.mixed.items())
        )  # fmt: skip
        return m, costs

    # Measured again before each load: this machine's speed drifts by tens of percent
    # between minutes, and a wait near saturation amplifies any error in the service time.
    for i, target in enumerate(float(x) for x in args.loads.split(",")):
        measured, costs = measure()
        table = measured.table
        core = make()
        try:
            rate = solve_rate(target, costs, c, args.prompt_tokens, args.output_tokens)
            seqs = drive(core, rate, args.requests, args.prompt_tokens, args.output_tokens, i)
        finally:
            core.close()
        waits = [s.stats.queue_wait for s in seqs]
        service = [s.stats.finished - s.stats.admitted for s in seqs]
        mean_wait = statistics.mean(waits)
        s_mean = statistics.mean(service)
        cs2 = statistics.pvariance(service) / s_mean**2
        naive = mmc(rate, table[1], c)
        s_eff = effective_service_s(rate, table, c)
        corrected = mmc(rate, s_eff, c)
        gg = mmc(rate, s_eff, c, cs2=cs2)
        # the queue formula alone, given the service time the run itself measured
        rows: list[tuple[str, Any]] = [("M/M/c, S(1)", naive), ("M/M/c, load-corrected", corrected), ("G/G/c Allen-Cunneen", gg)]  # fmt: skip
        if rate * s_mean < c:
            rows.append(("G/G/c, S measured in run", mmc(rate, s_mean, c, cs2=cs2)))
        sim = simulate(
            rate, costs, c, args.prompt_tokens, args.output_tokens, requests=SIM_REQUESTS
        )
        rows.append(("engine simulated", sim))
        # the same without the measured mixed steps: a decode's cost added to a prompt's
        additive = StepCosts.fit(measured.steps, args.prompt_tokens)
        rows.append(("  ..., steps added", simulate(rate, additive, c, args.prompt_tokens, args.output_tokens, requests=SIM_REQUESTS)))  # fmt: skip
        print(
            f"target rho {target:.2f}: rate {rate:.2f}/s, measured rho {rate * s_mean / c:.2f}, "
            f"S mean {s_mean:.3f} s (load-corrected {s_eff:.3f}, simulated {sim.mean_service_s:.3f}, "
            f"alone {table[1]:.3f}), cs2 {cs2:.3f}, p95 wait {sorted(waits)[int(0.95 * len(waits))]:.3f} s "
            f"(simulated {sim.p95_wait_s:.3f})"
        )  # fmt: skip
        for name, plan in rows:
            err = (plan.mean_wait_s - mean_wait) / mean_wait if mean_wait > 0 else float("inf")
            print(f"  {name:24s} mean wait {plan.mean_wait_s:.3f} s vs measured {mean_wait:.3f} s ({err:+.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
