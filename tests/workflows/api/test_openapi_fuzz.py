"""Schemathesis against /api/schema/: every operation answers what the document says
(issue 13, item 3).

One test per operation. Each draws at most MAX_EXAMPLES schema-valid requests
(deterministic: `derandomize=True`, no example database), sends them through the WSGI
app with a real API token, and collects every failure of the checks below instead of
stopping at the first, so a red run lists them all. Path parameters are real ids of a
workflow that has gone through DISCOVERY and PLANNING, so the 200 answers (pages,
details, the usage report) are checked too, not only the 404s.

Checked: no 5xx, every status documented, the documented content type, the body and
headers as documented. Not asserted: that every schema-valid body is accepted (the
serializers' cross-field rules, e.g. a failing report needs findings, are not in the
schema).

Not fuzzed: /api/schema/ itself (drf-spectacular's view; its answer is the document under
test), /api/docs/ (HTML), /metrics (Prometheus text, not JSON), the admin, the dashboard,
websockets and the accounts pages (none of them is in the API document); the IDE paths'
trailing-slash aliases (the same views as the documented paths).
"""

import functools
from collections import Counter

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis.errors import FailureGroup

from tests.factories import api_token_for, evidence, workflow_for
from workflows.models import PhaseResult
from workflows.services import Actor, workflow_phase_complete

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = 12
# Schemathesis's configuration (the keys of schemathesis.toml): only these checks.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
CONFIG = {"checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}}}


@functools.cache
def api_schema():
    config = schemathesis.Config.from_dict(CONFIG)
    return schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application(), config=config)


def operation_labels() -> list[str]:
    schema = api_schema()
    return sorted(result.ok().label for result in schema.get_all_operations())


@pytest.fixture
def same_connection():
    """Like Django's test client: requests reuse the test's connection (and transaction)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def world(user, project, same_connection):
    """A workflow in IMPLEMENTATION with results, messages and handoffs to list."""
    workflow = workflow_for(project, user, model_name="OFFLINE")
    for phase in ("DISCOVERY", "PLANNING"):
        workflow_phase_complete(
            workflow_id=workflow.id,
            ai_response=f"{phase} done",
            result=evidence(phase),
            actor=Actor.of(user),
        )
    result = PhaseResult.objects.filter(workflow=workflow).first()
    return {
        "token": api_token_for(user),
        "path": {
            "workflow_id": str(workflow.id),
            "project_ref": project.slug,
            "result_id": str(result.pk),
            "seq": "1",
        },
    }


def failures_of(operation, world) -> tuple[int, int, list[str]]:
    """How many cases were sent, how many failed, and one line per failing check."""
    wanted = {
        name: value
        for name, value in world["path"].items()
        if any(p.name == name for p in operation.path_parameters)
    }
    strategy = operation.as_strategy(
        path_parameters=wanted or None,
        headers={"Authorization": f"Token {world['token']}"},
    )
    counts, statuses, failures = Counter(), Counter(), []

    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case):
        counts["sent"] += 1
        try:
            response = case.call()
            statuses[response.status_code] += 1
            case.validate_response(response)
        except FailureGroup as group:
            counts["failed"] += 1
            for failure in group.exceptions:
                failures.append(f"{operation.label}: {failure.title}: {failure.message[:300]}")

    run()
    print(f"fuzz {operation.label} statuses: {dict(sorted(statuses.items()))}")
    return counts["sent"], counts["failed"], failures


@pytest.mark.parametrize("label", operation_labels())
def test_operation_answers_as_documented(label, world):
    method, path = label.split(" ", 1)
    operation = api_schema()[path][method]
    sent, failed, failures = failures_of(operation, world)
    print(f"fuzz {label}: {sent} cases, {failed} failed, {len(failures)} check failures")
    kinds = Counter(line.split(": ", 2)[1] for line in failures)
    assert not failures, f"{len(failures)} failures {dict(kinds)}:\n" + "\n".join(failures[:20])
