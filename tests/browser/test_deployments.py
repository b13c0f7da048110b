"""Roll back a canary in the browser: an on-call engineer opens the deployment from the start
page, sees the canary's share and its last hour (charts and totals), clicks rollback, is asked
for a reason, confirms with one, and sees stable at 100 % with the measured time-to-rollback.
(With no serving process live the rollback completes at once; a test with a real serving
process is the serving's own.) The pages fit a laptop's and a phone's window."""
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from lifecycle.deployments.models import Deployment, Rollback
from tests.browser.test_registry import assert_fits, shot, user_page
from tests.conftest import make_user
from tests.deployments.factories import make_deployment
from tests.deployments.page_helpers import log_row, write


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
    return {"erin": make_user("erin-engineer", "ml_engineer"), "ann": make_user("ann-approver", "approver"),
            "abe": make_user("abe-approver", "approver"), "ona": make_user("ona-oncall", "oncall")}


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
                                                      "/deployments/feedback"])
    assert_fits(browser, live_server, people["erin"], [deployment.get_absolute_url(), "/deployments/tokens",
                                                       "/deployments/new"])
