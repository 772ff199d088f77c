"""Capacity planning (`llmos plan`): Erlang C and the M/M/c figures against known values and
against a discrete-event simulation (ciw), the batching correction, the measured service
table and its cache, and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import ciw
import pytest
from typer.testing import CliRunner

from llmos.cli import app
from llmos.ops import capacity as cap
from llmos.ops import plan_measure as pm
from tests.conftest import one_line_error

runner = CliRunner()


def _erlang_c_direct(c: int, a: float) -> float:
    """The textbook formula, with factorials: fine for small c, an independent check."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


# -- Erlang C ------------------------------------------------------------------------------
def test_erlang_c_known_values() -> None:
    for rho in (0.0, 0.1, 0.5, 0.9):
        assert cap.erlang_c(1, rho) == pytest.approx(rho)  # M/M/1: P(wait) = ρ
    assert cap.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert cap.erlang_c(3, 2.0) == pytest.approx(4 / 9)  # the usual worked example
    for c, a in [(5, 4.0), (10, 8.5), (20, 15.0), (30, 29.0)]:
        assert cap.erlang_c(c, a) == pytest.approx(_erlang_c_direct(c, a), rel=1e-9)


def test_erlang_c_stable_for_many_servers() -> None:
    # the factorial formula overflows here; the recursion does not
    p = cap.erlang_c(1000, 950.0)
    assert 0 < p < 1
    assert cap.erlang_c(1000, 950.0) > cap.erlang_c(1001, 950.0)


@pytest.mark.parametrize(("c", "a"), [(1, 1.0), (2, 2.5), (3, 3.0), (0, 0.5), (2, -1.0)])
def test_erlang_c_rejects(c: int, a: float) -> None:
    with pytest.raises(ValueError):
        cap.erlang_c(c, a)


def test_mmc_mm1_closed_form() -> None:
    # M/M/1: Wq = ρ/(μ−λ), response 1/(μ−λ), P(Wq > t) = ρ e^−(μ−λ)t
    p = cap.mmc(0.5, 1.0, 1)
    assert p.utilisation == pytest.approx(0.5)
    assert p.p_wait == pytest.approx(0.5)
    assert p.mean_wait_s == pytest.approx(1.0)
    assert p.mean_response_s == pytest.approx(2.0)
    assert p.p95_wait_s == pytest.approx(math.log(0.5 / 0.05) / 0.5)
    assert p.correction == 1.0
    assert cap.mmc(0.01, 1.0, 4).p95_wait_s == 0.0  # under 5% wait at all: p95 is zero
    with pytest.raises(ValueError, match="unstable"):
        cap.mmc(3.0, 1.0, 3)


def test_allen_cunneen_scales_the_wait() -> None:
    m = cap.mmc(2.0, 1.0, 3)
    d = cap.mmc(2.0, 1.0, 3, cs2=0.0)  # M/D/c: half the M/M/c wait
    assert d.mean_wait_s == pytest.approx(m.mean_wait_s / 2)
    assert d.p95_wait_s == pytest.approx(m.p95_wait_s / 2)
    assert d.p_wait == m.p_wait and d.utilisation == m.utilisation


# -- against a simulation ----------------------------------------------------------------
def _simulate(rate: float, service_s: float, c: int, *, deterministic: bool) -> list[float]:
    """Waits of an M/M/c (or M/D/c) queue simulated by ciw, a warm-up left out."""
    service = (
        ciw.dists.Deterministic(value=service_s)
        if deterministic
        else ciw.dists.Exponential(rate=1 / service_s)
    )
    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(rate=rate)],
        service_distributions=[service],
        number_of_servers=[c],
    )
    ciw.seed(1)
    sim = ciw.Simulation(network)
    horizon = 30_000.0  # about 60 000 customers at 2.1/s: a second or two
    sim.simulate_until_max_time(horizon)
    return [r.waiting_time for r in sim.get_all_records() if r.arrival_date > 0.05 * horizon]


def _p95(xs: list[float]) -> float:
    return sorted(xs)[int(0.95 * len(xs))]


def test_mmc_matches_simulation() -> None:
    rate, service_s, c = 2.1, 1.0, 3  # ρ = 0.7
    waits = _simulate(rate, service_s, c, deterministic=False)
    plan = cap.mmc(rate, service_s, c)
    assert sum(waits) / len(waits) == pytest.approx(plan.mean_wait_s, rel=0.12)
    assert _p95(waits) == pytest.approx(plan.p95_wait_s, rel=0.12)
    assert sum(w > 0 for w in waits) / len(waits) == pytest.approx(plan.p_wait, rel=0.08)


def test_allen_cunneen_matches_deterministic_service() -> None:
    rate, service_s, c = 2.1, 1.0, 3
    waits = _simulate(rate, service_s, c, deterministic=True)
    plan = cap.mmc(rate, service_s, c, cs2=0.0)
    assert sum(waits) / len(waits) == pytest.approx(plan.mean_wait_s, rel=0.2)
    assert _p95(waits) == pytest.approx(plan.p95_wait_s, rel=0.2)


# -- the engine simulated ------------------------------------------------------------------
def _flat(step_s: float) -> cap.StepCosts:
    """A decode step costs `step_s` however many decode (perfect batching); prompts are free."""
    return cap.StepCosts(decode_s={1: step_s}, prefill_fixed_s=0.0, prefill_per_token_s=0.0)


def test_simulated_engine_is_m_d_c_when_batching_is_free() -> None:
    """With every step costing the same, each request holds a slot for its output tokens'
    steps, a fixed time: the engine is an M/D/c queue (plus at most a step's wait for
    admission, which happens between steps). ciw simulates that queue independently."""
    step, out, c, rate = 0.01, 101, 3, 2.1  # S = 100 decode steps = 1 s; ρ = 0.7
    sim = cap.simulate(rate, _flat(step), c, 8, out, requests=40_000, seed=3)
    assert sim.mean_service_s == pytest.approx(1.0, rel=0.02)
    assert sim.utilisation == pytest.approx(0.7, rel=0.02)
    waits = _simulate(rate, 1.0, c, deterministic=True)
    assert sim.mean_wait_s == pytest.approx(sum(waits) / len(waits) + step / 2, rel=0.12)
    assert sim.p95_wait_s == pytest.approx(_p95(waits), rel=0.15, abs=step)


def test_simulated_engine_m_d_1_closed_form() -> None:
    # one slot, fixed service S: Pollaczek-Khinchine, Wq = ρS / (2(1 − ρ))
    sim = cap.simulate(0.5, _flat(0.02), 1, 4, 51, requests=40_000, seed=5)
    assert sim.mean_wait_s == pytest.approx(0.5 * 1.0 / (2 * 0.5) + 0.01, rel=0.1)
    assert sim.busy == pytest.approx(0.5, rel=0.05)


def test_simulated_slots_and_replicas_needed_meet_the_target_and_are_the_fewest() -> None:
    flat, target = _flat(0.05), 0.5  # S = 20 steps = 1 s

    def p95(rate: float, c: int) -> float:
        return cap.simulate(rate, flat, c, 8, 21, requests=2000).p95_wait_s

    need = cap.simulated_slots_needed(2.1, flat, 8, 21, target)
    assert need is not None and p95(2.1, need) <= target < p95(2.1, need - 1)
    reps = cap.simulated_replicas_needed(2.1, flat, 1, 8, 21, target)
    assert reps is not None and p95(2.1 / reps, 1) <= target < p95(2.1 / (reps - 1), 1)
    assert cap.simulated_slots_needed(2.1, flat, 8, 21, -1.0) is None


def test_simulated_engine_batching_and_prompts_cost_what_steps_cost() -> None:
    # no arrivals overlap (one request a minute): a request costs its own steps exactly
    costs = cap.StepCosts(decode_s={1: 0.01, 4: 0.025}, prefill_fixed_s=0.05, prefill_per_token_s=0.001)  # fmt: skip
    assert costs.step_s(2, 0) == pytest.approx(0.015) and costs.step_s(0, 100) == pytest.approx(0.15)  # fmt: skip
    alone = cap.simulate(1 / 60, costs, 4, 300, 11, requests=300, seed=1)
    # a 300-token prompt in chunks of 256 and 44 (the last yields a token), then 10 decodes
    assert alone.mean_service_s == pytest.approx(0.05 + 0.256 + (0.05 + 0.044) + 10 * 0.01)
    assert alone.mean_wait_s == 0.0
    # more load, bigger batches: each request's service time grows, and so do the waits
    busy = [cap.simulate(r, costs, 4, 300, 11, requests=3000, seed=1) for r in (2.0, 4.0)]
    assert alone.mean_service_s < busy[0].mean_service_s < busy[1].mean_service_s
    assert busy[0].mean_wait_s < busy[1].mean_wait_s
    # decodes riding beside a prompt cost what was measured, not a decode step's own cost
    # (smoothed to a line in d through the prompt alone: 3 ms a riding decode here)
    mixed = cap.StepCosts.fit({1: (0.082, 0.01)}, 32, {1: 0.085, 3: 0.091})
    assert mixed.step_s(1, 32) == pytest.approx(0.085) and mixed.step_s(0, 32) == pytest.approx(0.082)  # fmt: skip
    assert mixed.step_s(2, 64) == pytest.approx(0.164 + 0.006) and mixed.step_s(2, 0) == 0.01
    # a prompt of two chunks carried the decodes through two steps: each step gets half
    halves = cap.StepCosts.fit({1: (0.082, 0.01)}, 32, {1: 0.085}, prefill_chunk=16)
    assert halves.step_s(1, 16) == pytest.approx(0.041 + 0.0015)
    fit = cap.StepCosts.fit({1: (0.082, 0.01), 2: (0.114, 0.016), 4: (0.178, 0.025)}, 32)
    assert fit.prefill_fixed_s == pytest.approx(0.05) and fit.prefill_per_token_s == pytest.approx(0.001)  # fmt: skip
    assert fit.decode_s == {1: 0.01, 2: 0.016, 4: 0.025}
    with pytest.raises(ValueError):
        cap.simulate(0.0, costs, 4, 300, 11)


# -- slots needed --------------------------------------------------------------------------
def test_slots_needed_meets_the_target_and_is_the_smallest() -> None:
    for rate in (0.5, 2.0, 7.5, 30.0):
        for target in (0.0, 0.1, 1.0, 10.0):
            c = cap.slots_needed(rate, 1.0, target)
            assert c is not None
            assert cap.mmc(rate, 1.0, c).p95_wait_s <= target
            if c > rate * 1.0 + 1:  # the one below is stable, and misses the target
                assert cap.mmc(rate, 1.0, c - 1).p95_wait_s > target
    # monotone: more load or a tighter target never needs fewer slots
    by_rate = [cap.slots_needed(r, 1.0, 0.5) for r in (1, 2, 4, 8, 16, 32)]
    assert by_rate == sorted(by_rate)  # type: ignore[type-var]
    by_target = [cap.slots_needed(8.0, 1.0, t) for t in (5.0, 1.0, 0.5, 0.1, 0.0)]
    assert by_target == sorted(by_target)  # type: ignore[type-var]
    assert cap.slots_needed(8.0, 1.0, -1.0) is None
    assert cap.slots_needed(100.0, 1.0, 0.0, max_slots=50) is None
    assert cap.mmc(2.0, 1.0, 3, target_p95_s=1.0).slots_needed == cap.slots_needed(2.0, 1.0, 1.0)


# -- batching ------------------------------------------------------------------------------
TABLE = {1: 1.0, 2: 1.2, 4: 1.6, 8: 2.4}


def test_service_time_at_interpolates() -> None:
    assert cap.service_time_at(1, TABLE) == 1.0
    assert cap.service_time_at(0.3, TABLE) == 1.0
    assert cap.service_time_at(3, TABLE) == pytest.approx(1.4)
    assert cap.service_time_at(6, TABLE) == pytest.approx(2.0)
    assert cap.service_time_at(16, TABLE) == pytest.approx(4.0)  # the last slope, onward
    assert cap.service_time_at(5, {2: 3.0}) == 3.0
    with pytest.raises(ValueError):
        cap.service_time_at(1, {})


def test_effective_service_is_self_consistent() -> None:
    rate, c = 2.0, 8
    s = cap.effective_service_s(rate, TABLE, c)
    assert s == pytest.approx(cap.service_time_at(rate * s, TABLE), rel=1e-9)
    assert s > TABLE[1]
    assert cap.effective_service_s(0.001, TABLE, c) == pytest.approx(1.0)  # idle: unbatched
    # overloaded: every slot busy, so the service time at c
    assert cap.effective_service_s(100.0, TABLE, c) == pytest.approx(TABLE[8])
    need = cap.load_corrected_slots_needed(rate, TABLE, 1.0)
    assert need is not None
    s_need = cap.effective_service_s(rate, TABLE, need)
    assert cap.mmc(rate, s_need, need).p95_wait_s <= 1.0
    assert cap.replicas_needed(6.0, TABLE, 4, 1.0) == 4


def test_parse_rate_and_duration() -> None:
    assert cap.parse_rate("2/s") == 2.0
    assert cap.parse_rate("120/min") == 2.0
    assert cap.parse_rate("0.5") == 0.5
    assert cap.parse_rate("36/h") == pytest.approx(0.01)
    assert cap.parse_duration("5s") == 5.0
    assert cap.parse_duration("500ms") == 0.5
    assert cap.parse_duration("2") == 2.0
    assert cap.parse_duration("1min") == 60.0
    for bad in ("fast", "2/x", "-1/s", "0", "nan/s", "/s"):
        with pytest.raises(ValueError):
            cap.parse_rate(bad)
    for bad in ("5 parsecs", "ms", "-1s", "inf"):
        with pytest.raises(ValueError):
            cap.parse_duration(bad)


# -- measuring and the cache -----------------------------------------------------------------
def test_measure_engine_scripted_engine() -> None:
    from llmos.kernel.engine import EngineCore
    from llmos.kernel.scripted import ScriptedBackend

    engines: list[Any] = []

    def factory() -> EngineCore:
        engines.append(EngineCore(ScriptedBackend(n_slots=4)))
        return engines[-1]

    seen: list[int] = []
    measured = pm.measure_engine(factory, 40, 5, [4, 1, 2], repeats=2, progress=seen.append)
    table = measured.table
    assert sorted(table) == [1, 2, 4] and seen == [1, 2, 4]
    assert sorted(measured.steps) == [1, 2, 4]
    assert sorted(measured.mixed) == [1, 2] and all(v > 0 for v in measured.mixed.values())
    assert all(pre > 0 and dec > 0 for pre, dec in measured.steps.values())
    assert all(v > 0 for v in table.values())
    assert engines[0].backend.closed
    # each prompt starts with its own tag: none shares a prefix the engine could reuse
    assert engines[0].stats.tokens_prefilled >= 40 * (1 + 2 * (1 + 2 + 4))
    with pytest.raises(ValueError, match="slots"):
        pm.measure_engine(factory, 40, 5, [8])


def test_table_cache(tmp_path: Path) -> None:
    assert pm.load_table(tmp_path, "m", 10, 5) is None
    path = pm.save_table(tmp_path, "m", 10, 5, {1: 0.5, 2: 0.75})
    assert path == tmp_path / "plan" / "m.json"
    assert pm.load_table(tmp_path, "m", 10, 5) == {1: 0.5, 2: 0.75}
    assert pm.load_table(tmp_path, "m", 10, 6) is None  # other sizes: measure again
    assert pm.load_costs(tmp_path, "m", 10, 5) is None  # saved without step timings
    pm.save_table(tmp_path, "m", 10, 5, {1: 0.5}, {1: (0.1, 0.02)}, {1: 0.11})
    assert pm.load_costs(tmp_path, "m", 10, 5) == cap.StepCosts.fit({1: (0.1, 0.02)}, 10, {1: 0.11})
    assert pm.load_costs(tmp_path, "m", 10, 6) is None
    path.write_text("{not json")
    assert pm.load_table(tmp_path, "m", 10, 5) is None
    assert pm.cache_path(tmp_path, "a/b.gguf").parent == tmp_path / "plan"
    assert pm.default_sizes(8) == [1, 2, 4, 8] and pm.default_sizes(6) == [1, 2, 4, 6]
    assert pm.default_sizes(1) == [1]


# -- the command line ------------------------------------------------------------------------
def _data_dir() -> Path:
    from llmos.config import load_settings

    return load_settings().data_dir


def test_cli_bad_arguments() -> None:
    assert "2/s" in one_line_error(runner.invoke(app, ["plan", "--rate", "fast"]))
    out = one_line_error(runner.invoke(app, ["plan", "--rate", "1/s", "--target-p95", "soon"]))
    assert "500ms" in out
    one_line_error(runner.invoke(app, ["plan", "--rate", "1/s", "--sizes", "0,x"]))
    nope = runner.invoke(app, ["plan", "--rate", "1/s", "--model", "nope", "--sizes", "1"])
    assert "unknown model 'nope'" in one_line_error(nope)


def test_cli_unstable_with_cached_table() -> None:
    pm.save_table(_data_dir(), "smollm2-135m-instruct", 16, 8, {1: 1.0, 2: 1.1})
    args = ["plan", "--rate", "3/s", "--prompt-tokens", "16", "--output-tokens", "8"]
    out = one_line_error(runner.invoke(app, [*args, "--slots", "2", "--sizes", "1,2"]))
    assert "unstable" in out and "slots would serve it" in out
    # the same table, a rate it can serve: no model is loaded (the table is cached)
    r = runner.invoke(app, ["plan", "--rate", "0.5/s", *args[3:], "--slots", "2", "--sizes", "1,2"])
    assert r.exit_code == 0, r.output
    assert "cached" in r.output and "load-corrected" in r.output
    assert "no step timings with this table" in r.output


def test_cli_plan_real_model(real_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # one thread: a tiny model gains nothing from more, and keeps steady on a busy machine
    monkeypatch.setenv("LLMOS_N_THREADS", "1")
    args = ["plan", "--rate", "1/s", "--prompt-tokens", "16", "--output-tokens", "8"]
    args += ["--slots", "2", "--sizes", "1,2", "--repeats", "1", "--target-p95", "2s"]
    r = runner.invoke(app, args)
    assert r.exit_code in (0, 2), r.output
    if r.exit_code == 2:  # a machine so busy that 1/s overloads 2 slots: still one line
        assert "unstable" in one_line_error(r)
        return
    for figure in ("utilisation", "P(wait)", "mean wait", "p95 wait", "p95 wait <= 2 s"):
        assert figure in r.output
    assert "the engine simulated" in r.output and "simulated: 2 slots" in r.output
    cached = json.loads((_data_dir() / "plan" / "smollm2-135m-instruct.json").read_text())
    assert cached["prompt_tokens"] == 16 and set(cached["table"]) == {"1", "2"}
    assert set(cached["steps"]) == {"1", "2"} and set(cached["mixed"]) == {"1"}
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "cached" in again.output
    fresh = runner.invoke(app, [*args, "--measure"])
    assert fresh.exit_code == 0 and "(measured" in fresh.output
