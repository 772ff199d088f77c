"""The load figures `top` and /metrics show beside each engine: the last two minutes'
arrival rate, measured wait and service time, and the queueing model's utilisation and
predicted wait (llmos/ops/capacity.py `predicted`)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from llmos.kernel.engine import LoadWindow
from llmos.ops.capacity import mmc, predicted
from tests.test_scheduler import make, run, submit
from tests.test_server import serve_scripted


def test_the_window_keeps_two_minutes_of_traffic() -> None:
    w = LoadWindow(span_s=120)
    for t in range(0, 100, 2):  # one arrival every 2 s, each waited 0.5 s, served in 1 s
        w.arrived(float(t))
        w.served(t + 1.5, 0.5, 1.0)
    f = w.figures(100.0)
    assert f["arrival_rate"] == pytest.approx(0.5)  # 50 arrivals since the first, 100 s ago
    assert f["wait_measured_s"] == pytest.approx(0.5) and f["service_s"] == pytest.approx(1.0)
    assert f["service_cs2"] == pytest.approx(0.0)
    later = w.figures(300.0)  # all of it older than the window
    assert later["arrival_rate"] is None and later["service_s"] is None


def test_predicted_is_the_g_g_c_wait_at_the_measured_load() -> None:
    snap = {"arrival_rate": 3.0, "service_s": 0.5, "service_cs2": 0.2, "slots": 2}
    got = predicted(snap)
    assert got["utilisation"] == pytest.approx(0.75)
    assert got["wait_predicted_s"] == pytest.approx(mmc(3.0, 0.5, 2, cs2=0.2).mean_wait_s)
    assert predicted({**snap, "arrival_rate": 5.0})["wait_predicted_s"] is None  # overloaded
    assert predicted({"slots": 2}) == {"utilisation": None, "wait_predicted_s": None}


def test_an_engine_reports_its_load() -> None:
    core, clock = make(2)
    for i in range(6):  # one arrival every 0.5 s (the engine takes it in at its next step)
        submit(core, f"req {i}", n=8)
        core.step()
        clock.t += 0.5
    run(core, clock)
    snap = core.snapshot()
    assert 1.0 < snap["arrival_rate"] <= 6 / 2.5  # 6 since the first, 2.5 s and more ago
    assert snap["service_s"] is not None and snap["service_s"] > 0
    assert snap["wait_measured_s"] is not None


def test_metrics_and_top_show_the_load(tmp_path: Path) -> None:
    with serve_scripted(tmp_path) as (url, _app):
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(3):
                body = {"model": "smollm2-135m-instruct", "prompt": f"hi {i}", "max_tokens": 4}
                assert http.post("/v1/completions", json=body).status_code == 200
            text = http.get("/metrics").text
            assert 'llmos_engine_wait_measured_s{model="smollm2-135m-instruct"}' in text
            top = http.get("/v1/top").json()["models"][0]
            assert top["service_s"] > 0 and "wait_predicted_s" in top and "utilisation" in top
