"""The jobs page starts a real job, and says so plainly when the queue is unavailable."""
import socket

import pytest
from django.test import override_settings

from lifecycle.core.jobs import perform
from lifecycle.core.models import AuditEvent, Job
from tests.conftest import make_user


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def auditor(client, db):
    client.force_login(make_user("alex", "approver"))
    return client


def test_verify_button_queues_a_job_that_really_verifies(auditor, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = auditor.post("/jobs/verify-audit")
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}"
    perform(job.pk)  # what the worker's horse calls
    job.refresh_from_db()
    assert job.status == "succeeded" and job.result["intact"] is True
    page = auditor.get(f"/jobs/{job.pk}").content.decode()
    assert "succeeded" in page and "&quot;intact&quot;: true" in page


def test_unreachable_redis_says_queue_unavailable_and_writes_nothing(auditor, settings):
    dead = {name: {"URL": f"redis://127.0.0.1:{closed_port()}/15"} for name in settings.RQ_QUEUES}
    events_before = AuditEvent.objects.count()
    with override_settings(RQ_QUEUES=dead):
        response = auditor.post("/jobs/verify-audit", follow=True)
        health = auditor.get("/healthz")
    assert "The job queue is unavailable (Redis cannot be reached)" in response.content.decode()
    assert not Job.objects.exists() and AuditEvent.objects.count() == events_before
    assert health.status_code == 503 and health.json()["redis"].startswith("unavailable")


def test_only_the_creator_or_an_engineer_may_cancel(client, db):
    owner = make_user("alex", "approver")
    job = Job.create_queued("lifecycle.core.tasks.verify_audit_chain", "monitoring", {}, user=owner)
    client.force_login(make_user("omar", "oncall"))
    assert client.post(f"/jobs/{job.pk}/cancel").status_code == 403
    client.force_login(owner)
    client.post(f"/jobs/{job.pk}/cancel")
    job.refresh_from_db()
    assert job.status == "cancelled"
