"""`manage.py run_workflow`: live output, `--json` lines and exit codes, on the offline
provider."""

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from ai_orchestration.autopilot import frames
from ai_orchestration.autopilot.services import autopilot_cancel
from ai_orchestration.management import console
from ai_orchestration.management.commands import run_workflow as command
from ai_orchestration.models import AIRun
from tests.factories import MembershipFactory, ProjectFactory
from workflows.models import Workflow
from workflows.services import Actor

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _observable(settings):
    """Chunks come a few ms apart, so a phase streams several delta frames; the heartbeat
    (its own connection cannot see the test's transaction) does not beat meanwhile."""
    settings.TOPDOG_PROVIDERS = {
        **settings.TOPDOG_PROVIDERS,
        "offline": {**settings.TOPDOG_PROVIDERS["offline"], "delay_ms": 3},
    }
    settings.TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS = 120


def run_workflow(*args: str) -> tuple[int, str, str]:
    """Run the command with StringIO streams (not a terminal): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("run_workflow", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_a_workflow_runs_to_complete_with_progress_lines_and_exit_0(project, user):
    code, out, err = run_workflow("--project", "demo", "Add dark mode to settings")

    assert code == 0, err
    assert Workflow.objects.get().state == "COMPLETE"
    # a section per phase, the events as they happened, and a summary
    for phase in ("DISCOVERY", "PLANNING", "IMPLEMENTATION", "TESTING", "VERIFICATION"):
        assert f"▸ {phase} · " in out
        assert f"✓ {phase} evidence accepted" in out
    # IMPLEMENTATION runs the plan's work items, each shown as it starts and finishes
    assert "▸ IMPLEMENTATION · work item W1" in out and "✓ work item W1 done" in out
    assert "→ handoff PLANNING → IMPLEMENTATION · Q Assistant → Code Writer" in out
    assert "✓ autopilot run completed (6 phases)" in out
    assert "COMPLETE  run completed" in out and "exit 0" in out
    assert "\x1b[" not in out  # not a terminal: no ANSI escapes
    assert '"delta"' not in out  # and no raw model text streamed
    assert out.index("▸ DISCOVERY") < out.index("✓ DISCOVERY") < out.index("▸ PLANNING")


def test_off_a_terminal_a_phase_shows_progress_lines_with_tokens_so_far(project, monkeypatch):
    monkeypatch.setattr(console, "PROGRESS_EVERY", 0)

    code, out, _ = run_workflow("--project", "demo", "Add dark mode to settings")

    assert code == 0
    progress = [line for line in out.splitlines() if "tokens so far" in line]
    assert any(line.startswith("  / DISCOVERY · ") for line in progress)
    assert {line[2] for line in progress} == set(console.SPINNER)  # the spinner turns
    assert "\x1b[" not in out


def test_json_prints_one_frame_per_line_persisted_and_live(project, user):
    code, out, _ = run_workflow("--project", "demo", "--json", "Add dark mode to settings")

    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    types = [frame["type"] for frame in lines]
    assert {"workflow.created", "phase.completed", "workflow.transitioned", "ai.delta"} <= set(
        types
    )
    assert "ai.run" in types
    persisted = [frame["seq"] for frame in lines if "seq" in frame]
    assert persisted == list(range(1, len(persisted) + 1))  # every event, once, in order
    deltas = [frame for frame in lines if frame["type"] == "ai.delta"]
    discovery = "".join(d["delta"] for d in deltas if d["phase"] == "DISCOVERY")
    assert json.loads(discovery)["requirements"]  # the streamed text is the evidence
    assert lines[-1]["type"] == "ai.run" and lines[-1]["run"]["status"] == "completed"


def test_a_gate_stops_the_run_with_exit_2(user):
    gated = ProjectFactory(slug="gated", approval_gates=["DISCOVERY"])
    MembershipFactory(project=gated, user=user)

    code, out, _ = run_workflow("--project", "gated", "Monthly invoices as PDF")

    assert code == 2
    workflow = Workflow.objects.get()
    assert (workflow.state, workflow.awaiting_approval) == ("DISCOVERY", True)
    assert "⏸ gate: DISCOVERY waits for a project owner's approval" in out
    assert f"POST /api/workflows/{workflow.id}/transitions/" in out


def test_a_failed_run_exits_1_with_the_error(settings, user):
    settings.ANTHROPIC_API_KEY = ""
    settings.TOPDOG_PROVIDERS = {
        **settings.TOPDOG_PROVIDERS,
        "anthropic": {**settings.TOPDOG_PROVIDERS["anthropic"], "api_key": ""},
    }
    claude = ProjectFactory(slug="claude", role_models={"Q_ASSISTANT": "CLAUDE"})
    MembershipFactory(project=claude, user=user)

    code, out, err = run_workflow("--project", "claude", "Add dark mode")

    assert code == 1
    assert "✗ autopilot run failed: DISCOVERY: anthropic has no API key" in out
    assert "error: DISCOVERY: anthropic has no API key" in err


def test_a_cancelled_run_exits_3(project, user, monkeypatch):
    # given: someone cancels the run (as the API does) once the first tokens stream
    send = frames.workflow_live_frame_send

    def cancel_on_first_delta(*, workflow_id, frame):
        send(workflow_id=workflow_id, frame=frame)
        run = AIRun.objects.get(workflow_id=workflow_id)
        if frame["type"] == "ai.delta" and not run.cancel_requested:
            autopilot_cancel(run_id=run.id, actor=Actor.of(user))

    monkeypatch.setattr(frames, "workflow_live_frame_send", cancel_on_first_delta)

    code, out, _ = run_workflow("--project", "demo", "Add dark mode")

    assert code == 3
    assert AIRun.objects.get().status == AIRun.Status.CANCELLED
    assert "■ autopilot run cancelled" in out


def test_steps_another_worker_claims_first_are_followed_to_the_end(project, monkeypatch):
    # given: a running server's worker shares the task queue and claims the PLANNING
    # step before the command does
    real_step = command.autopilot_step
    taken = []

    def server_first_at_planning(*, run_id, worker_id, hooks=None):
        state = Workflow.objects.values_list("state", flat=True).get(ai_runs__id=run_id)
        if state == "PLANNING" and not taken:
            taken.append(real_step(run_id=run_id, worker_id="server"))
            return False  # the command's own claim finds the run taken
        return real_step(run_id=run_id, worker_id=worker_id, hooks=hooks)

    monkeypatch.setattr(command, "autopilot_step", server_first_at_planning)

    # when
    code, out, err = run_workflow("--project", "demo", "Add dark mode to settings")

    # then: the command waits for the other worker's step and works the rest itself
    assert taken == [True]
    assert code == 0, err
    assert Workflow.objects.get().state == "COMPLETE"
    assert AIRun.objects.get().status == AIRun.Status.COMPLETED
    assert "✓ PLANNING evidence accepted" in out and "exit 0" in out


def test_usage_errors_exit_4(project):
    with pytest.raises(CommandError) as unknown:
        call_command("run_workflow", "--project", "nope", "x", stdout=io.StringIO())
    with pytest.raises(CommandError) as missing:
        call_command("run_workflow", "x", stdout=io.StringIO())

    assert unknown.value.returncode == 4 and "no project 'nope'" in str(unknown.value)
    assert missing.value.returncode == 4 and "--project" in str(missing.value)


@pytest.mark.django_db(transaction=True)  # check.finished is recorded after commit
def test_json_shows_the_sandboxed_checks_and_the_regression_as_they_happen(
    sandbox, no_repository, user
):
    # given: a request whose first change set has a bug its own test catches
    code, out, _ = run_workflow("--project", "demo", "--json", "[fail first] Add dark mode.")

    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    checks = [
        f["data"] for f in lines if f["type"] == "check.finished" and f["data"]["kind"] == "test"
    ]
    assert [c["status"] for c in checks] == ["failed", "passed"]
    assert checks[0]["tests_failed"] >= 1 and checks[1]["tests_failed"] == 0
    assert checks[0]["tests_run"] == checks[1]["tests_run"] >= 2
    assert any(f["type"] == "check.output" and f["lines"] for f in lines)
    order = [
        (f["type"], (f.get("data") or {}).get("kind"))
        for f in lines
        if f["type"] in ("check.started", "check.finished", "workflow.transitioned")
    ]
    regression = order.index(("workflow.transitioned", "regression"))
    assert order[regression - 2 : regression] == [
        ("check.started", "test"),
        ("check.finished", "test"),
    ]


def test_checks_regressions_and_failures_read_as_one_line_each():
    finished = {
        "type": "check.finished",
        "seq": 9,
        "data": {"kind": "test", "status": "failed", "tests_run": 5, "tests_failed": 2,
                 "tests_errors": 0, "tests_skipped": 1, "duration_ms": 1234},
    }  # fmt: skip
    regression = {
        "type": "workflow.transitioned",
        "seq": 10,
        "data": {"kind": "regression", "from_state": "TESTING", "to_state": "IMPLEMENTATION",
                 "regression_count": 1, "reason": "2 tests failed"},
    }  # fmt: skip
    failed_run = {"status": "failed", "error": "DISCOVERY: boom", "stop_reason": ""}

    assert console.describe_event(finished) == (
        "#9   ⚙ test run failed: 5 run, 2 failed, 0 errors, 1 skipped (1234 ms)",
        "bad",
    )
    assert console.describe_event(regression) == (
        "#10  ↩ regression TESTING → IMPLEMENTATION (regression 1): 2 tests failed",
        "warn",
    )
    assert console.describe_run(failed_run) == ("✗ autopilot run failed: DISCOVERY: boom", "bad")
