"""IMPLEMENTATION evidence must parse (and, with a sandbox, apply to the base)."""

import pytest

from tests.workflows.checks.helpers import change_set, complete, workflow_in_implementation
from workflows.models import CheckRun

pytestmark = pytest.mark.django_db


def test_a_python_syntax_error_is_a_400_naming_path_and_line(api, project, user):
    # given a workflow in IMPLEMENTATION
    workflow = workflow_in_implementation(project, user)
    files = change_set(module="def double(x):\n    return 2 *\n")

    # when the IDE submits a change set whose module does not parse
    response = api.post(
        "/api/ai-workflows/complete-phase",
        {"workflow_id": str(workflow.id), "ai_response": "", "phase_result": files},
        format="json",
    )

    # then it is refused with the path and line, and the workflow stays put
    assert response.status_code == 400, response.content
    messages = response.json()["errors"]["phase_result"]["files"]
    assert any("double.py:2" in m for m in messages), messages
    workflow.refresh_from_db()
    assert workflow.state == "IMPLEMENTATION"
    assert not CheckRun.objects.filter(workflow=workflow).exists()


@pytest.mark.parametrize(
    ("path", "content", "where"),
    [
        ("config.json", '{"a": 1,\n "b": }\n', "config.json:2"),
        ("pyproject.toml", "[tool]\nname = \n", "pyproject.toml:2"),
        ("ci.yaml", "a: [1, 2\nb: 3\n", "ci.yaml:"),
    ],
)
def test_data_files_must_parse(project, user, path, content, where):
    workflow = workflow_in_implementation(project, user)
    with pytest.raises(Exception) as caught:
        complete(workflow, user, change_set(**{path: content}))
    assert where in str(caught.value.detail)
    workflow.refresh_from_db()
    assert workflow.state == "IMPLEMENTATION"


def test_an_accepted_change_set_records_its_static_checks(project, user):
    workflow = workflow_in_implementation(project, user)

    complete(workflow, user, change_set(**{"data.json": '{"ok": true}'}))

    workflow.refresh_from_db()
    assert workflow.state == "TESTING"
    syntax = CheckRun.objects.get(workflow=workflow, kind="syntax")
    assert syntax.status == "passed"
    assert set(syntax.details["checked"]) == {"double.py", "test_double.py", "data.json"}
    assert syntax.phase_result.phase == "IMPLEMENTATION"


def test_with_a_sandbox_a_change_set_must_apply_to_the_base(sandbox, local_remote, project, user):
    # given a repository whose base has calc.py but no missing.py
    workflow = workflow_in_implementation(project, user)
    files = {
        "commit_message": "fix",
        "files": [
            {"path": "missing.py", "action": "modify", "content": "x = 1\n"},
            {"path": "calc.py", "action": "create", "content": "x = 2\n"},
            {"path": "gone.py", "action": "delete"},
        ],
    }

    # when the change set modifies and deletes absent paths and creates an existing one
    with pytest.raises(Exception) as caught:
        complete(workflow, user, files)

    # then every bad path is named and nothing moved
    text = str(caught.value.detail)
    assert "missing.py" in text and "calc.py" in text and "gone.py" in text
    workflow.refresh_from_db()
    assert workflow.state == "IMPLEMENTATION"

    # and a change set that fits the base is accepted, and the base was checked
    complete(
        workflow,
        user,
        {
            "commit_message": "feat",
            "files": [{"path": "calc.py", "action": "modify", "content": "x = 3\n"}],
        },
    )
    syntax = CheckRun.objects.get(workflow=workflow, kind="syntax")
    assert syntax.details["applies_to_base"] is True
