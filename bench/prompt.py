"""Prompt build: `prompt_request_build` with 10, 1,000 and 10,000 messages of history.

Import only after django.setup(). In this process, on the bench database (no HTTP):

1. Seeds, per model, three workflows in IMPLEMENTATION (DISCOVERY and PLANNING completed
   through the services) whose CODE_WRITER history holds 10, 1,000 and 10,000 messages of
   300 to 1,500 characters: requests and feedback from the user, change sets and notes
   from the assistant. The models: the default one (a workflow's model unless the IDE
   asks for another; OFFLINE, 16k tokens, out of the box) and GPT4 (128k tokens).
2. Times `prompt_request_build(workflow=...)` for all six in interleaved rounds, each
   with its own RoleContext's window, as get-ai-prompt and the autopilot call it (the
   workflow loaded once with its project, as the API's selector loads it).

Targets, at p50: the default window with 10,000 messages within 2x its time with 10
(issue 4); GPT4's 128k window, which 1,000 messages already fill, with 10,000 within 1.2x
its time with 1,000 (issue 11: the history beyond the window must cost next to nothing).
"""

import random
import statistics
import time
from dataclasses import asdict, dataclass

from bench.client import Stats

HISTORIES = (10, 1_000, 10_000)
MODELS = ("default", "GPT4")

_WORDS = tuple(
    " ".join(
        (
            "the settings page toggle theme user preference persist dark light mode system",
            "default stored profile reload request response test fixture view template context",
            "migration field model query index cache header cookie session middleware handler",
            "should must when after before because instead also only every each returns raises",
            "error value missing empty update create delete render component state effect hook",
        )
    ).split()
)
_CODE = (
    "def theme_for(user):",
    "    return user.preferences.get('theme', 'system')",
    "class ThemeToggle(View):",
    "    def post(self, request):",
    "        request.user.preferences['theme'] = request.POST['theme']",
    "        request.user.save(update_fields=['preferences'])",
    "        return JsonResponse({'theme': request.user.preferences['theme']})",
    "@pytest.mark.django_db",
    "def test_toggle_persists(client, user):",
    "    client.force_login(user)",
    "    assert client.post('/settings/theme', {'theme': 'dark'}).status_code == 200",
    "import { useEffect, useState } from 'react';",
    "export function useTheme() {",
    "  const [theme, setTheme] = useState(() => localStorage.getItem('theme'));",
    "  useEffect(() => document.body.classList.toggle('dark', theme === 'dark'), [theme]);",
    "}",
)


# model: (ratio name, messages of the baseline build, limit of the 10,000 build's p50 over it)
TARGETS = {
    "default": ("prompt_10k_vs_10", 10, 2.0),
    "GPT4": ("prompt_10k_vs_1k", 1_000, 1.2),
}


@dataclass(frozen=True)
class PromptConfig:
    rounds: int  # timed builds of each workflow, interleaved
    warmup_rounds: int
    min_chars: int = 300
    max_chars: int = 1_500

    @classmethod
    def full(cls) -> "PromptConfig":
        return cls(rounds=200, warmup_rounds=20)

    @classmethod
    def quick(cls) -> "PromptConfig":
        return cls(rounds=50, warmup_rounds=5)


def history_text(rng: random.Random, *, assistant: bool, low: int, high: int) -> str:
    """One message of a CODE_WRITER conversation, `low` to `high` characters long."""
    length = rng.randint(low, high)
    parts: list[str] = []
    size = 0
    while size < length:
        if assistant and rng.random() < 0.6:
            block = "\n".join(rng.choice(_CODE) for _ in range(rng.randint(2, 6)))
            part = f"```python\n{block}\n```" if rng.random() < 0.7 else block
        else:
            part = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 30))).capitalize()
            part += "."
        parts.append(part)
        size += len(part) + 1
    return "\n".join(parts)[:length]


def seed(*, base: object, config: PromptConfig) -> dict[tuple[str, int], str]:
    """Workflow ids by (model, messages of CODE_WRITER history)."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection

    from workflows.evidence import EVIDENCE_EXAMPLES
    from workflows.models import Message, Project, Workflow
    from workflows.services import Actor, workflow_initialize, workflow_phase_complete
    from workflows.states import Role, Sender, State

    rng = random.Random(4)
    contents = [
        history_text(rng, assistant=i % 2 == 1, low=config.min_chars, high=config.max_chars)
        for i in range(max(HISTORIES))
    ]
    actor = Actor.of(get_user_model().objects.get(pk=base.user_id))
    project = Project.objects.get(pk=base.project_ids[0])
    ids = {}
    for model in MODELS:
        for count in HISTORIES:
            workflow = workflow_initialize(
                project=project,
                requirements={
                    "description": f"Prompt bench, {count} messages: add dark mode to settings",
                    "acceptance": ["toggle persists per user", "respects the OS preference"],
                },
                actor=actor,
                model_name=None if model == "default" else model,
            )
            for phase in (State.DISCOVERY, State.PLANNING):
                workflow_phase_complete(
                    workflow_id=workflow.id,
                    ai_response=f"{phase} done.",
                    result=EVIDENCE_EXAMPLES[phase],
                    actor=actor,
                )
            workflow.refresh_from_db()
            first = workflow.last_message_seq + 1
            Message.objects.bulk_create(
                [
                    Message(
                        workflow=workflow,
                        seq=first + i,
                        role=Role.CODE_WRITER,
                        sender=Sender.ASSISTANT if i % 2 else Sender.USER,
                        phase=State.IMPLEMENTATION,
                        content=content,
                        model=settings.TOPDOG_MODELS[workflow.model_name]["model"],
                    )
                    for i, content in enumerate(contents[-count:])
                ],
                batch_size=2_000,
            )
            Workflow.objects.filter(pk=workflow.pk).update(last_message_seq=first + count - 1)
            ids[(model, count)] = str(workflow.id)
    with connection.cursor() as cursor:  # as autovacuum would, before the timing, not during
        cursor.execute(f"VACUUM (ANALYZE) {Message._meta.db_table}")
    return ids


def run(*, config: PromptConfig, workflow_ids: dict[tuple[str, int], str]) -> dict:
    """Time the builds; their stats, the prompts' shape, SQL per build and the verdicts."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from ai_orchestration.context import prompt_request_build
    from workflows.models import Message, RoleContext, Workflow
    from workflows.states import Role

    cases = []
    for (model, count), workflow_id in workflow_ids.items():
        # As get-ai-prompt has it: loaded once, with its project (workflow_get_for_user)
        workflow = Workflow.objects.select_related("project").get(pk=workflow_id)
        window = RoleContext.objects.get(
            workflow=workflow, role=workflow.current_role
        ).model_settings["context_tokens"]
        name = f"{_window(window)} ({workflow.model_name}) @ {count:,} messages"
        cases.append({"name": name, "model": model, "count": count, "workflow": workflow})

    samples: dict[str, list[int]] = {c["name"]: [] for c in cases}
    for round_ in range(config.warmup_rounds + config.rounds):
        shift = round_ % len(cases)
        for case in cases[shift:] + cases[:shift]:
            started = time.perf_counter_ns()
            prompt_request_build(workflow=case["workflow"])
            elapsed = time.perf_counter_ns() - started
            if round_ >= config.warmup_rounds:
                samples[case["name"]].append(elapsed)

    series = {}
    for case in cases:
        with CaptureQueriesContext(connection) as queries:
            prompt = prompt_request_build(workflow=case["workflow"])
        seeded = set(
            Message.objects.filter(workflow=case["workflow"], role=Role.CODE_WRITER).values_list(
                "content", flat=True
            )
        )
        history = sum(1 for m in prompt.messages if m["content"] in seeded)
        baseline = next(c["name"] for c in cases if c["model"] == case["model"])
        if case["count"] == max(HISTORIES):
            _, against, _ = TARGETS[case["model"]]
            baseline = next(
                c["name"] for c in cases if c["model"] == case["model"] and c["count"] == against
            )
        series[case["name"]] = {
            **asdict(Stats.of(samples[case["name"]])),
            "model": case["workflow"].model_name,
            "history": case["count"],
            "history_in_prompt": history,
            "trimmed": prompt.trimmed,
            "estimated_input_tokens": prompt.estimated_input_tokens,
            "prompt_chars": sum(len(m["content"]) for m in prompt.messages),
            "sql_statements": len(queries.captured_queries),
            "db_ms_p50": _db_ms(case["workflow"]),
            "baseline": None if baseline == case["name"] else baseline,
        }
    targets = []
    for model in MODELS:
        ratio_name, _, limit = TARGETS[model]
        large = next(
            c["name"] for c in cases if c["model"] == model and c["count"] == max(HISTORIES)
        )
        small = series[large]["baseline"]
        ratio = series[large]["p50_ms"] / series[small]["p50_ms"]
        targets.append(
            {
                "ratio": ratio_name,
                "measured": large,
                "baseline": small,
                "limit_p50_ratio": limit,
                "p50_ratio": round(ratio, 3),
                "p99_ratio": round(series[large]["p99_ms"] / series[small]["p99_ms"], 3),
                "passed": ratio <= limit,
            }
        )
    return {"config": asdict(config), "series": series, "targets": targets}


def _db_ms(workflow: object, builds: int = 20) -> float:
    """Median time per build spent in the database (execute and fetch), untimed builds
    after the timed ones: tells a slow plan from slow Python when a ratio moves."""
    from django.db import connection

    from ai_orchestration.context import prompt_request_build

    spent: list[int] = []

    def timed(execute, sql, params, many, context):
        started = time.perf_counter_ns()
        try:
            return execute(sql, params, many, context)
        finally:
            spent.append(time.perf_counter_ns() - started)

    per_build = []
    with connection.execute_wrapper(timed):
        for _ in range(builds):
            spent.clear()
            prompt_request_build(workflow=workflow)
            per_build.append(sum(spent))
    return round(statistics.median(per_build) / 1e6, 3)


def _window(tokens: int) -> str:
    return f"{tokens // 1000}k" if tokens % 1000 == 0 else f"{tokens:,}"
