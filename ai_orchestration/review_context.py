"""What the auditors see of the work they judge: the change set as a diff, and the test run.

The TEST_AUDITOR and the VERIFICATION_AUDITOR get the current change set as a unified
diff against the repository's base (the one the sandbox applied; without a run, the new
content of each file) and the latest test run's result with the failing tests' output.
Each file's part of the diff is trimmed to its share of the budget, with a note saying
how much was left out, so one huge file cannot crowd out the others.
"""

from ai_orchestration.tokens import tokens_estimate
from integrations.change_set import UnsafeChangeSet
from integrations.git.patch import git_change_set_patch
from workflows.models import CheckRun, PhaseResult, Workflow
from workflows.states import Role
from workflows.verification import change_set_current, run_figures, test_run_latest

ROLES = (Role.TEST_AUDITOR, Role.VERIFICATION_AUDITOR)
FAILURE_CHARS = 1500
MAX_FAILURES = 10


def review_context_text(*, workflow: Workflow, role: str, budget_tokens: int) -> str:
    """The work under review for `role`, at most about `budget_tokens` long ("" if none)."""
    if role not in ROLES or budget_tokens <= 0:
        return ""
    change_set = change_set_current(workflow)
    if change_set is None:
        return ""
    run = test_run_latest(workflow, change_set)
    results = test_run_text(run)
    diff_budget = max(0, budget_tokens - tokens_estimate(results))
    diff = diff_trimmed(_diff(change_set, run), budget_tokens=diff_budget)
    return (
        f"Change set under review (IMPLEMENTATION attempt {change_set.attempt}), as a diff "
        f"against the repository's base:\n\n{diff}\n\n{results}"
    )


def change_set_diff(*, workflow: Workflow) -> str | None:
    """The current change set as a diff against the base (the latest test run's, else each
    file's new content); None until an IMPLEMENTATION result is accepted."""
    change_set = change_set_current(workflow)
    if change_set is None:
        return None
    return _diff(change_set, test_run_latest(workflow, change_set))


def _diff(change_set: PhaseResult, run: CheckRun | None) -> str:
    if run is not None and run.diff:
        return run.diff
    # No run applied it: each file's new content (a create against an empty base).
    files = [
        {"path": f["path"], "action": "create", "content": f.get("content", "")}
        if f["action"] != "delete"
        else {"path": f["path"], "action": "create", "content": "(deleted)\n"}
        for f in change_set.result.get("files", [])
    ]
    try:
        return git_change_set_patch(files=files)
    except UnsafeChangeSet:
        return "(the change set could not be shown as a diff)"


def test_run_text(run: CheckRun | None) -> str:
    """The test run as the auditor reads it: verdict, figures, failing tests' output."""
    if run is None:
        return (
            "Test run: none. TopDog did not run the tests of this change set (no sandbox), "
            "so no figure is measured; judge the code and say so in your findings."
        )
    head = (
        f"Test run {run.id} ({run.backend}, {'isolated' if run.isolated else 'not isolated'}), "
        f"command `{run.command}`: {run.status.upper()}; {run_figures(run)}"
    )
    if run.tests_run is not None:
        head += f"; {run.tests_run} run, {run.tests_skipped or 0} skipped"
    lines = [head + "."]
    for case in run.failures[:MAX_FAILURES]:
        text = (case.get("text") or case.get("message") or "").strip()[:FAILURE_CHARS]
        lines.append(f"\nFAILED {case.get('classname', '')}::{case.get('name')}\n{text}")
    if not run.failures and run.status != CheckRun.Status.PASSED and run.output:
        lines.append(f"\nOutput (tail):\n{run.output[-FAILURE_CHARS * 2 :]}")
    return "\n".join(lines)


def diff_trimmed(diff: str, *, budget_tokens: int) -> str:
    """`diff` within `budget_tokens`: each file's part cut to an equal share if needed."""
    if tokens_estimate(diff) <= budget_tokens:
        return diff
    parts = _file_parts(diff)
    share_chars = max(200, budget_tokens * 4 // max(1, len(parts)))
    trimmed = []
    for part in parts:
        if len(part) <= share_chars:
            trimmed.append(part)
            continue
        kept = part[:share_chars].rsplit("\n", 1)[0]
        left = part.count("\n") - kept.count("\n")
        trimmed.append(f"{kept}\n[... {left} more lines of this file's diff left out to fit]\n")
    return "".join(trimmed)


def _file_parts(diff: str) -> list[str]:
    parts: list[str] = []
    for line in diff.splitlines(keepends=True):
        if line.startswith("diff --git ") or not parts:
            parts.append(line)
        else:
            parts[-1] += line
    return parts
