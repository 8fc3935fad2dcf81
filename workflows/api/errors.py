"""One mapping from domain errors to HTTP, with bodies that say what to do next.

Every error body has `detail`; validation errors add `errors` (field -> messages), and
invalid evidence `expected` (the phase's required fields, aliases and an example);
conflicts add `current_state` and `allowed_transitions`; an unknown project adds
`projects` (the caller's, at most 20) and `create`. A database that does not answer
is 503 with Retry-After. What reaches no view (unknown /api/ routes, uncaught
exceptions, limits) is answered in JSON by topdog/limits.py.
"""

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404
from django.urls import reverse
from django_fsm import ConcurrentTransition
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from workflows.authentication import TooManyFailures
from workflows.errors import (
    ActionForbidden,
    CheckUnavailable,
    ProjectNotFound,
    RepositoryUnavailable,
    TransitionConflict,
    WorkflowNotFound,
)
from workflows.evidence import EvidenceInvalid, evidence_expected
from workflows.release import ReleaseFailed
from workflows.selectors import project_list_for_user

logger = logging.getLogger(__name__)


# Seconds a client is told to wait when the database is unavailable (503).
DATABASE_RETRY_AFTER_SECONDS = 5


class IdempotencyKeyReused(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = (
        "this Idempotency-Key was already used with a different request body; "
        "use a new key for a new request"
    )


class IdempotencyKeyInFlight(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "a request with this Idempotency-Key is still being processed; retry shortly"


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ProjectNotFound):
        return Response(_project_not_found(exc, context.get("request")), status=404)
    if isinstance(exc, WorkflowNotFound | Http404):
        return Response({"detail": str(exc) or "not found"}, status=404)
    if isinstance(exc, TransitionConflict):
        return Response(
            {
                "detail": str(exc),
                "current_state": exc.current_state,
                "allowed_transitions": exc.allowed,
            },
            status=409,
        )
    if isinstance(exc, ConcurrentTransition):
        return Response(
            {"detail": "another request changed this workflow first; fetch it and retry"},
            status=409,
        )
    if isinstance(exc, ReleaseFailed):
        return Response({"detail": f"the release failed: {exc}"}, status=502)
    if isinstance(exc, RepositoryUnavailable):
        return Response({"detail": str(exc)}, status=502)
    if isinstance(exc, CheckUnavailable):
        return Response({"detail": str(exc)}, status=409)
    if isinstance(exc, ActionForbidden):
        return Response({"detail": str(exc)}, status=403)
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is down or out of connections: a retry soon is the right move.
        # Logged with the traceback, like any 5xx; the body says only what to do.
        logger.error("database unavailable: %s", exc, exc_info=exc)
        return Response(
            {"detail": "the database is unavailable; retry in a few seconds"},
            status=503,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": "request body too large"}, status=413)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
    if isinstance(exc, exceptions.ValidationError):
        body = {"detail": _validation_summary(exc.detail), "errors": exc.detail}
        if isinstance(exc, EvidenceInvalid):
            body["expected"] = evidence_expected(exc.phase)
        return Response(body, status=400)
    response = drf_exception_handler(exc, context)
    if isinstance(exc, exceptions.Throttled) and response is not None:
        reason = (
            TooManyFailures.default_detail if isinstance(exc, TooManyFailures) else "rate limited"
        )
        response.data = {
            "detail": f"{reason}; retry in {exc.wait:.0f} seconds" if exc.wait else reason
        }
    return response


PROJECTS_LISTED = 20


def _project_not_found(exc: ProjectNotFound, request: Any) -> dict:
    """The 404 of an unknown project, with the projects the caller can use instead and
    how to create one."""
    user = getattr(request, "user", None)
    slugs = []
    if user is not None and user.is_authenticated:
        projects = project_list_for_user(user=user).order_by("slug")
        slugs = list(projects.values_list("slug", flat=True)[:PROJECTS_LISTED])
    known = f"projects you can use: {', '.join(slugs)}" if slugs else "you are in no project yet"
    return {
        "detail": f"{exc}; {known}; create one with POST /api/projects/",
        "projects": slugs,
        "create": {
            "method": "POST",
            "url": reverse("api:project-list"),
            "body": {"slug": "my-project", "name": "My project"},
        },
    }


def _validation_summary(detail: Any) -> str:
    fields = sorted(_leaf_paths(detail))
    if not fields:
        return "invalid input"
    return "invalid input in: " + ", ".join(fields[:10]) + " (see errors)"


def _leaf_paths(detail: Any, prefix: str = "") -> list[str]:
    if isinstance(detail, dict):
        paths: list[str] = []
        for key, value in detail.items():
            paths += _leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
        return paths
    if isinstance(detail, list) and detail and isinstance(detail[0], dict | list):
        paths = []
        for index, value in enumerate(detail):
            if value:
                paths += _leaf_paths(value, f"{prefix}[{index}]")
        return paths
    return [prefix or "non_field_errors"]
