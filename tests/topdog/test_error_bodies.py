"""Every API error body is JSON with `detail` (issue 12, A and B).

Before: an unknown /api/ route was Django's HTML 404 page; a database error in a view
was an uncaught 500 (HTML, or a traceback with DEBUG); an uncaught exception under /api/
was the HTML 500 page; `[` nested 100,000 deep was a RecursionError (500) in the parser;
a query string of any length reached the views; a NUL in a URL or filter was a 500 on
PostgreSQL wherever it reached a query.
"""

import logging

import pytest
from django.db import InterfaceError, OperationalError, connection
from django.test import Client

from tests.factories import workflow_for
from workflows.api import resources

pytestmark = pytest.mark.django_db


def _json(response, status):
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body


@pytest.fixture
def plain_client():
    client = Client(raise_request_exception=False)
    return client


@pytest.mark.parametrize("error", [OperationalError, InterfaceError])
def test_a_database_that_does_not_answer_is_503_with_retry_after(api, project, error, caplog):
    def refuse(execute, sql, params, many, context):
        raise error("connection refused")

    with connection.execute_wrapper(refuse), caplog.at_level(logging.ERROR):
        response = api.get("/api/projects/")

    body = _json(response, 503)
    assert "retry" in body["detail"]
    assert 1 <= int(response["Retry-After"]) <= 30
    assert "connection refused" in caplog.text  # logged, not shown


def test_a_database_error_outside_drf_handling_is_503_too(api, project, user, monkeypatch):
    # given: a view whose exception escapes DRF's handler (not an API exception)
    workflow = workflow_for(project, user)

    def broken(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(resources.WorkflowDetailApi, "dispatch", broken)

    response = api.get(f"/api/workflows/{workflow.id}/")

    _json(response, 503)
    assert response["Retry-After"]


def test_an_uncaught_exception_under_api_is_500_json_with_a_request_id_and_no_traceback(
    api, project, user, monkeypatch, caplog
):
    workflow = workflow_for(project, user)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(resources.WorkflowDetailApi, "dispatch", broken)
    api.raise_request_exception = False

    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = api.get(f"/api/workflows/{workflow.id}/", HTTP_X_REQUEST_ID="req-42")

    body = _json(response, 500)
    assert body == {"detail": "internal error; request id req-42"}
    assert b"Traceback" not in response.content and b"secret internals" not in response.content
    assert "req-42" in caplog.text and "ZeroDivisionError" in caplog.text


def test_an_unknown_api_route_is_json_404_but_other_404_pages_stay_html(plain_client, settings):
    settings.DEBUG = False
    body = _json(plain_client.get("/api/no-such-thing/"), 404)
    assert body == {"detail": "not found"}

    page = plain_client.get("/no-such-page/")
    assert page.status_code == 404
    assert page["Content-Type"].startswith("text/html")


def test_an_unknown_api_route_without_slash_still_redirects(plain_client):
    # APPEND_SLASH keeps working: /api/projects -> /api/projects/
    response = plain_client.get("/api/projects")
    assert response.status_code == 301
    assert response["Location"] == "/api/projects/"


@pytest.mark.parametrize(
    ("body", "content_type", "method", "status"),
    [
        ('{"name": ', "application/json", "post", 400),
        ("name=x", "application/x-www-form-urlencoded", "post", 415),
        ("{}", "application/json", "put", 405),
    ],
)
def test_drf_parser_media_type_and_method_errors_are_json(
    api, project, body, content_type, method, status
):
    response = api.generic(method.upper(), "/api/projects/", body, content_type=content_type)
    _json(response, status)


def test_a_body_over_the_limit_is_413_json(api, project, settings):
    settings.TOPDOG_MAX_BODY_BYTES = 1000
    response = api.generic(
        "POST", "/api/projects/", '{"name": "' + "x" * 2000 + '"}', content_type="application/json"
    )
    _json(response, 413)


# --- bad input -------------------------------------------------------------------------


def test_json_nested_deeper_than_the_limit_is_400_not_a_recursion_error(api, project):
    deep = "[" * 100_000 + "]" * 100_000
    response = api.generic("POST", "/api/projects/", deep, content_type="application/json")
    body = _json(response, 400)
    assert "TOPDOG_MAX_JSON_DEPTH" in body["detail"]


def test_json_depth_counts_only_brackets_outside_strings(api, project, settings):
    settings.TOPDOG_MAX_JSON_DEPTH = 3
    nested_ok = '{"name": "[[[[[[{{{{", "role_models": {}, "slug": "p-1", "x": [[1]]}'
    response = api.generic("POST", "/api/projects/", nested_ok, content_type="application/json")
    assert response.status_code == 201, response.content
    too_deep = '{"name": "n", "slug": "p-2", "x": [[[1]]]}'
    response = api.generic("POST", "/api/projects/", too_deep, content_type="application/json")
    _json(response, 400)


def test_nul_in_a_json_string_is_400(api, project):
    response = api.post("/api/projects/", {"name": "a\x00b", "slug": "nul"}, format="json")
    assert "NUL" in _json(response, 400)["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/workflows/%00/",
        "/api/projects/%00/",
        "/api/workflows/%00/events/",
        "/api/ai-workflows/status/%00",
    ],
)
def test_nul_in_an_api_path_is_404_json(api, project, path):
    _json(api.get(path), 404)


def test_nul_in_an_api_query_string_is_400_json(api, project):
    body = _json(api.get("/api/workflows/?q=%00"), 400)
    assert "NUL" in body["detail"]
    assert api.get("/api/workflows/?q=%2500").status_code == 200  # the text "%00" is fine


def test_nul_in_a_non_api_path_is_a_plain_404(admin_client):
    admin_client.raise_request_exception = False
    for path in ("/admin/workflows/workflow/%00/change/", "/dashboard/workflows/%00/", "/%00"):
        response = admin_client.get(path)
        assert response.status_code == 404, path


def test_an_over_long_query_string_is_414_json(api, project, settings):
    long_query = "q=" + "x" * 9000
    body = _json(api.get(f"/api/workflows/?{long_query}"), 414)
    assert "8192" in body["detail"]
    assert api.get("/api/workflows/?q=" + "x" * 8000).status_code == 200
    settings.TOPDOG_MAX_QUERY_STRING_BYTES = 100
    _json(api.get("/api/workflows/?q=" + "x" * 200), 414)
