"""The autopilot's part of GET /api/health/: runs with an expired lease
(registered in AiOrchestrationConfig.ready() through workflows.health_checks)."""

from datetime import timedelta

import pytest
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from tests.factories import workflow_for
from workflows.services import Actor

pytestmark = pytest.mark.django_db


def _running(project, user, *, lease_in):
    run = autopilot_start(workflow_id=workflow_for(project, user).id, actor=Actor.of(user))
    AIRun.objects.filter(pk=run.pk).update(
        status=AIRun.Status.RUNNING,
        worker_id="w",
        lease_expires_at=timezone.now() + timedelta(seconds=lease_in),
    )


def test_health_reports_runs_whose_lease_expired(client, project, user):
    _running(project, user, lease_in=-40)
    _running(project, user, lease_in=20)

    response = client.get("/api/health/")

    assert response.status_code == 200  # reported; the watchdog re-queues them
    autopilot = response.json()["autopilot"]
    assert (autopilot["ok"], autopilot["running"], autopilot["expired_leases"]) == (True, 2, 1)
    assert 39 <= autopilot["oldest_expired_lease_seconds"] < 60


def test_health_without_runs_reports_none(client, db):
    autopilot = client.get("/api/health/").json()["autopilot"]

    assert autopilot == {**autopilot, "running": 0, "expired_leases": 0}
    assert autopilot["oldest_expired_lease_seconds"] == 0.0


def test_the_document_describes_the_autopilot_check():
    schemas = SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]

    assert "autopilot" in schemas["Health"]["properties"]
    assert {"running", "expired_leases", "oldest_expired_lease_seconds"} <= set(
        schemas["AutopilotHealth"]["properties"]
    )
