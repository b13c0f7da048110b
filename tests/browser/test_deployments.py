"""Roll back a canary in the browser: an on-call engineer opens the deployment from the start
page, sees the canary's share and its last hour (charts and totals), clicks rollback, is asked
for a reason, confirms with one, and sees stable at 100 % with the measured time-to-rollback.
With no serving process live the rollback completes at once; with one, the page waits for its
report and writes the time in place. The pages fit a laptop's and a phone's window."""
import uuid
from datetime import timedelta

from django.utils import timezone
from playwright.sync_api import expect

from lifecycle.deployments.models import Deployment, Rollback
from tests.browser.test_registry import assert_fits, shot, user_page
from tests.conftest import make_user
from tests.deployments.factories import make_deployment
from tests.deployments.page_helpers import log_row, write


def traffic(deployment):
    """The last few minutes: the stable version steady, the canary slower and failing now and then."""
    now = timezone.now()
    rows = []
    for minute in range(1, 6):
        at = now - timedelta(minutes=minute)
        rows += [log_row(deployment, latency_ms=8.0 + i % 5, created_at=at) for i in range(40)]
        rows += [log_row(deployment, route="canary", latency_ms=30.0 + i, request_id=uuid.uuid4(), created_at=at,
                         status="error" if i == 0 else "ok") for i in range(10)]
    write(rows)


def test_oncall_rolls_back_a_canary_and_sees_stable_at_100_with_the_time_it_took(browser, live_server, store, trained,
                                                                                  people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=20)
    traffic(deployment)
    ona = user_page(browser, live_server, people["ona"])
    expect(ona.locator("#home-deployments")).to_contain_text("support-router")
    ona.click("#home-deployments >> text=support-router")
    expect(ona.locator(".titlebar h1")).to_contain_text("support-router")

    # The canary's share and its last hour.
    expect(ona.locator("#stable-share")).to_have_text("80 %")
    expect(ona.locator("#candidate-share")).to_contain_text("20 %")
    expect(ona.locator("#verdict-state")).to_contain_text("pending")
    totals = ona.locator("#traffic-totals")
    expect(totals).to_contain_text("canary")
    expect(totals.locator("tr", has_text="canary")).to_contain_text("10.00 %")
    for chart in ("deployment-rate", "deployment-latency", "deployment-errors"):
        expect(ona.locator(f"[data-chart='{chart}'] .main-svg").first).to_be_attached()
    expect(ona.locator("[data-chart='deployment-latency']")).to_contain_text("canary p99")
    shot(ona, tmp_path, "01-canary")

    # Roll back: a confirm step that wants a reason.
    ona.click("#rollback-button")
    expect(ona.locator("h1")).to_contain_text("Roll back release 2 of support-router?")
    expect(ona.locator(".rollback-confirm")).to_contain_text("No serving process is live")
    shot(ona, tmp_path, "02-confirm")
    ona.click("#confirm-rollback")
    expect(ona.locator(".error-summary")).to_contain_text("Say why you roll back")
    assert not Rollback.objects.exists()
    ona.fill("textarea[name=reason]", "canary errors at 10 %, p99 four times stable's")
    ona.click("#confirm-rollback")

    # Stable at 100 %, with the measured time-to-rollback.
    expect(ona.locator(".messages")).to_contain_text("Rolled back: all traffic goes to")
    expect(ona.locator("#stable-share")).to_have_text("100 %")
    expect(ona.locator("#candidate-share")).to_have_text("—")
    rollback = Rollback.objects.get()
    assert rollback.completed_at is not None and rollback.actor == people["ona"]
    expect(ona.locator("#time-to-rollback")).to_have_text(f"{rollback.time_to_rollback_ms:.0f} ms")
    expect(ona.locator("#release-history")).to_contain_text(f"{rollback.time_to_rollback_ms:.0f} ms")
    expect(ona.locator("#rollback-button")).to_have_count(0)
    shot(ona, tmp_path, "03-rolled-back")
    assert Deployment.objects.get(pk=deployment.pk).routes()["candidate"] is None

    assert_fits(browser, live_server, people["ona"], ["/deployments/", deployment.get_absolute_url(),
                                                      "/deployments/feedback", f"{deployment.get_absolute_url()}releases/2/shadow"])
    assert_fits(browser, live_server, people["erin"], [deployment.get_absolute_url(), "/deployments/tokens",
                                                       "/deployments/new"])


def test_a_rollback_that_waits_for_a_serving_process_shows_its_time_when_the_last_one_reports(
        browser, live_server, store, trained, people, tmp_path):
    from lifecycle.deployments.models import ServingProcess

    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=20)
    ServingProcess.beat("host:7:x", host="host", pid=7, port=8100, started_at=timezone.now(), loaded=[],
                        notices_ok=True)
    ona = user_page(browser, live_server, people["ona"])
    ona.goto(f"{live_server.url}{deployment.get_absolute_url()}")
    ona.click("#rollback-button")
    expect(ona.locator(".rollback-confirm")).to_contain_text("1 serving process is live")
    ona.fill("textarea[name=reason]", "errors")
    ona.click("#confirm-rollback")
    expect(ona.locator("#stable-share")).to_have_text("100 %")
    card = ona.locator(".rollback-card")
    expect(card).to_contain_text("Waiting for the serving processes to apply it")
    rollback = Rollback.objects.get()
    ServingProcess.applied("host:7:x", deployment.pk, rollback.generation, timezone.now())  # its report
    rollback.refresh_from_db()
    assert rollback.completed_at is not None
    expect(card).to_have_attribute("data-completed", "yes")
    expect(ona.locator("#time-to-rollback")).to_have_text(f"{rollback.time_to_rollback_ms:.0f} ms")
    expect(card).to_contain_text("1 reported")
    shot(ona, tmp_path, "04-rolled-back-after-the-report")


def test_a_labeler_corrects_an_answer_the_shadow_disagrees_with(browser, live_server, store, trained, people, tmp_path):
    from lifecycle.deployments.models import Feedback

    deployment = make_deployment(trained, people, tmp_path, mode="shadow")
    request_id = uuid.uuid4()
    write([log_row(deployment, request_id=request_id, label="order_status", text="my parcel came broken, I want my money"),
           log_row(deployment, route="shadow", request_id=request_id, label="refund_request",
                   text="my parcel came broken, I want my money"),
           log_row(deployment, label="order_status", text="where is order 77")])
    lee = user_page(browser, live_server, make_user("lee-labeler", "labeler"))
    lee.click("#home-review >> text=Review recent answers")
    expect(lee.locator("#review-table tbody tr")).to_have_count(2)
    lee.check("input[name=disagreeing]")
    lee.click("#review-filters button")
    row = lee.locator("#review-table tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("refund_request")
    shot(lee, tmp_path, "05-review")
    row.locator("select[name=label]").select_option("refund_request")
    row.locator("button:has-text('Correct')").click()
    expect(lee.locator(".messages")).to_contain_text("Corrected: order_status → refund_request")
    expect(lee.locator("input[name=disagreeing]")).to_be_checked()  # the same filters
    expect(lee.locator("#review-table")).to_contain_text("corrected to refund_request")
    feedback = Feedback.objects.get()
    assert feedback.is_override and feedback.label == "refund_request" and feedback.given_by.username == "lee-labeler"
    assert_fits(browser, live_server, feedback.given_by, ["/deployments/feedback"])


def test_oncall_rolls_back_while_a_real_serving_process_serves_and_sees_its_reported_time(
        browser, live_server, store, trained, people, tmp_path):
    """The same click with a real `manage.py serve` holding both versions: the page waits for
    that process's report of the switch and writes in the time it measured."""
    from tests.deployments.serving_helpers import start_serving, stop_serving, wait_applied

    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=20)
    server = start_serving(tmp_path)
    try:
        wait_applied(deployment)
        ona = user_page(browser, live_server, people["ona"])
        ona.goto(f"{live_server.url}{deployment.get_absolute_url()}")
        ona.click("#rollback-button")
        expect(ona.locator(".rollback-confirm")).to_contain_text("1 serving process is live")
        ona.fill("textarea[name=reason]", "canary answers look wrong")
        ona.click("#confirm-rollback")
        expect(ona.locator("#stable-share")).to_have_text("100 %")
        card = ona.locator(".rollback-card")
        expect(card).to_have_attribute("data-completed", "yes", timeout=20_000)
        rollback = Rollback.objects.get()
        assert rollback.completed_at is not None and len(rollback.processes) == 1
        expect(ona.locator("#time-to-rollback")).to_have_text(f"{rollback.time_to_rollback_ms:.0f} ms")
        expect(card).to_contain_text("answers only from stable")
        assert Deployment.objects.get(pk=deployment.pk).routes()["candidate"] is None
        shot(ona, tmp_path, "05-rolled-back-with-a-real-serving-process")
    finally:
        stop_serving(server)
