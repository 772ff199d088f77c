"""`llmos plan`: how many slots (or replicas) a request rate needs, from a measured service
table and queueing theory (llmos/ops/capacity.py; docs/PLAN.md)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmos.cli.common import fail, settings
from llmos.errors import LlmosError

if TYPE_CHECKING:
    from llmos.config import Settings
    from llmos.ops.capacity import QueuePlan, Simulated, StepCosts
    from llmos.ops.plan_measure import Measured

MAX_MEASURED_SLOTS = 64  # the most slots an engine may have (n_seq_max's limit)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_MEASURED_SLOTS:
        raise fail(f"--sizes {text!r}: expected batch sizes such as 1,2,4 (1 to 64)")
    return sizes


def plan(
    rate: Annotated[str, typer.Option("--rate", help="arrivals: 2/s, 120/min, 0.5 (per second)")],
    model: Annotated[str | None, typer.Option("--model", "-m")] = None,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", min=1)] = 300,
    output_tokens: Annotated[int, typer.Option("--output-tokens", min=1)] = 200,
    target_p95: Annotated[
        str | None, typer.Option("--target-p95", help="p95 wait for a slot to meet: 5s, 500ms")
    ] = None,
    slots: Annotated[
        int | None, typer.Option("--slots", min=1, help="slots per engine (default: n_seq_max)")
    ] = None,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--reuse",
            help="measure again, or reuse a cached table measured at these request sizes",
        ),
    ] = False,
    sizes: Annotated[
        str | None, typer.Option("--sizes", help="batch sizes to measure (default: 1,2,4,.. c)")
    ] = None,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="runs per batch size (the median is kept)")
    ] = 3,
    cs2: Annotated[
        float, typer.Option("--cs2", min=0.0, help="service time variability (SCV; 1: exponential)")
    ] = 1.0,
    ca2: Annotated[
        float, typer.Option("--ca2", min=0.0, help="arrival variability (SCV; 1: Poisson)")
    ] = 1.0,
) -> None:  # fmt: skip
    """Plan capacity: wait times at a request rate, and the slots a p95 target needs.

    Measures seconds per request at a few batch sizes (cached in the data dir),
    then applies M/M/c (Erlang C) with and without the batching slowdown (docs/PLAN.md)."""
    from llmos.ops import capacity as cap
    from llmos.ops import plan_measure as pm

    try:
        lam = cap.parse_rate(rate)
        target = None if target_p95 is None else cap.parse_duration(target_p95)
    except ValueError as exc:
        raise fail(str(exc)) from None
    s = settings()
    name = model or s.default_model
    try:
        remote = _remote_meta(s, name)
    except LlmosError as exc:
        raise fail(str(exc)) from None
    c = slots or (int(remote.get("parallel") or 4) if remote is not None else s.n_seq_max)
    wanted = _sizes(sizes) if sizes else pm.default_sizes(min(c, MAX_MEASURED_SLOTS))

    table = None if measure else pm.load_table(s.data_dir, name, prompt_tokens, output_tokens)
    costs = (
        None
        if measure
        else pm.load_costs(s.data_dir, name, prompt_tokens, output_tokens, s.prefill_chunk)
    )
    cached = table is not None and set(wanted) <= set(table)
    if not cached:
        typer.echo(
            f"measuring {name}{' (remote: over its API)' if remote is not None else ''}: "
            f"{prompt_tokens} prompt + {output_tokens} output tokens per request, batches of "
            f"{','.join(map(str, wanted))}",
            err=True,
        )
        try:
            if remote is not None:
                measured = _measure_remote(s, name, remote, c, prompt_tokens, output_tokens, wanted, repeats)  # fmt: skip
            else:
                factory = pm.settings_engine_factory(s, name, slots=max(wanted))
                measured = pm.measure_engine(
                    factory, prompt_tokens, output_tokens, wanted, repeats=repeats
                )
        except (LlmosError, ValueError) as exc:
            raise fail(str(exc)) from None
        table = measured.table
        # a remote model's batching is its server's: no step timings, no simulation
        steps = measured.steps if remote is None else {}
        pm.save_table(s.data_dir, name, prompt_tokens, output_tokens, table, steps, measured.mixed)
        costs = (
            cap.StepCosts.fit(steps, prompt_tokens, measured.mixed, s.prefill_chunk)
            if steps
            else None
        )
    assert table is not None

    s1 = cap.service_time_at(1, table)
    s_eff = cap.effective_service_s(lam, table, c)
    for label, sv in (("unbatched", s1), ("load-corrected", s_eff)):
        if lam * sv >= c:
            hint = _stable_hint(lam, table, c)
            raise fail(
                f"unstable: {lam:g}/s x {sv:.3g} s = {lam * sv:.2f} busy slots on average "
                f"({label}), more than the {c} there are (utilisation {lam * sv / c:.0%})"
                f"{hint}"
            )
    base = cap.mmc(lam, s1, c, cs2=cs2, ca2=ca2)
    corr = cap.mmc(lam, s_eff, c, cs2=cs2, ca2=ca2)

    where = "cached" if cached else "measured"
    at = f" (remote at {remote.get('url')})" if remote is not None else ""
    typer.echo(
        f"{name}{at}: {prompt_tokens} prompt + {output_tokens} output tokens per request "
        f"({where}; the table is plan/{pm.cache_path(s.data_dir, name).name} in the data dir)"
    )
    typer.echo("batch  s/request")
    for k, v in sorted(table.items()):
        typer.echo(f"{k:5d}  {v:9.3f}")
    kind = "M/M/c" if cs2 == 1 and ca2 == 1 else "G/G/c (Allen-Cunneen)"
    typer.echo(f"rate {lam:g}/s on {c} slots; {kind}, unbatched vs load-corrected service")
    _table(base, corr)
    sim = None
    if costs is not None:
        sim = cap.simulate(
            lam, costs, c, prompt_tokens, output_tokens, ca2=ca2,
            prefill_chunk=s.prefill_chunk, n_batch=s.n_batch,
        )  # fmt: skip
        typer.echo(
            f"the engine simulated (its batches, stepped at the measured step costs; "
            f"docs/PLAN.md): service {sim.mean_service_s:.3f} s, utilisation "
            f"{sim.utilisation:.1%}, mean wait {sim.mean_wait_s:.3f} s, p95 wait "
            f"{sim.p95_wait_s:.3f} s"
        )
    else:
        typer.echo(
            "(not simulated: a remote model batches as its server does)"
            if remote is not None
            else "(no step timings with this table: --measure adds them, and the simulation)"
        )
    if target is not None:
        _target(lam, table, c, target, s1, cs2=cs2, ca2=ca2)
        if sim is not None and costs is not None:
            _simulated_target(lam, costs, c, prompt_tokens, output_tokens, target, sim, s, ca2)


def _simulated_target(
    lam: float, costs: StepCosts, c: int, prompt_tokens: int, output_tokens: int,
    target: float, sim: Simulated, s: Settings, ca2: float,
) -> None:  # fmt: skip
    """The slots (or replicas) the p95 target needs, by the simulated engine."""
    from llmos.ops import capacity as cap

    meets = "meets" if sim.p95_wait_s <= target else "misses"
    kw: dict[str, Any] = {"ca2": ca2, "prefill_chunk": s.prefill_chunk, "n_batch": s.n_batch}
    need = cap.simulated_slots_needed(lam, costs, prompt_tokens, output_tokens, target, **kw)
    line = f"simulated: {c} slots {meets} it (p95 wait {sim.p95_wait_s:.3f} s); {_slots(need)}"
    if need is None or need > c:
        reps = cap.simulated_replicas_needed(
            lam, costs, c, prompt_tokens, output_tokens, target, **kw
        )
        if reps is not None:
            line += f", or {reps} replicas of {c} slots each"
    typer.echo(line + " would")


def _remote_meta(s: Settings, name: str) -> dict[str, Any] | None:
    """A remote model's catalog entry (c is its `parallel`), or None for a local one."""
    from llmos.kernel.models import ModelLibrary

    entry = ModelLibrary(s.data_dir).get(name)  # ModelNotFound: the caller's one line
    return dict(entry.meta or {}) if entry.remote else None


def _measure_remote(
    s: Settings, name: str, meta: dict[str, Any], c: int, prompt_tokens: int,
    output_tokens: int, sizes: list[int], repeats: int,
) -> Measured:  # fmt: skip
    """Measure a remote model over its API, up to `c` requests at once."""
    import asyncio

    from llmos.kernel.remote import RemoteEngine
    from llmos.ops import plan_measure as pm

    async def run() -> Measured:
        engine = RemoteEngine(name, {**meta, "parallel": max(c, *sizes)}, s)
        try:
            return await pm.measure_remote(
                engine, prompt_tokens, output_tokens, sizes, repeats=repeats
            )
        finally:
            await engine.aclose()

    return asyncio.run(run())


def _table(base: QueuePlan, corr: QueuePlan) -> None:
    rows = [
        ("service time", f"{base.service_s:.3f} s", f"{corr.service_s:.3f} s"),
        ("utilisation", f"{base.utilisation:.1%}", f"{corr.utilisation:.1%}"),
        ("P(wait)", f"{base.p_wait:.1%}", f"{corr.p_wait:.1%}"),
        ("mean wait", f"{base.mean_wait_s:.3f} s", f"{corr.mean_wait_s:.3f} s"),
        ("p95 wait", f"{base.p95_wait_s:.3f} s", f"{corr.p95_wait_s:.3f} s"),
        ("mean response", f"{base.mean_response_s:.3f} s", f"{corr.mean_response_s:.3f} s"),
    ]
    typer.echo(f"{'':14}  {'unbatched':>12}  {'load-corrected':>14}")
    for label, a, b in rows:
        typer.echo(f"{label:14}  {a:>12}  {b:>14}")


def _stable_hint(lam: float, table: dict[int, float], c: int) -> str:
    """What would serve an unstable load: more slots, else replicas of `c` slots."""
    from llmos.ops import capacity

    need = capacity.load_corrected_slots_needed(lam, table, math.inf)
    if need is not None:
        return f"; {need} slots would serve it"
    reps = capacity.replicas_needed(lam, table, c, math.inf)
    return f"; {reps} replicas of {c} slots would serve it" if reps is not None else ""


def _slots(n: int | None) -> str:
    return "no slot count up to the limit" if n is None else f"{n} slots"


def _target(
    lam: float,
    table: dict[int, float],
    c: int,
    target: float,
    s1: float,
    *,
    cs2: float,
    ca2: float,
) -> None:
    """The slots the p95 target needs, and replicas of `c` slots when one engine can't."""
    from llmos.ops import capacity

    plain = capacity.slots_needed(lam, s1, target, cs2=cs2, ca2=ca2)
    corrected = capacity.load_corrected_slots_needed(lam, table, target, cs2=cs2, ca2=ca2)
    typer.echo(
        f"for p95 wait <= {target:g} s: {_slots(plain)} (unbatched), "
        f"{_slots(corrected)} (load-corrected)"
    )
    if corrected is None or corrected > c:
        reps = capacity.replicas_needed(lam, table, c, target, cs2=cs2, ca2=ca2)
        if reps is not None:
            typer.echo(f"or {reps} replicas of {c} slots each (the rate split evenly)")
