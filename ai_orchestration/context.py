"""Building the exact chat request a role should send for the workflow's current phase.

The API's get-ai-prompt and the autopilot share this builder. The request is: the role's
system prompt (state and requirements injected) + summaries of earlier handoffs + the
role's own history + the instruction for this phase, trimmed to the model's context
budget. Trimming drops the oldest history first and never drops the system prompt, the
latest handoff or the instruction.
"""

import json
from dataclasses import dataclass, field

from django.conf import settings

from ai_orchestration.tokens import MESSAGE_OVERHEAD_TOKENS, tokens_estimate
from workflows.evidence import evidence_example
from workflows.models import Handoff, Message, RoleContext, Workflow
from workflows.states import HandoffKind, Sender

DEFAULT_CONTEXT_TOKENS = 128_000


@dataclass(frozen=True)
class PromptRequest:
    model: str
    messages: list[dict] = field(default_factory=list)
    temperature: float = 0.2
    max_tokens: int = 4096
    prompt_version: str = ""
    estimated_input_tokens: int = 0
    dropped_messages: int = 0
    # Feedback of the handoff that sent the work back, when the latest one did.
    feedback: str = ""

    def as_payload(self) -> dict:
        return {
            "model": self.model,
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }


def prompt_request_build(
    *, workflow: Workflow, context_tokens: int | None = None, history_limit: int = 2000
) -> PromptRequest:
    """The chat request for `workflow`'s current phase, within `context_tokens`."""
    role = workflow.current_role
    if role is None:
        raise ValueError(f"workflow is {workflow.state}; there is no next prompt")
    role_context = RoleContext.objects.get(workflow=workflow, role=role)
    model_settings = role_context.model_settings
    budget = (context_tokens or DEFAULT_CONTEXT_TOKENS) - model_settings.get(
        "max_tokens", settings.TOPDOG_DEFAULT_MAX_TOKENS
    )

    handoffs = list(Handoff.objects.filter(workflow=workflow).order_by("-event_seq")[:50])[::-1]
    history = list(
        Message.objects.filter(workflow=workflow, role=role)
        .order_by("-seq")
        .values("sender", "content")[:history_limit]
    )[::-1]

    system = {"role": "system", "content": role_context.system_prompt}
    instruction = {"role": "user", "content": _instruction(workflow, handoffs)}
    fixed = [system, instruction]
    earlier = _handoff_summary(handoffs[:-1])
    used = sum(_cost(m) for m in fixed)

    # Newest history first, until the budget is spent; then the older handoff summaries.
    kept: list[dict] = []
    for item in reversed(history):
        message = {
            "role": "assistant" if item["sender"] == Sender.ASSISTANT else "user",
            "content": item["content"],
        }
        cost = _cost(message)
        if used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    messages = [system]
    if earlier:
        summary = {"role": "user", "content": earlier}
        if used + _cost(summary) <= budget:
            messages.append(summary)
            used += _cost(summary)
    messages += kept
    messages.append(instruction)
    return PromptRequest(
        model=model_settings.get("model", workflow.model_name),
        messages=messages,
        temperature=model_settings.get("temperature", settings.TOPDOG_DEFAULT_TEMPERATURE),
        max_tokens=model_settings.get("max_tokens", settings.TOPDOG_DEFAULT_MAX_TOKENS),
        prompt_version=role_context.prompt_version,
        estimated_input_tokens=used,
        dropped_messages=len(history) - len(kept),
        feedback=_latest_feedback(handoffs),
    )


def _latest_feedback(handoffs: list[Handoff]) -> str:
    latest = handoffs[-1] if handoffs else None
    if latest is not None and latest.kind in (HandoffKind.REGRESSION, HandoffKind.REJECTION):
        return latest.feedback
    return ""


def _cost(message: dict) -> int:
    return tokens_estimate(message["content"]) + MESSAGE_OVERHEAD_TOKENS


def _handoff_summary(handoffs: list[Handoff]) -> str:
    if not handoffs:
        return ""
    lines = ["Earlier handoffs in this workflow, oldest first:"]
    for h in handoffs:
        lines.append(f"- {h.from_state} → {h.to_state} ({h.kind}): {h.summary or h.reason}")
    return "\n".join(lines)


def _instruction(workflow: Workflow, handoffs: list[Handoff]) -> str:
    parts = [f"Current phase: {workflow.state}. Produce this phase's evidence now."]
    latest = handoffs[-1] if handoffs else None
    if latest is not None:
        parts.append(
            f"Latest handoff ({latest.kind}, {latest.from_state} → {latest.to_state}): "
            f"{latest.summary or latest.reason}"
        )
        if latest.kind in (HandoffKind.REGRESSION, HandoffKind.REJECTION) and latest.feedback:
            parts.append(f"The work was sent back. Address every point:\n{latest.feedback}")
    parts.append(
        "Answer with a single JSON object shaped like this example:\n"
        + json.dumps(evidence_example(workflow.state), indent=2)
    )
    return "\n\n".join(parts)
