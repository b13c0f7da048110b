"""Incident mode: an on-call person opens it for a model from its confirm page (a reason and
the failing window, the last hour by default), which freezes promotions and retrain triggers;
a real worker captures the window's inputs as a dataset version through the datasets ingest;
the timeline comes from the audit trail; a person lifts it. One open incident per model."""
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from lifecycle.core.models import AuditEvent, Job
from lifecycle.deployments.models import Feedback
from lifecycle.monitoring import incidents, policy
from lifecycle.monitoring.models import Incident, MonitoringError
from tests.deployments.factories import make_deployment
from tests.deployments.page_helpers import as_user, log_row, page_text, write
from tests.workers import run_burst

pytestmark = [pytest.mark.usefixtures("store_with_output")]

FORMAT = "%Y-%m-%dT%H:%M"


def form_data(start, end, reason="wrong labels since 10:00", deployment="support-router"):
    return {"deployment": deployment, "reason": reason, "window_start": start.strftime(FORMAT),
            "window_end": end.strftime(FORMAT)}


def captures():
    return Job.objects.filter(task=incidents.capture_window.task_name)


def opened_events():
    return AuditEvent.objects.filter(action="incident.opened")


@pytest.mark.django_db
def test_oncall_opens_incident_mode_from_the_confirm_page_and_lifts_it(client, trained, people, tmp_path, redis):
    deployment = make_deployment(trained, people, tmp_path)
    model, url = deployment.model, f"/monitoring/models/{deployment.model.slug}/incident"
    now = timezone.now()
    as_user(client, people["ona"])
    page = client.get(url)
    assert page.status_code == 200 and "Open incident mode for" in page_text(page)
    initial = page.context["form"].initial
    assert timedelta(minutes=59) <= initial["window_end"] - initial["window_start"] <= timedelta(hours=1)

    # Bad input: refused with the reason, nothing written.
    refused = client.post(url, form_data(now - timedelta(hours=1), now, reason=" "))
    assert refused.status_code == 400 and "Say what is wrong" in page_text(refused)
    refused = client.post(url, form_data(now, now - timedelta(hours=1)))
    assert refused.status_code == 400 and "The failing window must end after it starts." in page_text(refused)
    refused = client.post(url, {**form_data(now - timedelta(hours=1), now), "window_start": "yesterday"})
    assert refused.status_code == 400 and "YYYY-MM-DD HH:MM" in page_text(refused)
    assert client.get("/monitoring/models/no-such-model/incident").status_code == 404
    assert not Incident.objects.exists() and not opened_events().exists() and not captures().exists()

    response = client.post(url, form_data(now - timedelta(hours=1), now))
    incident = Incident.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/monitoring/incidents/{incident.pk}"
    assert (incident.opened_by, incident.deployment, incident.title) == (people["ona"], deployment,
                                                                          "wrong labels since 10:00")
    event = opened_events().get()
    assert event.actor == "ona" and event.payload["capture_job"] == incident.capture_job_id
    assert incident.capture_job.task == "lifecycle.monitoring.incidents.capture_window"
    assert policy.frozen(model)  # the gate fails now

    text = page_text(client.get(response["Location"]))
    assert "Promotions of Intent Router are frozen" in text and "incident.opened" in text

    # A second open is refused with a clear error; the database would refuse it too.
    again = client.post(url, form_data(now - timedelta(hours=1), now))
    assert again.status_code == 400 and f"is in incident mode already (incident #{incident.pk}" in page_text(again)
    assert Incident.objects.count() == 1 and opened_events().count() == 1
    with pytest.raises(IntegrityError), transaction.atomic():
        Incident.objects.create(model=model, title="x", reason="x", window_start=now, window_end=now)

    refused = client.post(f"/monitoring/incidents/{incident.pk}/lift", {"reason": ""})
    assert refused.status_code == 400 and "lifting incident mode needs a reason" in page_text(refused)
    assert Incident.objects.get().is_open
    lifted = client.post(f"/monitoring/incidents/{incident.pk}/lift", {"reason": "v1 rolled back; answers right again"},
                         follow=True)
    incident.refresh_from_db()
    assert not incident.is_open and incident.lifted_by == people["ona"] and "incident.lifted" in page_text(lifted)
    assert AuditEvent.objects.get(action="incident.lifted").payload["reason"] == "v1 rolled back; answers right again"
    assert policy.frozen(model) == []


@pytest.mark.django_db
def test_who_may_open_read_and_lift(client, trained, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path)
    url = f"/monitoring/models/{deployment.model.slug}/incident"
    now = timezone.now()
    for name in ("sam", "vic", "ann"):
        as_user(client, people[name])
        assert client.post(url, form_data(now - timedelta(hours=1), now)).status_code == 403
    as_user(client, people["sam"])
    assert client.get("/monitoring/incidents").status_code == 403
    for name in ("vic", "ann", "erin", "ona"):
        as_user(client, people[name])
        assert client.get("/monitoring/incidents").status_code == 200
    assert not Incident.objects.exists()
    with pytest.raises(MonitoringError, match="Only on-call and ML engineers"):
        incidents.open_incident(people["vic"], deployment.model, deployment=deployment, reason="x",
                                window_start=now - timedelta(hours=1), window_end=now)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_captures_the_window_and_the_timeline_reads_the_audit_trail(trained, people, tmp_path, redis):
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=20)
    now = timezone.now()
    inside = now - timedelta(minutes=10)
    rows = [log_row(deployment, text="where is my parcel 11", label="order_status", created_at=inside),
            log_row(deployment, text="give my money back 12", label="order_status", created_at=inside),
            log_row(deployment, text="cancel the order 13", label="cancel_order", created_at=inside),
            log_row(deployment, route="canary", text="my order is late 14", label="order_status", created_at=inside),
            log_row(deployment, status="error", text="this one failed 15", created_at=inside),
            log_row(deployment, text="long before 16", label="order_status", created_at=now - timedelta(hours=3))]
    write(rows)
    Feedback.give(request_id=rows[1].request_id, label="refund_request", user=people["ona"])  # a correction
    Feedback.give(request_id=rows[2].request_id, correct=True, user=people["ona"])  # confirmed
    incident = incidents.open_incident(people["ona"], deployment.model, deployment=deployment, reason="refunds misrouted",
                                       window_start=now - timedelta(hours=1), window_end=now)
    deployment.current_release.rollback(people["ona"], "the canary misroutes refunds")

    log = run_burst(tmp_path, "monitoring", "default")
    job = Job.objects.get(pk=incident.capture_job_id)
    assert job.status == "succeeded", job.error + log[-3000:]
    assert job.result["counts"] == {"feedback": 1, "feedback_confirmed": 1, "predicted": 2, "unlabeled": 1}
    incidents.link_captures()  # the worker's maintenance pass may have linked it already
    incident.refresh_from_db()
    captured = incident.captured_version
    assert captured.dataset == deployment.current_release.stable.run.dataset_version.dataset
    got = {e.text: (e.label, e.metadata["label_source"]) for e in captured.examples.all()}
    assert got == {"where is my parcel 11": ("order_status", "predicted"),
                   "give my money back 12": ("refund_request", "feedback"),
                   "cancel the order 13": ("cancel_order", "feedback_confirmed"),
                   "my order is late 14": ("order_status", "predicted")}
    assert incidents.link_captures() == 0  # linked once, audited once
    assert AuditEvent.objects.get(action="incident.captured").payload["dataset_version"] == captured.pk

    incidents.lift(people["erin"], incident, "rolled back; refunds route right")
    actions = [e.action for e in incidents.timeline(incident)]
    assert actions[0] == "incident.opened" and actions[-1] == "incident.lifted"
    assert {"release.rolled_back", "incident.captured", "dataset_version.created"} <= set(actions)
    assert "feedback.given" not in actions  # feedback is the capture's input, not the incident's story
