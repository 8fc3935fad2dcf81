"""`manage.py watch_workflow`: a workflow's events from the database, followed live."""

import io
import json
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from ai_orchestration.autopilot.runner import autopilot_step
from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.management.commands import watch_workflow
from tests.factories import MembershipFactory, ProjectFactory, evidence, workflow_for
from workflows.services import Actor, workflow_cancel, workflow_phase_complete

pytestmark = pytest.mark.django_db


def watch(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("watch_workflow", *args, stdout=out, stderr=io.StringIO())
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue()


def complete(workflow, user, phase: str) -> None:
    workflow_phase_complete(
        workflow_id=workflow.id,
        ai_response=f"{phase} done",
        result=evidence(phase),
        actor=Actor.of(user),
        expected_state=phase,
    )


def test_a_finished_workflow_prints_its_events_and_exits_0(project, user, settings):
    settings.TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS = 120
    workflow = workflow_for(project, user)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    while autopilot_step(run_id=run.id, worker_id="t"):
        pass

    code, out = watch(str(workflow.id))

    assert code == 0
    assert out.startswith("#1   opened in DISCOVERY")
    # the plan's four work items add two events each to IMPLEMENTATION
    assert "#21  → handoff DEPLOYMENT → COMPLETE" in out
    assert out.count("✓ work item") == 4
    assert "✓ autopilot run completed (6 phases)" in out
    assert out.rstrip().endswith("COMPLETE  exit 0")


def test_json_and_after_print_only_the_later_events(project, user):
    workflow = workflow_for(project, user)
    complete(workflow, user, "DISCOVERY")
    workflow_cancel(workflow_id=workflow.id, actor=Actor.of(user), reason="not now")

    code, out = watch(str(workflow.id), "--json", "--after", "3")

    assert code == 3  # cancelled
    frames = [json.loads(line) for line in out.splitlines()]
    assert [(f["seq"], f["type"]) for f in frames] == [(4, "workflow.transitioned")]
    assert frames[0]["data"]["kind"] == "cancel"


def test_it_follows_new_events_until_the_workflow_waits_at_a_gate(user, monkeypatch):
    # given: a workflow gated at PLANNING, worked by someone else while we watch
    gated = ProjectFactory(slug="gated", approval_gates=["PLANNING"])
    MembershipFactory(project=gated, user=user)
    workflow = workflow_for(gated, user)
    pending = ["DISCOVERY", "PLANNING"]

    def the_ide_works_meanwhile(seconds):
        assert seconds == pytest.approx(0.3)
        complete(workflow, user, pending.pop(0))

    monkeypatch.setattr(watch_workflow.time, "sleep", the_ide_works_meanwhile)

    code, out = watch(str(workflow.id))

    assert code == 2
    assert pending == []
    lines = out.splitlines()
    assert lines[0].startswith("#1   opened in DISCOVERY")
    assert "#3   → handoff DISCOVERY → PLANNING · Q Assistant → Q Assistant" in lines
    assert any("gate: PLANNING waits for a project owner's approval" in line for line in lines)


def test_an_unknown_workflow_is_a_usage_error(db):
    for workflow_id in (str(uuid.uuid4()), "not-a-uuid"):
        with pytest.raises(CommandError) as error:
            call_command("watch_workflow", workflow_id, stdout=io.StringIO())
        assert error.value.returncode == 4
        assert "no workflow" in str(error.value)
