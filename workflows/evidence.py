"""The evidence that ends each phase, as DRF serializers.

`evidence_validate(phase=..., data=...)` is the one entry point: the API, the admin and
the autopilot all validate through it, so a phase result means the same everywhere.
Aliases (`EVIDENCE_ALIASES`, the seed IDE's DISCOVERY shape) are read before validation
and unknown keys are kept under `extra`.
"""

import hashlib
import json
import posixpath
from collections.abc import Iterator
from functools import cache
from itertools import count
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from workflows.serializer_fields import ChoiceField
from workflows.states import State

MAX_FILE_BYTES = 1_000_000
# A requirement's priority in the seed's words, read as must/should/could.
PRIORITY_ALIASES = {"critical": "must", "high": "must", "medium": "should", "low": "could"}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def validate_repo_path(path: str) -> str:
    """A relative POSIX path inside the repository, normalised."""
    if not path or path.strip() != path:
        raise serializers.ValidationError("path must be non-empty with no surrounding spaces")
    if "\\" in path or "\x00" in path:
        raise serializers.ValidationError("path must use forward slashes and no NUL bytes")
    if path.startswith("/"):
        raise serializers.ValidationError(f"path {path!r} must be relative to the repository root")
    normalised = posixpath.normpath(path)
    if normalised.startswith("..") or normalised == ".":
        raise serializers.ValidationError(f"path {path!r} leaves the repository")
    if normalised.split("/")[0] == ".git":
        raise serializers.ValidationError(f"path {path!r} is inside .git")
    return normalised


class RepoPathField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        return validate_repo_path(super().to_internal_value(data))


class RequirementSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=40)
    description = serializers.CharField(max_length=4000)
    priority = ChoiceField(choices=["must", "should", "could"], default="must")
    acceptance_criteria = serializers.ListField(
        child=serializers.CharField(max_length=2000), min_length=1
    )


class DiscoveryEvidence(serializers.Serializer):
    """Requirements document (markdown) and the structured requirements it states."""

    document = serializers.CharField(max_length=100_000)
    requirements = RequirementSerializer(many=True, allow_empty=False)
    assumptions = serializers.ListField(child=serializers.CharField(), default=list)

    def validate_requirements(self, value: list[dict]) -> list[dict]:
        _reject_duplicates([item["id"] for item in value], "requirement id")
        return value


class WorkItemSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=40)
    title = serializers.CharField(max_length=300)
    description = serializers.CharField(
        max_length=10_000, required=False, default="", allow_blank=True
    )
    files = serializers.ListField(child=RepoPathField(max_length=500), min_length=1)
    depends_on = serializers.ListField(child=serializers.CharField(max_length=40), default=list)


class PlanningEvidence(serializers.Serializer):
    """Implementation plan: work items with file paths, whose dependencies form a DAG."""

    summary = serializers.CharField(max_length=10_000, required=False, default="", allow_blank=True)
    work_items = WorkItemSerializer(many=True, allow_empty=False, max_length=500)

    def validate_work_items(self, value: list[dict]) -> list[dict]:
        ids = [item["id"] for item in value]
        _reject_duplicates(ids, "work item id")
        known = set(ids)
        for item in value:
            unknown = [dep for dep in item["depends_on"] if dep not in known]
            if unknown:
                raise serializers.ValidationError(
                    f"work item {item['id']!r} depends on unknown items {unknown}"
                )
        cycle = find_cycle({item["id"]: item["depends_on"] for item in value})
        if cycle:
            raise serializers.ValidationError(
                "work item dependencies must form a DAG; cycle: " + " -> ".join(cycle)
            )
        clash = shared_file_clash(value)
        if clash:
            path, first, second = clash
            raise serializers.ValidationError(
                f"work items {first!r} and {second!r} both write {path} but neither depends "
                f"on the other: they could run at once; make one depend on the other or "
                "give the file to one item"
            )
        return value


class FileChangeSerializer(serializers.Serializer):
    path = RepoPathField(max_length=500)
    action = ChoiceField(choices=["create", "modify", "delete"])
    content = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False, max_length=MAX_FILE_BYTES
    )

    def validate(self, attrs: dict) -> dict:
        if attrs["action"] == "delete":
            if attrs.get("content"):
                raise serializers.ValidationError({"content": "a deleted file has no content"})
            attrs.pop("content", None)
        elif "content" not in attrs:
            raise serializers.ValidationError(
                {"content": f"{attrs['action']} needs the file's full new content"}
            )
        return attrs


class ImplementationEvidence(serializers.Serializer):
    """Change set: files with full new content or deletions, and a commit message."""

    commit_message = serializers.CharField(max_length=5000)
    files = FileChangeSerializer(many=True, allow_empty=False)
    notes = serializers.CharField(required=False, default="", allow_blank=True)

    def validate_files(self, value: list[dict]) -> list[dict]:
        _reject_duplicates([item["path"] for item in value], "file path")
        return value


class FindingSerializer(serializers.Serializer):
    severity = ChoiceField(choices=["info", "minor", "major", "critical"])
    message = serializers.CharField(max_length=5000)
    path = RepoPathField(max_length=500, required=False)


class TestingEvidence(serializers.Serializer):
    """Test report: verdict, findings and a quality score in 0..1."""

    verdict = ChoiceField(choices=["pass", "fail"])
    findings = FindingSerializer(many=True, default=list)
    quality_score = serializers.FloatField(min_value=0.0, max_value=1.0)
    tests_run = serializers.IntegerField(min_value=0, required=False)
    tests_failed = serializers.IntegerField(min_value=0, required=False)

    def validate(self, attrs: dict) -> dict:
        if attrs["verdict"] == "fail" and not attrs["findings"]:
            raise serializers.ValidationError(
                {"findings": "a failing report must say what failed (at least one finding)"}
            )
        return attrs


class VerificationEvidence(serializers.Serializer):
    """Verification verdict: approve or reject, findings and a score in 0..1."""

    verdict = ChoiceField(choices=["approve", "reject"])
    findings = FindingSerializer(many=True, default=list)
    score = serializers.FloatField(min_value=0.0, max_value=1.0)
    regress_to = ChoiceField(choices=[State.IMPLEMENTATION, State.PLANNING], required=False)

    def validate(self, attrs: dict) -> dict:
        if attrs["verdict"] == "reject":
            if not attrs["findings"]:
                raise serializers.ValidationError(
                    {"findings": "a rejection must say what is wrong (at least one finding)"}
                )
            attrs.setdefault("regress_to", State.IMPLEMENTATION)
        elif "regress_to" in attrs:
            raise serializers.ValidationError({"regress_to": "only a rejection sends work back"})
        return attrs


class DeploymentEvidence(serializers.Serializer):
    """Release record: branch, commits, pull request URL, or "not pushed" with a reason."""

    branch = serializers.CharField(max_length=250)
    commits = serializers.ListField(
        child=serializers.RegexField(r"^[0-9a-f]{7,64}$", max_length=64), default=list
    )
    pull_request_url = serializers.URLField(required=False, allow_null=True, default=None)
    pull_request_number = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    pushed = serializers.BooleanField(default=True)
    remote = serializers.CharField(
        required=False, default="", allow_blank=True, help_text="The git remote pushed to."
    )
    reason = serializers.CharField(required=False, default="", allow_blank=True)
    patch = serializers.CharField(
        required=False,
        default="",
        allow_blank=True,
        trim_whitespace=False,
        max_length=5_000_000,
        help_text="Unified diff of the change set, when there was nowhere to push it.",
    )

    def validate(self, attrs: dict) -> dict:
        if attrs["pushed"] and not (attrs["pull_request_url"] or attrs["remote"]):
            raise serializers.ValidationError(
                {
                    "pull_request_url": "a pushed release needs its pull request URL or the "
                    "remote it went to (or set pushed=false with a reason)"
                }
            )
        if not attrs["pushed"] and not attrs["reason"].strip():
            raise serializers.ValidationError({"reason": "say why the change was not pushed"})
        return attrs


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "minLength": 1, "maxLength": 4000},
            {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "maxLength": 40},
                    "description": {"type": "string", "minLength": 1, "maxLength": 4000},
                    "priority": {
                        "type": "string",
                        "enum": ["must", "should", "could", *PRIORITY_ALIASES],
                    },
                    "acceptance_criteria": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1, "maxLength": 2000},
                        "minItems": 1,
                    },
                },
                "required": ["description"],
            },
        ]
    }
)
class SeedRequirementField(serializers.JSONField):
    """A requirement as the seed IDE sends it: its text, or an object."""


class DiscoverySeedEvidence(serializers.Serializer):
    """DISCOVERY as the seed IDE sends it. Read as DiscoveryEvidence: the requirements get
    ids R1, R2, … and an acceptance criterion when they have none, `document` is the
    `ai_response`, and the other keys are kept under `extra` of the stored result."""

    discovered_requirements = serializers.ListField(child=SeedRequirementField(), allow_empty=False)
    user_feedback = serializers.CharField(required=False, allow_blank=True)
    status = serializers.CharField(required=False, allow_blank=True)


EVIDENCE_SCHEMAS: dict[str, type[serializers.Serializer]] = {
    State.DISCOVERY: DiscoveryEvidence,
    State.PLANNING: PlanningEvidence,
    State.IMPLEMENTATION: ImplementationEvidence,
    State.TESTING: TestingEvidence,
    State.VERIFICATION: VerificationEvidence,
    State.DEPLOYMENT: DeploymentEvidence,
}


class EvidenceInvalid(ValidationError):
    """`phase`'s evidence failed validation (the API adds the expected shape)."""

    def __init__(self, detail: Any, *, phase: str) -> None:
        super().__init__(detail)
        self.phase = phase


def evidence_validate(*, phase: str, data: Any, ai_response: str = "") -> dict:
    """Validate `data` as `phase`'s evidence; raises EvidenceInvalid with field errors.

    Aliases are accepted first (`evidence_normalize`); keys the phase does not know are
    kept under `extra` in the result, not dropped."""
    if not isinstance(data, dict):
        raise EvidenceInvalid(
            {"phase_result": [f"{phase} evidence must be a JSON object"]}, phase=phase
        )
    data, extra = evidence_normalize(phase=phase, data=data, ai_response=ai_response)
    serializer = EVIDENCE_SCHEMAS[phase](data=data)
    try:
        serializer.is_valid(raise_exception=True)
    except ValidationError as exc:
        raise EvidenceInvalid({"phase_result": exc.detail}, phase=phase) from None
    result = json.loads(json.dumps(serializer.validated_data))
    if extra:
        result["extra"] = extra
    return result


# Other names accepted for a phase's top-level fields (the seed IDE's and common
# spellings); an alias is read only when the field itself is absent.
EVIDENCE_ALIASES: dict[str, dict[str, str]] = {
    State.DISCOVERY: {
        "discovered_requirements": "requirements",
        "requirements_document": "document",
    },
    State.PLANNING: {"tasks": "work_items", "plan": "summary"},
    State.IMPLEMENTATION: {"changes": "files", "message": "commit_message"},
    State.TESTING: {"score": "quality_score", "issues": "findings"},
    State.VERIFICATION: {"quality_score": "score", "issues": "findings"},
    State.DEPLOYMENT: {"pr_url": "pull_request_url", "pr_number": "pull_request_number"},
}
MAX_CRITERION_CHARS = 2000


def evidence_normalize(*, phase: str, data: dict, ai_response: str = "") -> tuple[dict, dict]:
    """`data` with aliases read and DISCOVERY's gaps filled, and the keys `phase` does
    not know (with an `extra` object already there): (data, extra).

    DISCOVERY: a requirement may be a string or lack `id` (R1, R2, … are given) or
    `acceptance_criteria` (one is derived from its description); `document` is the
    `ai_response` when absent, or a list of the requirements if that is empty too."""
    data = dict(data)
    for alias, field in EVIDENCE_ALIASES.get(phase, {}).items():
        if alias in data and field not in data:
            data[field] = data.pop(alias)
    if phase == State.DISCOVERY:
        data = _discovery_gaps_filled(data, ai_response)
    known = _field_names(phase)
    extra = data.pop("extra", {})
    extra = dict(extra) if isinstance(extra, dict) else {"extra": extra}
    for key in [key for key in data if key not in known]:
        extra[key] = data.pop(key)
    return data, extra


@cache
def _field_names(phase: str) -> frozenset[str]:
    return frozenset(EVIDENCE_SCHEMAS[phase]().fields)


def _discovery_gaps_filled(data: dict, ai_response: str) -> dict:
    requirements = data.get("requirements")
    if isinstance(requirements, list):
        taken = {item.get("id") for item in requirements if isinstance(item, dict)}
        ids = (f"R{n}" for n in count(1) if f"R{n}" not in taken)
        data["requirements"] = [_requirement_filled(item, ids) for item in requirements]
    if "document" not in data:
        if ai_response.strip():
            data["document"] = ai_response
        elif isinstance(data.get("requirements"), list):
            lines = [
                f"- {item.get('id')}: {item.get('description')}"
                for item in data["requirements"]
                if isinstance(item, dict)
            ]
            data["document"] = "# Requirements\n\n" + "\n".join(lines)
    return data


def _requirement_filled(item: Any, ids: Iterator[str]) -> Any:
    if isinstance(item, str):
        item = {"description": item}
    if not isinstance(item, dict):
        return item
    item = dict(item)
    if "id" not in item:
        item["id"] = next(ids)
    description = item.get("description")
    if "acceptance_criteria" not in item and isinstance(description, str) and description.strip():
        item["acceptance_criteria"] = [
            f"A reviewer confirms: {description.strip()}"[:MAX_CRITERION_CHARS]
        ]
    if isinstance(item.get("priority"), str):
        item["priority"] = PRIORITY_ALIASES.get(item["priority"].lower(), item["priority"])
    return item


def evidence_expected(phase: str) -> dict:
    """What `phase`'s evidence looks like, for an error answer: required fields, aliases,
    a valid example and where its full schema is."""
    fields = EVIDENCE_SCHEMAS[phase]().fields
    return {
        "phase": phase,
        "required": [name for name, field in fields.items() if field.required],
        "aliases": EVIDENCE_ALIASES.get(phase, {}),
        "example": EVIDENCE_EXAMPLES[phase],
        "schema": f"GET /api/schema/ → components.schemas.{EVIDENCE_SCHEMAS[phase].__name__}"
        "Request",
    }


def evidence_artifacts(*, phase: str, result: dict) -> list[dict]:
    """Content-addressed artifacts a result carries (documents and files)."""
    if phase == State.DISCOVERY:
        return [_artifact("requirements.md", result["document"])]
    if phase == State.IMPLEMENTATION:
        return [
            {"name": item["path"], "action": "delete", "sha256": None, "size": 0}
            if item["action"] == "delete"
            else {**_artifact(item["path"], item["content"]), "action": item["action"]}
            for item in result["files"]
        ]
    return [_artifact(f"{phase.lower()}.json", canonical_json(result))]


def _artifact(name: str, text: str) -> dict:
    return {"name": name, "sha256": sha256_text(text), "size": len(text.encode())}


def evidence_summary(*, phase: str, result: dict) -> str:
    """A few lines a later role reads instead of the whole evidence."""
    if phase == State.DISCOVERY:
        items = "; ".join(f"{r['id']}: {r['description'][:160]}" for r in result["requirements"])
        return f"{len(result['requirements'])} requirements. {items}"
    if phase == State.PLANNING:
        items = "; ".join(
            f"{w['id']} {w['title'][:120]} ({', '.join(w['files'][:4])})"
            for w in result["work_items"]
        )
        return f"Plan of {len(result['work_items'])} work items. {items}"
    if phase == State.IMPLEMENTATION:
        files = ", ".join(f"{f['action']} {f['path']}" for f in result["files"][:30])
        return f"Change set: {result['commit_message'][:200]}. Files: {files}"
    if phase == State.TESTING:
        return (
            f"Test report: {result['verdict']}, quality {result['quality_score']:.2f}, "
            f"{len(result['findings'])} findings."
        )
    if phase == State.VERIFICATION:
        return (
            f"Verification: {result['verdict']}, score {result['score']:.2f}, "
            f"{len(result['findings'])} findings."
        )
    if result.get("pushed"):
        return f"Released on branch {result['branch']}: {result['pull_request_url']}"
    return f"Not pushed ({result['reason'][:300]}); branch {result['branch']}."


def findings_feedback(findings: list[dict]) -> str:
    """Findings as the feedback text the next role reads."""
    return "\n".join(
        f"- [{f['severity']}] {f.get('path') + ': ' if f.get('path') else ''}{f['message']}"
        for f in findings
    )


def evidence_example(phase: str) -> dict:
    """A minimal valid example of `phase`'s evidence, shown to models and in the docs."""
    return EVIDENCE_EXAMPLES[phase]


@cache
def evidence_example_text(phase: str) -> str:
    """`evidence_example(phase)` as indented JSON, as prompts show it (made once: every
    role context rendered on a transition shows one)."""
    return json.dumps(EVIDENCE_EXAMPLES[phase], indent=2)


EVIDENCE_EXAMPLES: dict[str, dict] = {
    State.DISCOVERY: {
        "document": "# Requirements\n...",
        "requirements": [
            {
                "id": "R1",
                "description": "What must be true",
                "priority": "must",
                "acceptance_criteria": ["How a reviewer checks it"],
            }
        ],
        "assumptions": [],
    },
    State.PLANNING: {
        "summary": "Approach in two sentences",
        "work_items": [
            {"id": "W1", "title": "...", "files": ["src/app.py"], "depends_on": []},
            {"id": "W2", "title": "...", "files": ["tests/test_app.py"], "depends_on": ["W1"]},
        ],
    },
    State.IMPLEMENTATION: {
        "commit_message": "feat: ...",
        "files": [
            {
                "path": "src/app.py",
                "action": "modify",
                "content": 'def main() -> None:\n    """The full new content of the file."""\n',
            },
            {"path": "old.py", "action": "delete"},
        ],
    },
    State.TESTING: {
        "verdict": "pass",
        "findings": [{"severity": "minor", "message": "...", "path": "src/app.py"}],
        "quality_score": 0.9,
        "tests_run": 12,
        "tests_failed": 0,
    },
    State.VERIFICATION: {
        "verdict": "approve",
        "findings": [],
        "score": 0.9,
    },
    State.DEPLOYMENT: {
        "branch": "topdog/feature-branch",
        "commits": ["0123456789abcdef0123456789abcdef01234567"],
        "pull_request_url": "https://github.com/owner/name/pull/1",
        "pushed": True,
    },
}


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle in `graph` (node -> dependencies) as [a, b, ..., a], or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack_path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack_path.append(node)
        for dep in graph.get(node, []):
            if colour.get(dep, black) == grey:
                return [*stack_path[stack_path.index(dep) :], dep]
            if colour.get(dep) == white:
                found = visit(dep)
                if found:
                    return found
        stack_path.pop()
        colour[node] = black
        return None

    for node in graph:
        if colour[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def topological_order(graph: dict[str, list[str]]) -> list[str]:
    """The nodes of the DAG `graph` (node -> dependencies), each after its dependencies;
    ties in plan order (Kahn's algorithm)."""
    waiting = {node: len(set(deps)) for node, deps in graph.items()}
    dependents: dict[str, list[str]] = {node: [] for node in graph}
    for node, deps in graph.items():
        for dep in set(deps):
            dependents[dep].append(node)
    position = {node: n for n, node in enumerate(graph)}
    ready = [node for node, count in waiting.items() if count == 0]
    order: list[str] = []
    while ready:
        ready.sort(key=position.__getitem__, reverse=True)
        node = ready.pop()
        order.append(node)
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    if len(order) != len(graph):
        raise ValueError("the graph has a cycle")
    return order


def ancestors_of(graph: dict[str, list[str]]) -> dict[str, set[str]]:
    """Every node's transitive dependencies."""
    found: dict[str, set[str]] = {}
    for node in topological_order(graph):
        found[node] = set()
        for dep in graph[node]:
            found[node] |= {dep, *found[dep]}
    return found


def dependents_closure(graph: dict[str, list[str]], nodes: set[str]) -> set[str]:
    """`nodes` and every node that depends on one of them, directly or not."""
    ancestors = ancestors_of(graph)
    return {node for node in graph if node in nodes or ancestors[node] & nodes}


def shared_file_clash(items: list[dict]) -> tuple[str, str, str] | None:
    """A file two items write with no dependency path between them, as (path, a, b)."""
    ancestors = ancestors_of({item["id"]: item["depends_on"] for item in items})
    writers: dict[str, list[str]] = {}
    for item in items:
        for path in dict.fromkeys(item["files"]):
            for other in writers.get(path, []):
                if other not in ancestors[item["id"]] and item["id"] not in ancestors[other]:
                    return path, other, item["id"]
            writers.setdefault(path, []).append(item["id"])
    return None


def _reject_duplicates(values: list[str], what: str) -> None:
    seen: set[str] = set()
    dupes = sorted({v for v in values if v in seen or seen.add(v)})
    if dupes:
        raise serializers.ValidationError(f"duplicate {what}: {', '.join(dupes)}")
