import pytest
from rest_framework.throttling import UserRateThrottle

from tests.factories import workflow_for

pytestmark = pytest.mark.django_db


def test_body_over_the_limit_is_413(api, project, settings):
    settings.TOPDOG_MAX_BODY_BYTES = 1000
    response = api.post(
        "/api/ai-workflows/initialize",
        {"project_id": "demo", "requirements": {"description": "x" * 2000}},
        format="json",
    )
    assert response.status_code == 413
    assert "limit is 1000 bytes" in response.json()["detail"]


def test_throttling_answers_429_with_retry_after(api, project, user, monkeypatch):
    monkeypatch.setattr(
        UserRateThrottle, "THROTTLE_RATES", {"user": "3/minute", "anon": "3/minute"}
    )
    workflow = workflow_for(project, user)
    codes = [api.get(f"/api/ai-workflows/status/{workflow.id}").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    response = api.get(f"/api/ai-workflows/status/{workflow.id}")
    assert "Retry-After" in response
    assert "rate limited" in response.json()["detail"]


def test_malformed_json_is_400(api, project):
    response = api.post(
        "/api/ai-workflows/initialize", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"] or "parse" in response.json()["detail"]
