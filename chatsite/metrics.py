"""Prometheus metrics: queue and running generations, tokens, TTFT, responses by status code.

Served at /metrics (chatsite/ops.py), restricted to CHAT_METRICS_ALLOW addresses or a bearer
CHAT_METRICS_TOKEN. Counters are per process (each web process and the worker expose their own).
"""

from __future__ import annotations

from django.http import HttpResponseBase
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from chatsite.middleware import ResponseMiddleware
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


def observe_generation(finished: Finished) -> None:
    """Count one finished generation (called by the runner for every reply)."""
    GENERATIONS.labels(finished.reason).inc()
    TOKENS.inc(finished.usage.completion_tokens)
    PROMPT_TOKENS.inc(finished.usage.prompt_tokens)
    if finished.timings.ttft is not None:
        TTFT.observe(finished.timings.ttft)


def refresh_gauges() -> None:
    """Read the scheduler's state at scrape time."""
    from chatsite.runtime import get_runtime

    status = get_runtime().status()
    QUEUE_DEPTH.set(status["queue_depth"])
    RUNNING.set(status["running"])
    SLOTS.set(status["slots"])
    MODEL_READY.set(1 if status["state"] == "ready" else 0)


class ResponseCodeMiddleware(ResponseMiddleware):
    """Count every HTTP response by status code (429s and 503s included)."""

    def process(self, response: HttpResponseBase) -> HttpResponseBase:
        RESPONSES.labels(str(response.status_code)).inc()
        return response
