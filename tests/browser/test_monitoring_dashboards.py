"""The monitoring dashboards in Chromium, each opened by its role: a viewer reads the overview
and the executive page, on-call the on-call page (and finds the rollback button that leads to
the deployment's confirm step), an engineer the debug page of the stable version. Every chart
is drawn (Plotly's .main-svg in each container) from data, not as a "waiting" note, and no
page logs a console error. One setup serves every page: a canary deployment with an hour of
rollups, drift checks, SLOs, alerts, feedback, a retrain run, a training job and rollbacks."""
import json
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from lifecycle.core.models import Job
from lifecycle.deployments.models import PredictionLog, Rollback, Route
from lifecycle.monitoring import dashboards
from lifecycle.monitoring.models import RetrainDraft
from lifecycle.runs.models import MetricPoint, Run
from lifecycle.core.artifacts import get_store
from tests.browser.test_layout import overflow
from tests.browser.test_registry import shot, user_page
from tests.conftest import make_user
from tests.deployments.factories import make_deployment
from tests.monitoring.factories import make_log
from tests.monitoring.test_dashboards import (
    add_rollup, alert, drift_check, feedback_for, minute, sample_reference, slo, traffic,
)



@pytest.fixture
def people(transactional_db):
    return {"erin": make_user("erin-engineer", "ml_engineer"), "ann": make_user("ann-approver", "approver"),
            "abe": make_user("abe-approver", "approver"), "ona": make_user("ona-oncall", "oncall"),
            "vic": make_user("vic-viewer", "viewer")}


def monitored(trained, people, tmp_path):
    """A canary with six hours of rollups, and everything else each dashboard charts."""
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=20)
    release = deployment.current_release
    stable = release.stable
    traffic(deployment, minutes=360, per_minute=10)
    ref, _ = sample_reference(stable, get_store())
    add_rollup(deployment, Route.STABLE, minute(0), latencies=[10.0] * 40, confidences=[0.6] * 40, labels={"tech": 40},
               feature_values={"text_length": [70.0] * 40, "token_count": [14.0] * 40, "oov_rate": [0.2] * 40})
    for days in range(4):
        drift_check(deployment, stable, ref, estimated=0.8 + 0.02 * days, ago=timedelta(days=days))
    slo(deployment)
    alert(deployment)
    rows = feedback_for(deployment, right=6, wrong=2)
    PredictionLog.objects.filter(pk=rows[0].pk).update(confidence=0.05, embedding=[0.0, 3.0] + [0.0] * 14)
    make_log(deployment, 20, error_rate=0.3, seed=5)
    _history(deployment, release, stable)
    return deployment


def _history(deployment, release, stable):
    """Training curves, a retrain run, a finished training job and rollbacks of the quarter."""
    now = timezone.now()
    run = Run.objects.get(pk=stable.run_id)
    MetricPoint.objects.bulk_create([MetricPoint(run=run, kind="train", step=s, values={"loss": 2.0 / s}) for s in range(1, 9)]
                                    + [MetricPoint(run=run, kind="eval", step=8, values={"eval_loss": 0.8, "accuracy": 0.84})])
    RetrainDraft.objects.create(model=deployment.model, deployment=deployment, reason="drift", source_version=stable,
                                base_dataset_version=run.dataset_version, status=RetrainDraft.Status.STARTED, run=run)
    Job.objects.create(task=dashboards.TRAIN_TASK, queue="training", kwargs={"run_id": run.pk}, key="train:b",
                       status=Job.Status.SUCCEEDED, started_at=now - timedelta(hours=5), finished_at=now - timedelta(hours=4))
    for days, ms in ((40, 900.0), (12, 1500.0), (2, 700.0)):
        Rollback.objects.create(release=release, reason="test", generation=1, clicked_at=now - timedelta(days=days),
                                completed_at=now - timedelta(days=days), time_to_rollback_ms=ms)


def open_dashboard(page, live_server, url, errors):
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    assert page.goto(f"{live_server.url}{url}").status == 200, url
    page.wait_for_load_state("networkidle")


def assert_charts_drawn(page, expected):
    """Each chart container holds Plotly's SVG, and its figure carries data (no waiting note)."""
    ids = page.eval_on_selector_all("[data-chart]", "els => els.map(e => e.dataset.chart)")
    assert len(ids) == expected, ids
    for chart_id in ids:
        expect(page.locator(f"[data-chart='{chart_id}'] .main-svg").first).to_be_attached()
        figure = json.loads(page.locator(f"script[id='{chart_id}']").text_content())
        assert not (figure["layout"].get("meta") or {}).get("waiting"), chart_id
        assert any(trace.get("y") or trace.get("z") for trace in figure["data"]), chart_id


def assert_fits(page):
    """No dashboard is wider than a laptop's or a phone's window (tests/browser/test_layout.py)."""
    for width, height in ((390, 844), (1280, 800)):
        page.set_viewport_size({"width": width, "height": height})
        page.reload()  # drawn at this width, as a phone or a laptop opens it
        page.wait_for_load_state("networkidle")
        assert overflow(page) <= 0, (page.url, width)


def test_each_dashboard_opened_by_its_role_draws_every_chart_with_data(browser, live_server, store, trained, people,
                                                                       tmp_path):
    deployment = monitored(trained, people, tmp_path)
    errors = []

    vic = user_page(browser, live_server, people["vic"])
    open_dashboard(vic, live_server, "/monitoring/", errors)
    expect(vic.locator("#deployment-support-router")).to_contain_text("1 page")
    vic.click("text=executive")
    expect(vic.locator("h1")).to_contain_text("What is in production")
    assert_charts_drawn(vic, 4)
    expect(vic.locator("#delta-support-router")).to_contain_text("Error rate")
    shot(vic, tmp_path, "executive")
    assert_fits(vic)

    ona = user_page(browser, live_server, people["ona"])
    open_dashboard(ona, live_server, "/monitoring/on-call", errors)
    assert_charts_drawn(ona, 2)
    expect(ona.locator("#oncall-support-router")).to_contain_text("availability burning 15x")
    shot(ona, tmp_path, "oncall")
    assert_fits(ona)
    expect(ona.locator("#oncall-support-router [data-incident]")).to_have_text("Incident mode…")
    ona.click("#oncall-support-router [data-rollback]")
    expect(ona.locator("h1")).to_contain_text("Roll back release 2 of support-router?")

    erin = user_page(browser, live_server, people["erin"])
    open_dashboard(erin, live_server, f"/monitoring/debug/{deployment.current_release.stable_id}?window=day", errors)
    assert_charts_drawn(erin, 9)
    expect(erin.locator("[data-examples='low-confidence']")).to_contain_text("example")
    expect(erin.locator("[data-examples='failing']")).to_contain_text("error")
    shot(erin, tmp_path, "debug")
    assert_fits(erin)
    assert not errors, errors
