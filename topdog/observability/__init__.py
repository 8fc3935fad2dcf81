"""Observability: Prometheus metrics, structured logs with request context, OTel traces.

- `metrics`: the instruments, the scrape-time database collectors and the worker's port.
- `middleware`: request id, HTTP latency histogram and the access log, per request.
- `logs`: the logging configuration (plain or JSON), request context and secret scrubbing.
- `tracing`: OpenTelemetry, set up at process start only when an OTLP endpoint is set.
- `provider_calls`: what one model call records (metrics, span, log context).
- `context`: the request id and the log context (contextvars).
"""
