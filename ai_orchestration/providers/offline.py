"""A deterministic provider that needs no key and no network.

It answers every phase with valid evidence built from the workflow's requirements, so
the whole product (autopilot, dashboards, the CLI) works on a fresh machine. The same
request always gives the same answer. Cost is zero; usage is its own exact count.
"""

import hashlib
import json
import re
import time

from ai_orchestration.providers.base import (
    CancelCheck,
    ChatRequest,
    ChunkCallback,
    Completion,
    Provider,
    ProviderCancelled,
    ProviderError,
    Usage,
)
from ai_orchestration.tokens import tokens_estimate

CHUNK_CHARS = 64
FAIL_FIRST_PHRASE = "[fail first]"


class OfflineProvider(Provider):
    name = "offline"

    def __init__(
        self,
        *,
        delay_ms: int = 0,
        fail_first: bool = False,
        call_delay_ms: int = 0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        # A pause between streamed chunks, to make runs observable (tests, demos).
        self.delay_ms = delay_ms
        # One pause per call, like a model's latency (the work item graph's bench).
        self.call_delay_ms = call_delay_ms
        # The first IMPLEMENTATION attempt ships a bug its own test catches (demos of the
        # failure -> regression -> green loop); "[fail first]" in a request does the same.
        self.fail_first = fail_first

    def stream(
        self,
        request: ChatRequest,
        *,
        on_delta: ChunkCallback,
        should_cancel: CancelCheck,
        timeout: float,
    ) -> Completion:
        phase = request.metadata.get("phase")
        builder = _BUILDERS.get(phase)
        if builder is None:
            raise ProviderError(f"offline provider has no answer for phase {phase!r}")
        evidence = builder(_Facts(request.metadata, fail_first=self.fail_first))
        text = json.dumps(evidence, indent=2)
        if self.call_delay_ms:
            self._pause(self.call_delay_ms / 1000, should_cancel)
        for start in range(0, len(text), CHUNK_CHARS):
            if should_cancel():
                raise ProviderCancelled("cancelled while streaming")
            if self.delay_ms:
                time.sleep(self.delay_ms / 1000)
            on_delta(text[start : start + CHUNK_CHARS])
        prompt = "\n".join(message.content for message in request.messages)
        return Completion(
            content=text,
            usage=Usage(input_tokens=tokens_estimate(prompt), output_tokens=tokens_estimate(text)),
            provider=self.name,
            model=request.model,
        )

    @staticmethod
    def _pause(seconds: float, should_cancel: CancelCheck) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if should_cancel():
                raise ProviderCancelled("cancelled while thinking")
            time.sleep(min(left, 0.05))


class _Facts:
    """What the offline answers are made of: the request, its sentences, a slug."""

    def __init__(self, metadata: dict, *, fail_first: bool = False) -> None:
        requirements = metadata.get("requirements") or {}
        self.description = str(requirements.get("description") or "the requested change").strip()
        self.title = self.description.splitlines()[0][:80]
        self.slug = re.sub(r"[^a-z0-9]+", "_", self.title.lower()).strip("_")[:40] or "feature"
        sentences = [
            s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", self.description) if s.strip()
        ]
        self.sentences = sentences[:6] or [self.title]
        self.feedback = str(metadata.get("feedback") or "").strip()
        self.workflow_id = str(metadata.get("workflow_id") or "")
        self.digest = hashlib.sha256(self.description.encode()).hexdigest()[:10]
        self.fail_first = fail_first or FAIL_FIRST_PHRASE in self.description.lower()
        self.check = metadata.get("check") or None
        self.work_item = metadata.get("work_item") or None


def _discovery(facts: _Facts) -> dict:
    requirements = [
        {
            "id": f"R{n}",
            "description": sentence,
            "priority": "must" if n == 1 else "should",
            "acceptance_criteria": [f"A test shows that: {sentence}"],
        }
        for n, sentence in enumerate(facts.sentences, start=1)
    ]
    lines = "\n".join(
        f"- **{r['id']}** ({r['priority']}): {r['description']}" for r in requirements
    )
    return {
        "document": f"# Requirements: {facts.title}\n\n{facts.description}\n\n## Items\n{lines}\n",
        "requirements": requirements,
        "assumptions": ["The change fits the existing project layout."],
    }


def _planning(facts: _Facts) -> dict:
    """Two independent chains, each a module and its tests: four items to watch."""
    note = f" Revised after feedback: {facts.feedback[:300]}" if facts.feedback else ""
    files = _files(facts)
    return {
        "summary": f"Implement {facts.title} as a switch and a description, each with its "
        f"tests; the two chains are independent.{note}",
        "work_items": [
            {
                "id": "W1",
                "title": f"Implement {facts.title}",
                "description": "Core behaviour for every requirement.",
                "files": [files["module"]],
                "depends_on": [],
            },
            {
                "id": "W2",
                "title": f"Test {facts.title}",
                "description": "One test per acceptance criterion.",
                "files": [files["test"]],
                "depends_on": ["W1"],
            },
            {
                "id": "W3",
                "title": f"Describe {facts.title}",
                "description": "A one-line description of the feature for users.",
                "files": [files["describe"]],
                "depends_on": [],
            },
            {
                "id": "W4",
                "title": f"Test the description of {facts.title}",
                "description": "The description names the feature.",
                "files": [files["describe_test"]],
                "depends_on": ["W3"],
            },
        ],
    }


def _files(facts: _Facts) -> dict[str, str]:
    return {
        "module": f"src/{facts.slug}.py",
        "test": f"tests/test_{facts.slug}.py",
        "describe": f"src/{facts.slug}_about.py",
        "describe_test": f"tests/test_{facts.slug}_about.py",
    }


def _contents(facts: _Facts) -> dict[str, str]:
    """Every file the offline plan names, by path."""
    checks = "\n".join(f"    # {s}" for s in facts.sentences)
    # A first attempt with the demo bug inverts the switch; feedback fixes it.
    buggy = facts.fail_first and not facts.feedback
    value = (
        f'not settings.get("{facts.slug}", True)'
        if buggy
        else f'settings.get("{facts.slug}", True)'
    )
    module = (
        f'"""{facts.title}."""\n\n\n'
        f"def {facts.slug}_enabled(settings: dict) -> bool:\n"
        f'    """Whether {facts.title.lower()} is switched on in `settings`."""\n'
        f"{checks}\n"
        f"    return bool({value})\n"
    )
    test = (
        f"from src.{facts.slug} import {facts.slug}_enabled\n\n\n"
        f"def test_{facts.slug}_is_on_by_default():\n"
        f"    assert {facts.slug}_enabled({{}}) is True\n\n\n"
        f"def test_{facts.slug}_can_be_switched_off():\n"
        f'    assert {facts.slug}_enabled({{"{facts.slug}": False}}) is False\n'
    )
    about = (
        f'"""What {facts.title} is, for users."""\n\n'
        f"DESCRIPTION = {facts.title!r}\n\n\n"
        f"def {facts.slug}_about() -> str:\n"
        f'    """One line on the feature."""\n'
        f"    return DESCRIPTION\n"
    )
    about_test = (
        f"from src.{facts.slug}_about import {facts.slug}_about\n\n\n"
        f"def test_{facts.slug}_about_names_the_feature():\n"
        f"    assert {facts.slug}_about() == {facts.title!r}\n"
    )
    files = _files(facts)
    return {
        files["module"]: module,
        files["test"]: test,
        files["describe"]: about,
        files["describe_test"]: about_test,
    }


def _implementation(facts: _Facts) -> dict:
    """The whole change set, or (for a work item) the item's files only."""
    contents = _contents(facts)
    notes = f"Addresses feedback: {facts.feedback[:500]}" if facts.feedback else ""
    if facts.work_item is not None:
        item = facts.work_item
        return {
            "commit_message": f"{item['key']}: {item['title']}",
            "files": [
                {"path": path, "action": "create", "content": _content_for(path, contents)}
                for path in item["files"]
            ],
            "notes": notes,
        }
    return {
        "commit_message": f"feat: {facts.title}",
        "files": [
            {"path": path, "action": "create", "content": content}
            for path, content in contents.items()
        ],
        "notes": notes,
    }


def _content_for(path: str, contents: dict[str, str]) -> str:
    """A file of the offline plan, or (another plan's file) a small valid one."""
    if path in contents:
        return contents[path]
    if path.endswith(".py"):
        return f'"""{path}: written by the offline provider."""\n'
    if path.endswith(".json"):
        return "{}\n"
    return f"{path}: written by the offline provider.\n"


def _testing(facts: _Facts) -> dict:
    """Reviews the measured run when there is one; claims no figures when there is not."""
    check = facts.check
    if check is not None and check.get("status") in ("failed", "timeout"):
        return {
            "verdict": "fail",
            "findings": [
                {
                    "severity": "major",
                    "message": f"The test run {check['status']}: {check.get('tests_failed')} "
                    f"of {check.get('tests_run')} tests failed. {check.get('reason') or ''}",
                    # The module under test: its work item (and its tests) are redone.
                    "path": _files(facts)["module"],
                }
            ],
            "quality_score": 0.3,
        }
    report = {
        "verdict": "pass",
        "findings": [
            {
                "severity": "info",
                "message": "Each acceptance criterion has a test.",
                "path": f"tests/test_{facts.slug}.py",
            }
        ],
        "quality_score": 0.9,
    }
    if check is not None and check.get("tests_run") is not None:
        report["tests_run"] = check["tests_run"]
        report["tests_failed"] = check["tests_failed"]
    return report


def _verification(facts: _Facts) -> dict:
    return {"verdict": "approve", "findings": [], "score": 0.9}


def _deployment(facts: _Facts) -> dict:
    return {
        "branch": f"topdog/{facts.slug[:30]}-{facts.digest[:6]}",
        "commits": [],
        "pull_request_url": None,
        "pushed": False,
        "reason": "offline provider: no repository connected, nothing was pushed",
    }


_BUILDERS = {
    "DISCOVERY": _discovery,
    "PLANNING": _planning,
    "IMPLEMENTATION": _implementation,
    "TESTING": _testing,
    "VERIFICATION": _verification,
    "DEPLOYMENT": _deployment,
}
