"""Changes of access that open websockets must hear of at once.

A websocket re-checks its access on every heartbeat; these receivers make the user's
sockets re-check right after the commit that changed it. They catch every path (the
admin, `manage.py topdog`, a shell, a cascade from deleting a user or project): an API
token deleted, a membership created, changed or deleted, a user saved (deactivated, a new
password, which ends their sessions) or deleted, a user logged out. A receiver only
schedules `broadcast.user_sockets_recheck` with `transaction.on_commit`, so a rolled
back change notifies nobody. A bulk `QuerySet.update()` sends no signal: the heartbeat
re-check is the backstop for it.
"""

from functools import partial
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from workflows.broadcast import user_sockets_recheck
from workflows.models import ApiToken, Membership


def sockets_recheck_after_commit(user_id: Any) -> None:
    """Have the user's open websockets re-check their access once this transaction commits."""
    if user_id is not None:
        transaction.on_commit(partial(user_sockets_recheck, user_id=user_id), robust=True)


def _token_deleted(sender: type, instance: ApiToken, **kwargs: Any) -> None:
    sockets_recheck_after_commit(instance.user_id)


def _membership_changed(sender: type, instance: Membership, **kwargs: Any) -> None:
    sockets_recheck_after_commit(instance.user_id)


def _user_saved(sender: type, instance: Any, created: bool, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    # A login writes last_login only: that changes nobody's access.
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    sockets_recheck_after_commit(instance.pk)


def _user_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    sockets_recheck_after_commit(instance.pk)


def _user_logged_out(sender: type, request: Any, user: Any, **kwargs: Any) -> None:
    sockets_recheck_after_commit(getattr(user, "pk", None))


def access_signals_connect() -> None:
    """Connect the receivers (from `WorkflowsConfig.ready`)."""
    user_model = get_user_model()
    post_delete.connect(_token_deleted, sender=ApiToken, dispatch_uid="ws-token-deleted")
    post_save.connect(_membership_changed, sender=Membership, dispatch_uid="ws-member-saved")
    post_delete.connect(_membership_changed, sender=Membership, dispatch_uid="ws-member-deleted")
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="ws-user-saved")
    post_delete.connect(_user_deleted, sender=user_model, dispatch_uid="ws-user-deleted")
    user_logged_out.connect(_user_logged_out, dispatch_uid="ws-user-logged-out")
