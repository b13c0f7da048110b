"""Alerts in Chromium: an on-call engineer opens the alerts page, finds the deployment's page
alert in its group, opens it, acknowledges it, silences the deployment with a reason, sees the
alert shown as silenced, resolves it with what was done; the page is checked after each click,
and no page logs a console error. The SLO page draws its two charts from the rollups."""
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from playwright.sync_api import expect

from lifecycle.deployments.models import Deployment
from lifecycle.monitoring import alerts, slo as slos
from lifecycle.monitoring.features import CONFIDENCE_EDGES, LATENCY_EDGES_MS, histogram
from lifecycle.monitoring.models import SLO, Alert, Rollup, Silence
from lifecycle.registry.models import Stage
from tests.browser.test_registry import shot, user_page
from tests.conftest import make_user
from tests.deployments.factories import promote
from tests.registry.factories import registered


@pytest.fixture
def people(transactional_db):
    return {"erin": make_user("erin-engineer", "ml_engineer"), "ann": make_user("ann-approver", "approver"),
            "abe": make_user("abe-approver", "approver"), "ona": make_user("ona-oncall", "oncall")}


def burning(trained, people, tmp_path):
    """A deployment whose last two hours failed 2 % of requests: its availability SLO pages."""
    version = registered(trained, people["erin"], tmp_path, slug="intent-router", name="lora minilm v1")
    promote(version, Stage.PRODUCTION, people["erin"], people["ann"], people["abe"])
    deployment = Deployment.create(people["erin"], name="support-router", model=version.model, stable=version)
    now = timezone.now().replace(second=0, microsecond=0)
    Rollup.objects.bulk_create([Rollup(
        deployment=deployment, release=deployment.current_release, version=version, route="stable",
        start=now - timedelta(minutes=i), requests=100, errors=2, latency=histogram([20.0] * 100, LATENCY_EDGES_MS),
        confidence=histogram([0.9] * 98, CONFIDENCE_EDGES)) for i in range(1, 121)])
    slo = slos.create(people["erin"], deployment, name="Availability", kind=SLO.Kind.AVAILABILITY, target=0.999)
    slos.evaluate(slo)
    with transaction.atomic():
        alerts.fire(deployment, kind="drift", severity="ticket", key="drift:1", title="text_length drifted",
                    evidence={"statistic": 0.2})
    return deployment, slo


def test_oncall_acknowledges_silences_and_resolves_an_alert(browser, live_server, store, trained, people, tmp_path):
    deployment, slo = burning(trained, people, tmp_path)
    page_alert = Alert.objects.get(slo=slo, severity="page")
    ona = user_page(browser, live_server, people["ona"])
    errors = []
    ona.on("console", lambda message: message.type == "error" and errors.append(message.text))

    ona.goto(f"{live_server.url}/monitoring/alerts/")
    group = ona.locator("#deployment-support-router")
    expect(group).to_contain_text("Availability burns its error budget")
    expect(group).to_contain_text("text_length drifted")
    expect(group.locator(f"#alert-{page_alert.pk}")).to_contain_text("firing")
    shot(ona, tmp_path, "01-alerts")

    group.locator(f"#alert-{page_alert.pk} a").click()
    expect(ona.locator("#alert-status")).to_contain_text("firing")
    expect(ona.locator("#alert-evidence")).to_contain_text("long_rate")
    expect(ona.locator("#evidence-link")).to_have_attribute("href", slo.get_absolute_url())
    ona.click("#acknowledge")
    expect(ona.locator("#alert-status")).to_contain_text("acknowledged")
    expect(ona.locator("#alert-acknowledged")).to_contain_text("ona-oncall")
    expect(ona.locator("#acknowledge")).to_have_count(0)
    shot(ona, tmp_path, "02-acknowledged")

    ona.click("#silence-link")
    expect(ona.locator("h1")).to_contain_text("Silences of support-router")
    ona.click("#silence-submit")  # no reason yet: refused, nothing made
    expect(ona.locator(".error-summary")).to_contain_text("Say why the alerts are silenced")
    assert not Silence.objects.exists()
    # Chromium logs the refusal's status (400) as a console error: that one is expected.
    assert errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    errors.clear()
    ona.fill("#id_reason", "rolling back to the previous release")
    ona.click("#silence-submit")
    expect(ona.locator(".messages")).to_contain_text("Silenced every alert of support-router")
    expect(ona.locator("#silences")).to_contain_text("rolling back to the previous release")
    expect(ona.locator("#silences")).to_contain_text("active")
    shot(ona, tmp_path, "03-silenced")

    ona.goto(f"{live_server.url}{page_alert.get_absolute_url()}")
    expect(ona.locator("#alert-silenced")).to_be_visible()
    ona.fill("#id_reason", "rolled back; errors are gone")
    ona.click("#resolve")
    expect(ona.locator("#alert-status")).to_contain_text("resolved")
    expect(ona.locator("#alert-resolved")).to_contain_text("rolled back; errors are gone")
    shot(ona, tmp_path, "04-resolved")
    page_alert.refresh_from_db()
    assert (page_alert.status, page_alert.acknowledged_by, page_alert.resolved_by) == (
        "resolved", people["ona"], people["ona"])

    ona.goto(f"{live_server.url}{slo.get_absolute_url()}")
    expect(ona.locator("#slo-burn-rates")).to_contain_text("firing")
    for chart in ("slo-sli", "slo-burn"):
        expect(ona.locator(f"[data-chart='{chart}'] .main-svg").first).to_be_attached()
    shot(ona, tmp_path, "05-slo")
    assert not errors, errors
