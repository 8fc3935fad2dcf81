"""DEPLOYMENT for real: pull requests on (fake) GitHub, pushes to git remotes, patches."""

import json
import logging
import subprocess
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection

from ai_orchestration.autopilot import runner
from ai_orchestration.autopilot.runner import autopilot_step
from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from tests.factories import evidence, workflow_for
from tests.integrations.conftest import TOKEN
from tests.integrations.git_helpers import git
from workflows.broadcast import workflow_group
from workflows.models import PhaseResult, Project, WorkflowEvent
from workflows.services import Actor, workflow_phase_complete

pytestmark = pytest.mark.django_db


@pytest.fixture
def github_project(project, fake_github, settings):
    settings.TOPDOG_GITHUB_API_URL = fake_github.base_url
    project.repository = "acme/shop"
    project.github_token = TOKEN
    project.save()
    return project


def _to_deployment(workflow, user, change=None):
    for phase in ("DISCOVERY", "PLANNING", "IMPLEMENTATION", "TESTING", "VERIFICATION"):
        result = change if (phase == "IMPLEMENTATION" and change) else evidence(phase)
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="", result=result, actor=Actor.of(user)
        )
    return workflow


CHANGE = evidence(
    "IMPLEMENTATION",
    commit_message="feat: dark mode",
    files=[
        {"path": "shop/theme.py", "action": "create", "content": "DARK = True\n"},
        {
            "path": "shop/views.py",
            "action": "modify",
            "content": "def index(r):\n    return 'dark'\n",
        },
        {"path": "docs/old.md", "action": "delete"},
    ],
)


def _expected_files(seed: dict) -> dict:
    files = dict(seed)
    files["shop/theme.py"] = "DARK = True\n"
    files["shop/views.py"] = "def index(r):\n    return 'dark'\n"
    del files["docs/old.md"]
    return files


def test_autopilot_ends_in_an_open_pull_request_whose_files_equal_the_change_set(
    github_project, user, fake_github, caplog, django_capture_on_commit_callbacks
):
    from tests.integrations.conftest import SEED_FILES

    caplog.set_level(logging.DEBUG)
    workflow = workflow_for(github_project, user, description="Dark mode for the shop")
    # a first change set is sent back by a failing test report; the one after the
    # regression is the one that must ship
    actor = Actor.of(user)
    for phase in ("DISCOVERY", "PLANNING", "IMPLEMENTATION"):
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="", result=evidence(phase), actor=actor
        )
    failing = evidence(
        "TESTING",
        verdict="fail",
        quality_score=0.1,
        findings=[{"severity": "major", "message": "wrong files"}],
    )
    workflow_phase_complete(workflow_id=workflow.id, ai_response="", result=failing, actor=actor)
    for phase in ("IMPLEMENTATION", "TESTING", "VERIFICATION"):
        result = CHANGE if phase == "IMPLEMENTATION" else evidence(phase)
        workflow_phase_complete(workflow_id=workflow.id, ai_response="", result=result, actor=actor)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(workflow_group(workflow.id), channel)

    with django_capture_on_commit_callbacks(execute=True):
        run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
        while autopilot_step(run_id=run.id, worker_id="t"):
            pass
    run.refresh_from_db()
    workflow.refresh_from_db()
    assert workflow.state == "COMPLETE", run.error

    repo = fake_github.repos["acme/shop"]
    [pull] = repo.pulls
    branch = pull["head"] if isinstance(pull["head"], str) else pull["head"]["ref"]
    assert repo.files(branch) == _expected_files(SEED_FILES)
    assert len(repo.branch_commits(branch)) == len(repo.branch_commits("main")) + 1
    record = PhaseResult.objects.get(workflow=workflow, phase="DEPLOYMENT").result
    assert record["pushed"] is True
    assert record["pull_request_number"] == pull["number"]
    assert record["branch"] == branch and record["commits"] == [repo.resolve(branch)]
    body = pull["body"]
    for heading in ("Requirements", "Plan", "Test report", "Verification"):
        assert heading in body

    # the token never leaked: not in events, frames, logs, the release message
    frames = _drain(layer, channel)
    assert TOKEN not in json.dumps(frames)
    events = list(WorkflowEvent.objects.filter(workflow=workflow).values_list("data", flat=True))
    assert TOKEN not in json.dumps(events)
    assert TOKEN not in caplog.text
    with connection.cursor() as cursor:
        cursor.execute("SELECT github_token FROM workflows_project")
        raw = cursor.fetchone()[0]
    assert raw.startswith("enc1:") and TOKEN not in raw


def test_running_the_release_again_opens_no_second_pull_request_or_commit(
    github_project, user, fake_github, api
):
    workflow = _to_deployment(workflow_for(github_project, user), user, change=CHANGE)
    first = api.post(f"/api/workflows/{workflow.id}/release/")
    assert first.status_code == 200, first.json()
    assert first.json()["state"] == "COMPLETE"
    repo = fake_github.repos["acme/shop"]
    commits_before = len(repo.commits)

    # the same change set released again (a second workflow on the same branch name is
    # impossible, so re-run the release step itself)
    from workflows.models import Workflow
    from workflows.release import release_make

    record, _ = release_make(workflow=Workflow.objects.get(pk=workflow.pk))
    assert len(repo.pulls) == 1
    assert len(repo.commits) == commits_before
    assert record["pull_request_number"] == repo.pulls[0]["number"]


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "create a new token"),
        (403, "contents:write"),
        (404, "not found"),
        (422, "refused"),
    ],
)
def test_github_errors_fail_the_release_with_what_to_fix(
    github_project, user, fake_github, api, status, message, caplog
):
    workflow = _to_deployment(workflow_for(github_project, user), user, change=CHANGE)
    fake_github.fault(status, method="POST", times=10)
    response = api.post(f"/api/workflows/{workflow.id}/release/")
    assert response.status_code == 502
    assert message in response.json()["detail"]
    assert TOKEN not in response.content.decode() and TOKEN not in caplog.text
    workflow.refresh_from_db()
    assert workflow.state == "DEPLOYMENT"
    failure = WorkflowEvent.objects.get(workflow=workflow, type="release.failed")
    assert failure.data["branch"].startswith("topdog/")
    assert message in failure.data["error"]
    assert TOKEN not in json.dumps(failure.data)


def test_autopilot_release_failure_fails_the_run_not_the_workflow(
    github_project, user, fake_github
):
    workflow = _to_deployment(workflow_for(github_project, user), user, change=CHANGE)
    github_project.github_token = "ghp_test_wrong_token_000000"
    github_project.save()
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    while autopilot_step(run_id=run.id, worker_id="t"):
        pass
    run.refresh_from_db()
    assert run.status == AIRun.Status.FAILED
    assert "create a new token" in run.error and "ghp_test_wrong" not in run.error
    workflow.refresh_from_db()
    assert workflow.state == "DEPLOYMENT"


def test_a_worker_whose_lease_was_taken_during_the_call_pushes_nothing(
    github_project, user, fake_github, monkeypatch
):
    # given: a run at DEPLOYMENT whose worker loses the run while the model answers
    workflow = _to_deployment(workflow_for(github_project, user), user, change=CHANGE)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    real_call = runner.complete_with_retries

    def call_then_taken_over(*args, **kwargs):
        completion = real_call(*args, **kwargs)
        AIRun.objects.filter(pk=run.id).update(lease_token=uuid.uuid4())  # another claim
        return completion

    monkeypatch.setattr(runner, "complete_with_retries", call_then_taken_over)
    branches_before = dict(fake_github.repos["acme/shop"].refs)

    # when
    autopilot_step(run_id=run.id, worker_id="stale")

    # then: no branch, commit or pull request, and the phase is left to the new holder
    repo = fake_github.repos["acme/shop"]
    assert repo.pulls == []
    assert repo.refs == branches_before
    workflow.refresh_from_db()
    assert workflow.state == "DEPLOYMENT"
    assert not PhaseResult.objects.filter(workflow=workflow, phase="DEPLOYMENT").exists()
    run.refresh_from_db()
    assert run.status == AIRun.Status.RUNNING and run.attempts == 1  # its call is booked


def test_git_remote_gets_exactly_the_change_set(project, user, api, tmp_path, settings):
    settings.TOPDOG_GIT_ALLOW_LOCAL_REMOTES = True
    remote = tmp_path / "remote.git"
    seed = tmp_path / "seed"
    git("init", "--bare", "-b", "main", str(remote), cwd=tmp_path)
    git("init", "-b", "main", str(seed), cwd=tmp_path)
    (seed / "shop").mkdir()
    (seed / "shop" / "views.py").write_text("old\n")
    (seed / "docs").mkdir()
    (seed / "docs" / "old.md").write_text("obsolete\n")
    git("add", "-A", cwd=seed)
    git("commit", "-m", "seed", cwd=seed)
    git("push", str(remote), "main", cwd=seed)

    response = api.patch(
        f"/api/projects/{project.slug}/", {"git_remote_url": f"file://{remote}"}, format="json"
    )
    assert response.status_code == 200, response.json()
    workflow = _to_deployment(workflow_for(project, user), user, change=CHANGE)
    released = api.post(f"/api/workflows/{workflow.id}/release/")
    assert released.status_code == 200, released.json()

    record = PhaseResult.objects.get(workflow=workflow, phase="DEPLOYMENT").result
    branch = record["branch"]
    listing = git("ls-tree", "-r", "--name-only", branch, cwd=remote).split()
    assert sorted(listing) == ["shop/theme.py", "shop/views.py"]
    assert (
        git("show", f"{branch}:shop/views.py", cwd=remote) == "def index(r):\n    return 'dark'\n"
    )
    assert git("rev-parse", branch, cwd=remote).strip() == record["commits"][0]
    assert git("rev-list", "--count", f"main..{branch}", cwd=remote).strip() == "1"


def test_no_repository_stores_a_patch_the_api_serves(project, user, api, tmp_path):
    change = evidence(
        "IMPLEMENTATION",
        files=[{"path": "src/app.py", "action": "create", "content": "print('hi')\n"}],
    )
    workflow = _to_deployment(workflow_for(project, user), user, change=change)
    assert api.post(f"/api/workflows/{workflow.id}/release/").status_code == 200
    response = api.get(f"/api/workflows/{workflow.id}/patch/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/x-diff")
    patch = tmp_path / "change.patch"
    patch.write_bytes(response.content)
    checkout = tmp_path / "checkout"
    git("init", str(checkout), cwd=tmp_path)
    done = subprocess.run(["git", "apply", "--check", str(patch)], cwd=checkout)
    assert done.returncode == 0
    record = PhaseResult.objects.get(workflow=workflow, phase="DEPLOYMENT").result
    assert record["pushed"] is False and "no repository connected" in record["reason"]


@pytest.mark.parametrize(
    "value",
    [
        "http://127.0.0.1/x/y",
        "https://169.254.169.254/a/b",
        "file:///etc/passwd",
        "https://user:tok@github.com/a/b",
        "https://github.com/a/b/../../c",
        "https://githu%62.com/a/b",
        "git@github.com:a/b",
        "https://evil.example/a/b",
    ],
)
def test_unsafe_repository_references_are_refused(api, project, value):
    response = api.patch(f"/api/projects/{project.slug}/", {"repository": value}, format="json")
    assert response.status_code == 400
    assert "repository" in response.json()["errors"]
    assert Project.objects.get(pk=project.pk).repository == "acme/widgets"
    remote = api.patch(f"/api/projects/{project.slug}/", {"git_remote_url": value}, format="json")
    assert remote.status_code == 400


def test_github_token_is_write_only(api, project):
    response = api.patch(
        f"/api/projects/{project.slug}/",
        {"repository": "https://github.com/acme/shop", "github_token": TOKEN},
        format="json",
    )
    assert response.status_code == 200
    assert TOKEN not in response.content.decode()
    assert response.json()["repository"] == "acme/shop"
    assert response.json()["secrets"]["github_token"] is True


def _drain(layer, channel):
    import asyncio

    async def one():
        return await asyncio.wait_for(layer.receive(channel), timeout=0.05)

    messages = []
    while True:
        try:
            messages.append(async_to_sync(one)())
        except TimeoutError:
            return messages
