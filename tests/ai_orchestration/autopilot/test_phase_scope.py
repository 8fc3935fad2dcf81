"""A `scope: phase` run finishes only the phase it was created for: if the workflow moves
on without it, it stops with that reason and never works the next phase."""

import pytest

from ai_orchestration.autopilot import runner
from ai_orchestration.autopilot.runner import autopilot_step
from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from tests.factories import evidence, workflow_for
from workflows.models import PhaseResult
from workflows.services import Actor, workflow_approve, workflow_phase_complete

pytestmark = pytest.mark.django_db


def results(workflow) -> dict[str, int]:
    counts: dict[str, int] = {}
    for phase in PhaseResult.objects.filter(workflow=workflow).values_list("phase", flat=True):
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def ide_completes(workflow, user, phase: str) -> None:
    workflow_phase_complete(
        workflow_id=workflow.id,
        ai_response="from the IDE",
        result=evidence(phase),
        actor=Actor.of(user),
    )


def test_a_phase_run_whose_phase_was_completed_before_it_ran_stops(project, user):
    # given a run for DISCOVERY, still queued when the IDE completes DISCOVERY
    workflow = workflow_for(project, user)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    ide_completes(workflow, user, "DISCOVERY")

    # when a worker takes the run
    goes_on = autopilot_step(run_id=run.id, worker_id="w")

    # then it stops, saying what it was for and where the workflow is, and works nothing
    run.refresh_from_db()
    assert goes_on is False
    assert run.status == AIRun.Status.STOPPED
    assert "DISCOVERY" in run.stop_reason and "PLANNING" in run.stop_reason
    assert (run.phase, run.phases_completed, run.attempts) == ("DISCOVERY", 0, 0)
    assert results(workflow) == {"DISCOVERY": 1}  # the IDE's; PLANNING untouched


def test_a_phase_run_whose_phase_is_completed_during_its_call_stops(project, user, monkeypatch):
    # given the IDE completes DISCOVERY while the run's model call is in flight
    workflow = workflow_for(project, user)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    real_call = runner._evidence_from_model

    def call_then_the_ide_completes(*args, **kwargs):
        answer = real_call(*args, **kwargs)
        ide_completes(workflow, user, "DISCOVERY")
        return answer

    monkeypatch.setattr(runner, "_evidence_from_model", call_then_the_ide_completes)

    # when the run's step finishes its call
    goes_on = autopilot_step(run_id=run.id, worker_id="w")

    # then its result is not applied, it stops with the reason, and PLANNING is not worked
    run.refresh_from_db()
    assert goes_on is False
    assert run.status == AIRun.Status.STOPPED
    assert "DISCOVERY" in run.stop_reason and "PLANNING" in run.stop_reason
    assert run.attempts == 1  # its call is counted
    assert results(workflow) == {"DISCOVERY": 1}
    assert not AIRun.objects.filter(pk=run.pk, status__in=AIRun.ACTIVE).exists()


def test_a_phase_run_that_waited_at_a_gate_ends_when_its_phase_is_approved(
    project, user, django_capture_on_commit_callbacks
):
    # given a gate on DISCOVERY: the run completes DISCOVERY and waits there
    project.approval_gates = ["DISCOVERY"]
    project.save()
    workflow = workflow_for(project, user)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    assert autopilot_step(run_id=run.id, worker_id="w") is False
    run.refresh_from_db()
    assert run.status == AIRun.Status.WAITING

    # when DISCOVERY is approved (the listener wakes the run)
    with django_capture_on_commit_callbacks(execute=True):
        workflow_approve(workflow_id=workflow.id, actor=Actor.of(user))

    # then the run is done: it is not queued for PLANNING, and a stray step works nothing
    run.refresh_from_db()
    assert (run.status, run.stop_reason) == (AIRun.Status.COMPLETED, "phase done")
    assert autopilot_step(run_id=run.id, worker_id="w") is False
    assert results(workflow) == {"DISCOVERY": 1}


def test_a_workflow_run_still_goes_on_after_its_first_phase(project, user):
    workflow = workflow_for(project, user)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="workflow")
    ide_completes(workflow, user, "DISCOVERY")

    assert autopilot_step(run_id=run.id, worker_id="w") is True

    assert results(workflow) == {"DISCOVERY": 1, "PLANNING": 1}
