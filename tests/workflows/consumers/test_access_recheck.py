"""Open websockets lose access as soon as the user does: 4401 when the user is no longer
authenticated, 4404 when the workflow is no longer theirs; at once when notified, and on
the next heartbeat when the notification is lost."""

import contextlib
from unittest import mock

import pytest
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.contrib.sessions.models import Session
from django.db import OperationalError
from django.test import Client

from tests.factories import MembershipFactory, ProjectFactory, api_token_for, workflow_for
from tests.workflows.consumers.conftest import communicator, complete, frames_until_close
from workflows import selectors
from workflows.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHORISED
from workflows.models import ApiToken, Membership
from workflows.states import MemberRole

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

QUIET_HEARTBEAT = 60  # seconds: far longer than any wait below
SHORT_HEARTBEAT = 0.3


def _revoke_token(user, project, raw):
    ApiToken.objects.get(digest=ApiToken.digest_of(raw)).delete()


def _remove_membership(user, project, raw):
    Membership.objects.get(user=user, project=project).delete()


def _deactivate_user(user, project, raw):
    user.is_active = False
    user.save()


def _delete_user(user, project, raw):
    user.delete()


LOSSES = {
    "token revoked": (_revoke_token, CLOSE_UNAUTHORISED),
    "membership removed": (_remove_membership, CLOSE_NOT_FOUND),
    "user deactivated": (_deactivate_user, CLOSE_UNAUTHORISED),
    "user deleted": (_delete_user, CLOSE_UNAUTHORISED),
}


async def _open_workflow_socket(project, user, token):
    workflow = await database_sync_to_async(workflow_for)(project, user)
    ws = communicator(f"/ws/workflows/{workflow.id}/", token)
    assert (await ws.connect())[0]
    while (await ws.receive_json_from(timeout=5))["type"] != "replay.done":
        pass
    return ws


async def _next_but_heartbeats(ws, most: int = 50) -> dict:
    """The next frame that is not a heartbeat."""
    for _ in range(most):
        frame = await ws.receive_json_from(timeout=5)
        if frame["type"] != "heartbeat":
            return frame
    raise AssertionError(f"only heartbeats in {most} frames")


@pytest.mark.parametrize("loss", LOSSES)
async def test_a_notified_loss_of_access_closes_the_workflow_socket_at_once(
    project, user, token, settings, loss
):
    settings.TOPDOG_WS_HEARTBEAT_SECONDS = QUIET_HEARTBEAT
    change, code = LOSSES[loss]
    ws = await _open_workflow_socket(project, user, token)

    await database_sync_to_async(change)(user, project, token)

    # long before the next heartbeat
    frames, closed = await frames_until_close(ws, timeout=5)
    assert closed["code"] == code
    assert frames == []
    await ws.disconnect()


@pytest.mark.parametrize("loss", LOSSES)
async def test_without_a_notification_the_next_heartbeat_closes_the_socket(
    project, user, token, settings, loss
):
    settings.TOPDOG_WS_HEARTBEAT_SECONDS = SHORT_HEARTBEAT
    change, code = LOSSES[loss]
    ws = await _open_workflow_socket(project, user, token)
    assert (await ws.receive_json_from(timeout=5))["type"] == "heartbeat"

    # the notification is lost (another node's, say): only the heartbeat can notice
    with mock.patch("workflows.signals.user_sockets_recheck") as notify:
        await database_sync_to_async(change)(user, project, token)
    assert notify.called

    frames, closed = await frames_until_close(ws, timeout=5)
    assert closed["code"] == code
    # A beat that ran before the change committed may have sent one more heartbeat;
    # the first beat after it closes the socket.
    assert [frame["type"] for frame in frames] in ([], ["heartbeat"])
    await ws.disconnect()


@pytest.mark.parametrize("loss", ["token revoked", "user deactivated", "user deleted"])
async def test_a_dashboard_socket_closes_4401_when_its_user_is_no_longer_authenticated(
    project, user, token, settings, loss
):
    settings.TOPDOG_WS_HEARTBEAT_SECONDS = QUIET_HEARTBEAT
    change, _ = LOSSES[loss]
    ws = communicator("/ws/dashboard/", token)
    await ws.connect()
    assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"

    await database_sync_to_async(change)(user, project, token)

    _, closed = await frames_until_close(ws, timeout=5)
    assert closed["code"] == CLOSE_UNAUTHORISED
    await ws.disconnect()


@pytest.mark.parametrize("heartbeat", [QUIET_HEARTBEAT, SHORT_HEARTBEAT])
async def test_a_dashboard_stops_following_a_project_the_user_left(
    project, user, token, settings, heartbeat
):
    settings.TOPDOG_WS_HEARTBEAT_SECONDS = heartbeat
    # given two projects of the user, one workflow each
    kept = await database_sync_to_async(ProjectFactory)(slug="kept")
    await database_sync_to_async(MembershipFactory)(project=kept, user=user)
    left = await database_sync_to_async(workflow_for)(project, user, description="left")
    staying = await database_sync_to_async(workflow_for)(kept, user, description="staying")
    ws = communicator("/ws/dashboard/", token)
    await ws.connect()
    snapshot = await ws.receive_json_from(timeout=5)
    assert {w["title"] for w in snapshot["workflows"]} == {"left", "staying"}

    # when the user is removed from `project` (notified, or only seen by a heartbeat)
    muted = mock.patch("workflows.signals.user_sockets_recheck") if heartbeat < 1 else None
    with muted or contextlib.nullcontext():
        await database_sync_to_async(_remove_membership)(user, project, token)

    # then a new snapshot without that project's workflows replaces the old one
    frame = await _next_but_heartbeats(ws)
    assert frame["type"] == "snapshot"
    assert [w["title"] for w in frame["workflows"]] == ["staying"]
    # and changes to it no longer arrive, while the other project's still do
    other = await database_sync_to_async(MembershipFactory)(project=project)
    await complete(left, other.user, "DISCOVERY")
    await complete(staying, user, "DISCOVERY")
    changes = [await _next_but_heartbeats(ws) for _ in range(2)]
    assert {change["workflow"]["id"] for change in changes} == {str(staying.id)}
    await ws.disconnect()


async def test_a_dashboard_follows_a_project_the_user_joined(project, user, token, settings):
    settings.TOPDOG_WS_HEARTBEAT_SECONDS = QUIET_HEARTBEAT
    other = await database_sync_to_async(ProjectFactory)(slug="joined")
    ws = communicator("/ws/dashboard/", token)
    await ws.connect()
    assert (await ws.receive_json_from(timeout=5))["workflows"] == []

    await database_sync_to_async(MembershipFactory)(project=other, user=user)
    assert (await ws.receive_json_from(timeout=5)) == {"type": "snapshot", "workflows": []}

    workflow = await database_sync_to_async(workflow_for)(other, user, description="new")
    change = await ws.receive_json_from(timeout=5)
    assert change["type"] == "workflow.changed"
    assert change["workflow"]["id"] == str(workflow.id)
    await ws.disconnect()


async def test_changes_that_keep_access_keep_the_socket_open(project, user, token, settings):
    settings.TOPDOG_WS_HEARTBEAT_SECONDS = QUIET_HEARTBEAT
    ws = await _open_workflow_socket(project, user, token)
    spare = await database_sync_to_async(api_token_for)(user)

    # another token of the user revoked, the user's role lowered: each re-checks, and stays
    await database_sync_to_async(_revoke_token)(user, project, spare)
    await database_sync_to_async(
        lambda: Membership.objects.filter(user=user, project=project).update(role=MemberRole.VIEWER)
    )()
    membership = await database_sync_to_async(Membership.objects.get)(user=user, project=project)
    await database_sync_to_async(membership.save)()

    assert await ws.receive_nothing(timeout=0.5)
    await ws.send_json_to({"type": "ping"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "pong"
    await ws.disconnect()


# --- session sockets ----------------------------------------------------------------------


def _logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _cookie(client: Client) -> str:
    name = django_settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


async def _open_session_socket(project, user, client):
    workflow = await database_sync_to_async(workflow_for)(project, user)
    ws = communicator(f"/ws/workflows/{workflow.id}/", cookie=_cookie(client))
    assert (await ws.connect())[0]
    while (await ws.receive_json_from(timeout=5))["type"] != "replay.done":
        pass
    return ws


async def test_logging_out_elsewhere_closes_the_sessions_socket_at_once(project, user, settings):
    settings.TOPDOG_WS_HEARTBEAT_SECONDS = QUIET_HEARTBEAT
    client = await database_sync_to_async(_logged_in)(user)
    ws = await _open_session_socket(project, user, client)

    await database_sync_to_async(client.logout)()

    _, closed = await frames_until_close(ws, timeout=5)
    assert closed["code"] == CLOSE_UNAUTHORISED
    await ws.disconnect()


async def test_a_session_gone_without_notice_closes_on_the_next_heartbeat(project, user, settings):
    settings.TOPDOG_WS_HEARTBEAT_SECONDS = SHORT_HEARTBEAT
    client = await database_sync_to_async(_logged_in)(user)
    ws = await _open_session_socket(project, user, client)

    # the session row is deleted (expired and cleared, say): nothing announces it
    await database_sync_to_async(lambda: Session.objects.all().delete())()

    frames, closed = await frames_until_close(ws, timeout=5)
    assert closed["code"] == CLOSE_UNAUTHORISED
    assert len(frames) <= 1
    await ws.disconnect()


async def test_a_new_password_ends_session_sockets_but_not_token_sockets(
    project, user, token, settings
):
    settings.TOPDOG_WS_HEARTBEAT_SECONDS = QUIET_HEARTBEAT
    client = await database_sync_to_async(_logged_in)(user)
    by_session = await _open_session_socket(project, user, client)
    by_token = await _open_workflow_socket(project, user, token)

    def new_password():
        user.set_password("another-pw-for-tests-2")
        user.save()

    await database_sync_to_async(new_password)()

    _, closed = await frames_until_close(by_session, timeout=5)
    assert closed["code"] == CLOSE_UNAUTHORISED
    assert await by_token.receive_nothing(timeout=0.3)
    await by_token.send_json_to({"type": "ping"})
    assert (await by_token.receive_json_from(timeout=5))["type"] == "pong"
    await by_session.disconnect()
    await by_token.disconnect()


async def test_a_failed_re_check_is_logged_and_the_next_beat_checks_again(
    project, user, token, settings, caplog
):
    settings.TOPDOG_WS_HEARTBEAT_SECONDS = SHORT_HEARTBEAT
    real = selectors.workflow_socket_access
    calls = []

    def flaky(**kwargs):
        calls.append(kwargs)
        if len(calls) <= 2:
            raise OperationalError("the database is restarting")
        return real(**kwargs)

    ws = await _open_workflow_socket(project, user, token)
    with (
        mock.patch("workflows.selectors.workflow_socket_access", flaky),
        mock.patch("workflows.signals.user_sockets_recheck"),
    ):
        await database_sync_to_async(_revoke_token)(user, project, token)
        _, closed = await frames_until_close(ws, timeout=5)

    assert closed["code"] == CLOSE_UNAUTHORISED
    assert len(calls) >= 3
    assert "websocket heartbeat failed" in caplog.text
    await ws.disconnect()
