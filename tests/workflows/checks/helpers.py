"""Driving a workflow to the phase a check test needs, through the real services."""

from tests.factories import evidence, workflow_for
from workflows.services import Actor, workflow_phase_complete

GOOD_MODULE = "def double(x):\n    return 2 * x\n"
GOOD_TEST = (
    "from double import double\n\n\n"
    "def test_double():\n    assert double(2) == 4\n\n\n"
    "def test_zero():\n    assert double(0) == 0\n"
)
BAD_MODULE = "def double(x):\n    return 3 * x\n"


def change_set(module: str = GOOD_MODULE, test: str = GOOD_TEST, **extra: str) -> dict:
    files = [
        {"path": "double.py", "action": "create", "content": module},
        {"path": "test_double.py", "action": "create", "content": test},
    ]
    files += [{"path": path, "action": "create", "content": text} for path, text in extra.items()]
    return {"commit_message": "feat: double", "files": files}


def complete(workflow, user, phase_result: dict, ai_response: str = ""):
    return workflow_phase_complete(
        workflow_id=workflow.id, ai_response=ai_response, result=phase_result, actor=Actor.of(user)
    )


def workflow_in_implementation(project, user):
    workflow = workflow_for(project, user)
    complete(workflow, user, evidence("DISCOVERY"))
    complete(workflow, user, evidence("PLANNING"))
    workflow.refresh_from_db()
    assert workflow.state == "IMPLEMENTATION"
    return workflow


def workflow_in_testing(project, user, files: dict | None = None):
    workflow = workflow_in_implementation(project, user)
    complete(workflow, user, files or change_set())
    workflow.refresh_from_db()
    assert workflow.state == "TESTING"
    return workflow
