"""TopDog's MCP server: the IDE contract and the workflow API as MCP tools, each phase's
evidence and the change set's diff as resources, the roles' system prompts as prompts.

Every handler runs its body from handlers.py through `database_sync_to_async` (Django's
`sync_to_async`, thread-sensitive, closing stale connections around the call), as the
user the ASGI layer authenticated (asgi.py puts it in the HTTP scope). A domain error is
answered as the REST API answers it: a tool result with `isError` whose JSON is the REST
error body (`detail`, and `errors` for validation) plus its HTTP `status`.
"""

import json
from collections.abc import Callable
from typing import Annotated, Any

from channels.db import database_sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from mcp.server.mcpserver import Context, MCPServer, UserMessage
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult, TextContent, ToolAnnotations
from pydantic import Field
from rest_framework.renderers import JSONRenderer

from ai_orchestration.mcp import handlers
from workflows.api.errors import exception_handler
from workflows.api.pagination import MAX_PAGE_SIZE, PAGE_SIZE
from workflows.api.resources import EVENT_PAGE_MAX
from workflows.states import Role
from workflows.verification import sandbox_enabled

WorkflowId = Annotated[str, Field(description="The workflow's id (a UUID).")]
READ = ToolAnnotations(read_only_hint=True)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False)
ENDS = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False)


def _user(ctx: Context) -> AbstractBaseUser | None:
    request = ctx.request_context.request
    return request.scope.get("user") if request is not None else None


def _plain(value: Any) -> Any:
    """`value` as the REST API renders it (UUIDs, datetimes and decimals as strings)."""
    return value if isinstance(value, str) else json.loads(JSONRenderer().render(value))


def _answer(fn: Callable[..., Any], user: AbstractBaseUser, arguments: dict) -> tuple:
    """(body, None), or (None, the REST error body with its status) for a domain error."""
    try:
        return _plain(fn(user=user, **arguments)), None
    except Exception as exc:
        response = exception_handler(exc, {})
        if response is None:
            raise
        return None, {"status": response.status_code, **_plain(response.data)}


async def _run(ctx: Context, fn: Callable[..., Any], **arguments: Any) -> tuple:
    user = _user(ctx)
    if user is None:
        return None, {"status": 401, "detail": "Authentication credentials were not provided."}
    return await database_sync_to_async(_answer)(fn, user, arguments)


async def _tool(ctx: Context, fn: Callable[..., Any], **arguments: Any) -> CallToolResult:
    body, error = await _run(ctx, fn, **arguments)
    payload = body if error is None else error
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(payload))],
        structured_content=payload,
        is_error=error is not None,
    )


# --- tools -------------------------------------------------------------------------------


async def list_projects(
    ctx: Context, limit: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE
) -> CallToolResult:
    """The projects you are a member of, with your role in each (by slug)."""
    return await _tool(ctx, handlers.projects_list, limit=limit)


async def list_workflows(
    ctx: Context,
    project: Annotated[str | None, Field(description="Project id or slug.")] = None,
    state: Annotated[
        str | list[str] | None, Field(description="One state or several, e.g. TESTING.")
    ] = None,
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
) -> CallToolResult:
    """Workflows of your projects, newest first; `has_more` says whether `limit` cut the list."""
    states = [state] if isinstance(state, str) else list(state or [])
    return await _tool(ctx, handlers.workflows_list, project=project, state=states, limit=limit)


async def initialize_workflow(
    ctx: Context,
    project: Annotated[str, Field(description="Project id or slug.")],
    description: Annotated[str, Field(description="What to build.")],
    requirements: Annotated[
        dict[str, Any] | None, Field(description="More requirement fields, if any.")
    ] = None,
    model: Annotated[str | None, Field(description="A TOPDOG_MODELS name.")] = None,
    build_id: str | None = None,
) -> CallToolResult:
    """Start a workflow in DISCOVERY; answers its id, system prompt and next action."""
    return await _tool(
        ctx,
        handlers.workflow_open,
        project_id=project,
        requirements={**(requirements or {}), "description": description},
        model=model,
        build_id=build_id,
    )


async def get_status(ctx: Context, workflow_id: WorkflowId) -> CallToolResult:
    """A workflow's state, progress, next role and whether it awaits approval."""
    return await _tool(ctx, handlers.status_get, workflow_id=workflow_id)


async def get_next_prompt(ctx: Context, workflow_id: WorkflowId) -> CallToolResult:
    """The chat request (model, messages) the current role should send for this phase."""
    return await _tool(ctx, handlers.prompt_next, workflow_id=workflow_id)


async def complete_phase(
    ctx: Context,
    workflow_id: WorkflowId,
    ai_response: Annotated[str, Field(description="The model's answer as text.")],
    phase_result: Annotated[
        dict[str, Any], Field(description="The phase's evidence (see the system prompt).")
    ],
    phase: Annotated[
        str | None, Field(description="The phase this is for; a moved-on workflow is 409.")
    ] = None,
) -> CallToolResult:
    """Submit the current phase's evidence; answers the new state and the next action."""
    return await _tool(
        ctx,
        handlers.phase_complete,
        workflow_id=workflow_id,
        ai_response=ai_response,
        phase_result=phase_result,
        phase=phase,
    )


async def approve_phase(ctx: Context, workflow_id: WorkflowId, comment: str = "") -> CallToolResult:
    """Approve the phase held at an approval gate (project owners)."""
    return await _tool(ctx, handlers.phase_approve, workflow_id=workflow_id, comment=comment)


async def reject_phase(
    ctx: Context,
    workflow_id: WorkflowId,
    feedback: Annotated[str, Field(description="What must change.")],
) -> CallToolResult:
    """Reject the phase held at an approval gate: it is redone with your feedback."""
    return await _tool(ctx, handlers.phase_reject, workflow_id=workflow_id, feedback=feedback)


async def cancel_workflow(
    ctx: Context, workflow_id: WorkflowId, reason: str = ""
) -> CallToolResult:
    """Cancel the workflow (final)."""
    return await _tool(ctx, handlers.workflow_stop, workflow_id=workflow_id, reason=reason)


async def start_autopilot(
    ctx: Context,
    workflow_id: WorkflowId,
    scope: Annotated[
        str | None, Field(description="phase: the current one; workflow (default): all left.")
    ] = None,
    model: Annotated[str | None, Field(description="A TOPDOG_MODELS name for every role.")] = None,
) -> CallToolResult:
    """Let TopDog's task workers call the models and complete the phases themselves."""
    return await _tool(
        ctx, handlers.autopilot_begin, workflow_id=workflow_id, scope=scope, model=model
    )


async def cancel_run(
    ctx: Context, workflow_id: WorkflowId, run_id: Annotated[str, Field(description="Run id.")]
) -> CallToolResult:
    """Cancel an autopilot run (a running one stops between chunks)."""
    return await _tool(ctx, handlers.run_stop, workflow_id=workflow_id, run_id=run_id)


async def get_events(
    ctx: Context,
    workflow_id: WorkflowId,
    after: Annotated[int, Field(ge=0, description="Only events with a greater seq.")] = 0,
    limit: Annotated[int, Field(ge=1, le=EVENT_PAGE_MAX)] = EVENT_PAGE_MAX,
) -> CallToolResult:
    """The workflow's audit events in order; ask again with `after=next_after` for more."""
    return await _tool(ctx, handlers.events_list, workflow_id=workflow_id, after=after, limit=limit)


async def run_checks(ctx: Context, workflow_id: WorkflowId) -> CallToolResult:
    """Queue a sandboxed test run of the current change set (see the workflow's events)."""
    return await _tool(ctx, handlers.checks_run, workflow_id=workflow_id)


TOOLS = (
    (list_projects, READ),
    (list_workflows, READ),
    (initialize_workflow, WRITE),
    (get_status, READ),
    (get_next_prompt, READ),
    (complete_phase, WRITE),
    (approve_phase, WRITE),
    (reject_phase, WRITE),
    (cancel_workflow, ENDS),
    (start_autopilot, WRITE),
    (cancel_run, ENDS),
    (get_events, READ),
)


# --- resources and prompts -----------------------------------------------------------------


async def _read(ctx: Context, fn: Callable[..., Any], **arguments: Any) -> Any:
    body, error = await _run(ctx, fn, **arguments)
    if error is None:
        return body
    if error["status"] == 404:
        raise ResourceNotFoundError(error["detail"])
    raise ResourceError(error["detail"])


async def workflow_evidence(workflow_id: str, phase: str, ctx: Context) -> str:
    """The latest result submitted for a phase of a workflow (JSON)."""
    body = await _read(ctx, handlers.evidence_get, workflow_id=workflow_id, phase=phase)
    return json.dumps(body, indent=2)


async def workflow_diff(workflow_id: str, ctx: Context) -> str:
    """The workflow's change set as a unified diff against the repository's base."""
    return await _read(ctx, handlers.diff_get, workflow_id=workflow_id)


def _system_prompt(role: str) -> Callable[..., Any]:
    async def system_prompt(ctx: Context, workflow_id: str = "") -> list[UserMessage]:
        body, error = await _run(
            ctx, handlers.system_prompt_get, role=role, workflow_id=workflow_id
        )
        if error is not None:
            raise MCPError(code=INVALID_PARAMS, message=error["detail"])
        return [UserMessage(body)]

    return system_prompt


def mcp_server_build() -> MCPServer:
    """A new server with every tool, resource and prompt; `run_checks` only with a sandbox."""
    server = MCPServer(
        "topdog",
        instructions="TopDog runs AI software-build workflows as audited state machines. "
        "initialize_workflow, then per phase get_next_prompt, call the model, complete_phase; "
        "or start_autopilot.",
    )
    for fn, annotations in TOOLS:
        server.add_tool(fn, annotations=annotations)
    if sandbox_enabled():
        server.add_tool(run_checks, annotations=WRITE)
    server.resource(
        "topdog://workflows/{workflow_id}/evidence/{phase}", mime_type="application/json"
    )(workflow_evidence)
    server.resource("topdog://workflows/{workflow_id}/diff", mime_type="text/x-diff")(workflow_diff)
    for role in Role.values:
        server.prompt(
            name=role.lower(),
            description=f"The {role} role's active system prompt; with workflow_id, rendered "
            f"for that workflow.",
        )(_system_prompt(role))
    return server
