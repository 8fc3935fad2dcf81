"""The dashboard in headless Chromium against a live daphne server.

Everything that should show up live is caused over HTTP against the live server (the
IDE's own API calls), so it flows through that server's channel layer to the browser's
websockets exactly as in production. The database rows the test needs exist before the
browser starts: Playwright's sync API keeps an event loop running in this thread, where
Django refuses ORM calls.
"""

import time

import pytest

from tests.factories import MembershipFactory, ProjectFactory, api_token_for, evidence
from tests.workflows.web.conftest import ARTIFACTS

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt"
)
expect, sync_playwright = sync_api.expect, sync_api.sync_playwright

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LIVE = 10_000  # ms to wait for something pushed over a websocket
# Seconds the cancel request's answer is held back: longer than the worker takes to see
# the cancel (it checks every 0.5 s), so the worker's frame reaches the page first.
CANCEL_ANSWER_DELAY = 2.0
PHASES = ("DISCOVERY", "PLANNING", "IMPLEMENTATION", "TESTING", "VERIFICATION", "DEPLOYMENT")


class Ide:
    """The IDE's side: the HTTP API of the live server, with an API token."""

    def __init__(self, request_context):
        self.http = request_context

    def post(self, path: str, body: dict | None = None) -> dict:
        response = self.http.post(path, data=body or {})
        assert response.ok, f"POST {path}: {response.status} {response.text()}"
        return response.json()

    def open(self, project: str, description: str) -> str:
        body = {"project_id": project, "requirements": {"description": description}}
        return self.post("/api/ai-workflows/initialize", body)["workflow_id"]

    def complete(self, workflow_id: str, phase: str, **overrides) -> dict:
        body = {
            "workflow_id": workflow_id,
            "ai_response": f"{phase.title()} finished.",
            "phase_result": evidence(phase, **overrides),
            "phase": phase,
        }
        return self.post("/api/ai-workflows/complete-phase", body)


def card(page, column: str, workflow_id: str):
    return page.locator(f'[data-column="{column}"] [data-workflow-id="{workflow_id}"]')


def test_board_moves_cards_live_and_workflow_page_shows_the_handoff(
    live_server_url, chromium_path, user, project
):
    # given: alice's project "demo", a gated project "billing", and an API token
    billing = ProjectFactory(slug="billing", name="Billing", approval_gates=["PLANNING"])
    MembershipFactory(project=billing, user=user)
    token = api_token_for(user)
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        ide = Ide(
            playwright.request.new_context(
                base_url=live_server_url, extra_http_headers={"Authorization": f"Token {token}"}
            )
        )
        try:
            context = browser.new_context(
                base_url=live_server_url, viewport={"width": 1440, "height": 900}
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            # when: alice signs in
            page.goto("/accounts/login/?next=/dashboard/")
            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password").fill("pw-for-tests-1")
            page.get_by_role("button", name="Sign in").click()
            # then: she is on the board, connected live
            expect(page).to_have_url(f"{live_server_url}/dashboard/")
            expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
            page.evaluate("window.__sameDocument = true")

            # when: the IDE opens a workflow -> its card appears in DISCOVERY
            workflow_id = ide.open("demo", "Add dark mode to settings")
            first = card(page, "DISCOVERY", workflow_id)
            expect(first).to_be_visible(timeout=LIVE)
            expect(first).to_contain_text("Add dark mode to settings")
            expect(first).to_contain_text("demo")
            expect(first).to_contain_text("Q Assistant")

            # when: the IDE completes DISCOVERY -> the card moves to PLANNING, no reload
            assert ide.complete(workflow_id, "DISCOVERY")["new_state"] == "PLANNING"
            expect(card(page, "PLANNING", workflow_id)).to_be_visible(timeout=LIVE)
            expect(card(page, "DISCOVERY", workflow_id)).to_have_count(0)
            assert page.evaluate("window.__sameDocument") is True

            # and: a board with a card in most columns, for the screenshot
            _populate(ide)
            expect(page.locator('[data-column="DONE"] .card')).to_have_count(2, timeout=LIVE)
            expect(page.locator('[data-column="DONE"] .badge-complete')).to_have_count(1)
            expect(page.locator('[data-column="DONE"] .badge-cancelled')).to_have_count(1)
            expect(page.locator('[data-column="PLANNING"] .badge-approval')).to_have_count(
                1, timeout=LIVE
            )
            expect(page.locator('[data-column="IMPLEMENTATION"] .badge-regression')).to_have_count(
                1, timeout=LIVE
            )
            expect(page.locator("#board-total")).to_have_text("(5)", timeout=LIVE)
            _screenshot(page, "dashboard-board.png")

            # when: alice opens the first workflow
            card(page, "PLANNING", workflow_id).locator("a.card-title").click()
            expect(page).to_have_url(f"{live_server_url}/dashboard/workflows/{workflow_id}/")
            timeline = page.get_by_test_id("timeline")
            # then: the handoff is in the timeline
            expect(timeline.get_by_test_id("handoff")).to_have_count(1)
            expect(timeline).to_contain_text("Handoff Discovery → Planning")
            expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
            page.evaluate("window.__sameDocument = true")

            # when: the next phase completes, the page follows without a reload
            ide.complete(workflow_id, "PLANNING")
            expect(timeline).to_contain_text("Handoff Planning → Implementation", timeout=LIVE)
            expect(timeline.get_by_test_id("handoff")).to_have_count(2)
            expect(page.get_by_test_id("workflow-state")).to_have_text("Implementation")
            assert page.evaluate("window.__sameDocument") is True
            _screenshot(page, "dashboard-workflow.png")

            assert errors == []
        finally:
            ide.http.dispose()
            browser.close()


def _screenshot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True, animations="disabled")


def _populate(ide: Ide) -> None:
    """A shipped workflow, a cancelled one, one waiting for approval, one sent back."""
    shipped = ide.open("demo", "Audit log for admin actions")
    for phase in PHASES:
        ide.complete(shipped, phase)
    cancelled = ide.open("demo", "Rate limit the public API")
    ide.post(f"/api/workflows/{cancelled}/cancel/", {"reason": "superseded by gateway limits"})
    gated = ide.open("billing", "Monthly invoices as PDF")
    ide.complete(gated, "DISCOVERY")
    ide.complete(gated, "PLANNING")
    regressed = ide.open("demo", "Export reports as CSV")
    for phase in ("DISCOVERY", "PLANNING", "IMPLEMENTATION"):
        ide.complete(regressed, phase)
    ide.complete(
        regressed,
        "TESTING",
        verdict="fail",
        quality_score=0.4,
        findings=[{"severity": "major", "message": "CSV header misses the VAT column"}],
    )


# Keeps what the AI stream box showed (each phase's box empties when its evidence lands),
# and marks the document, so a reload would show.
RECORD_STREAM = """() => {
  window.__sameDocument = true;
  window.__streamed = "";
  var text = document.getElementById("ai-stream-text");
  new MutationObserver(function () {
    window.__streamed += text.textContent.slice(0, 200) + "\\n";
  }).observe(text, { childList: true, characterData: true, subtree: true });
}"""


def _sign_in(page, live_server_url: str) -> None:
    page.goto("/accounts/login/?next=/dashboard/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("pw-for-tests-1")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server_url}/dashboard/")


def test_runs_started_from_the_page_fail_visibly_succeed_live_and_stop_at_gates(
    live_server_url, chromium_path, user, project
):
    # given: a project whose Q Assistant is Claude (no API key on this server), and a
    # project gated at DISCOVERY; alice owns both, and demo runs on the offline model
    claude = ProjectFactory(slug="claude", name="Claude", role_models={"Q_ASSISTANT": "CLAUDE"})
    gated = ProjectFactory(slug="gated", name="Gated", approval_gates=["DISCOVERY"])
    for each in (claude, gated):
        MembershipFactory(project=each, user=user)
    token = api_token_for(user)
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        ide = Ide(
            playwright.request.new_context(
                base_url=live_server_url, extra_http_headers={"Authorization": f"Token {token}"}
            )
        )
        try:
            page = browser.new_context(
                base_url=live_server_url, viewport={"width": 1440, "height": 900}
            ).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            _sign_in(page, live_server_url)
            runs = page.get_by_test_id("run-row")

            # when: alice starts a run on the Claude project's workflow
            failing = ide.open("claude", "Add dark mode to settings")
            page.goto(f"/dashboard/workflows/{failing}/")
            expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
            expect(page.get_by_test_id("run-summary")).to_have_text("none yet")
            page.get_by_role("button", name="Start autopilot").click()
            # then: the run fails, and the page says why in a banner, live
            banner = page.get_by_test_id("run-error")
            expect(banner).to_be_visible(timeout=LIVE)
            expect(banner).to_contain_text(
                "The autopilot run failed in Discovery: anthropic has no API key: set "
                "ANTHROPIC_API_KEY"
            )
            expect(runs.first.get_by_test_id("run-status")).to_have_text("failed")
            expect(page.locator("[data-waiting-note]")).to_contain_text("the autopilot run failed")
            expect(page.get_by_role("button", name="Start autopilot")).to_be_visible()
            _screenshot(page, "dashboard-run-failed.png")

            # when: she starts one on the offline project
            working = ide.open("demo", "Export reports as CSV")
            page.goto(f"/dashboard/workflows/{working}/")
            expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
            page.evaluate(RECORD_STREAM)
            page.get_by_role("button", name="Start autopilot").click()
            # then: the model's text streams, and the workflow completes without a reload
            expect(page.get_by_test_id("workflow-state")).to_have_text("Complete", timeout=30_000)
            assert '"requirements"' in page.evaluate("window.__streamed")
            expect(runs.first.get_by_test_id("run-status")).to_have_text("completed", timeout=LIVE)
            expect(runs.first).to_contain_text("$0.000000")
            expect(banner).to_be_hidden()
            assert page.evaluate("window.__sameDocument") is True
            # and: the usage table opens from a visible toggle
            page.get_by_text("Show usage by role and phase ▸").click()
            expect(page.get_by_test_id("usage").locator("table")).to_be_visible()
            expect(page.get_by_text("Hide usage by role and phase ▾")).to_be_visible()
            _screenshot(page, "dashboard-run-complete.png")

            # when: a run reaches the DISCOVERY gate
            gate = ide.open("gated", "Monthly invoices as PDF")
            page.goto(f"/dashboard/workflows/{gate}/")
            page.get_by_role("button", name="Start autopilot").click()
            expect(runs.first.get_by_test_id("run-status")).to_have_text("waiting", timeout=LIVE)
            # then: the owner may reject it with feedback: the same role redoes it
            expect(page.get_by_role("button", name="Approve Discovery")).to_be_visible()
            page.get_by_role("button", name="Reject with feedback").click()
            expect(page.get_by_test_id("action-error")).to_have_text(
                "Say what must change before rejecting."
            )
            page.get_by_placeholder("what must change?").fill("Name the VAT rules")
            expect(page.get_by_test_id("action-error")).to_be_hidden()
            _screenshot(page, "dashboard-run-gate.png")
            page.get_by_role("button", name="Reject with feedback").click()
            timeline = page.get_by_test_id("timeline")
            expect(timeline).to_contain_text("Rejected Discovery", timeout=LIVE)
            # and: once redone it waits again; approved, the run goes on to the end
            approve = page.get_by_role("button", name="Approve Discovery")
            expect(approve).to_be_visible(timeout=LIVE)
            approve.click()
            expect(page.get_by_test_id("workflow-state")).to_have_text("Complete", timeout=30_000)
            expect(runs.first.get_by_test_id("run-status")).to_have_text("completed", timeout=LIVE)

            # when: she cancels a run while it works, and the cancel request's answer
            # (the run still running, its cancel requested) reaches the page only after
            # the worker's `ai.run` frame saying it was cancelled
            answered = []

            def answer_late(route):
                response = route.fetch()
                time.sleep(CANCEL_ANSWER_DELAY)
                route.fulfill(response=response)
                answered.append(response.json()["status"])

            page.route("**/cancel/", answer_late)
            cancelled = ide.open("demo", "Rate limit the public API")
            page.goto(f"/dashboard/workflows/{cancelled}/")
            page.get_by_role("button", name="Start autopilot").click()
            # and: the Cancel button stays the same element while the run's frames update
            # its row (one rebuilt per frame loses clicks that land between them)
            cancel = page.get_by_role("button", name="Cancel run").element_handle(timeout=LIVE)
            phase = runs.first.locator("td").nth(1)
            expect(phase).not_to_have_text(phase.inner_text(), timeout=LIVE)
            assert cancel.evaluate("button => button.isConnected") is True
            cancel.click()
            # then: it stops, stays stopped once the late answer is in, and a new one may
            # be started
            status = runs.first.get_by_test_id("run-status")
            expect(status).to_have_text("cancelled", timeout=LIVE)
            deadline = time.monotonic() + LIVE / 1000
            while not answered and time.monotonic() < deadline:
                page.wait_for_timeout(50)
            assert len(answered) == 1
            shown = set()
            for _ in range(40):  # a second after the late answer: never active again
                shown.add(status.inner_text())
                page.wait_for_timeout(25)
            assert shown == {"cancelled"}
            expect(page.get_by_role("button", name="Start autopilot")).to_be_visible()
            assert page.get_by_test_id("workflow-state").inner_text() != "Complete"

            assert errors == []
        finally:
            ide.http.dispose()
            browser.close()
