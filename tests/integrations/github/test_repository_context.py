"""The Q_ASSISTANT and the CODE_WRITER see the repository; it is fetched once per commit."""

import pytest

from tests.factories import evidence, workflow_for
from tests.integrations.conftest import TOKEN
from workflows.services import Actor, workflow_phase_complete

pytestmark = pytest.mark.django_db


@pytest.fixture
def github_project(project, fake_github, settings):
    settings.TOPDOG_GITHUB_API_URL = fake_github.base_url
    project.repository = "acme/shop"
    project.github_token = TOKEN
    project.save()
    return project


def _prompt(api, workflow) -> str:
    response = api.post(f"/api/ai-workflows/get-ai-prompt/{workflow.id}")
    assert response.status_code == 200, response.json()
    return "\n".join(m["content"] for m in response.json()["messages"])


def test_q_assistant_sees_languages_frameworks_tree_and_readme(
    api, github_project, user, fake_github
):
    workflow = workflow_for(github_project, user)
    prompt = _prompt(api, workflow)
    assert "Repository acme/shop" in prompt
    assert "Python" in prompt and "django" in prompt
    assert "shop/views.py" in prompt
    assert "A small web shop." in prompt  # the README
    requests_after_first = len(fake_github.requests)

    # cached per commit: the second prompt makes no GitHub call
    assert "A small web shop." in _prompt(api, workflow)
    assert len(fake_github.requests) == requests_after_first
    assert TOKEN not in prompt


def test_code_writer_sees_the_files_the_plan_names(api, github_project, user):
    workflow = workflow_for(github_project, user)
    plan = {
        "work_items": [
            {
                "id": "W1",
                "title": "views",
                "files": ["shop/views.py", "shop/new.py"],
                "depends_on": [],
            }
        ]
    }
    for _phase, result in (("DISCOVERY", evidence("DISCOVERY")), ("PLANNING", plan)):
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="", result=result, actor=Actor.of(user)
        )
    prompt = _prompt(api, workflow)
    assert "--- shop/views.py (current content) ---" in prompt
    assert "return 'hi'" in prompt
    assert "shop/new.py (current content)" not in prompt  # not in the repository yet


def test_github_failure_does_not_block_the_prompt(api, github_project, user, fake_github):
    workflow = workflow_for(github_project, user)
    fake_github.fault(401, times=20)
    prompt = _prompt(api, workflow)
    assert "Repository context is unavailable" in prompt
    assert "create a new token" in prompt
    assert TOKEN not in prompt


def test_roles_without_repository_needs_and_projects_without_github_get_none(api, project, user):
    workflow = workflow_for(project, user)  # the project has no GitHub token
    assert "Repository context" not in _prompt(api, workflow)
