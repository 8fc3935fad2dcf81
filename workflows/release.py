"""DEPLOYMENT backed by real calls: push the change set, open the pull request.

`workflow_release` takes the latest accepted IMPLEMENTATION change set (the one after
the latest regression) and, depending on what the project has:

- a GitHub repository and token: a branch named after the workflow, one commit with
  the change set, and a pull request whose body links the requirements, the plan, the
  test report and the verification verdict;
- a plain git remote: the same branch and commit pushed there;
- neither: a unified diff stored in the release record, served by the API.

Every step is idempotent (same tree: no new commit; open pull request: found, not
opened again), so running DEPLOYMENT again is safe. External calls run outside any
transaction; the phase is then completed through the same service the API uses. A
failure records what was already done as a `release.failed` event and raises
ReleaseFailed with a message that says what to fix; the workflow stays in DEPLOYMENT.
"""

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.urls import reverse

from integrations.git import GitWorkspaceError, git_change_set_patch, git_change_set_push
from integrations.github import (
    GitHubError,
    github_branch_create,
    github_change_set_commit,
    github_pull_request_open,
)
from integrations.secrets import secret_scrub
from workflows.errors import TransitionConflict
from workflows.evidence import evidence_summary
from workflows.models import PhaseResult, Workflow
from workflows.services import (
    Actor,
    TransitionOutcome,
    transition_check,
    workflow_event_record,
    workflow_lock,
    workflow_phase_complete,
)
from workflows.states import EventType, State, Transition
from workflows.verification import tests_verification_note


class ReleaseFailed(Exception):
    """The release could not be made; the message says what to fix (never a secret)."""


@dataclass(frozen=True)
class _Sources:
    change_set: PhaseResult
    evidence: dict[str, dict]  # phase -> latest accepted result


def release_branch_name(workflow: Workflow) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", workflow.title.lower()).strip("-")[:40] or "change"
    return f"topdog/{slug}-{workflow.id.hex[:8]}"


def workflow_release(*, workflow_id: Any, actor: Actor) -> TransitionOutcome:
    """Make the real release of a workflow in DEPLOYMENT and complete the phase with it."""
    with transaction.atomic():
        workflow, member_role = workflow_lock(workflow_id=workflow_id, actor=actor)
        transition_check(workflow, member_role, Transition.COMPLETE)
        if workflow.state != State.DEPLOYMENT:
            raise TransitionConflict(
                f"workflow is in {workflow.state}; a release is made in DEPLOYMENT",
                current_state=workflow.state,
                allowed=[],
            )
    record, summary = release_make(workflow=workflow)
    return workflow_phase_complete(
        workflow_id=workflow.id,
        ai_response=summary,
        result=record,
        actor=actor,
        expected_state=State.DEPLOYMENT,
    )


def release_make(*, workflow: Workflow) -> tuple[dict, str]:
    """Push and open the pull request (or build the patch): the release record and a
    one-line summary. Makes external calls: never call it inside a transaction."""
    return _release(workflow, _sources(workflow))


def _sources(workflow: Workflow) -> _Sources:
    latest: dict[str, PhaseResult] = {}
    for result in PhaseResult.objects.filter(
        workflow=workflow, status=PhaseResult.Status.ACCEPTED
    ).order_by("created_at", "id"):
        latest[result.phase] = result  # later attempts replace earlier ones
    change_set = latest.get(State.IMPLEMENTATION)
    if change_set is None:
        raise ReleaseFailed("there is no accepted IMPLEMENTATION change set to release")
    return _Sources(change_set, {phase: r.result for phase, r in latest.items()})


def _release(workflow: Workflow, sources: _Sources) -> tuple[dict, str]:
    project = workflow.project
    change = sources.change_set.result
    branch = release_branch_name(workflow)
    if project.repository and project.github_token:
        return _release_github(workflow, sources, branch)
    if project.git_remote_url:
        return _release_git(workflow, change, branch)
    patch = git_change_set_patch(
        files=[{**f, "action": "create"} for f in change["files"] if f["action"] != "delete"]
    )
    deleted = [f["path"] for f in change["files"] if f["action"] == "delete"]
    reason = "no repository connected (set a GitHub repository and token, or a git remote)"
    if deleted:
        reason += f"; the patch adds every file whole and leaves out deletions of {deleted}"
    record = {
        "branch": branch,
        "commits": [],
        "pull_request_url": None,
        "pushed": False,
        "reason": reason,
        "patch": patch,
    }
    return record, f"Not pushed: {reason}. The patch is on the workflow's /patch/ endpoint."


def _release_github(workflow: Workflow, sources: _Sources, branch: str) -> tuple[dict, str]:
    project = workflow.project
    change = sources.change_set.result
    common = {
        "token": project.github_token,
        "repo": project.repository,
        "base_url": settings.TOPDOG_GITHUB_API_URL,
    }
    done: dict[str, Any] = {"branch": branch}
    try:
        created = github_branch_create(**common, branch=branch)
        done["branch_created"] = created.created
        commit = github_change_set_commit(
            **common,
            branch=branch,
            message=change["commit_message"],
            files=change["files"],
            author_name=settings.TOPDOG_GIT_AUTHOR_NAME,
            author_email=settings.TOPDOG_GIT_AUTHOR_EMAIL,
        )
        done["commit"] = commit.sha
        pull = github_pull_request_open(
            **common,
            head=branch,
            title=change["commit_message"].splitlines()[0][:250],
            body=_pull_request_body(workflow, sources),
        )
    except GitHubError as exc:
        message = secret_scrub(str(exc), [project.github_token])
        _record_failure(workflow, done, message)
        raise ReleaseFailed(message) from None
    record = {
        "branch": branch,
        "commits": [commit.sha],
        "pull_request_url": pull.url,
        "pull_request_number": pull.number,
        "pushed": True,
    }
    return record, f"Opened pull request #{pull.number} from {branch} ({commit.sha[:12]})."


def _release_git(workflow: Workflow, change: dict, branch: str) -> tuple[dict, str]:
    project = workflow.project
    done: dict[str, Any] = {"branch": branch}
    try:
        pushed = git_change_set_push(
            remote_url=project.git_remote_url,
            base_branch=project.default_branch,
            branch=branch,
            message=change["commit_message"],
            files=change["files"],
            author_name=settings.TOPDOG_GIT_AUTHOR_NAME,
            author_email=settings.TOPDOG_GIT_AUTHOR_EMAIL,
            token=project.git_remote_token or None,
            allowed_hosts=set(settings.TOPDOG_GIT_REMOTE_HOSTS),
            allow_local_paths=settings.TOPDOG_GIT_ALLOW_LOCAL_REMOTES,
        )
    except (GitWorkspaceError, ValueError) as exc:
        message = secret_scrub(str(exc), [project.git_remote_token])
        _record_failure(workflow, done, message)
        raise ReleaseFailed(message) from None
    record = {
        "branch": branch,
        "commits": [pushed.commit_sha],
        "pull_request_url": None,
        "pushed": True,
        "remote": project.git_remote_url,
    }
    return record, f"Pushed {branch} ({pushed.commit_sha[:12]}) to the project's git remote."


def _record_failure(workflow: Workflow, done: dict, message: str) -> None:
    """Leave nothing half-done unrecorded: what was made before the failure, and why."""
    workflow_event_record(
        workflow_id=workflow.id,
        actor=Actor.system("release"),
        type_=EventType.RELEASE_FAILED,
        data={**done, "error": message},
    )


def _pull_request_body(workflow: Workflow, sources: _Sources) -> str:
    api = f"/api/workflows/{workflow.id}"
    dashboard = reverse("dashboard:workflow", args=[workflow.id])
    lines = [
        f"Opened by TopDog for workflow `{workflow.id}`: **{workflow.title}**",
        "",
        f"- Requirements: {api}/phase-results/ (DISCOVERY)",
        f"- Plan: {api}/phase-results/ (PLANNING)",
        f"- Test report: {api}/phase-results/ (TESTING)",
        f"- Verification verdict: {api}/phase-results/ (VERIFICATION)",
        f"- Audit trail: {api}/handoffs/ and {dashboard}",
        "",
    ]
    for phase, title in (
        (State.DISCOVERY, "Requirements"),
        (State.PLANNING, "Plan"),
        (State.TESTING, "Test report"),
        (State.VERIFICATION, "Verification"),
    ):
        result = sources.evidence.get(phase)
        if result is not None:
            lines += [f"### {title}", evidence_summary(phase=phase, result=result), ""]
            if phase == State.TESTING:
                lines += [f"**{tests_verification_note(result)}**", ""]
    return "\n".join(lines)
