"""Request limits and JSON error bodies for the API, before and around every view.

`RequestGuardMiddleware` (early in MIDDLEWARE):

- a query string over TOPDOG_MAX_QUERY_STRING_BYTES is 414, before anything parses it;
- a NUL (`\\x00`, sent as `%00`) in the path is 404: no route has one, and PostgreSQL
  would refuse it as a 500 wherever a view looked it up;
- under /api/, a NUL in the query string is 400 (same reason: no parameter needs one);
- under /api/, a view's database error (OperationalError, InterfaceError) is 503 with
  Retry-After, and any other uncaught exception is 500 `{"detail": "internal error;
  request id …"}` (logged with its traceback under that id; the body carries none);
- under /api/, an error answer that is not JSON (Django's 404 page for an unknown route,
  a 400 page, a 500 page from a middleware) is replaced by `{"detail": …}` with the same
  status and headers. Pages outside /api/ are left as they are.
"""

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

from workflows.api.errors import DATABASE_RETRY_AFTER_SECONDS

API_PREFIX = "/api/"
# Seconds a client is told to wait when the database does not answer.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

logger = logging.getLogger("django.request")


def is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def request_id(request: HttpRequest) -> str:
    """The request's id: one a request-id middleware set, a sane X-Request-ID, or new."""
    existing = getattr(request, "request_id", None)
    if isinstance(existing, str) and existing:
        return existing
    header = request.META.get("HTTP_X_REQUEST_ID", "")
    value = header if _REQUEST_ID.match(header) else uuid.uuid4().hex
    request.request_id = value
    return value


def json_error(status: int, detail: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"detail": detail}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


class RequestGuardMiddleware:
    """See the module docstring. Sync and async capable (no thread hop under ASGI)."""

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
        refused = self.refusal(request)
        if refused is not None:
            return refused
        return self.as_json(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        return self.as_json(request, await self.get_response(request))

    @staticmethod
    def refusal(request: HttpRequest) -> HttpResponse | None:
        query = request.META.get("QUERY_STRING", "")
        limit = settings.TOPDOG_MAX_QUERY_STRING_BYTES
        if len(query.encode("utf-8", "surrogateescape")) > limit:
            return json_error(
                414,
                f"the query string is over {limit} bytes; send fewer or shorter parameters "
                "(limit: TOPDOG_MAX_QUERY_STRING_BYTES)",
            )
        if "\x00" in request.path:
            if is_api(request):
                return json_error(404, "not found")
            raise Http404("not found")
        if is_api(request) and "%00" in query and _nul_in(request):
            return json_error(400, "the query string must not contain NUL (%00) characters")
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_api(request):
            return None
        rid = request_id(request)
        if isinstance(exception, OperationalError | InterfaceError):
            logger.error(
                "Database unavailable: %s (request id %s)",
                request.path,
                rid,
                exc_info=exception,
                extra={"status_code": 503, "request": request},
            )
            return database_unavailable()
        if isinstance(exception, Http404):
            return None  # Django's 404 answer, turned into JSON on the way out
        logger.error(
            "Internal Server Error: %s (request id %s)",
            request.path,
            rid,
            exc_info=exception,
            extra={"status_code": 500, "request": request},
        )
        return internal_error(rid)

    @staticmethod
    def as_json(request: HttpRequest, response: HttpResponse) -> HttpResponse:
        """An API error answer that is not JSON, as `{"detail": …}` (same status, headers)."""
        if response.status_code < 400 or not is_api(request):
            return response
        content_type = response.get("Content-Type", "")
        if content_type.startswith("application/json") or "+json" in content_type:
            return response
        if response.status_code >= 500:
            replacement = internal_error(request_id(request), status=response.status_code)
        else:
            phrase = _phrase(response.status_code)
            detail = "not found" if response.status_code == 404 else phrase
            replacement = json_error(response.status_code, detail)
        for name, value in response.items():
            if name.lower() not in ("content-type", "content-length"):
                replacement[name] = value
        return replacement


def database_unavailable() -> JsonResponse:
    return json_error(
        503,
        "the database is unavailable; retry in a few seconds",
        Retry_After=str(DATABASE_RETRY_AFTER_SECONDS),
    )


def internal_error(rid: str, status: int = 500) -> JsonResponse:
    response = json_error(status, f"internal error; request id {rid}")
    response["X-Request-ID"] = rid
    return response


def _nul_in(request: HttpRequest) -> bool:
    return any("\x00" in key or "\x00" in "".join(values) for key, values in request.GET.lists())


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"
