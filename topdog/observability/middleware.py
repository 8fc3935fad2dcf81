"""Per request: the request id, the HTTP latency histogram and one access log line."""

import logging
import time
from collections.abc import Awaitable, Callable

import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from topdog.observability.context import REQUEST_ID_HEADER, current_request, request_id_accepted
from topdog.observability.logs import user_label
from topdog.observability.metrics import UNMATCHED_ROUTE, http_request_observed

access_logger = logging.getLogger("topdog.access")


def route_of(request: HttpRequest) -> str:
    """The URL pattern that served `request` ("api/workflows/<str:workflow_id>/"), never
    its path: a label of bounded cardinality."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNMATCHED_ROUTE
    return match.route or match.view_name or UNMATCHED_ROUTE


class RequestObservabilityMiddleware:
    """Outermost middleware. Takes the client's X-Request-ID when it is valid (<= 200 of
    [A-Za-z0-9._-]) or makes one, binds it to every log line of the request, echoes it
    on the response; times the request into the HTTP histogram and logs it on
    `topdog.access`. Sync and async capable (no thread hop under ASGI)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        started, tokens = self._begin(request)
        try:
            response = self.get_response(request)
            return self._end(request, response, started, user_label(request, may_query=True))
        finally:
            self._reset(tokens)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        started, tokens = self._begin(request)
        try:
            response = await self.get_response(request)
            user = user_label(request, may_query=False)
            if user is None and hasattr(request, "auser"):
                try:
                    found = await request.auser()
                    user = found.get_username() if found.is_authenticated else "anonymous"
                except Exception:
                    user = None
            return self._end(request, response, started, user)
        finally:
            self._reset(tokens)

    @staticmethod
    def _begin(request: HttpRequest) -> tuple[float, tuple]:
        request_id = request_id_accepted(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id
        tokens = (
            current_request.set(request),
            structlog.contextvars.bind_contextvars(request_id=request_id),
        )
        return time.perf_counter(), tokens

    @staticmethod
    def _reset(tokens: tuple) -> None:
        request_token, bound = tokens
        structlog.contextvars.reset_contextvars(**bound)
        current_request.reset(request_token)

    @staticmethod
    def _end(
        request: HttpRequest, response: HttpResponse, started: float, user: str | None
    ) -> HttpResponse:
        seconds = time.perf_counter() - started
        response[REQUEST_ID_HEADER] = request.request_id
        route = route_of(request)
        http_request_observed(
            method=request.method or "", route=route, status=response.status_code, seconds=seconds
        )
        latency_ms = round(seconds * 1000, 1)
        # The message says it all for the plain format; JSON lines also get the fields.
        access_logger.info(
            "%s %s %s %sms route=%s user=%s request_id=%s",
            request.method,
            request.path,
            response.status_code,
            latency_ms,
            route,
            user or "-",
            request.request_id,
            extra={
                "method": request.method,
                "route": route,
                "path": request.path,
                "status": response.status_code,
                "latency_ms": latency_ms,
                "user": user or "-",
            },
        )
        return response
