"""The /mcp ASGI application in this process (httpx2's ASGI transport): what depends on
this server's settings, and the session manager's start on each event loop."""

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from ai_orchestration.mcp.asgi import McpApplication
from tests.ai_orchestration.mcp.conftest import body
from tests.factories import api_token_for, workflow_for

pytestmark = pytest.mark.django_db(transaction=True)


async def _session_do(app, token, action, host="127.0.0.1"):
    """`action(session)` in an MCP session with `app`, as the SDK's client talks to it."""
    async with (
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app),
            base_url=f"http://{host}",
            headers={"Authorization": f"Token {token}"},
        ) as http,
        streamable_http_client(f"http://{host}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await action(session)


def test_run_checks_is_offered_with_a_sandbox_and_answers_as_the_rest_api(
    settings, user, project, api
):
    settings.TOPDOG_SANDBOX = "bubblewrap"
    workflow_id = str(workflow_for(project, user).id)
    token = api_token_for(user)

    async def action(session):
        tools = {tool.name for tool in (await session.list_tools()).tools}
        return tools, body(await session.call_tool("run_checks", {"workflow_id": workflow_id}))

    tools, answer = anyio.run(_session_do, McpApplication(), token, action)
    rest = api.post(f"/api/workflows/{workflow_id}/checks/", {}, format="json")

    assert "run_checks" in tools
    # nothing built yet: check_run_request's 409, word for word as over REST
    assert rest.status_code == 409
    assert answer == {"status": 409, **rest.json()}
    assert answer["detail"].startswith("nothing to test yet")


def test_each_event_loop_gets_a_running_session_manager(user, project):
    app = McpApplication()
    token = api_token_for(user)

    async def action(session):
        return body(await session.call_tool("list_projects", {}))

    # a manager runs once, on one loop: the second loop must get its own
    first = anyio.run(_session_do, app, token, action)
    second = anyio.run(_session_do, app, token, action)

    assert [p["slug"] for p in first["results"]] == ["demo"]
    assert second == first


def test_a_host_outside_allowed_hosts_is_refused(user):
    token = api_token_for(user)

    async def post():
        transport = httpx2.ASGITransport(app=McpApplication())
        async with httpx2.AsyncClient(transport=transport, base_url="http://evil.test") as http:
            return await http.post("/mcp", json={}, headers={"Authorization": f"Token {token}"})

    response = anyio.run(post)

    assert response.status_code == 400
    assert response.json() == {"detail": "invalid Host header"}


def test_failed_authentications_share_the_rest_apis_throttle(settings, user, api):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {
            **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
            "auth_failure": "3/minute",
        },
    }
    good = api_token_for(user)

    async def attempts():
        transport = httpx2.ASGITransport(app=McpApplication(), client=("127.0.0.1", 4000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            guesses = [
                await http.post("/mcp", json={}, headers={"Authorization": "Bearer td_guess"})
                for _ in range(4)
            ]
            honest = await http.post("/mcp", json={}, headers={"Authorization": f"Token {good}"})
        return guesses, honest

    guesses, honest = anyio.run(attempts)
    rest = api.get("/api/projects/")  # the same address (127.0.0.1), a good token

    assert [r.status_code for r in guesses] == [401, 401, 401, 429]
    assert guesses[3].json()["detail"].startswith("too many failed authentications")
    assert 0 <= int(guesses[3].headers["retry-after"]) <= 60
    # over the rate the address is refused whatever it sends, over MCP and REST alike
    assert honest.status_code == 429
    assert rest.status_code == 429
