"""The request id and the log context of the current request or task (contextvars).

Context variables follow the work: into `sync_to_async` threads, asyncio tasks and the
thread of a task the worker runs, so every log line written on behalf of one request or
one task carries the same ids. `structlog.contextvars` holds the bound values; the
current Django request (for the user, resolved lazily) has a variable of its own.
"""

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import structlog

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")

# The request being served, for log lines that want its user or URL kwargs.
current_request: ContextVar[Any] = ContextVar("topdog_current_request", default=None)


def request_id_new() -> str:
    return uuid.uuid4().hex


def request_id_accepted(value: str | None) -> str:
    """`value` if it is a valid request id (<= 200 of [A-Za-z0-9._-]), else a new one."""
    if value and _VALID_REQUEST_ID.fullmatch(value):
        return value
    return request_id_new()


def log_context() -> dict[str, Any]:
    """The values bound for log lines here (request_id, workflow_id, run_id, ...)."""
    return structlog.contextvars.get_contextvars()


@contextmanager
def log_context_bound(**values: Any) -> Iterator[None]:
    """Bind `values` (those not None) to every log line written inside the block."""
    values = {key: str(value) for key, value in values.items() if value is not None}
    if not values:
        yield
        return
    with structlog.contextvars.bound_contextvars(**values):
        yield
