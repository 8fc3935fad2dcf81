"""What one model call records: metrics, its span, and its log context."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ai_orchestration.accounting import call_cost
from ai_orchestration.providers.base import ProviderCancelled, provider_call_observer_register
from topdog.observability import metrics, tracing
from topdog.observability.context import log_context_bound


class ProviderCall:
    def __init__(self, provider: str, request: Any, span: tracing.ProviderSpan) -> None:
        self.provider = provider
        self.model = request.model
        self.span = span

    def attempt_failed(self, exc: Any) -> None:
        """One attempt failed (retried or not)."""
        if isinstance(exc, ProviderCancelled):
            kind = "cancelled"
        else:
            kind = "retryable" if getattr(exc, "retryable", False) else "fatal"
        metrics.PROVIDER_ERRORS.labels(self.provider, self.model, kind).inc()

    def completed(self, completion: Any) -> None:
        labels = (self.provider, self.model)
        metrics.PROVIDER_INPUT_TOKENS.labels(*labels).inc(completion.usage.input_tokens)
        metrics.PROVIDER_OUTPUT_TOKENS.labels(*labels).inc(completion.usage.output_tokens)
        cost = call_cost(
            provider=completion.provider,
            model=completion.model,
            input_tokens=completion.usage.input_tokens,
            output_tokens=completion.usage.output_tokens,
        )
        if cost:
            metrics.PROVIDER_COST_USD.labels(*labels).inc(float(cost))
        self.span.completed(completion)


@contextmanager
def provider_call_observed(provider: str, request: Any) -> Iterator[ProviderCall]:
    """Around one model call with all its retries: latency, outcome, tokens, cost, the
    span, and workflow_id/phase bound to the log lines written meanwhile."""
    metadata = request.metadata or {}
    started = time.perf_counter()
    outcome = "error"
    with (
        log_context_bound(workflow_id=metadata.get("workflow_id"), phase=metadata.get("phase")),
        tracing.provider_span(provider, request) as span,
    ):
        try:
            yield ProviderCall(provider, request, span)
            outcome = "ok"
        except ProviderCancelled as exc:
            outcome = "cancelled"
            span.failed(exc)
            raise
        except BaseException as exc:
            span.failed(exc)
            raise
        finally:
            labels = (provider, request.model)
            metrics.PROVIDER_CALL_SECONDS.labels(*labels).observe(time.perf_counter() - started)
            metrics.PROVIDER_CALLS.labels(*labels, outcome).inc()


# Loaded by the app's ready(): every model call is observed from then on.
provider_call_observer_register(provider_call_observed)
