"""MCP tests: the SDK's own client over HTTP against daphne serving topdog.asgi."""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.factories import MembershipFactory, ProjectFactory

# The browser tests' live server (daphne on the test database, sandbox off), reused.
from tests.workflows.web.conftest import live_server_url  # noqa: F401


@pytest.fixture
def local_project(user):
    """alice's project with no repository (nothing to fetch from GitHub)."""
    project = ProjectFactory(slug="local", name="Local Tool", repository="")
    MembershipFactory(project=project, user=user)
    return project


@asynccontextmanager
async def mcp_session(url: str, token: str, scheme: str = "Bearer") -> AsyncIterator:
    """An initialized ClientSession to `url`/mcp sending `Authorization: <scheme> <token>`."""
    headers = {"Authorization": f"{scheme} {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def body(result) -> dict:
    """A tool result's JSON (its text content; the structured content is the same)."""
    assert result.structured_content == json.loads(result.content[0].text)
    return result.structured_content
