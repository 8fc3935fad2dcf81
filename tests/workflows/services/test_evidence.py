"""Each phase's evidence schema: what it accepts, what it turns down and why."""

import copy
import hashlib
import json

import pytest
from rest_framework.exceptions import ValidationError

from tests.factories import evidence, workflow_for
from workflows.evidence import (
    EVIDENCE_EXAMPLES,
    EVIDENCE_SCHEMAS,
    canonical_json,
    evidence_artifacts,
    evidence_validate,
    find_cycle,
)
from workflows.models import PhaseResult
from workflows.services import Actor, workflow_phase_complete
from workflows.states import PHASES, State

S = State


def errors_of(phase: str, data) -> str:
    """The validation errors of `data` as one string (so tests can look for words in it)."""
    with pytest.raises(ValidationError) as excinfo:
        evidence_validate(phase=phase, data=data)
    assert "phase_result" in excinfo.value.detail
    return str(excinfo.value.detail)


def work_item(id_: str, depends_on: list[str], files: list[str] | None = None) -> dict:
    return {
        "id": id_,
        "title": f"do {id_}",
        "files": files or ["src/app.py"],
        "depends_on": depends_on,
    }


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("phase", PHASES)
def test_each_phase_example_is_valid(phase):
    validated = evidence_validate(phase=phase, data=copy.deepcopy(EVIDENCE_EXAMPLES[phase]))

    assert isinstance(validated, dict)
    for key in EVIDENCE_EXAMPLES[phase]:
        assert key in validated


def test_every_phase_has_an_example():
    assert set(EVIDENCE_EXAMPLES) == set(PHASES)


@pytest.mark.parametrize("phase", PHASES)
def test_evidence_must_be_an_object(phase):
    assert "JSON object" in errors_of(phase, ["not", "an", "object"])


@pytest.mark.parametrize("phase", PHASES)
def test_empty_evidence_is_rejected(phase):
    errors_of(phase, {})


# --- planning: the dependency graph ----------------------------------------------------


def test_plan_with_a_two_item_cycle_is_rejected_naming_it():
    plan = evidence(S.PLANNING, work_items=[work_item("W1", ["W2"]), work_item("W2", ["W1"])])

    message = errors_of(S.PLANNING, plan)

    assert "W1 -> W2 -> W1" in message


def test_plan_with_a_longer_cycle_is_rejected_naming_it():
    plan = evidence(
        S.PLANNING,
        work_items=[
            work_item("W0", []),
            work_item("W1", ["W0", "W3"]),
            work_item("W2", ["W1"]),
            work_item("W3", ["W2"]),
        ],
    )

    message = errors_of(S.PLANNING, plan)

    assert "W1 -> W3 -> W2 -> W1" in message
    assert "W0 ->" not in message


def test_plan_with_a_self_dependency_is_rejected():
    plan = evidence(S.PLANNING, work_items=[work_item("W1", ["W1"])])

    assert "W1 -> W1" in errors_of(S.PLANNING, plan)


def test_plan_that_is_a_diamond_is_valid():
    plan = evidence(
        S.PLANNING,
        work_items=[
            work_item("A", []),
            work_item("B", ["A"], ["src/b.py"]),
            work_item("C", ["A"], ["src/c.py"]),
            work_item("D", ["B", "C"]),
        ],
    )

    validated = evidence_validate(phase=S.PLANNING, data=plan)

    assert [w["id"] for w in validated["work_items"]] == ["A", "B", "C", "D"]


def test_find_cycle():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
    assert find_cycle({}) is None


def test_plan_with_an_unknown_dependency_is_rejected():
    plan = evidence(S.PLANNING, work_items=[work_item("W1", []), work_item("W2", ["W9"])])

    message = errors_of(S.PLANNING, plan)

    assert "W9" in message
    assert "unknown" in message


def test_plan_with_duplicate_ids_is_rejected():
    plan = evidence(S.PLANNING, work_items=[work_item("W1", []), work_item("W1", [])])

    message = errors_of(S.PLANNING, plan)

    assert "duplicate" in message
    assert "W1" in message


def test_discovery_with_duplicate_requirement_ids_is_rejected():
    requirement = EVIDENCE_EXAMPLES[S.DISCOVERY]["requirements"][0]
    data = evidence(S.DISCOVERY, requirements=[requirement, requirement])

    assert "duplicate requirement id: R1" in errors_of(S.DISCOVERY, data)


# --- file paths ------------------------------------------------------------------------

# (path, what the error says about it)
UNSAFE_PATHS = [
    ("../x", "leaves the repository"),
    ("src/../../x", "leaves the repository"),
    ("/etc/passwd", "relative to the repository root"),
    (".git/config", "inside .git"),
    ("src/../.git/hooks/pre-commit", "inside .git"),
    ("a\\b", "forward slashes"),
    (".", "leaves the repository"),
]


@pytest.mark.parametrize(("path", "reason"), UNSAFE_PATHS)
def test_unsafe_path_in_a_change_set_is_rejected(path, reason):
    data = evidence(
        S.IMPLEMENTATION,
        files=[{"path": path, "action": "create", "content": "x = 1\n"}],
    )

    assert reason in errors_of(S.IMPLEMENTATION, data)


@pytest.mark.parametrize(("path", "reason"), UNSAFE_PATHS)
def test_unsafe_path_in_a_plan_is_rejected(path, reason):
    data = evidence(S.PLANNING, work_items=[work_item("W1", [], files=[path])])

    assert reason in errors_of(S.PLANNING, data)


def test_unsafe_path_in_a_finding_is_rejected():
    data = evidence(S.TESTING, findings=[{"severity": "minor", "message": "m", "path": "../x"}])

    assert "leaves the repository" in errors_of(S.TESTING, data)


def test_safe_paths_are_normalised():
    data = evidence(
        S.IMPLEMENTATION,
        files=[{"path": "src/./pkg/../app.py", "action": "modify", "content": "x"}],
    )

    validated = evidence_validate(phase=S.IMPLEMENTATION, data=data)

    assert validated["files"][0]["path"] == "src/app.py"


def test_paths_that_only_look_like_git_are_allowed():
    data = evidence(
        S.IMPLEMENTATION,
        files=[
            {"path": ".github/workflows/ci.yml", "action": "create", "content": "on: push\n"},
            {"path": "docs/.git-notes.md", "action": "create", "content": "notes"},
        ],
    )

    evidence_validate(phase=S.IMPLEMENTATION, data=data)


# --- change sets -----------------------------------------------------------------------


def test_delete_with_content_is_rejected():
    data = evidence(
        S.IMPLEMENTATION, files=[{"path": "old.py", "action": "delete", "content": "x = 1"}]
    )

    assert "content" in errors_of(S.IMPLEMENTATION, data)


def test_create_without_content_is_rejected():
    data = evidence(S.IMPLEMENTATION, files=[{"path": "new.py", "action": "create"}])

    message = errors_of(S.IMPLEMENTATION, data)

    assert "content" in message


def test_create_with_empty_content_is_an_empty_file():
    data = evidence(
        S.IMPLEMENTATION, files=[{"path": "pkg/__init__.py", "action": "create", "content": ""}]
    )

    validated = evidence_validate(phase=S.IMPLEMENTATION, data=data)

    assert validated["files"][0]["content"] == ""


def test_change_set_with_a_path_twice_is_rejected():
    data = evidence(
        S.IMPLEMENTATION,
        files=[
            {"path": "a.py", "action": "modify", "content": "1"},
            {"path": "./a.py", "action": "delete"},
        ],
    )

    assert "duplicate file path: a.py" in errors_of(S.IMPLEMENTATION, data)


# --- reports and releases --------------------------------------------------------------


def test_failing_test_report_without_findings_is_rejected():
    data = evidence(S.TESTING, verdict="fail", findings=[], tests_failed=2)

    assert "findings" in errors_of(S.TESTING, data)


def test_failing_test_report_with_findings_is_valid():
    data = evidence(S.TESTING, verdict="fail", findings=[{"severity": "major", "message": "fails"}])

    assert evidence_validate(phase=S.TESTING, data=data)["verdict"] == "fail"


@pytest.mark.parametrize("score", [-0.1, 1.5])
def test_quality_score_out_of_range_is_rejected(score):
    assert "quality_score" in errors_of(S.TESTING, evidence(S.TESTING, quality_score=score))


def test_verification_rejection_without_findings_is_rejected():
    data = evidence(S.VERIFICATION, verdict="reject", findings=[])

    assert "findings" in errors_of(S.VERIFICATION, data)


def test_verification_approval_may_not_send_work_back():
    data = evidence(S.VERIFICATION, regress_to=S.PLANNING)

    assert "regress_to" in errors_of(S.VERIFICATION, data)


def test_pushed_deployment_without_pull_request_url_is_rejected():
    data = evidence(S.DEPLOYMENT)
    del data["pull_request_url"]

    assert "pull_request_url" in errors_of(S.DEPLOYMENT, data)


def test_unpushed_deployment_needs_a_reason():
    data = evidence(S.DEPLOYMENT, pushed=False, pull_request_url=None)

    assert "reason" in errors_of(S.DEPLOYMENT, data)
    validated = evidence_validate(
        phase=S.DEPLOYMENT, data={**data, "reason": "no GitHub token configured"}
    )
    assert validated["pushed"] is False


# --- artifacts -------------------------------------------------------------------------


def test_change_set_artifacts_carry_sha256_of_each_file():
    result = evidence_validate(
        phase=S.IMPLEMENTATION,
        data=evidence(
            S.IMPLEMENTATION,
            files=[
                {"path": "src/app.py", "action": "modify", "content": "print('dark')\n"},
                {"path": "old.py", "action": "delete"},
            ],
        ),
    )

    artifacts = {a["name"]: a for a in evidence_artifacts(phase=S.IMPLEMENTATION, result=result)}

    assert artifacts["src/app.py"]["sha256"] == sha256("print('dark')\n")
    assert artifacts["src/app.py"]["size"] == len(b"print('dark')\n")
    assert artifacts["old.py"]["action"] == "delete"
    assert artifacts["old.py"]["sha256"] is None


def test_completed_phase_stores_artifacts_with_content_hashes(user, project):
    # given
    workflow = workflow_for(project, user)
    data = evidence(S.DISCOVERY, document="# Dark mode\nUsers can switch themes.")

    # when
    outcome = workflow_phase_complete(
        workflow_id=workflow.pk, ai_response="done", result=data, actor=Actor.of(user)
    )

    # then
    stored = PhaseResult.objects.get(pk=outcome.phase_result.pk)
    assert stored.artifacts == [
        {
            "name": "requirements.md",
            "sha256": sha256("# Dark mode\nUsers can switch themes."),
            "size": len(b"# Dark mode\nUsers can switch themes."),
        }
    ]
    assert stored.content_hash == sha256(canonical_json(stored.result))


@pytest.mark.parametrize("phase", [S.PLANNING, S.TESTING, S.VERIFICATION, S.DEPLOYMENT])
def test_structured_results_are_one_hashed_artifact(phase):
    result = evidence_validate(phase=phase, data=evidence(phase))

    [artifact] = evidence_artifacts(phase=phase, result=result)

    assert artifact["sha256"] == sha256(canonical_json(result))


@pytest.mark.parametrize("phase", list(PHASES))
def test_validated_evidence_validates_again_unchanged(phase):
    """The autopilot validates, then the service validates again: defaults must survive."""
    once = evidence_validate(phase=phase, data=EVIDENCE_EXAMPLES[phase])
    assert evidence_validate(phase=phase, data=once) == once


# --- evidence_validate answers as a fresh serializer's is_valid() does --------------------

CYCLE = {
    "work_items": [
        {"id": "A", "title": "a", "files": ["a.py"], "depends_on": ["B"]},
        {"id": "B", "title": "b", "files": ["b.py"], "depends_on": ["A"]},
    ]
}
BAD_FIELDS = {"summary": 3, "work_items": [{"id": "A", "files": ["/etc/passwd"]}]}


@pytest.mark.parametrize(
    "data",
    [EVIDENCE_EXAMPLES[S.PLANNING], CYCLE, BAD_FIELDS, {}],
    ids=["valid", "cycle", "field-errors", "empty"],
)
def test_validation_answers_as_is_valid_does(data):
    # given: what a fresh serializer of the plan schema says of `data`
    serializer = EVIDENCE_SCHEMAS[S.PLANNING](data=data)
    valid = serializer.is_valid()

    # when / then: the same validated data, or the same field errors, every time
    for _ in range(2):
        if valid:
            assert evidence_validate(phase=S.PLANNING, data=data) == json.loads(
                json.dumps(serializer.validated_data)
            )
        else:
            with pytest.raises(ValidationError) as excinfo:
                evidence_validate(phase=S.PLANNING, data=data)
            assert excinfo.value.detail == {"phase_result": serializer.errors}


def test_a_failed_validation_leaves_nothing_behind_for_the_next():
    # given: a plan that fails
    with pytest.raises(ValidationError):
        evidence_validate(phase=S.PLANNING, data=CYCLE)

    # when: a valid plan follows it
    value = evidence_validate(phase=S.PLANNING, data=EVIDENCE_EXAMPLES[S.PLANNING])

    # then: it validates, with nothing of the failed call in it
    assert [item["id"] for item in value["work_items"]] == ["W1", "W2"]
