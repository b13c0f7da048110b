"""Promote a retrained model to production in the browser: an engineer registers a run's output
and asks for production; a first approver opens the inbox, compares the evidence with the
version in production and approves from the keyboard; the engineer tries to approve their own
request and is refused; a second approver approves. The new version is in production, the old
one archived, and the timeline (and the governance export) show every step. The model, version,
request and inbox pages fit a laptop's and a phone's window."""
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from lifecycle.registry.models import ModelVersion, PromotionRequest, Stage
from tests.browser.conftest import log_in
from tests.browser.test_layout import STICKING_OUT, VIEWPORTS, overflow
from tests.conftest import make_user
from tests.registry.factories import registered, trained_run


@pytest.fixture
def store(transactional_db, settings, tmp_path, trained):
    """This test's artifact store, holding the trained output (the live server reads it too)."""
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    shutil.copytree(trained["artifacts"], settings.ARTIFACT_DIR)
    for path in Path(settings.ARTIFACT_DIR).rglob("*"):
        if path.is_file():
            path.chmod(0o600)
    return settings.ARTIFACT_DIR


@pytest.fixture
def people(transactional_db):
    return {
        # The engineer holds the approver role as well: only separation of duties stops her.
        "erin": make_user("erin-engineer", "ml_engineer", "approver"),
        "ann": make_user("ann-approver", "approver"),
        "abe": make_user("abe-approver", "approver"),
    }


def in_production_first(trained, people, tmp_path):  # noqa: F811
    """Version 1, put in production through the model methods: registered, requested, approved twice."""
    v1 = registered(trained, people["erin"], tmp_path)
    request = v1.request_promotion(people["erin"], Stage.PRODUCTION, "the first model that beats the rules")
    for name in ("ann", "abe"):
        request.refresh_from_db()
        request.approve(people[name], "checked", seen_sha256=request.evidence_sha256)
    v1.refresh_from_db()
    assert v1.stage == Stage.PRODUCTION
    return v1


def user_page(browser, live_server, user, viewport=None):
    page = browser.new_page(viewport=viewport or VIEWPORTS[0])
    log_in(page, live_server, user)
    return page


def shot(page, tmp_path, name):
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)


def assert_fits(browser, live_server, user, paths):
    too_wide = {}
    for viewport in VIEWPORTS:
        page = user_page(browser, live_server, user, viewport)
        for path in paths:
            assert page.goto(f"{live_server.url}{path}").status == 200, path
            page.wait_for_load_state("networkidle")
            if page.locator("[data-chart]").count():
                expect(page.locator("[data-chart] .main-svg").first).to_be_attached()
            if overflow(page) > 1:
                too_wide[(viewport["width"], path)] = (overflow(page), page.evaluate(STICKING_OUT))
        page.close()
    assert not too_wide, f"pages wider than the window (px too wide, what sticks out): {too_wide}"


def test_register_request_compare_approve_twice_and_see_it_in_production(browser, live_server, store, trained,  # noqa: F811
                                                                         people, tmp_path):
    v1 = in_production_first(trained, people, tmp_path)
    model = v1.model
    run = trained_run(trained, people["erin"], tmp_path, name="retrained on the new tickets")

    # The engineer registers the run's output from the run's page and asks for production.
    erin = user_page(browser, live_server, people["erin"])
    erin.goto(f"{live_server.url}{run.get_absolute_url()}")
    shot(erin, tmp_path, "01-run")
    erin.click("#run-actions >> text=Register as a model version")
    expect(erin.locator("#register-run")).to_contain_text(run.name)
    erin.select_option("select[name=model]", model.slug)
    shot(erin, tmp_path, "02-register")
    erin.click("button:has-text('Register and sign')")
    expect(erin.locator(".titlebar h1")).to_contain_text(f"{model.name} v2")
    expect(erin.locator(".messages")).to_contain_text("is registered and signed")
    expect(erin.locator("#signature")).to_contain_text("valid")
    expect(erin.locator("ol.lineage")).to_contain_text(run.name)
    v2 = ModelVersion.objects.get(model=model, number=2)
    assert v2.run_id == run.pk and v2.registered_by == people["erin"]
    erin.select_option("select[name=to_stage]", "production")
    erin.fill("textarea[name=reason]", "trained on this month's tickets; no regression")
    shot(erin, tmp_path, "03-version")
    erin.click("button:has-text('Request the promotion')")
    expect(erin.locator("#request-status")).to_have_text("open")
    request = PromotionRequest.objects.get(version=v2)
    assert request.approvals_required == 2 and request.requester == people["erin"]

    # The first approver: from the start page to the inbox, then the request, by keyboard.
    ann = user_page(browser, live_server, people["ann"])
    expect(ann.locator("#home-promotions")).to_contain_text("1 promotion request waits for a decision.")
    ann.click("#home-promotions >> text=Open the approvals inbox")
    item = ann.locator(f"#inbox-{request.pk}")
    expect(item).to_contain_text(f"{model.name} v2")
    expect(item).to_contain_text("Production v1")
    shot(ann, tmp_path, "04-inbox")
    ann.keyboard.press("j")
    expect(item).to_have_attribute("aria-current", "true")
    ann.keyboard.press("Enter")
    expect(ann.locator(".titlebar h1")).to_contain_text(f"Request #{request.pk}")
    # The evidence beside production's: metrics with deltas, per class, charts, data, gates.
    expect(ann.locator("#evidence")).to_contain_text("beside production v1")
    expect(ann.locator("#metric-comparison")).to_contain_text("Production v1")
    expect(ann.locator("#metric-comparison")).to_contain_text("accuracy")
    expect(ann.locator("#per-class-comparison")).to_contain_text("Production F1")
    for chart in ("request-metrics", "request-confusion-candidate", "request-confusion-production",
                  "request-reliability-candidate", "request-reliability-production"):
        expect(ann.locator(f"[data-chart='{chart}'] .main-svg").first).to_be_attached()
    expect(ann.locator("#data-comparison")).to_contain_text("Data, production v1")
    expect(ann.get_by_text("Gates, production v1 when promoted")).to_be_visible()
    expect(ann.locator("#approve-refusal")).to_have_count(0)
    shot(ann, tmp_path, "05-request-compared")
    ann.keyboard.press("a")
    expect(ann.locator("#approve_comment")).to_be_focused()
    ann.keyboard.type("Compared with v1: the same scores on the same test split.")
    ann.keyboard.press("Control+Enter")
    expect(ann.locator(".messages")).to_contain_text("Approved (1 of 2)")
    expect(ann.locator("#approval-list")).to_contain_text("ann-approver")
    shot(ann, tmp_path, "06-first-approval")

    # The pages an approver works in fit a laptop and a phone while the request is open.
    assert_fits(browser, live_server, people["ann"], ["/registry/inbox", request.get_absolute_url()])

    # The engineer who asked sees the approval form disabled, with the reason; forcing it is refused.
    erin.goto(f"{live_server.url}{request.get_absolute_url()}")
    expect(erin.locator("#approve-refusal")).to_have_text("You asked for this promotion; someone else must approve it.")
    expect(erin.locator("#approve-button")).to_be_disabled()
    shot(erin, tmp_path, "07-requester-disabled")
    erin.evaluate("document.querySelector('#approve-form fieldset').disabled = false")
    with erin.expect_navigation() as refused:
        erin.click("#approve-button")
    assert refused.value.status == 403
    expect(erin.locator("#request-error")).to_contain_text("You asked for this promotion")
    shot(erin, tmp_path, "08-requester-refused")
    assert request.valid_approvals().count() == 1

    # The second approver approves: the promotion happens.
    abe = user_page(browser, live_server, people["abe"])
    abe.goto(f"{live_server.url}/registry/inbox")
    abe.click(f"#inbox-{request.pk} >> text=Review the evidence and decide")
    abe.fill("#approve_comment", "Agreed.")
    abe.click("#approve-button")
    expect(abe.locator(".messages")).to_contain_text(f"Approved: {model.name} v2 is production now.")
    expect(abe.locator("#request-status")).to_have_text("approved")
    shot(abe, tmp_path, "09-second-approval")
    v1.refresh_from_db(), v2.refresh_from_db()
    assert (v1.stage, v2.stage) == (Stage.ARCHIVED, Stage.PRODUCTION)

    # The version pages and the model's timeline show it.
    abe.goto(f"{live_server.url}{v2.get_absolute_url()}")
    expect(abe.locator(".titlebar h1 .status")).to_have_text("production")
    expect(abe.locator("#audit")).to_be_visible()
    expect(abe.locator("table.events")).to_contain_text("stage.changed")
    shot(abe, tmp_path, "10-version-production")
    abe.goto(f"{live_server.url}{v1.get_absolute_url()}")
    expect(abe.locator(".titlebar h1 .status")).to_have_text("archived")
    abe.goto(f"{live_server.url}{model.get_absolute_url()}")
    expect(abe.locator("#holders")).to_contain_text("v2")
    timeline = abe.locator("#timeline-table tbody tr")
    expect(timeline).to_have_count(3)
    expect(timeline.nth(0)).to_contain_text("v2")
    expect(timeline.nth(0)).to_contain_text("candidate → production")
    expect(abe.locator("#timeline-table")).to_contain_text("production → archived")
    expect(abe.locator("[data-chart='model-stage-timeline'] .main-svg").first).to_be_attached()
    abe.click("#held-at-form button")  # "now": the form opens on the current time
    expect(abe.locator("#held-at-answer")).to_contain_text("v2 was in production")
    shot(abe, tmp_path, "11-model-timeline")

    assert_fits(browser, live_server, people["abe"], [model.get_absolute_url(), v2.get_absolute_url(),
                                                      v1.get_absolute_url(), "/registry/", "/registry/inbox"])

    # The governance export of the new version shows the approvals and the move.
    response = erin.goto(f"{live_server.url}/registry/models/{model.slug}/versions/2/export")
    assert response.status == 200
    body = erin.locator("body")
    for text in ("ann-approver", "abe-approver", "production", request.evidence_sha256[:12]):
        expect(body).to_contain_text(text)
    shot(erin, tmp_path, "12-export")
