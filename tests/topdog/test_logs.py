"""Request ids, the JSON log format, request context on log lines, secret scrubbing."""

import io
import json
import logging

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils.module_loading import import_string

from topdog.observability.context import log_context_bound
from topdog.observability.logs import (
    REDACTED,
    RequestContextFilter,
    SecretScrubFilter,
    logging_config,
    scrub,
)
from workflows.request_ids import request_id_current

SECRET = "sk-live-abcdefghijklmnop"


# --- X-Request-ID -----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_valid_request_id_is_echoed():
    response = Client().get("/api/health/", HTTP_X_REQUEST_ID="edge-42.a_b")
    assert response["X-Request-ID"] == "edge-42.a_b"


@pytest.mark.django_db
def test_a_request_id_is_generated_when_none_is_sent():
    first = Client().get("/api/health/")["X-Request-ID"]
    second = Client().get("/nowhere/")["X-Request-ID"]  # error responses carry one too
    assert len(first) == 32 and int(first, 16) >= 0
    assert first != second


@pytest.mark.django_db
@pytest.mark.parametrize("sent", ["a" * 201, "bad id", "x;drop", "é", ""])
def test_an_invalid_request_id_is_replaced(sent):
    echoed = Client().get("/api/health/", HTTP_X_REQUEST_ID=sent)["X-Request-ID"]
    assert echoed != sent and len(echoed) == 32


# --- JSON lines -------------------------------------------------------------------------


@pytest.fixture
def json_logs():
    """The console handler of LOG_FORMAT=json's configuration, on root, into a buffer."""
    config = logging_config(log_format="json")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(import_string(config["formatters"]["console"]["()"])())
    for name in config["handlers"]["console"]["filters"]:
        handler.addFilter(import_string(config["filters"][name]["()"])())
    root = logging.getLogger()
    root.addHandler(handler)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield lines
    root.removeHandler(handler)


def test_the_access_log_is_a_json_line_with_the_request_context(json_logs, api, project):
    response = api.get("/api/projects/", HTTP_X_REQUEST_ID="req-json-1")
    assert response.status_code == 200
    access = [line for line in json_logs() if line.get("logger") == "topdog.access"]
    assert len(access) == 1
    line = access[0]
    assert line["request_id"] == "req-json-1"
    assert line["method"] == "GET"
    assert line["route"] == "api/projects/"
    assert line["path"] == "/api/projects/"
    assert line["status"] == 200
    assert isinstance(line["latency_ms"], int | float)
    assert line["user"] == "alice"
    assert line["level"] == "info" and "timestamp" in line


def test_lines_written_inside_a_request_carry_its_ids(json_logs, api, project, monkeypatch):
    from workflows.api import resources

    original = resources.ProjectListApi.get

    def get(self, request, *args, **kwargs):
        logging.getLogger("workflows.test").warning("listing, request %s", request_id_current())
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(resources.ProjectListApi, "get", get)
    api.get("/api/projects/", HTTP_X_REQUEST_ID="req-json-2")
    [line] = [line for line in json_logs() if line.get("logger") == "workflows.test"]
    assert line["event"] == "listing, request req-json-2"
    assert line["request_id"] == "req-json-2"
    assert line["user"] == "alice"


def test_bound_workflow_and_run_ids_reach_json_lines(json_logs):
    with log_context_bound(workflow_id="wf-9", run_id="run-3", phase=None):
        logging.getLogger("ai_orchestration.test").info("step")
    logging.getLogger("ai_orchestration.test").info("after")
    step, after = [line for line in json_logs() if line.get("logger") == "ai_orchestration.test"]
    assert step["workflow_id"] == "wf-9" and step["run_id"] == "run-3"
    assert "phase" not in step
    assert "workflow_id" not in after


def test_the_default_format_stays_plain():
    assert django_settings.LOG_FORMAT == "plain"
    formatter = logging_config()["formatters"]["console"]
    assert formatter == {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}


# --- secrets ----------------------------------------------------------------------------


def _captured(handler_format: logging.Formatter | None = None):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(handler_format or logging.Formatter("%(message)s"))
    handler.addFilter(RequestContextFilter())
    handler.addFilter(SecretScrubFilter())
    logger = logging.getLogger("topdog.test.secrets")
    logger.addHandler(handler)
    logger.propagate = False
    return logger, handler, stream


def test_known_secrets_and_authorization_values_are_scrubbed(settings):
    settings.OPENAI_API_KEY = SECRET
    settings.TOPDOG_METRICS_TOKEN = "metrics-token-0123456789"
    settings.TOPDOG_PROVIDERS = {
        **settings.TOPDOG_PROVIDERS,
        "local": {**settings.TOPDOG_PROVIDERS["local"], "api_key": "local-key-987654"},
    }
    logger, handler, stream = _captured()
    try:
        logger.info("calling with key %s", SECRET)
        logger.info("token metrics-token-0123456789 and local-key-987654")
        logger.info("headers {'Authorization': 'Bearer abc.def-123', 'Accept': 'json'}")
        logger.info("HTTP_AUTHORIZATION=Token 0a1b2c3d")
        logger.info("secret %s in %s", settings.SECRET_KEY, "settings")
        try:
            raise ValueError(f"vendor said: bad key {SECRET}")
        except ValueError:
            logger.exception("call failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    out = stream.getvalue()
    for secret in (SECRET, "metrics-token-0123456789", "local-key-987654", "abc.def-123"):
        assert secret not in out
    assert "0a1b2c3d" not in out and settings.SECRET_KEY not in out
    assert out.count(REDACTED) >= 7
    assert "'Authorization': 'Bearer [REDACTED]'" in out
    assert "'Accept': 'json'" in out
    assert "ValueError: vendor said: bad key [REDACTED]" in out


def test_scrubbing_leaves_ordinary_text_alone(settings):
    settings.ANTHROPIC_API_KEY = "abc"  # too short to scrub safely: ordinary words stay
    assert scrub("abc and authorization of a plan") == "abc and authorization of a plan"
