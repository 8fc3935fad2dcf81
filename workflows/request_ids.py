"""The id of the request (or task) being handled, for the records it writes.

The project's observability middleware binds `request_id` to structlog's context
variables for each request (accepted from `X-Request-ID` or generated), and the task
worker binds the one an enqueue site passed as the task's `request_id` kwarg. Events,
autopilot runs and check runs store it, so an audit row leads back to the request (and
its log lines) that caused it.
"""

import structlog


def request_id_current() -> str:
    """The request id bound here, or "" outside a request or task that carries one."""
    return structlog.contextvars.get_contextvars().get("request_id") or ""
