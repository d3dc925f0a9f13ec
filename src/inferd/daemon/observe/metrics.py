"""The daemon's Prometheus metrics: what every surface served, and how fast.

One `Metrics` object per daemon lives in the DaemonContext, with its own registry
(tests run many daemons in one process; the global registry would mix them). The
request pipeline (pipeline/run.py) is its only writer for requests and tokens: it
makes one call per generation and one per embed request, whatever the surface, so
the NDJSON sockets and the HTTP routes are counted the same way and nowhere else.
Gauges that already exist elsewhere (queue depth, running requests, open
connections) are read from the router and the connection tracker at scrape time,
not mirrored.

`GET /metrics` on the HTTP surface renders `exposition()`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from ...engine.events import Done

__all__ = ["CONTENT_TYPE", "Metrics", "RequestClock", "SURFACES"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# The `_created` timestamp series double every counter's lines and no dashboard here
# reads them (the process start time says the same).
disable_created_metrics()

#: The surfaces whose open connections are reported (the tracker's names).
SURFACES = ("inference", "v2", "embed", "http", "admin")

# Seconds: a warm 270M model answers its first token in ~20 ms; a queued request on a
# big model may wait a minute.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_RATE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0)


class RequestClock:
    """When one generation reached the pipeline, got its permit and its first event,
    and how it ended; the pipeline fills it in and hands it to `Metrics.generation`."""

    __slots__ = ("started", "permitted", "first", "done", "outcome")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.permitted = 0.0
        self.first = 0.0
        self.done: Done | None = None
        #: "ok", "error" (failed mid-stream), "cancelled" (the client left, or the
        #: daemon cancelled it), or the refusal's fault kind ("queue_full", ...).
        self.outcome = "cancelled"

    def permit(self) -> None:
        self.permitted = time.perf_counter()

    def first_event(self) -> None:
        if not self.first:
            self.first = time.perf_counter()


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=False)
        # What the pipeline counts per request lives in plain numbers read at scrape
        # time (_Served): a prometheus_client Counter or Histogram takes a lock on
        # every update, nine of them per request, a tenth of a 1-token request's cost
        # (ADR 0023 measures its Histogram: 0.74 us per observe, three per request).
        self._served = _Served()
        r.register(self._served)
        self.model_load = Gauge(
            "inferd_model_load_seconds", "Duration of the last model load, from reading the config to ready",
            registry=r)
        self.reloads = Counter("inferd_reloads", "Reloads (SIGHUP), by outcome", ["outcome"], registry=r)
        self.http_responses = Counter(
            "inferd_http_responses", "HTTP responses by route and status (0: the client left first)",
            ["route", "status"], registry=r)
        self._live = _Live()
        r.register(self._live)

    # ---- wiring ----------------------------------------------------------------------

    def attach(self, router: Any, tracker: Any) -> None:
        """Where the scrape-time gauges come from (the daemon's router and tracker)."""
        self._live.router = router
        self._live.tracker = tracker

    # ---- the pipeline's hooks ----------------------------------------------------------

    def generation(self, surface: str, clock: RequestClock) -> None:
        """One generation ended (served, failed, cancelled or refused)."""
        served = self._served
        key = (surface, "generate", clock.outcome)
        served.requests[key] = served.requests.get(key, 0) + 1
        tally = served.surfaces.get(surface)
        if tally is None:
            tally = served.surfaces[surface] = _Tally()
        if clock.permitted:
            tally.queue_wait.observe(clock.permitted - clock.started)
        if clock.first:
            tally.ttft.observe(clock.first - clock.started)
        done = clock.done
        if done is None:
            return
        u = done.usage
        tally.prompt += u.prompt_tokens
        tally.cached += u.cached_tokens
        tally.completion += u.completion_tokens
        tally.reasoning += u.thinking_tokens
        rate = decode_rate(done, clock)
        if rate is not None:
            tally.decode.observe(rate)

    def embedding(self, surface: str, outcome: str, input_tokens: int = 0) -> None:
        served = self._served
        key = (surface, "embed", outcome)
        served.requests[key] = served.requests.get(key, 0) + 1
        if input_tokens:
            served.embed_tokens[surface] = served.embed_tokens.get(surface, 0) + input_tokens

    def http_response(self, route: str, status: int) -> None:
        """The HTTP surface's own answers (401, 404, 413 ... never reach the pipeline)."""
        self.http_responses.labels(route, str(status)).inc()

    # ---- the daemon's lifecycle --------------------------------------------------------

    def model_loaded(self, seconds: float) -> None:
        self.model_load.set(seconds)

    def reloaded(self, ok: bool, seconds: float | None = None) -> None:
        """A reload ended; a successful one also sets the load gauge (from the
        signal to ready again, in-flight requests on the old model included)."""
        self.reloads.labels("ok" if ok else "failed").inc()
        if ok and seconds is not None:
            self.model_load.set(seconds)

    # ---- reading ---------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Everything, in the Prometheus text format."""
        return generate_latest(self.registry)


def decode_rate(done: Done, clock: RequestClock) -> float | None:
    """Tokens per second of decoding: the backend's own figure when it has one, else
    completion tokens after the first over the time since the first."""
    if done.timings is not None and done.timings.tokens_per_second > 0:
        return done.timings.tokens_per_second
    n = done.usage.completion_tokens
    if n < 2 or not clock.first:
        return None
    elapsed = time.perf_counter() - clock.first
    return (n - 1) / elapsed if elapsed > 0 else None


class _Histogram:
    """Bucket counts and sum of one labelled histogram (Prometheus semantics: a value
    lands in the first bucket whose upper bound is at least the value)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            running += n
            out.append((floatToGoString(bound), running))
        return out


class _Tally:
    """Everything counted for the generations of one surface."""

    __slots__ = ("prompt", "cached", "completion", "reasoning", "queue_wait", "ttft", "decode")

    def __init__(self) -> None:
        self.prompt = self.cached = self.completion = self.reasoning = 0
        self.queue_wait = _Histogram(_LATENCY_BUCKETS)
        self.ttft = _Histogram(_LATENCY_BUCKETS)
        self.decode = _Histogram(_RATE_BUCKETS)


class _Served:
    """The pipeline's per-request numbers, written on the event loop without locks and
    turned into metric families when scraped."""

    def __init__(self) -> None:
        #: (surface, kind, outcome) -> requests.
        self.requests: dict[tuple[str, str, str], int] = {}
        self.surfaces: dict[str, _Tally] = {}
        #: surface -> input tokens of served embed requests.
        self.embed_tokens: dict[str, int] = {}

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily(
            "inferd_requests", "Requests that reached the pipeline, by surface, kind and outcome",
            labels=["surface", "kind", "outcome"])
        for labels, n in list(self.requests.items()):
            requests.add_metric(list(labels), n)
        yield requests
        tallies = list(self.surfaces.items())
        for name, help_text, attr in _COUNTERS:
            family = CounterMetricFamily(name, help_text, labels=["surface"])
            for surface, tally in tallies:
                family.add_metric([surface], getattr(tally, attr))
            yield family
        family = CounterMetricFamily("inferd_embed_input_tokens", "Input tokens of served embed requests",
                                     labels=["surface"])
        for surface, n in list(self.embed_tokens.items()):
            family.add_metric([surface], n)
        yield family
        for name, help_text, attr in _HISTOGRAMS:
            family = HistogramMetricFamily(name, help_text, labels=["surface"])
            for surface, tally in tallies:
                hist = getattr(tally, attr)
                family.add_metric([surface], hist.buckets(), hist.total)
            yield family


_COUNTERS = (
    ("inferd_prompt_tokens", "Prompt tokens of served generations", "prompt"),
    ("inferd_prompt_cached_tokens", "Prompt tokens served from the KV prefix cache (not evaluated again)", "cached"),
    ("inferd_completion_tokens", "Completion tokens generated", "completion"),
    ("inferd_reasoning_tokens", "Completion tokens that were reasoning", "reasoning"),
)
_HISTOGRAMS = (
    ("inferd_time_to_first_token_seconds",
     "From the request reaching the pipeline (queue wait included) to its first output", "ttft"),
    ("inferd_decode_tokens_per_second", "Decode rate of each served generation", "decode"),
    ("inferd_queue_wait_seconds", "From the request reaching the pipeline to its run permit", "queue_wait"),
)


class _Live:
    """Gauges read at scrape time from the objects that own the numbers."""

    def __init__(self) -> None:
        self.router: Any = None
        self.tracker: Any = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily("inferd_queue_depth", "Admitted requests waiting for a run permit",
                                    labels=["backend"])
        running = GaugeMetricFamily("inferd_requests_running", "Requests holding a run permit", labels=["backend"])
        ready = GaugeMetricFamily("inferd_backend_ready", "1 when the backend is ready", labels=["backend", "model"])
        for entry in self.router.entries if self.router is not None else ():
            gate = entry.admission
            waiting.add_metric([entry.label], gate.outstanding - gate.running)
            running.add_metric([entry.label], gate.running)
            ready.add_metric([entry.label, entry.caps.model or entry.label], 1.0 if entry.backend.ready() else 0.0)
        yield waiting
        yield running
        yield ready
        conns = GaugeMetricFamily("inferd_connections", "Open client connections", labels=["surface"])
        if self.tracker is not None:
            for surface in SURFACES:
                conns.add_metric([surface], self.tracker.count({surface}))
        yield conns
