"""Every change of access tells the user's websockets after commit, and only then."""

from unittest import mock

import pytest
from django.contrib.auth.signals import user_logged_in
from django.core.management import call_command
from django.db import transaction
from django.test import RequestFactory

from tests.factories import MembershipFactory, ProjectFactory, api_token_for
from workflows.models import ApiToken, Membership

pytestmark = pytest.mark.django_db


@pytest.fixture
def notify():
    with mock.patch("workflows.signals.user_sockets_recheck") as recheck:
        yield recheck


def _told(notify) -> list:
    return [call.kwargs["user_id"] for call in notify.call_args_list]


def test_revoking_a_token_from_the_command_line_tells_its_user(
    user, notify, django_capture_on_commit_callbacks
):
    raw = api_token_for(user)
    with django_capture_on_commit_callbacks(execute=True):
        call_command("topdog", "token", "revoke", raw)
    assert _told(notify) == [user.pk]


def test_membership_changes_and_user_changes_tell_the_user(
    user, project, notify, django_capture_on_commit_callbacks
):
    other = ProjectFactory(slug="other")
    with django_capture_on_commit_callbacks(execute=True):
        MembershipFactory(project=other, user=user)  # joined
    with django_capture_on_commit_callbacks(execute=True):
        Membership.objects.filter(project=other, user=user).delete()  # left (a queryset)
    with django_capture_on_commit_callbacks(execute=True):
        user.is_active = False
        user.save()  # deactivated
    assert _told(notify) == [user.pk, user.pk, user.pk]


def test_deleting_a_user_tells_them(user, project, notify, django_capture_on_commit_callbacks):
    api_token_for(user)
    user_id = user.pk
    with django_capture_on_commit_callbacks(execute=True):
        user.delete()
    # the user, and through the cascade their token and membership: that user each time
    assert set(_told(notify)) == {user_id}


def test_a_rolled_back_change_tells_nobody(user, project, notify):
    raw = api_token_for(user)
    with pytest.raises(RuntimeError), transaction.atomic():
        ApiToken.objects.get(digest=ApiToken.digest_of(raw)).delete()
        raise RuntimeError("rolled back")
    assert ApiToken.objects.filter(digest=ApiToken.digest_of(raw)).exists()
    assert not notify.called


def test_a_login_tells_nobody(user, notify, django_capture_on_commit_callbacks):
    # A login writes last_login (update_fields=["last_login"]): no access changed.
    with django_capture_on_commit_callbacks(execute=True):
        user_logged_in.send(sender=type(user), request=RequestFactory().get("/"), user=user)
    assert not notify.called
