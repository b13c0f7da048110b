"""An engineer opens a deployment's drift page, runs a check (a real burst worker runs it), sees
which features drifted, opens one and sees its reference and window histograms overlaid and its
statistic over time against the threshold, all drawn with data and no console errors."""

import numpy as np
import pytest
from playwright.sync_api import expect

from lifecycle.monitoring.models import DriftCheck
from tests.browser.test_registry import user_page
from tests.conftest import make_user
from tests.deployments.factories import make_deployment
from tests.monitoring.test_drift import draw, make_reference, make_rollups
from tests.workers import run_burst


@pytest.fixture
def people(transactional_db):
    return {"erin": make_user("erin-engineer", "ml_engineer"), "ann": make_user("ann-approver", "approver"),
            "abe": make_user("abe-approver", "approver")}


def drawn(page, chart):
    """The number of points each trace of a rendered chart holds."""
    return page.evaluate(f"""() => document.querySelector("[data-chart='{chart}']").data
        .map(trace => (trace.y || []).filter(v => v !== null).length)""")


def test_an_engineer_runs_a_check_and_sees_a_features_histograms_and_its_statistic_over_time(
        browser, live_server, store, trained, people, tmp_path, redis):
    deployment = make_deployment(trained, people, tmp_path)
    version = deployment.current_release.stable
    make_reference(version)
    make_rollups(deployment, version, draw(np.random.default_rng(1), 1500, shift=0.5))
    erin = user_page(browser, live_server, people["erin"])
    errors = []
    erin.on("console", lambda message: message.type == "error" and errors.append(message.text))
    erin.on("pageerror", lambda exc: errors.append(str(exc)))

    erin.goto(f"{live_server.url}/monitoring/deployments/{deployment.name}/drift/")
    card = erin.locator(f"#version-{version.pk}")
    expect(card.locator(".no-check")).to_have_text("Not checked yet.")
    card.locator("button.run-check").click()
    expect(erin.locator(".messages")).to_contain_text(f"Checking v{version.number}")
    run_burst(tmp_path, "monitoring")
    expect(card.locator(".check-summary")).to_contain_text("drift in", timeout=20_000)  # job-watch reloads the page
    # The worker's maintenance pass may have run a scheduled check of its own as well.
    found = DriftCheck.objects.get(trigger="demand")
    assert found.created_by == people["erin"] and found.drifted
    expect(card.locator("tr[data-feature='embedding_0']")).to_contain_text("wasserstein")
    expect(card.locator("tr[data-feature='embedding_0']")).to_contain_text("drifted")

    card.locator("tr[data-feature='embedding_0'] a").click()
    expect(erin.locator("h1")).to_contain_text(f"embedding_0 of v{version.number}")
    for chart in ("drift-histogram", "drift-series"):
        expect(erin.locator(f"[data-chart='{chart}'] .main-svg").first).to_be_attached()
    assert drawn(erin, "drift-histogram") == [62, 62]  # reference and window, every bin
    checks = DriftCheck.objects.filter(skipped="").count()
    assert drawn(erin, "drift-series") == [checks, checks]  # each check: its value and the threshold
    expect(erin.locator("[data-chart='drift-histogram']")).to_contain_text("window")
    expect(erin.locator("#feature-drifted")).to_have_text("yes")
    assert not errors, errors
