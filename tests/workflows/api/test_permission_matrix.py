"""Permissions as a generated matrix (issue 12 F).

Every route under /api/ and /dashboard/ is found by walking the URLconf (not by
importing URL modules: routes move between apps), with the methods its view has, and
asked by each role: owner, developer, viewer, non-member and anonymous. The answer's
class must match the rule for that route. A route without a rule fails with its name,
so a new route cannot ship without deciding who may use it; a rule whose route is gone
fails too.
"""

import json
import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from ai_orchestration.models import AIRun
from tests.factories import MembershipFactory, UserFactory, api_token_for, evidence, workflow_for
from workflows.models import CheckRun, Message, PhaseResult, WorkItem
from workflows.services import Actor, workflow_phase_complete
from workflows.states import MemberRole, State

PREFIXES = ("api/", "dashboard/")
ROLES = ("owner", "developer", "viewer", "non-member", "anonymous")

# --- the classes of answer --------------------------------------------------------------

OK = "ok"  # the request got past authorization: 2xx/3xx, or 400/405/409/422 about the request
UNAUTHENTICATED = "401"
FORBIDDEN = "403"
HIDDEN = "404"  # the caller may not know the resource exists
LOGIN = "login"  # a page: redirected to the login form


def answer_class(path: str, response) -> str:
    status = response.status_code
    if status == 401:
        return UNAUTHENTICATED
    if status == 403:
        return FORBIDDEN
    if status == 404:
        return HIDDEN
    if status == 302 and "/accounts/login/" in response.get("Location", ""):
        return LOGIN
    if status >= 500:
        return f"server error {status}"
    return OK


# --- the rules --------------------------------------------------------------------------

PUBLIC = dict.fromkeys(ROLES, OK)
SIGNED_IN = {**dict.fromkeys(ROLES, OK), "anonymous": UNAUTHENTICATED}
READ = {
    "owner": OK,
    "developer": OK,
    "viewer": OK,
    "non-member": HIDDEN,
    "anonymous": UNAUTHENTICATED,
}
ACT = {**READ, "viewer": FORBIDDEN}
OWNER_ONLY = {**ACT, "developer": FORBIDDEN}
PAGE = {**dict.fromkeys(ROLES, OK), "anonymous": LOGIN}
SCOPED_PAGE = {**PAGE, "non-member": HIDDEN}

# route (parameters as {name}) -> method -> [(variant, body, expectations)]
# A body is a dict, or a callable taking the world. Expectations: role -> class.
RULES = {
    "api/ai-workflows/initialize": {
        "POST": [
            (
                "",
                lambda w: {"project_id": w.project.slug, "requirements": {"description": "x"}},
                ACT,
            )
        ]
    },
    "api/ai-workflows/complete-phase": {
        "POST": [
            (
                "",
                lambda w: {
                    "workflow_id": str(w.workflow.id),
                    "ai_response": "x",
                    "phase_result": evidence("PLANNING"),
                },
                ACT,
            )
        ]
    },
    "api/ai-workflows/status/{workflow_id}": {"GET": [("", None, READ)]},
    "api/ai-workflows/get-ai-prompt/{workflow_id}": {"POST": [("", None, READ)]},
    "api/projects/": {
        "GET": [("", None, SIGNED_IN)],
        "POST": [("", {"slug": "new", "name": "New"}, SIGNED_IN)],
    },
    "api/projects/{project_ref}/": {
        "GET": [("", None, READ)],
        "PATCH": [("", {"name": "Renamed"}, OWNER_ONLY)],
    },
    "api/workflows/": {
        "GET": [("", None, SIGNED_IN)],
        "POST": [
            ("", lambda w: {"project": w.project.slug, "requirements": {"description": "x"}}, ACT)
        ],
    },
    "api/workflows/{workflow_id}/": {"GET": [("", None, READ)]},
    "api/workflows/{workflow_id}/transitions/": {
        "POST": [
            ("cancel", {"transition": "cancel"}, ACT),
            ("approve", {"transition": "approve"}, OWNER_ONLY),
            ("reject", {"transition": "reject", "feedback": "no"}, OWNER_ONLY),
            ("fail", {"transition": "fail", "reason": "no"}, OWNER_ONLY),
        ]
    },
    "api/workflows/{workflow_id}/cancel/": {"POST": [("", {}, ACT)]},
    "api/workflows/{workflow_id}/events/": {"GET": [("", None, READ)]},
    "api/workflows/{workflow_id}/handoffs/": {"GET": [("", None, READ)]},
    "api/workflows/{workflow_id}/messages/": {"GET": [("", None, READ)]},
    "api/workflows/{workflow_id}/messages/{seq}/": {"GET": [("", None, READ)]},
    "api/workflows/{workflow_id}/phase-results/": {"GET": [("", None, READ)]},
    "api/workflows/{workflow_id}/phase-results/{result_id}/": {"GET": [("", None, READ)]},
    "api/workflows/{workflow_id}/runs/": {
        "GET": [("", None, READ)],
        "POST": [("", {"scope": "phase"}, ACT)],
    },
    "api/workflows/{workflow_id}/runs/{run_id}/cancel/": {"POST": [("", None, ACT)]},
    "api/workflows/{workflow_id}/usage/": {"GET": [("", None, READ)]},
    "api/workflows/{workflow_id}/release/": {"POST": [("", None, ACT)]},
    "api/workflows/{workflow_id}/work-items/": {"GET": [("", None, READ)]},
    "api/workflows/{workflow_id}/work-items/{key}/prompt/": {"POST": [("", None, READ)]},
    "api/workflows/{workflow_id}/work-items/{key}/complete/": {
        "POST": [("", {"files": [{"path": "src/app.py", "action": "delete"}]}, ACT)]
    },
    "api/workflows/{workflow_id}/patch/": {"GET": [("", None, READ)]},
    "api/workflows/{workflow_id}/checks/": {
        "GET": [("", None, READ)],
        "POST": [("", {"kind": "test"}, ACT)],
    },
    "api/workflows/{workflow_id}/checks/{check_id}/": {"GET": [("", None, READ)]},
    "api/workflows/{workflow_id}/checks/{check_id}/cancel/": {"POST": [("", None, ACT)]},
    "api/health/": {"GET": [("", None, PUBLIC)]},
    "api/schema/": {"GET": [("", None, PUBLIC)]},
    "api/docs/": {"GET": [("", None, PUBLIC)]},
    "dashboard/": {"GET": [("", None, PAGE)]},
    "dashboard/workflows/{workflow_id}/": {"GET": [("", None, SCOPED_PAGE)]},
}
# The IDE paths answer with a trailing slash too (issue 13): the same view, the same rules.
RULES.update(
    {f"{route}/": rules for route, rules in list(RULES.items()) if route.startswith("api/ai-")}
)
# Known bugs, one case each: they must fail today (strict xfail turns a fix into a failure
# that asks for the mark to go).
# (The viewer's run cancel, which answered 200, was the one; it is 403 now.)
KNOWN_BUGS: dict = {}

# --- walking the URLconf ----------------------------------------------------------------

_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")


def _walk(patterns, prefix=""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


def _methods(entry: URLPattern) -> list[str]:
    view = getattr(entry.callback, "view_class", None) or getattr(entry.callback, "cls", None)
    if view is None:
        return ["GET"]  # function views: the dashboard's pages are require_GET
    return [
        method.upper()
        for method in view.http_method_names
        if method not in ("options", "head") and hasattr(view, method)
    ]


def discovered_routes() -> dict[str, list[str]]:
    routes = {}
    for raw, entry in _walk(get_resolver().url_patterns):
        if raw.startswith(PREFIXES):
            routes[_PARAMETER.sub(r"{\1}", raw)] = _methods(entry)
    return routes


ROUTES = discovered_routes()


def _cases():
    for route, methods in sorted(ROUTES.items()):
        for method in methods:
            variants = RULES.get(route, {}).get(method) or [("", None, None)]
            for variant, body, expectations in variants:
                for role in ROLES:
                    marks = (
                        [KNOWN_BUGS[key]]
                        if (key := (route, method, variant, role)) in KNOWN_BUGS
                        else []
                    )
                    label = f"{method} /{route} {variant} as {role}".replace("  ", " ")
                    yield pytest.param(
                        route, method, body, expectations, role, id=label, marks=marks
                    )


# --- the world the questions are asked in -----------------------------------------------


class World:
    def __init__(self):
        self.users = {
            "owner": UserFactory(username="owner"),
            "developer": UserFactory(username="developer"),
            "viewer": UserFactory(username="viewer"),
            "non-member": UserFactory(username="outsider"),
        }
        self.project = MembershipFactory(
            project__slug="matrix", user=self.users["owner"], role=MemberRole.OWNER
        ).project
        self.project.approval_gates = [State.DISCOVERY]
        self.project.save()
        MembershipFactory(
            project=self.project, user=self.users["developer"], role=MemberRole.DEVELOPER
        )
        MembershipFactory(project=self.project, user=self.users["viewer"], role=MemberRole.VIEWER)
        owner = self.users["owner"]
        # A workflow whose DISCOVERY result waits for the owner's approval.
        self.workflow = workflow_for(self.project, owner)
        workflow_phase_complete(
            workflow_id=self.workflow.id,
            ai_response="done",
            result=evidence("DISCOVERY"),
            actor=Actor.of(owner),
        )
        self.result = PhaseResult.objects.get(workflow=self.workflow, phase="DISCOVERY")
        Message.objects.create(
            workflow=self.workflow,
            seq=1000,
            role="Q_ASSISTANT",
            sender="ai",
            phase="DISCOVERY",
            content="hello",
        )
        PhaseResult.objects.create(
            workflow=self.workflow,
            phase="DEPLOYMENT",
            attempt=1,
            status="accepted",
            result={"patch": "--- a/x\n+++ b/x\n"},
            content_hash="0" * 64,
        )
        # The owner's autopilot run, and a check run someone asked for.
        self.run = AIRun.objects.create(workflow=self.workflow, created_by=owner)
        self.check = CheckRun.objects.create(workflow=self.workflow, attempt=1, kind="test")
        # A work item (of a plan the workflow has not reached: asking about it is a 409).
        WorkItem.objects.create(
            workflow=self.workflow, plan=self.result, key="W1", title="x", files=["src/app.py"]
        )

    def path(self, route: str) -> str:
        values = {
            "workflow_id": self.workflow.id,
            "project_ref": self.project.slug,
            "run_id": self.run.id,
            "check_id": self.check.id,
            "result_id": self.result.pk,
            "seq": 1000,
            "key": "W1",
        }
        for name in _PARAMETER.findall(route.replace("{", "<").replace("}", ">")):
            assert name in values, f"no fixture value for the URL parameter {{{name}}} in {route}"
        return "/" + route.format(**values)

    def client(self, role: str) -> APIClient:
        client = APIClient()
        client.raise_request_exception = False
        user = self.users.get(role)
        if user is not None:
            client.force_login(user)  # the dashboard's pages
            client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_for(user)}")
        return client


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "body", "expectations", "role"), list(_cases()))
def test_permission_matrix(route, method, body, expectations, role):
    if expectations is None:
        pytest.fail(
            f"no permission rule for {method} /{route}: add it to RULES in {__file__} "
            "(who may call it: owner, developer, viewer, non-member, anonymous)"
        )
    world = World()
    path = world.path(route)
    data = body(world) if callable(body) else body
    response = world.client(role).generic(
        method,
        path,
        data=b"" if data is None else json.dumps(data),
        content_type="application/json",
    )
    got = answer_class(path, response)
    assert got == expectations[role], (
        f"{method} {path} as {role}: expected {expectations[role]}, got {got} "
        f"({response.status_code} {response.content[:200]!r})"
    )


def test_every_rule_names_a_route_that_exists():
    stale = {
        f"{method} /{route}"
        for route, methods in RULES.items()
        for method in methods
        if method not in ROUTES.get(route, [])
    }
    assert not stale, f"rules for routes or methods that no longer exist: {sorted(stale)}"


def test_the_walk_finds_the_routes_it_should():
    assert "api/workflows/{workflow_id}/" in ROUTES
    assert ROUTES["api/projects/{project_ref}/"] == ["GET", "PATCH"]
    assert "dashboard/workflows/{workflow_id}/" in ROUTES
    assert not any(route.startswith("admin/") for route in ROUTES)
