"""The full Evidently report on demand: started from the page (engineer or on-call, audited),
built by a real burst worker from the window's logged answers against the reference sample,
stored as HTML and JSON artifacts, and served as a sandboxed download."""
import json
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from lifecycle.core.artifacts import get_store
from lifecycle.core.models import AuditEvent, Job
from lifecycle.monitoring import report
from lifecycle.monitoring.models import DriftReport, MonitoringError, Reference
from tests.deployments.factories import make_deployment
from tests.monitoring.factories import WORDS, make_log
from tests.monitoring.test_drift import draw, make_reference
from tests.workers import run_burst


def with_vocabulary(reference):
    reference.vocabulary_sha256 = get_store().put_bytes(json.dumps({"words": sorted(WORDS)}).encode()).sha256
    reference.save(update_fields=["vocabulary_sha256"])
    return reference


@pytest.mark.django_db(transaction=True)
def test_a_report_is_built_by_a_real_worker_stored_and_served_as_a_sandboxed_download(
        client, trained, people, tmp_path, store_with_output, redis):
    deployment = make_deployment(trained, people, tmp_path)
    version = deployment.current_release.stable
    with_vocabulary(make_reference(version, rows=1500))
    make_log(deployment, 600, shift=0.6, seed=1, spread_seconds=600)
    client.force_login(people["ona"])
    response = client.post(f"/monitoring/deployments/{deployment.name}/drift/report", {"version": version.pk, "hours": "1"})
    made = DriftReport.objects.get()
    assert response.status_code == 302 and response["Location"] == made.get_absolute_url()
    assert AuditEvent.objects.filter(action="drift.report_requested", actor="ona").count() == 1
    assert "Evidently report" in client.get(made.get_absolute_url()).content.decode()  # queued: its job's status

    log = run_burst(tmp_path, "monitoring")
    made.refresh_from_db()
    assert Job.objects.get(pk=made.job_id).status == Job.Status.SUCCEEDED, log[-3000:]
    assert made.rows == 600 and made.reference_rows == 1500 and made.seconds > 0 and made.peak_mb > 0
    columns = made.summary["columns"]
    assert columns["text_length"]["method"] == "Wasserstein distance (normed)" and columns["text_length"]["drifted"]
    assert columns["label"]["method"] == "Jensen-Shannon distance"
    assert "text" in columns or made.summary["text"].startswith("not checked")
    assert json.loads(get_store().read_bytes(made.json_sha256))["metrics"]

    page = client.get(made.get_absolute_url()).content.decode()
    assert "Download the HTML report" in page and "Wasserstein distance (normed)" in page
    download = client.get(f"/monitoring/reports/{made.pk}/html")
    assert download.status_code == 200 and download["Content-Disposition"].startswith("attachment;")
    assert download["Content-Security-Policy"].startswith("sandbox") and download["X-Content-Type-Options"] == "nosniff"
    assert b"<html" in download.content[:2000].lower()
    client.force_login(people["sam"])
    assert client.get(f"/monitoring/reports/{made.pk}/html").status_code == 403


@pytest.mark.django_db
def test_a_report_needs_a_ready_reference_and_a_window_and_writes_nothing_otherwise(
        client, trained, people, tmp_path, store_with_output, redis):
    deployment = make_deployment(trained, people, tmp_path)
    version = deployment.current_release.stable
    make_reference(version, rows=1200, status=Reference.Status.PENDING)
    now = timezone.now()
    with pytest.raises(MonitoringError, match="no ready reference"):
        report.start_report(people["erin"], deployment, version, now - timedelta(hours=1), now)
    with pytest.raises(MonitoringError, match="start before it ends"):
        report.start_report(people["erin"], deployment, version, now, now)
    client.force_login(people["erin"])
    events = AuditEvent.objects.count()
    for data in ({"version": version.pk, "hours": "1"}, {"version": version.pk, "hours": "999"}, {}):
        response = client.post(f"/monitoring/deployments/{deployment.name}/drift/report", data, follow=True)
        assert "No report was started" in response.content.decode()
    assert not DriftReport.objects.exists() and AuditEvent.objects.count() == events
    client.force_login(people["vic"])
    assert client.post(f"/monitoring/deployments/{deployment.name}/drift/report", {}).status_code == 403


def test_without_usable_words_evidently_runs_without_the_text_column_and_says_why():
    rng = np.random.default_rng(0)
    reference, current = draw(rng, 300), draw(rng, 300, shift=0.5)
    for frame in (reference, current):
        frame["text"] = "same words"  # every word in every text: TF-IDF keeps none
        frame["label"] = frame["predicted"]
    html, data, summary = report.run_evidently(current, reference)
    assert summary["text"].startswith("not checked: Evidently's text drift found no words")
    assert "text" not in summary["columns"] and summary["columns"]["embedding_0"]["method"] == "K-S p_value"
    assert html.lstrip().lower().startswith("<")
