"""Prometheus metrics.

Two kinds, on purpose:

- In-process instruments (the default registry): HTTP latency, provider calls, open
  websockets. Each process counts its own; the web process serves them at /metrics, a
  task worker on TOPDOG_WORKER_METRICS_PORT (`worker_metrics_serve`).
- Scrape-time collectors that read the database (`DB_REGISTRY`): transitions by kind,
  autopilot runs and check runs by status, the task queue. They are state in the
  database, so counting them there is right across processes and costs the hot paths
  nothing. One grouped query each; a failing one is logged and yields nothing. Only the
  web /metrics serves them (so several workers do not report the same rows).
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ai_orchestration.models import AIRun
from workflows.models import CheckRun, Handoff
from workflows.states import HandoffKind

logger = logging.getLogger(__name__)

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"

HTTP_REQUEST_SECONDS = Histogram(
    "topdog_http_request_duration_seconds",
    "HTTP request latency by method, URL route (the pattern, never the raw path) and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_CALL_SECONDS = Histogram(
    "topdog_provider_call_duration_seconds",
    "Model call latency (all attempts of one call) by provider and model.",
    ["provider", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
PROVIDER_CALLS = Counter(
    "topdog_provider_calls",
    "Model calls by provider, model and outcome (ok, error, cancelled).",
    ["provider", "model", "outcome"],
)
PROVIDER_ERRORS = Counter(
    "topdog_provider_errors",
    "Failed model call attempts by provider, model and kind (retryable, fatal, cancelled).",
    ["provider", "model", "kind"],
)
PROVIDER_INPUT_TOKENS = Counter(
    "topdog_provider_input_tokens", "Input tokens of model calls.", ["provider", "model"]
)
PROVIDER_OUTPUT_TOKENS = Counter(
    "topdog_provider_output_tokens", "Output tokens of model calls.", ["provider", "model"]
)
PROVIDER_COST_USD = Counter(
    "topdog_provider_cost_usd", "USD spent on model calls (price table).", ["provider", "model"]
)
WEBSOCKETS_OPEN = Gauge("topdog_websockets_open", "Websocket connections open in this process.")


def http_request_observed(*, method: str, route: str, status: int, seconds: float) -> None:
    method = method if method in HTTP_METHODS else "OTHER"
    HTTP_REQUEST_SECONDS.labels(method, route, str(status)).observe(seconds)


def websocket_opened() -> None:
    WEBSOCKETS_OPEN.inc()


def websocket_closed() -> None:
    WEBSOCKETS_OPEN.dec()


def websockets_counted(app: Callable) -> Callable:
    """ASGI wrapper: a websocket counts as open from its accept until its consumer ends
    (however it ends, exceptions included); a refused handshake never counts."""

    async def counted(scope: dict, receive: Any, send: Any) -> None:
        accepted = False

        async def send_counting(message: dict) -> None:
            nonlocal accepted
            if message.get("type") == "websocket.accept" and not accepted:
                accepted = True
                websocket_opened()
            await send(message)

        try:
            await app(scope, receive, send_counting)
        finally:
            if accepted:
                websocket_closed()

    return counted


# --- scrape-time collectors ------------------------------------------------------------


def _transitions() -> list[Metric]:
    counts = dict.fromkeys(HandoffKind.values, 0)
    for row in Handoff.objects.order_by().values("kind").annotate(n=Count("id")):
        counts[row["kind"]] = row["n"]
    family = CounterMetricFamily(
        "topdog_workflow_transitions", "Workflow transitions (handoffs) by kind.", labels=["kind"]
    )
    for kind, n in sorted(counts.items()):
        family.add_metric([kind], n)
    return [family]


def _autopilot_runs() -> list[Metric]:
    counts = dict.fromkeys(AIRun.Status.values, 0)
    for row in AIRun.objects.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    family = GaugeMetricFamily(
        "topdog_autopilot_runs", "Autopilot runs by status.", labels=["status"]
    )
    for status, n in sorted(counts.items()):
        family.add_metric([status], n)
    return [family]


def _check_runs() -> list[Metric]:
    counts = {(k, s): 0 for k in CheckRun.Kind.values for s in CheckRun.Status.values}
    for row in CheckRun.objects.order_by().values("kind", "status").annotate(n=Count("id")):
        counts[(row["kind"], row["status"])] = row["n"]
    family = GaugeMetricFamily(
        "topdog_check_runs", "Sandbox check runs by kind and status.", labels=["kind", "status"]
    )
    for (kind, status), n in sorted(counts.items()):
        family.add_metric([kind, status], n)
    return [family]


def _task_queue() -> list[Metric]:
    from django_tasks import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    ready, running = TaskResultStatus.READY, TaskResultStatus.RUNNING
    depth: dict[str, int] = {"default": 0}
    oldest: dict[str, float] = {"default": 0.0}
    busy: dict[str, int] = {"default": 0}
    now = timezone.now()
    rows = (
        DBTaskResult.objects.filter(status__in=[ready, running])
        .order_by()
        .values("queue_name", "status")
        .annotate(n=Count("id"), oldest=Min("enqueued_at"))
    )
    for row in rows:
        queue = row["queue_name"]
        depth.setdefault(queue, 0)
        oldest.setdefault(queue, 0.0)
        busy.setdefault(queue, 0)
        if row["status"] == ready:
            depth[queue] = row["n"]
            oldest[queue] = max(0.0, (now - row["oldest"]).total_seconds())
        else:
            busy[queue] = row["n"]
    families = [
        GaugeMetricFamily(
            "topdog_task_queue_depth", "Tasks waiting to run, by queue.", labels=["queue"]
        ),
        GaugeMetricFamily(
            "topdog_task_queue_oldest_age_seconds",
            "Age of the oldest task waiting to run, by queue (0 when none waits).",
            labels=["queue"],
        ),
        GaugeMetricFamily("topdog_tasks_running", "Tasks running, by queue.", labels=["queue"]),
    ]
    for queue in sorted(depth):
        families[0].add_metric([queue], depth[queue])
        families[1].add_metric([queue], oldest[queue])
        families[2].add_metric([queue], busy[queue])
    return families


class DatabaseCollector(Collector):
    """The database's state, read when scraped: one grouped query per family."""

    sources: tuple[Callable[[], list[Metric]], ...] = (
        _transitions,
        _autopilot_runs,
        _check_runs,
        _task_queue,
    )

    def collect(self) -> Any:
        for source in self.sources:
            started = time.perf_counter()
            try:
                families = source()
            except Exception:
                logger.exception("metrics collector %s failed; its metrics are left out", source)
                continue
            logger.debug("metrics collector %s took %.4fs", source, time.perf_counter() - started)
            yield from families


DB_REGISTRY = CollectorRegistry(auto_describe=False)
DB_REGISTRY.register(DatabaseCollector())


def exposition() -> bytes:
    """The text exposition /metrics serves: this process's instruments, then the database's."""
    return generate_latest(REGISTRY) + generate_latest(DB_REGISTRY)


# --- the worker's own port ---------------------------------------------------------------

_worker_lock = threading.Lock()
_worker_port: dict[str, int | None] = {}


def worker_ports(spec: str) -> list[int]:
    """TOPDOG_WORKER_METRICS_PORT: a port ("9101") or a range to take the first free of
    ("9101-9108", so several workers on one host each get their own)."""
    try:
        first, _, last = spec.strip().partition("-")
        low, high = int(first), int(last or first)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"TOPDOG_WORKER_METRICS_PORT must be a port or a range like 9101-9108, got {spec!r}"
        ) from exc
    if not 0 < low <= high < 65536:
        raise ImproperlyConfigured(f"TOPDOG_WORKER_METRICS_PORT out of range: {spec!r}")
    return list(range(low, high + 1))


def worker_metrics_serve() -> int | None:
    """Serve this process's in-process metrics on TOPDOG_WORKER_METRICS_PORT (once per
    process; later calls return the port taken). None when unset or no port was free."""
    spec = settings.TOPDOG_WORKER_METRICS_PORT
    if not spec:
        return None
    with _worker_lock:
        if "port" in _worker_port:
            return _worker_port["port"]
        _worker_port["port"] = None
        addr = settings.TOPDOG_WORKER_METRICS_ADDR
        for port in worker_ports(spec):
            try:
                start_http_server(port, addr=addr)
            except OSError:
                continue
            _worker_port["port"] = port
            logger.info("worker metrics on http://%s:%d/metrics", addr, port)
            return port
        logger.warning("worker metrics: no free port in %s on %s; not served", spec, addr)
        return None
