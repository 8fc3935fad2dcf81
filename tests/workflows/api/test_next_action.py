"""next_action: the paths it names are the API's own, under any script prefix."""

import pytest
from django.urls import clear_script_prefix, resolve, reverse, set_script_prefix

from tests.factories import workflow_for
from workflows.api.base import next_action

pytestmark = pytest.mark.django_db


@pytest.fixture
def script_prefix():
    yield set_script_prefix
    clear_script_prefix()


def test_the_paths_are_what_reverse_gives(project, user):
    workflow = workflow_for(project, user)

    action = next_action(workflow)

    assert action["prompt_url"] == reverse("api:ide-get-ai-prompt", args=[workflow.id])
    assert action["complete_url"] == reverse("api:ide-complete-phase")
    assert resolve(action["prompt_url"]).kwargs == {"workflow_id": str(workflow.id)}
    other = workflow_for(project, user, description="another")
    assert next_action(other)["prompt_url"] == reverse("api:ide-get-ai-prompt", args=[other.id])


def test_each_script_prefix_has_its_own_paths(project, user, script_prefix):
    workflow = workflow_for(project, user)
    at_root = next_action(workflow)["prompt_url"]
    complete_at_root = next_action(workflow)["complete_url"]

    # when: the service is mounted under a prefix (SCRIPT_NAME)
    script_prefix("/topdog/")

    # then: the paths carry it, and at the root they did not
    mounted = next_action(workflow)["prompt_url"]
    assert mounted == reverse("api:ide-get-ai-prompt", args=[workflow.id])
    assert mounted == "/topdog" + at_root
    assert next_action(workflow)["complete_url"] == "/topdog" + complete_at_root
