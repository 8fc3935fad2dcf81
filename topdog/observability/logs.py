"""Logging: the plain format (default) or JSON lines (LOG_FORMAT=json), request context
on every record, and secrets scrubbed from every record before it is written.

Stdlib logging stays the one pipeline (Django, django-tasks, daphne and TopDog all log
through it); structlog only renders a record as JSON, with the bound context variables
(`topdog.observability.context`) merged in. `logging_config()` is what settings.LOGGING is.
"""

import asyncio
import logging
import re
import threading
from typing import Any

import structlog

from topdog.observability.context import current_request, log_context

# Settings whose values never reach a log line (with every provider's api_key).
SECRET_SETTINGS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "SECRET_KEY",
    "TOPDOG_METRICS_TOKEN",
    "LOCAL_LLM_API_KEY",
)
REDACTED = "[REDACTED]"
# Shorter values are not scrubbed: they would blank out ordinary words.
MIN_SECRET_LENGTH = 6
# An Authorization header value, however it is quoted: `Authorization: Bearer x`,
# `'HTTP_AUTHORIZATION': 'Token x'`, `"authorization": "x"`.
_AUTHORIZATION = re.compile(
    r"(?i)(authorization['\"]?\s*[:=]\s*[(\[]?\s*b?['\"]?)"
    r"(?:(bearer|token|basic)\s+)?[^\s'\",)\]}]+"
)


def secret_values() -> list[str]:
    """The configured secrets, longest first (so a secret containing another goes whole)."""
    from django.conf import settings

    if not settings.configured:
        return []
    values = {str(getattr(settings, name, "") or "") for name in SECRET_SETTINGS}
    for config in (getattr(settings, "TOPDOG_PROVIDERS", None) or {}).values():
        values.add(str(config.get("api_key") or ""))
    return sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every known secret and Authorization header value replaced."""
    for secret in secret_values() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTHORIZATION.sub(
            lambda m: m.group(1) + (f"{m.group(2)} " if m.group(2) else "") + REDACTED, text
        )
    return text


class SecretScrubFilter(logging.Filter):
    """Scrub secrets from a record's message, arguments and traceback (handler filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return True
        record.msg, record.args = scrub(message, secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, secrets)
        return True


_resolving = threading.local()


def user_label(request: Any, *, may_query: bool) -> str | None:
    """Who made `request`: a username, "anonymous", or None when not known yet.

    A session user not loaded yet is loaded only when `may_query` (off the event loop);
    DRF puts the user it authenticated on the request, so that one is always known."""
    from django.utils.functional import SimpleLazyObject

    user = getattr(request, "user", None)
    if user is None:
        return None
    if type(user) is SimpleLazyObject and not may_query:
        return None
    if getattr(_resolving, "active", False):  # a log line written while loading the user
        return None
    _resolving.active = True
    try:
        return user.get_username() if user.is_authenticated else "anonymous"
    except Exception:
        return None
    finally:
        _resolving.active = False


def _off_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


class RequestContextFilter(logging.Filter):
    """Put the bound context (request_id, workflow_id, run_id, ...) and the request's
    user on every record, as attributes (the JSON format writes them as keys)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in log_context().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        request = current_request.get()
        if request is not None:
            if not hasattr(record, "user"):
                label = user_label(request, may_query=_off_event_loop())
                if label is not None:
                    record.user = label
            match = getattr(request, "resolver_match", None)
            if match is not None and not hasattr(record, "workflow_id"):
                workflow_id = match.kwargs.get("workflow_id")
                if workflow_id is not None:
                    record.workflow_id = str(workflow_id)
        return True


def _exception_from_record(_logger: Any, _name: str, event: dict) -> dict:
    """Render a stdlib record's traceback from its (scrubbed) exc_text."""
    record = event.get("_record")
    if event.pop("exc_info", None) and record is not None and record.exc_text:
        event["exception"] = record.exc_text
    return event


def _scrub_event(_logger: Any, _name: str, event: dict) -> dict:
    secrets = secret_values()
    return {k: scrub(v, secrets) if isinstance(v, str) else v for k, v in event.items()}


def json_formatter() -> logging.Formatter:
    """One JSON object per line: timestamp, level, logger, event, the context and extras."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            _exception_from_record,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _scrub_event,
            structlog.processors.JSONRenderer(default=str),
        ],
        keep_exc_info=True,
        keep_stack_info=True,
    )


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def logging_config(*, log_format: str = "plain", level: str = "INFO") -> dict:
    """settings.LOGGING: the console handler in `log_format` ("plain" or "json")."""
    if log_format not in ("plain", "json"):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, got {log_format!r}")
    formatter = (
        {"()": "topdog.observability.logs.json_formatter"}
        if log_format == "json"
        else {"format": PLAIN_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"console": formatter},
        "filters": {
            "request_context": {"()": "topdog.observability.logs.RequestContextFilter"},
            "scrub_secrets": {"()": "topdog.observability.logs.SecretScrubFilter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "console",
                "filters": ["request_context", "scrub_secrets"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.db.backends": {"level": "INFO"}},
    }
