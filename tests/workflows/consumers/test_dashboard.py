import pytest
from channels.db import database_sync_to_async

from tests.factories import ProjectFactory, workflow_for
from tests.workflows.consumers.conftest import communicator, complete
from workflows.consumers import CLOSE_UNAUTHORISED

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_dashboard_snapshot_then_live_changes_of_own_projects_only(project, user, token):
    mine = await database_sync_to_async(workflow_for)(project, user, description="mine")
    other_project = await database_sync_to_async(ProjectFactory)(slug="not-mine")
    from tests.factories import UserFactory

    owner = await database_sync_to_async(UserFactory)(username="bob")
    from tests.factories import MembershipFactory

    await database_sync_to_async(MembershipFactory)(project=other_project, user=owner)
    theirs = await database_sync_to_async(workflow_for)(other_project, owner, description="no")

    ws = communicator("/ws/dashboard/", token)
    connected, _ = await ws.connect()
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot"
    assert [w["title"] for w in snapshot["workflows"]] == ["mine"]

    await complete(theirs, owner, "DISCOVERY")
    await complete(mine, user, "DISCOVERY")
    changes = [await ws.receive_json_from(timeout=5) for _ in range(2)]
    assert {c["workflow"]["id"] for c in changes} == {str(mine.id)}
    assert changes[-1]["workflow"]["state"] == "PLANNING"
    assert changes[-1]["event"]["type"] == "workflow.transitioned"
    assert await ws.receive_nothing(timeout=0.2)
    await ws.disconnect()


async def test_dashboard_refuses_anonymous(db):
    ws = communicator("/ws/dashboard/")
    await ws.connect()
    assert await ws.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": CLOSE_UNAUTHORISED,
    }


async def test_dashboard_cards_come_from_one_serializer(project, user, token, monkeypatch):
    # given: the dashboard summary's serializer marks what it renders
    from tests.workflows.api.test_bodies import MARK, mark
    from workflows.summaries import DashboardSummarySerializer

    mark(monkeypatch, DashboardSummarySerializer)
    workflow = await database_sync_to_async(workflow_for)(project, user, description="mine")
    ws = communicator("/ws/dashboard/", token)
    connected, _ = await ws.connect()
    assert connected

    # when: the snapshot, then a change
    snapshot = await ws.receive_json_from(timeout=5)
    await complete(workflow, user, "DISCOVERY")
    changed = await ws.receive_json_from(timeout=5)
    await ws.disconnect()

    # then: the snapshot's cards and the live one are the same rendering
    assert [card[MARK] for card in snapshot["workflows"]] == ["DashboardSummarySerializer"]
    assert changed["workflow"][MARK] == "DashboardSummarySerializer"
    assert changed["workflow"]["state"] == "PLANNING"
    assert set(changed["workflow"]) - {MARK} == set(DashboardSummarySerializer().fields)
