"""Prometheus metrics: queue and running generations, tokens, TTFT, responses by status code.

Served at /metrics (chatsite/ops.py), restricted to CHAT_METRICS_ALLOW addresses or a bearer
CHAT_METRICS_TOKEN. Counters are per process (each web process and the worker expose their own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

if TYPE_CHECKING:
    from inference.jobs import Finished

REGISTRY = CollectorRegistry(auto_describe=True)

QUEUE_DEPTH = Gauge("chatsite_queue_depth", "Generations waiting for a slot", registry=REGISTRY)
RUNNING = Gauge("chatsite_running_generations", "Generations running in a slot", registry=REGISTRY)
SLOTS = Gauge("chatsite_slots", "Configured scheduler slots", registry=REGISTRY)
MODEL_READY = Gauge(
    "chatsite_model_ready", "1 when the model is loaded and admitting work", registry=REGISTRY
)
TOKENS = Counter("chatsite_generated_tokens", "Completion tokens generated", registry=REGISTRY)
PROMPT_TOKENS = Counter("chatsite_prompt_tokens", "Prompt tokens of finished generations", registry=REGISTRY)
GENERATIONS = Counter(
    "chatsite_generations", "Finished generations by how they ended", ["reason"], registry=REGISTRY
)
TTFT = Histogram(
    "chatsite_ttft_seconds",
    "Time from admission to the first generated token",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
RESPONSES = Counter("chatsite_http_responses", "HTTP responses by status code", ["code"], registry=REGISTRY)


class UpstreamCollector:
    """Each upstream connection's counters (``Connection.stats``) and state, read at scrape time
    from this process's connections (they count from when the connection was last configured)."""

    def describe(self) -> list:
        return []  # nothing to read at registration (the database may not be ready)

    def collect(self):  # noqa: ANN201 - prometheus_client's protocol
        from upstreams import registry

        label = ["connection"]
        requests = CounterMetricFamily(
            "chatsite_upstream_requests", "Calls sent to an upstream", labels=label
        )
        errors = CounterMetricFamily(
            "chatsite_upstream_errors",
            "Upstream calls that failed (connection, 5xx, cut short)",
            labels=label,
        )
        latency = SummaryMetricFamily(
            "chatsite_upstream_latency_seconds", "Upstream calls, from sending to the last byte", labels=label
        )
        in_flight = GaugeMetricFamily("chatsite_upstream_in_flight", "Upstream calls running", labels=label)
        waiting = GaugeMetricFamily(
            "chatsite_upstream_waiting", "Calls waiting for an upstream's free slot", labels=label
        )
        healthy = GaugeMetricFamily(
            "chatsite_upstream_healthy", "1 when the upstream is healthy", labels=label
        )
        for connection in registry.pool().connections.values():
            name, stats = [connection.name], connection.stats
            requests.add_metric(name, stats.requests)
            errors.add_metric(name, stats.errors)
            latency.add_metric(name, stats.latency_count, stats.latency_sum)
            in_flight.add_metric(name, connection.in_flight)
            waiting.add_metric(name, connection.waiting)
            healthy.add_metric(name, 1 if connection.healthy else 0)
        yield from (requests, errors, latency, in_flight, waiting, healthy)


REGISTRY.register(UpstreamCollector())


def observe_generation(finished: Finished) -> None:
    """Count one finished generation (called by the runner for every reply)."""
    GENERATIONS.labels(finished.reason).inc()
    TOKENS.inc(finished.usage.completion_tokens)
    PROMPT_TOKENS.inc(finished.usage.prompt_tokens)
    if finished.timings.ttft is not None:
        TTFT.observe(finished.timings.ttft)


def refresh_gauges() -> None:
    """Read the scheduler's state at scrape time."""
    from conversations.runtime import get_runtime

    status = get_runtime().status()
    QUEUE_DEPTH.set(status["queue_depth"])
    RUNNING.set(status["running"])
    SLOTS.set(status["slots"])
    MODEL_READY.set(1 if status["state"] == "ready" else 0)
