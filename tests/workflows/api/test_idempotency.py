import threading

import pytest
from django.db import connection
from rest_framework.renderers import JSONRenderer

from tests.factories import evidence, workflow_for
from workflows.api.idempotency import request_fingerprint
from workflows.models import Handoff, IdempotencyKey, Workflow

pytestmark = pytest.mark.django_db


def _complete(api, workflow, key, phase="DISCOVERY", ai_response="done"):
    return api.post(
        "/api/ai-workflows/complete-phase",
        {
            "workflow_id": str(workflow.id),
            "ai_response": ai_response,
            "phase_result": evidence(phase),
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def test_repeated_post_returns_first_response_and_moves_nothing(api, project, user):
    workflow = workflow_for(project, user)
    first = _complete(api, workflow, "key-1")
    assert first.status_code == 200

    repeat = _complete(api, workflow, "key-1")

    assert repeat.status_code == 200
    assert repeat.json() == first.json()
    assert repeat["Idempotent-Replayed"] == "true"
    workflow.refresh_from_db()
    assert workflow.state == "PLANNING"
    assert Handoff.objects.filter(workflow=workflow).count() == 1


def test_same_key_with_different_body_is_422(api, project, user):
    workflow = workflow_for(project, user)
    assert _complete(api, workflow, "key-2").status_code == 200
    response = _complete(api, workflow, "key-2", ai_response="something else")
    assert response.status_code == 422
    assert "different request body" in response.json()["detail"]


def test_error_responses_are_replayed_too(api, project, user):
    workflow = workflow_for(project, user)
    first = _complete(api, workflow, "key-3", phase="PLANNING")  # wrong evidence: 400
    assert first.status_code == 400
    repeat = _complete(api, workflow, "key-3", phase="PLANNING")
    assert repeat.status_code == 400
    assert repeat.json() == first.json()


def test_keys_are_per_user(api, stranger_api, project, user):
    workflow = workflow_for(project, user)
    assert _complete(api, workflow, "shared").status_code == 200
    # the stranger's identical key is theirs, not a replay of alice's response
    assert _complete(stranger_api, workflow, "shared").status_code == 404


def test_key_in_flight_is_409(api, project, user):
    workflow = workflow_for(project, user)
    IdempotencyKey.objects.create(user=user, key="busy", fingerprint=_fingerprint_of(api, workflow))
    response = _complete(api, workflow, "busy")
    assert response.status_code == 409
    assert "still being processed" in response.json()["detail"]
    assert Workflow.objects.get(pk=workflow.pk).state == "DISCOVERY"


def test_abandoned_in_flight_key_is_taken_over_after_the_lease(api, project, user, settings):
    settings.TOPDOG_IDEMPOTENCY_LEASE_SECONDS = 0
    workflow = workflow_for(project, user)
    IdempotencyKey.objects.create(
        user=user, key="stale", fingerprint=_fingerprint_of(api, workflow)
    )
    assert _complete(api, workflow, "stale").status_code == 200


def test_server_error_releases_the_key(api, project, user, monkeypatch):
    workflow = workflow_for(project, user)

    def boom(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("workflows.api.ide.workflow_phase_complete", boom)
    api.raise_request_exception = False
    assert _complete(api, workflow, "retry-me").status_code == 500
    assert not IdempotencyKey.objects.filter(key="retry-me").exists()
    monkeypatch.undo()
    assert _complete(api, workflow, "retry-me").status_code == 200


def test_oversized_key_is_400(api, project, user):
    workflow = workflow_for(project, user)
    response = _complete(api, workflow, "k" * 256)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["errors"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_repeats_move_the_workflow_once(project, user):
    from tests.factories import api_token_for

    workflow = workflow_for(project, user)
    token = api_token_for(user)
    barrier = threading.Barrier(8)
    statuses = []

    def worker():
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        try:
            barrier.wait()
            statuses.append(_complete(client, workflow, "race").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(200) >= 1
    assert set(statuses) <= {200, 409}
    assert Handoff.objects.filter(workflow=workflow).count() == 1


def _fingerprint_of(api, workflow):
    """The fingerprint the server computes for _complete's request."""
    body = {
        "workflow_id": str(workflow.id),
        "ai_response": "done",
        "phase_result": evidence("DISCOVERY"),
    }
    return request_fingerprint(
        method="POST", path="/api/ai-workflows/complete-phase", body=JSONRenderer().render(body)
    )
