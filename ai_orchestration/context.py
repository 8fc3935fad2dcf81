"""Building the exact chat request a role should send for the workflow's current phase.

The API's get-ai-prompt and the autopilot share this builder. The request is: the role's
system prompt (state and requirements injected) + summaries of earlier handoffs + the
role's own history + the instruction for this phase, trimmed to the model's context
budget. Trimming drops the oldest history first and never drops the system prompt, the
latest handoff or the instruction.
"""

from dataclasses import dataclass, field

from django.conf import settings

from ai_orchestration.repository_context import repository_context_text
from ai_orchestration.review_context import review_context_text
from ai_orchestration.tokens import MESSAGE_OVERHEAD_TOKENS, tokens_estimate
from workflows.errors import TransitionConflict
from workflows.evidence import evidence_example_text, evidence_summary
from workflows.models import Handoff, Message, RoleContext, Workflow, WorkItem
from workflows.models_catalog import model_resolve, model_settings_for
from workflows.services import available_transitions
from workflows.states import HandoffKind, Sender, State
from workflows.work_items import work_items_current

DEFAULT_CONTEXT_TOKENS = 128_000


@dataclass(frozen=True)
class PromptRequest:
    # The vendor's model id, as the workflow (or the role's setting) asked for it:
    # "gpt-4" stays "gpt-4"; a seed name is its table's id ("GPT4" → gpt-4o).
    model: str
    messages: list[dict] = field(default_factory=list)
    temperature: float = 0.2
    max_tokens: int = 4096
    prompt_version: str = ""
    estimated_input_tokens: int = 0
    # Whether older history was left out to fit the budget.
    trimmed: bool = False
    # Feedback of the handoff that sent the work back, when the latest one did.
    feedback: str = ""
    provider: str = ""

    def as_payload(self) -> dict:
        return {
            "model": self.model,
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }


def prompt_request_next(*, workflow: Workflow) -> PromptRequest:
    """The request get-ai-prompt serves; TransitionConflict (409) while the workflow waits
    at a gate or has ended, when there is no prompt to send."""
    if workflow.is_terminal or workflow.awaiting_approval:
        waiting = "awaiting approval" if workflow.awaiting_approval else "finished"
        raise TransitionConflict(
            f"workflow is in {workflow.state} ({waiting}); there is no prompt to send",
            current_state=workflow.state,
            allowed=available_transitions(workflow, getattr(workflow, "member_role", None)),
        )
    return prompt_request_build(workflow=workflow)


def prompt_request_build(
    *, workflow: Workflow, context_tokens: int | None = None, model_name: str = ""
) -> PromptRequest:
    """The chat request for `workflow`'s current phase, within the model's context.

    The model and sampling are the role's stored settings (`models_catalog`), or
    `model_name`'s (an autopilot run's override) with the role's temperature and
    max_tokens. Work is bounded by the budget, not the history: the role's messages are
    read newest first, a page at a time, only until the budget is spent.
    """
    role = workflow.current_role
    if role is None:
        raise ValueError(f"workflow is {workflow.state}; there is no next prompt")
    role_context = RoleContext.objects.get(workflow=workflow, role=role)
    model_settings = role_context.model_settings
    if model_name:
        sampling = {
            k: model_settings[k] for k in ("temperature", "max_tokens") if k in model_settings
        }
        model_settings = model_settings_for(name=model_name, role_setting=sampling)
    max_tokens = model_settings.get("max_tokens", settings.TOPDOG_DEFAULT_MAX_TOKENS)
    window = context_tokens or model_settings.get("context_tokens") or DEFAULT_CONTEXT_TOKENS
    budget = window - max_tokens

    handoffs = list(Handoff.objects.filter(workflow=workflow).order_by("-event_seq")[:50])[::-1]
    system = {"role": "system", "content": role_context.system_prompt}
    instruction = {"role": "user", "content": _instruction(workflow, handoffs)}
    # Never dropped: the system prompt (with the requirements) and the instruction (with
    # the latest handoff and its feedback).
    used = _cost(system) + _cost(instruction)

    repository = repository_context_text(
        workflow=workflow, role=role, budget_tokens=max(0, (budget - used) // 4)
    )
    repository_message = (
        {"role": "user", "content": f"Repository context:\n{repository}"} if repository else None
    )
    if repository_message is not None:
        used += _cost(repository_message)
    # Auditors judge the actual code and the measured run (half of what is left).
    review = review_context_text(workflow=workflow, role=role, budget_tokens=(budget - used) // 2)
    review_message = {"role": "user", "content": review} if review else None
    if review_message is not None:
        used += _cost(review_message)

    earlier = _handoff_summary(handoffs[:-1])
    summary = {"role": "user", "content": earlier} if earlier else None
    if summary is not None and used + _cost(summary) <= budget:
        used += _cost(summary)
    else:
        summary = None

    kept, used, trimmed = _recent_history(workflow, role, budget, used)
    messages = [
        system,
        *([repository_message] if repository_message else []),
        *([review_message] if review_message else []),
        *([summary] if summary else []),
        *kept,
        instruction,
    ]
    return PromptRequest(
        model=model_settings.get("model") or model_resolve(workflow.model_name).model,
        provider=model_settings.get("provider") or model_resolve(workflow.model_name).provider,
        messages=messages,
        temperature=model_settings.get("temperature", settings.TOPDOG_DEFAULT_TEMPERATURE),
        max_tokens=max_tokens,
        prompt_version=role_context.prompt_version,
        estimated_input_tokens=used,
        trimmed=trimmed,
        feedback=_latest_feedback(handoffs),
    )


HISTORY_PAGE = 100


def _recent_history(
    workflow: Workflow, role: str, budget: int, used: int
) -> tuple[list[dict], int, bool]:
    """The role's newest messages that fit in `budget` (oldest first), the tokens used,
    and whether older ones were left out."""
    kept: list[dict] = []
    before = None
    while True:
        page = Message.objects.filter(workflow=workflow, role=role)
        if before is not None:
            page = page.filter(seq__lt=before)
        rows = list(page.order_by("-seq").values("seq", "sender", "content")[:HISTORY_PAGE])
        for row in rows:
            message = {
                "role": "assistant" if row["sender"] == Sender.ASSISTANT else "user",
                "content": row["content"],
            }
            cost = _cost(message)
            if used + cost > budget:
                kept.reverse()
                return kept, used, True
            kept.append(message)
            used += cost
        if len(rows) < HISTORY_PAGE:
            kept.reverse()
            return kept, used, False
        before = rows[-1]["seq"]


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
        + evidence_example_text(workflow.state)
    )
    return "\n\n".join(parts)


# --- one work item ------------------------------------------------------------------------


def work_item_prompt_build(
    *,
    workflow: Workflow,
    item: WorkItem,
    context_tokens: int | None = None,
    model_name: str = "",
) -> PromptRequest:
    """The CODE_WRITER's chat request for one work item: the system prompt (with the
    requirements), the plan, the item itself (with any feedback that sent it back) and
    the files of the items it depends on, as many as the model's window holds (nearest
    dependencies first; the rest are named, not shown)."""
    role_context = RoleContext.objects.get(workflow=workflow, role=workflow.current_role)
    model_settings = role_context.model_settings
    max_tokens = model_settings.get("max_tokens", settings.TOPDOG_DEFAULT_MAX_TOKENS)
    window = context_tokens or model_settings.get("context_tokens") or DEFAULT_CONTEXT_TOKENS
    budget = window - max_tokens

    items = list(work_items_current(workflow_id=workflow.id))
    system = {"role": "system", "content": role_context.system_prompt}
    plan = {"role": "user", "content": _plan_text(item, items)}
    instruction = {"role": "user", "content": _item_instruction(item)}
    used = _cost(system) + _cost(plan) + _cost(instruction)
    dependencies, used, trimmed = _dependency_files(item, items, budget, used)
    messages = [system, plan, *([dependencies] if dependencies else []), instruction]
    choice = model_resolve(model_name) if model_name else None
    return PromptRequest(
        model=choice.model if choice else model_settings.get("model", workflow.model_name),
        provider=choice.provider
        if choice
        else model_settings.get("provider") or model_resolve(workflow.model_name).provider,
        messages=messages,
        temperature=model_settings.get("temperature", settings.TOPDOG_DEFAULT_TEMPERATURE),
        max_tokens=max_tokens,
        prompt_version=role_context.prompt_version,
        estimated_input_tokens=used,
        trimmed=trimmed,
        feedback=item.feedback,
    )


def _plan_text(item: WorkItem, items: list[WorkItem]) -> str:
    summary = evidence_summary(phase=State.PLANNING, result=item.plan.result)
    lines = [f"The plan ({summary[:2000]}). Its work items:"]
    for other in items:
        after = f" after {', '.join(other.depends_on)}" if other.depends_on else ""
        mark = "  <- yours" if other.pk == item.pk else ""
        lines.append(f"- {other.key} {other.title}: {', '.join(other.files)}{after}{mark}")
    return "\n".join(lines)


def _item_instruction(item: WorkItem) -> str:
    parts = [
        f"Current phase: IMPLEMENTATION, work item {item.key}: {item.title}.",
        item.description or "",
        f"Write exactly these files and no others: {', '.join(item.files)}. Give each "
        "file's full new content (or delete it).",
    ]
    if item.feedback:
        parts.append(f"This item was sent back. Address every point:\n{item.feedback}")
    parts.append(
        "Answer with a single JSON object shaped like this example:\n"
        + evidence_example_text(State.IMPLEMENTATION)
    )
    return "\n\n".join(part for part in parts if part)


def _dependency_files(
    item: WorkItem, items: list[WorkItem], budget: int, used: int
) -> tuple[dict | None, int, bool]:
    """The result files of the items `item` depends on that fit in the budget."""
    by_key = {other.key: other for other in items}
    sections, omitted = [], []
    header = "Files the items this one depends on wrote (read them; do not rewrite them):"
    used += tokens_estimate(header) + MESSAGE_OVERHEAD_TOKENS
    for key in item.depends_on:
        for change in by_key[key].result_files if key in by_key else []:
            text = f"--- {change['path']} ({key})\n{change.get('content') or '(deleted)'}"
            cost = tokens_estimate(text)
            if used + cost > budget:
                omitted.append(change["path"])
                continue
            sections.append(text)
            used += cost
    if omitted:
        sections.append(f"(left out to fit the window: {', '.join(omitted)})")
    if not sections:
        return None, used, bool(omitted)
    return {"role": "user", "content": "\n\n".join([header, *sections])}, used, bool(omitted)
