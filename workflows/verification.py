"""Verified work: what TopDog checks of a phase's evidence beyond its shape.

- IMPLEMENTATION: the change set's files parse (in-process static checks, no repository
  code run) and, with a sandbox, the change set applies to the repository's base.
- TESTING: when a test run (CheckRun) of the current change set exists, the report's
  figures are the measured ones and a `pass` over a red run is refused; the stored report
  says `verified` and names the run.

Both run inside the transition's transaction, before anything is written, so a refused
result leaves the workflow where it was.
"""

import contextlib
import json
import logging
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from django.db.models import Subquery
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from integrations.change_set import UnsafeChangeSet, change_set_normalize, repo_path_check
from integrations.repository import UnsafeRepositoryReference, repository_ref_parse
from integrations.sandbox import SandboxBackend, sandbox_backend_load
from integrations.secrets import SecretToken, secret_token
from integrations.static_checks import StaticCheckReport, static_checks_run
from integrations.workspace import (
    ChangeSetConflict,
    RepoSource,
    WorkspaceError,
    base_paths,
    change_set_apply_check,
)
from workflows.errors import RepositoryUnavailable, TransitionConflict
from workflows.evidence import FileChangeSerializer
from workflows.models import CheckRun, PhaseResult, Project, Workflow
from workflows.states import State

logger = logging.getLogger(__name__)


# --- the sandbox backend ---------------------------------------------------------------


def sandbox_backend() -> SandboxBackend:
    """The configured backend (TOPDOG_SANDBOX), loaded once per process."""
    return _backend_named(settings.TOPDOG_SANDBOX)


@cache
def _backend_named(name: str) -> SandboxBackend:
    """`auto`: bubblewrap where it works here, else off (nothing runs; reports say they
    are unverified)."""
    if name == "auto":
        bubblewrap = sandbox_backend_load(settings.TOPDOG_SANDBOX_BACKENDS["bubblewrap"])
        works, reason = bubblewrap.available()
        if works:
            return bubblewrap
        logger.warning("sandbox: bubblewrap does not work here (%s); checks are off", reason)
        name = "off"
    if name not in settings.TOPDOG_SANDBOX_BACKENDS:
        choices = ", ".join(["auto", *settings.TOPDOG_SANDBOX_BACKENDS])
        raise ValueError(f"TOPDOG_SANDBOX={name!r} is not a backend; choose from {choices}")
    return sandbox_backend_load(settings.TOPDOG_SANDBOX_BACKENDS[name])


def sandbox_enabled() -> bool:
    return sandbox_backend().name != "off"


def sandbox_health() -> dict:
    """The backend, whether it isolates, and whether a trivial run works (probed once)."""
    backend = sandbox_backend()
    works, reason = backend.available()
    return {
        "healthy": backend.name == "off" or works,
        "backend": backend.name,
        "isolated": backend.isolated,
        "works": works,
        **({"reason": reason} if reason else {}),
    }


def repository_source(project: Project) -> RepoSource | None:
    """Where the project's base tree comes from: GitHub, a git remote, or nowhere (None:
    an empty tree). Tokens travel inside the source, never in its URL."""
    if project.repository:
        try:
            ref = repository_ref_parse(
                project.repository, allowed_hosts=set(settings.TOPDOG_REPOSITORY_HOSTS)
            )
        except UnsafeRepositoryReference as exc:
            raise ValidationError({"repository": [str(exc)]}) from None
        return RepoSource(
            url=ref.https_url,
            token=_token(project.github_token),
            allowed_hosts=frozenset(settings.TOPDOG_REPOSITORY_HOSTS),
        )
    if project.git_remote_url:
        return RepoSource(
            url=project.git_remote_url,
            token=_token(project.git_remote_token),
            allow_local=settings.TOPDOG_GIT_ALLOW_LOCAL_REMOTES,
            allowed_hosts=frozenset(settings.TOPDOG_GIT_REMOTE_HOSTS),
        )
    return None


def _token(value: str) -> SecretToken | None:
    return secret_token(value) if value else None


def project_secrets(project: Project) -> list[str]:
    """Every secret a check's output is scrubbed of."""
    values = [getattr(project, name) for name in Project.SECRET_FIELDS]
    values += [settings.OPENAI_API_KEY, settings.ANTHROPIC_API_KEY, settings.SECRET_KEY]
    return [value for value in values if value]


# --- IMPLEMENTATION: the change set parses and applies ---------------------------------


@dataclass(frozen=True)
class ChangeSetVerdict:
    """What the static checks of an accepted change set found (recorded as a CheckRun)."""

    report: StaticCheckReport
    base_checked: bool


def change_set_verify(*, workflow: Workflow, evidence: dict) -> ChangeSetVerdict:
    """Raise a 400 naming path, line and message unless every file parses and, with a
    sandbox, the change set applies to the repository's base."""
    try:
        changes = change_set_normalize(evidence["files"])
    except UnsafeChangeSet as exc:
        raise ValidationError({"phase_result": {"files": [str(exc)]}}) from None
    report = static_checks_run(changes)
    problems = [
        f"{p.path}:{p.line}: {p.message}" if p.line else f"{p.path}: {p.message}"
        for p in report.problems
    ]
    base_checked = False
    if sandbox_enabled():
        base_checked = True
        try:
            existing = base_paths(
                root=settings.TOPDOG_WORKSPACE_DIR,
                source=repository_source(workflow.project),
                base_ref=workflow.project.default_branch,
            )
            change_set_apply_check(changes=changes, existing=existing)
        except ChangeSetConflict as exc:
            problems += [f"{p['path']}: {p['message']}" for p in exc.problems]
        except WorkspaceError as exc:
            raise RepositoryUnavailable(
                f"could not read {workflow.project.repository or 'the git remote'} to check "
                f"that the change set applies: {exc}"
            ) from None
    if problems:
        raise ValidationError(
            {"phase_result": {"files": [f"the change set does not check: {p}" for p in problems]}}
        )
    return ChangeSetVerdict(report=report, base_checked=base_checked)


class _ItemFiles(serializers.Serializer):
    files = FileChangeSerializer(many=True, allow_empty=False)


def work_item_files_verify(*, files: Any, allowed: list[str]) -> list[dict]:
    """A work item's files, validated like a change set and restricted to the item's
    declared `allowed` files, each parsing (the static checks); a 400 naming each
    problem otherwise."""
    serializer = _ItemFiles(data={"files": files})
    serializer.is_valid(raise_exception=True)
    changes = json.loads(json.dumps(serializer.validated_data["files"]))
    paths = [change["path"] for change in changes]
    problems = [
        f"duplicate file path {p}" for p in sorted({p for p in paths if paths.count(p) > 1})
    ]
    problems += [
        f"{p} is not one of the work item's files ({', '.join(allowed)})"
        for p in paths
        if p not in allowed
    ]
    if not problems:
        report = static_checks_run(changes)
        problems = [
            f"{p.path}:{p.line}: {p.message}" if p.line else f"{p.path}: {p.message}"
            for p in report.problems
        ]
    if problems:
        raise ValidationError({"files": problems})
    return changes


def syntax_check_row(
    *, workflow: Workflow, phase_result: PhaseResult, verdict: ChangeSetVerdict, actor_name: str
) -> CheckRun:
    """The record of an accepted change set's static checks."""
    report = verdict.report
    return CheckRun(
        workflow=workflow,
        phase_result=phase_result,
        attempt=phase_result.attempt,
        kind=CheckRun.Kind.SYNTAX,
        backend="static",
        isolated=False,
        command="static checks (ast, json, toml, yaml, node --check)",
        status=CheckRun.Status.PASSED,
        details={
            "checked": list(report.checked),
            "skipped": [{"path": path, "reason": why} for path, why in report.skipped],
            "applies_to_base": verdict.base_checked,
        },
        duration_ms=0,
        requested_by=actor_name,
    )


# --- TESTING: the report is bound to the measured run ---------------------------------


def change_set_current(workflow: Workflow) -> PhaseResult | None:
    """The accepted IMPLEMENTATION result the workflow now works on."""
    return (
        PhaseResult.objects.filter(
            workflow=workflow, phase=State.IMPLEMENTATION, status=PhaseResult.Status.ACCEPTED
        )
        .order_by("-attempt")
        .first()
    )


def test_run_latest(workflow: Workflow, change_set: PhaseResult | None) -> CheckRun | None:
    """The newest test run of `change_set` that was not cancelled."""
    if change_set is None:
        return None
    return (
        CheckRun.objects.filter(workflow=workflow, phase_result=change_set, kind="test")
        .exclude(status=CheckRun.Status.CANCELLED)
        .order_by("-created_at")
        .first()
    )


def test_run_current(workflow: Workflow) -> CheckRun | None:
    """`test_run_latest` of `change_set_current`, in one query: the change set's id is a
    subquery, so its row (every file's content) is not read."""
    current = (
        PhaseResult.objects.filter(
            workflow=workflow, phase=State.IMPLEMENTATION, status=PhaseResult.Status.ACCEPTED
        )
        .order_by("-attempt")
        .values("pk")[:1]
    )
    return (
        CheckRun.objects.filter(workflow=workflow, phase_result=Subquery(current), kind="test")
        .exclude(status=CheckRun.Status.CANCELLED)
        .order_by("-created_at")
        .first()
    )


def run_measured(run: CheckRun | None) -> bool:
    """Whether `run` ran the tests to an outcome (not: no tests found, broken setup)."""
    return run is not None and run.status in (
        CheckRun.Status.PASSED,
        CheckRun.Status.FAILED,
        CheckRun.Status.TIMEOUT,
    )


def testing_evidence_bind(*, workflow: Workflow, evidence: dict) -> dict:
    """The TESTING evidence with the measured figures and `verified`, or a 400 / 409."""
    run = test_run_current(workflow)
    if run is not None and run.is_active:
        raise TransitionConflict(
            f"test run {run.id} of this change set is {run.status}; complete TESTING after "
            "its check.finished event",
            current_state=workflow.state,
            allowed=[],
        )
    if not run_measured(run):
        return {**evidence, "verified": False, "check_run_id": str(run.id) if run else None}
    measured = {}
    if run.tests_run is not None:
        measured = {"tests_run": run.tests_run, "tests_failed": run.tests_failed or 0}
    wrong = {k: v for k, v in measured.items() if k in evidence and evidence[k] != v}
    if wrong:
        raise ValidationError(
            {
                "phase_result": {
                    name: [f"test run {run.id} measured {name}={value}; submit that or omit it"]
                    for name, value in wrong.items()
                }
            }
        )
    if evidence["verdict"] == "pass" and run.status != CheckRun.Status.PASSED:
        raise ValidationError(
            {
                "phase_result": {
                    "verdict": [
                        f"test run {run.id} {run.status} ({run_figures(run)}): a pass needs a "
                        "green run; report fail with the failures as findings"
                    ]
                }
            }
        )
    return {**evidence, **measured, "verified": True, "check_run_id": str(run.id)}


def run_figures(run: CheckRun) -> str:
    if run.tests_run is None:
        return run.reason or f"exit code {run.exit_code}"
    return f"{run.tests_failed} of {run.tests_run} tests failed, {run.tests_errors or 0} errors"


def testing_evidence_from_run(*, evidence: dict, run: CheckRun | None) -> dict:
    """An auditor's TESTING evidence made true to the run: the measured figures, and a
    red run's failures as findings with a `fail` verdict (the autopilot's binding)."""
    if not run_measured(run):
        return evidence
    evidence = dict(evidence)
    if run.tests_run is not None:
        evidence["tests_run"] = run.tests_run
        evidence["tests_failed"] = run.tests_failed or 0
    if run.status == CheckRun.Status.PASSED:
        return evidence
    evidence["verdict"] = "fail"
    evidence["findings"] = [*run_findings(run), *evidence.get("findings", [])]
    return evidence


def run_findings(run: CheckRun) -> list[dict]:
    """A red run as findings: one per failing test (with its message), or the reason."""
    findings = []
    for case in run.failures[:20]:
        detail = (case.get("message") or case.get("text") or "").strip().splitlines()
        finding = {
            "severity": "major",
            "message": f"test {case.get('name')} failed: {(detail or ['no message'])[0][:500]}",
        }
        # No file, or one outside the repository: the finding stands without a path.
        with contextlib.suppress(UnsafeChangeSet):
            finding["path"] = repo_path_check(case.get("file") or "")
        findings.append(finding)
    if not findings:
        findings.append(
            {"severity": "major", "message": f"the test run {run.status}: {run_figures(run)}"}
        )
    return findings


def evidence_verify(
    *, workflow: Workflow, phase: str, evidence: dict
) -> tuple[dict, ChangeSetVerdict | None]:
    """`evidence` checked against what TopDog can measure for `phase` (see module doc),
    and for a change set the verdict of its static checks, to record once it is stored."""
    if phase == State.IMPLEMENTATION:
        return evidence, change_set_verify(workflow=workflow, evidence=evidence)
    if phase == State.TESTING:
        return testing_evidence_bind(workflow=workflow, evidence=evidence), None
    return evidence, None


def tests_verification_note(result: dict | None) -> str:
    """One sentence on whether TopDog ran the tests behind a TESTING report."""
    if result is None:
        return ""
    if result.get("verified"):
        return (
            f"TopDog ran the tests in a sandbox: {result.get('tests_run')} run, "
            f"{result.get('tests_failed')} failed (check run {result.get('check_run_id')})."
        )
    return "TopDog did not run the tests: the test report's figures are the auditor's claim."
