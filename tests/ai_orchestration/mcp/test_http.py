"""The MCP server over HTTP: the SDK's client against daphne serving topdog.asgi.

The rows a test needs exist (committed) before the client runs; everything after is
asked of the live server, over MCP or, to compare, over REST.
"""

import json

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.ai_orchestration.mcp.conftest import body, mcp_session
from tests.factories import MembershipFactory, ProjectFactory, api_token_for, evidence, workflow_for
from workflows.models import Handoff, Workflow
from workflows.states import PHASES, MemberRole

pytestmark = pytest.mark.django_db(transaction=True)

TOOLS = {
    "list_projects",
    "list_workflows",
    "initialize_workflow",
    "get_status",
    "get_next_prompt",
    "complete_phase",
    "approve_phase",
    "reject_phase",
    "cancel_workflow",
    "start_autopilot",
    "cancel_run",
    "get_events",
}


def test_lists_its_tools_resources_and_prompts(live_server_url, user):
    token = api_token_for(user)

    async def scenario():
        async with mcp_session(live_server_url, token) as session:
            tools = (await session.list_tools()).tools
            templates = (await session.list_resource_templates()).resource_templates
            prompts = (await session.list_prompts()).prompts
        return tools, templates, prompts

    tools, templates, prompts = anyio.run(scenario)

    # the live server runs no sandbox, so run_checks is not offered
    assert {tool.name for tool in tools} == TOOLS
    complete = next(tool for tool in tools if tool.name == "complete_phase")
    assert set(complete.input_schema["required"]) == {"workflow_id", "ai_response", "phase_result"}
    assert {t.uri_template for t in templates} == {
        "topdog://workflows/{workflow_id}/evidence/{phase}",
        "topdog://workflows/{workflow_id}/diff",
    }
    assert {p.name for p in prompts} == {
        "q_assistant",
        "code_writer",
        "test_auditor",
        "verification_auditor",
        "release_manager",
    }


def test_drives_a_workflow_to_complete_and_reads_its_evidence_diff_and_prompt(
    live_server_url, user, local_project
):
    token = api_token_for(user)

    async def scenario():
        seen = {}
        async with mcp_session(live_server_url, token) as session:
            opened = body(
                await session.call_tool(
                    "initialize_workflow",
                    {"project": "local", "description": "Add a greeting command"},
                )
            )
            workflow_id = opened["workflow_id"]
            for phase in PHASES:
                prompt = body(
                    await session.call_tool("get_next_prompt", {"workflow_id": workflow_id})
                )
                seen.setdefault("prompt_roles", []).append(prompt["messages"][0]["role"])
                done = body(
                    await session.call_tool(
                        "complete_phase",
                        {
                            "workflow_id": workflow_id,
                            "ai_response": f"{phase} done.",
                            "phase_result": evidence(phase),
                            "phase": phase,
                        },
                    )
                )
                seen.setdefault("states", []).append(done["new_state"])
            seen["status"] = body(
                await session.call_tool("get_status", {"workflow_id": workflow_id})
            )
            seen["events"] = body(
                await session.call_tool(
                    "get_events", {"workflow_id": workflow_id, "after": 2, "limit": 3}
                )
            )
            base = f"topdog://workflows/{workflow_id}"
            seen["evidence"] = await session.read_resource(f"{base}/evidence/IMPLEMENTATION")
            seen["diff"] = await session.read_resource(f"{base}/diff")
            seen["prompt"] = await session.get_prompt("code_writer", {"workflow_id": workflow_id})
            seen["template"] = await session.get_prompt("code_writer")
        return opened, seen

    opened, seen = anyio.run(scenario)

    # initialize answered like the REST initialize: DISCOVERY, the Q_ASSISTANT's prompt
    assert opened["initial_state"] == "DISCOVERY"
    assert opened["next_action"]["type"] == "call_model"
    assert "Add a greeting command" in opened["system_prompt"]
    # each phase: a prompt led by the role's system prompt, then the next state
    assert seen["prompt_roles"] == ["system"] * 6
    assert seen["states"] == [*PHASES[1:], "COMPLETE"]
    assert seen["status"]["is_complete"] is True
    assert seen["status"]["progress"] == 1.0
    workflow = Workflow.objects.get(pk=opened["workflow_id"])
    assert workflow.state == "COMPLETE"
    assert set(Handoff.objects.filter(workflow=workflow).values_list("actor_name", flat=True)) == {
        "alice"
    }
    # events after seq 2, three of them, and where to go on from
    assert [event["seq"] for event in seen["events"]["results"]] == [3, 4, 5]
    assert seen["events"]["next_after"] == 5
    # the IMPLEMENTATION evidence as stored, and the change set as a diff
    stored = json.loads(seen["evidence"].contents[0].text)
    assert stored["phase"] == "IMPLEMENTATION"
    assert stored["status"] == "accepted"
    assert stored["result"]["files"][0]["path"] == "src/app.py"
    diff = seen["diff"].contents[0].text
    assert "+++ b/src/app.py" in diff and "def main() -> None:" in diff
    # the CODE_WRITER's prompt rendered for the workflow, and as its raw template
    rendered = seen["prompt"].messages[0].content.text
    assert "Local Tool" in rendered
    assert "$project" in seen["template"].messages[0].content.text


def test_gates_approve_reject_and_errors_match_the_rest_api(live_server_url, user):
    gated = ProjectFactory(slug="gated", repository="", approval_gates=["DISCOVERY"])
    MembershipFactory(project=gated, user=user)
    workflow = workflow_for(gated, user)
    workflow_id = str(workflow.id)
    token = api_token_for(user)

    async def scenario():
        seen = {}
        headers = {"Authorization": f"Token {token}"}
        async with (
            mcp_session(live_server_url, token, scheme="Token") as session,
            httpx2.AsyncClient(base_url=live_server_url, headers=headers) as rest,
        ):
            call = session.call_tool
            bad = {"workflow_id": workflow_id, "ai_response": "", "phase_result": {"document": ""}}
            seen["invalid"] = body(await call("complete_phase", bad))
            response = await rest.post("/api/ai-workflows/complete-phase", json=bad)
            seen["invalid_rest"] = response.json()
            complete = {**bad, "phase_result": evidence("DISCOVERY")}
            seen["held"] = body(await call("complete_phase", complete))
            seen["no_prompt"] = body(await call("get_next_prompt", {"workflow_id": workflow_id}))
            seen["blank"] = body(
                await call("reject_phase", {"workflow_id": workflow_id, "feedback": " "})
            )
            seen["rejected"] = body(
                await call(
                    "reject_phase", {"workflow_id": workflow_id, "feedback": "Name the users."}
                )
            )
            await call("complete_phase", complete)
            seen["approved"] = body(await call("approve_phase", {"workflow_id": workflow_id}))
            seen["cancelled"] = body(await call("cancel_workflow", {"workflow_id": workflow_id}))
        return seen

    seen = anyio.run(scenario)

    # a validation error: the REST body (detail and field errors) with its status
    assert seen["invalid"] == {"status": 400, **seen["invalid_rest"]}
    assert "phase_result" in seen["invalid"]["detail"]
    # held at the gate: no prompt to send (409, as get-ai-prompt answers)
    assert seen["held"]["awaiting_approval"] is True
    assert seen["no_prompt"]["status"] == 409
    assert seen["no_prompt"]["detail"].startswith("workflow is in DISCOVERY (awaiting approval)")
    assert seen["blank"]["status"] == 400
    assert seen["blank"]["errors"] == {"feedback": ["say what must change"]}
    # rejected: DISCOVERY again with the feedback; approved: PLANNING; cancelled: final
    assert seen["rejected"]["state"] == "DISCOVERY"
    assert seen["rejected"]["awaiting_approval"] is False
    assert seen["approved"]["previous_state"] == "DISCOVERY"
    assert seen["approved"]["state"] == "PLANNING"
    assert seen["cancelled"]["state"] == "CANCELLED"
    assert seen["cancelled"]["handoff_id"] is not None


def test_others_workflows_are_not_found_and_viewers_cannot_act(
    live_server_url, user, local_project, stranger
):
    workflow_id = str(workflow_for(local_project, user).id)
    stranger_token = api_token_for(stranger)
    viewer = MembershipFactory(project=local_project, role=MemberRole.VIEWER).user
    viewer_token = api_token_for(viewer)
    complete = {
        "workflow_id": workflow_id,
        "ai_response": "Done.",
        "phase_result": evidence("DISCOVERY"),
    }

    async def scenario():
        seen = {}
        async with mcp_session(live_server_url, stranger_token) as session:
            seen["status"] = body(
                await session.call_tool("get_status", {"workflow_id": workflow_id})
            )
            seen["complete"] = body(await session.call_tool("complete_phase", complete))
            seen["projects"] = body(await session.call_tool("list_projects", {}))
            try:
                await session.read_resource(f"topdog://workflows/{workflow_id}/diff")
            except MCPError as exc:
                seen["resource"] = exc.error.message
        async with mcp_session(live_server_url, viewer_token) as session:
            seen["viewer_status"] = body(
                await session.call_tool("get_status", {"workflow_id": workflow_id})
            )
            seen["viewer"] = body(await session.call_tool("complete_phase", complete))
        async with httpx2.AsyncClient(base_url=live_server_url) as rest:
            response = await rest.post(
                "/api/ai-workflows/complete-phase",
                json=complete,
                headers={"Authorization": f"Token {viewer_token}"},
            )
            seen["viewer_rest"] = response.json()
        return seen

    seen = anyio.run(scenario)

    # a stranger is told what the REST API tells them: not found, never "forbidden"
    assert seen["status"] == {"status": 404, "detail": "workflow not found"}
    assert seen["complete"] == {"status": 404, "detail": "workflow not found"}
    assert seen["projects"]["results"] == []
    assert seen["resource"] == "workflow not found"
    # a viewer sees the workflow but may not complete its phase
    assert seen["viewer_status"]["current_state"] == "DISCOVERY"
    assert seen["viewer"] == {"status": 403, **seen["viewer_rest"]}
    assert Workflow.objects.get(pk=workflow_id).state == "DISCOVERY"


def test_no_token_or_a_bad_one_is_401_before_mcp(live_server_url, user):
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}

    async def scenario():
        async with httpx2.AsyncClient(base_url=live_server_url) as http:
            none = await http.post("/mcp", json=initialize, headers=accept)
            bad = await http.post(
                "/mcp/", json=initialize, headers={**accept, "Authorization": "Bearer td_nope"}
            )
        return none, bad

    none, bad = anyio.run(scenario)

    assert none.status_code == 401
    assert none.json() == {"detail": "Authentication credentials were not provided."}
    assert bad.status_code == 401
    assert bad.json()["detail"].startswith("invalid or revoked token")
    assert bad.headers["www-authenticate"].startswith("Bearer")
