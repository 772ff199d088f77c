"""GET /metrics (Prometheus text, through prometheus_client) and GET /health.

Each app has its own `CollectorRegistry`, not prometheus_client's global one: several apps
in one process (tests, a daemon beside a benchmark) keep separate counts and never clash
on a metric name. Event counts are counters the code bumps as things happen; what the
kernel holds right now (processes, engine counters, in-flight, uptime) is read at scrape
time by a collector, so it can never drift from the kernel.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any, Protocol

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Summary, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from llmos import __version__
from llmos.config import Settings
from llmos.kernel.kernel import Kernel


class Api(Protocol):
    """What the metrics read of the app's state (`llmos.server.state.Api`, which holds a
    `Metrics` and so can't be imported here)."""

    kernel: Kernel
    settings: Settings
    metrics: Metrics
    in_flight: int


class Metrics:
    """The app's counters, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmos_http_requests", "HTTP requests answered", ["method", "path", "status"],
            registry=r,
        )  # fmt: skip
        # a Summary exposes llmos_http_request_seconds_sum (the name the docs give) and _count
        self.latency = Summary(
            "llmos_http_request_seconds", "time spent answering, per route", ["path"], registry=r
        )
        self.rejected = Counter(
            "llmos_requests_rejected", "requests refused by a limit", ["reason"], registry=r
        )
        self.disconnects = Counter(
            "llmos_client_disconnects", "requests whose client left early (process killed)",
            registry=r,
        )  # fmt: skip
        self.tokens_generated = Counter(
            "llmos_completion_tokens", "tokens generated for API requests", registry=r
        )
        self.prompt_tokens = Counter(
            "llmos_prompt_tokens", "prompt tokens of API requests", registry=r
        )

    def answered(self, method: str, path: str, status: int, seconds: float) -> None:
        self.requests.labels(method, path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def watch(self, api: Api) -> None:
        """Read the kernel's live state at every scrape."""
        in_flight = Gauge(
            "llmos_requests_in_flight", "generation requests admitted and not finished",
            registry=self.registry,
        )  # fmt: skip
        in_flight.set_function(lambda: api.in_flight)
        self.registry.register(_KernelCollector(api))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# engine snapshot key -> (kind, help)
_ENGINE: dict[str, tuple[str, str]] = {
    "tokens_decoded": ("counter", "tokens decoded by the engine"),
    "tokens_prefilled": ("counter", "prompt tokens evaluated by the engine"),
    "steps": ("counter", "engine steps (batched decodes)"),
    "active": ("gauge", "sequences holding a slot"),
    "waiting": ("gauge", "sequences waiting for a slot"),
    "kv_cells_used": ("gauge", "KV cells in use"),
    "swaps_out": ("counter", "sequences swapped out to host RAM"),
}


class _KernelCollector(Collector):
    def __init__(self, api: Api) -> None:
        self.api = api

    def collect(self) -> Iterator[Metric]:
        k = self.api.kernel
        states = Tally(p.state.value for p in list(k.procs.values()))
        procs = GaugeMetricFamily(
            "llmos_processes", "processes in the table, by state", labels=["state"]
        )
        for state, n in sorted(states.items()):
            procs.add_metric([state], n)
        yield procs
        snaps = [lm.engine.snapshot() for lm in list(k.models.loaded.values())]
        for key, (kind, help_) in _ENGINE.items():
            family: Any = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                f"llmos_engine_{key}", help_, labels=["model"]
            )
            for s in snaps:
                family.add_metric([str(s["model"])], s[key])
            yield family
        from llmos.ops.capacity import predicted

        load = {
            "arrival_rate": "requests per second arriving (last two minutes)",
            "utilisation": "offered load over the slots: arrival rate x mean service / slots",
            "wait_measured_s": "mean wait for a slot, measured (last two minutes)",
            "wait_predicted_s": "mean wait for a slot, predicted (G/G/c, Allen-Cunneen)",
        }
        figures = [(str(s["model"]), {**s, **predicted(s)}) for s in snaps]
        for key, help_ in load.items():
            gauge = GaugeMetricFamily(f"llmos_engine_{key}", help_, labels=["model"])
            for model, f in figures:
                if f.get(key) is not None:
                    gauge.add_metric([model], float(f[key]))
            yield gauge
        yield GaugeMetricFamily(
            "llmos_uptime_seconds", "seconds since the kernel booted",
            value=round(time.time() - k.boot_time, 3),
        )  # fmt: skip


def router(api: Api) -> APIRouter:
    r = APIRouter(tags=["native"])
    api.metrics.watch(api)
    k = api.kernel

    @r.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - k.boot_time, 3),
            "processes": sum(1 for p in k.procs.values() if p.alive),
            "models_loaded": sorted(k.models.loaded),
            "in_flight": api.in_flight,
            "data_dir": str(api.settings.data_dir),
        }

    @r.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        # the 0.0.4 text format: what every Prometheus scraper reads (our names need none
        # of 1.0.0's UTF-8 escaping)
        return PlainTextResponse(api.metrics.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return r
