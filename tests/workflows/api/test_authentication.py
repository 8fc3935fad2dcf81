"""Token authentication: who the request is, when the token was last used, refusals."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from tests.factories import UserFactory, api_token_for
from workflows.authentication import ApiTokenAuthentication
from workflows.models import ApiToken

pytestmark = pytest.mark.django_db


def client_with(token: str, keyword: str = "Token") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{keyword} {token}")
    return client


def test_the_token_authenticates_its_user_with_every_field_loadable(user, project):
    # given
    user.email = "alice@example.com"
    user.save()
    token = api_token_for(user)

    # when
    response = client_with(token, "Bearer").get("/api/projects/")

    # then: the request ran as alice (her project is listed)
    assert response.status_code == 200
    assert [p["slug"] for p in response.json()["results"]] == ["demo"]

    # and the user it builds is alice, with the fields it did not read loaded on touch
    request = Request(APIRequestFactory().get("/", HTTP_AUTHORIZATION=f"Token {token}"))
    authenticated, auth = ApiTokenAuthentication().authenticate(request)
    assert (authenticated.pk, authenticated.username) == (user.pk, "alice")
    assert (authenticated.is_active, authenticated.is_staff) == (True, False)
    assert "email" in authenticated.get_deferred_fields()
    assert authenticated.email == "alice@example.com"
    assert auth.user_id == user.pk


def test_last_used_at_is_written_on_first_use_and_then_at_most_every_five_minutes(
    user, project, django_assert_num_queries
):
    token = api_token_for(user)
    record = ApiToken.objects.get(user=user)
    client = client_with(token)
    assert record.last_used_at is None

    # first use: the token read and the last_used_at write
    with django_assert_num_queries(3):  # token, UPDATE last_used_at, the projects page
        assert client.get("/api/projects/").status_code == 200
    record.refresh_from_db()
    first = record.last_used_at
    assert first is not None

    # used again soon: no write
    with django_assert_num_queries(2):
        assert client.get("/api/projects/").status_code == 200
    record.refresh_from_db()
    assert record.last_used_at == first

    # used again after the resolution: written again
    ApiToken.objects.filter(pk=record.pk).update(last_used_at=first - timedelta(minutes=6))
    assert client.get("/api/projects/").status_code == 200
    record.refresh_from_db()
    assert record.last_used_at > first - timedelta(minutes=1)
    assert record.last_used_at <= timezone.now()


def test_an_unknown_token_is_401_and_says_how_to_get_one(project):
    response = client_with("td_not-a-real-token").get("/api/projects/")
    assert response.status_code == 401
    assert "topdog token create" in response.json()["detail"]


def test_a_deactivated_users_token_is_401(project):
    bob = UserFactory(username="bob")
    token = api_token_for(bob)
    bob.is_active = False
    bob.save()

    response = client_with(token).get("/api/projects/")

    assert response.status_code == 401
    assert "deactivated" in response.json()["detail"]


def test_a_revoked_token_stops_working_at_once(user, project):
    token = api_token_for(user)
    client = client_with(token)
    assert client.get("/api/projects/").status_code == 200

    ApiToken.objects.filter(user=user).delete()

    assert client.get("/api/projects/").status_code == 401


def test_a_malformed_header_is_401_with_the_expected_form(project):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token two parts")
    response = client.get("/api/projects/")
    assert response.status_code == 401
    assert "Authorization: Token" in response.json()["detail"]
