"""The web tier's /metrics: jobs by queue and state from the database, queue lengths and
workers from the real Redis, and who may read it."""
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families
from rq import Worker

from lifecycle.core import queues
from lifecycle.core.models import Job

TOKEN = "metrics-token-for-the-tests-0123456789"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(client, token=TOKEN):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=")
    return samples(response.content.decode())


def samples(text):
    """{(name, ((label, value), ...)): value} for every sample in an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_label(found, name, label):
    return {dict(labels)[label]: value for (sample, labels), value in found.items() if sample == name}


def make_jobs():
    rows = [("default", "queued"), ("default", "queued"), ("default", "running"), ("training", "succeeded"),
            ("training", "failed"), ("monitoring", "interrupted"), ("archive", "cancelled")]
    for index, (queue, status) in enumerate(rows):
        Job.objects.create(task=f"lifecycle.core.tasks.t{index}", queue=queue, status=status)
    return rows


# --- the samples -----------------------------------------------------------------------------------


def test_job_counts_match_the_database(client, token, redis):
    make_jobs()
    found = scrape(client)
    jobs = {(dict(labels)["queue"], dict(labels)["status"]): value
            for (name, labels), value in found.items() if name == "lifecycle_jobs"}
    expected = Counter(Job.objects.values_list("queue", "status"))
    assert {key: value for key, value in jobs.items() if value} == expected
    # Every queue the settings name, and any other a row names, carries every state, zeros included.
    queues_seen = {queue for queue, _ in jobs}
    assert queues_seen == {"default", "training", "monitoring", "archive"}
    assert len(jobs) == len(queues_seen) * len(Job.Status.values)
    assert jobs[("training", "queued")] == 0


def test_counts_follow_a_state_change(client, token, redis):
    job = Job.objects.create(task="lifecycle.core.tasks.t", queue="default", status="queued")
    assert found_jobs(client)[("default", "queued")] == 1
    Job.objects.filter(pk=job.pk).update(status="running")
    after = found_jobs(client)
    assert after[("default", "queued")] == 0 and after[("default", "running")] == 1


def found_jobs(client):
    return {(dict(labels)["queue"], dict(labels)["status"]): value
            for (name, labels), value in scrape(client).items() if name == "lifecycle_jobs"}


def test_queue_lengths_and_workers_come_from_redis(client, token, redis, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # django-rq sends once the transaction commits
        for _ in range(3):
            queues.get_queue("default").enqueue("lifecycle.core.tasks.verify_audit_chain")
        queues.get_queue("monitoring").enqueue("lifecycle.core.tasks.verify_audit_chain")
    # A real RQ worker's registration (what `rqworker training` writes when it starts).
    worker = Worker([queues.get_queue("training")], connection=redis)
    worker.register_birth()
    try:
        found = scrape(client)
    finally:
        worker.register_death()
    assert found[("lifecycle_redis_up", ())] == 1
    assert by_label(found, "lifecycle_queue_length", "queue") == {"default": 3, "training": 0, "monitoring": 1}
    assert by_label(found, "lifecycle_workers", "queue") == {"default": 0, "training": 1, "monitoring": 0}
    assert by_label(scrape(client), "lifecycle_workers", "queue")["training"] == 0  # gone once it said so


def test_redis_down_leaves_queue_samples_out_and_says_so(client, token, settings, redis):
    make_jobs()
    dead = {name: {"URL": f"redis://127.0.0.1:{closed_port()}/0"} for name in settings.RQ_QUEUES}
    with override_settings(RQ_QUEUES=dead):
        found = scrape(client)
    names = {name for name, _ in found}
    assert found[("lifecycle_redis_up", ())] == 0
    assert "lifecycle_queue_length" not in names and "lifecycle_workers" not in names
    assert by_label(found, "lifecycle_jobs", "queue")  # the database's numbers still come


def test_only_our_metrics_are_exposed(client, token, redis):
    """A registry of its own: no process or GC metrics of whichever gunicorn worker answered."""
    names = {name for name, _ in scrape(client)}
    assert names == {"lifecycle_jobs", "lifecycle_queue_length", "lifecycle_workers", "lifecycle_redis_up"}


# --- who may read it -------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Bearer wrong-token", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x",
    f"Basic {TOKEN}", TOKEN, "Bearer lc_an-api-token",
])
def test_a_missing_or_wrong_token_is_401(client, token, header, django_assert_max_num_queries):
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
    with django_assert_max_num_queries(0):  # refused before anything is read
        response = client.get("/metrics", **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"lifecycle_" not in response.content


def test_the_scheme_is_case_insensitive(client, token, redis):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {TOKEN}")
    assert response.status_code == 200


def test_no_token_set_and_debug_off_is_404(client, settings):
    settings.METRICS_TOKEN = ""
    settings.DEBUG = False
    for extra in ({}, {"HTTP_AUTHORIZATION": "Bearer anything"}):
        response = client.get("/metrics", **extra)
        assert response.status_code == 404 and b"lifecycle_jobs" not in response.content


def test_no_token_set_and_debug_on_is_open(client, settings, redis):
    settings.METRICS_TOKEN = ""
    settings.DEBUG = True
    response = client.get("/metrics")
    assert response.status_code == 200 and b"lifecycle_jobs" in response.content


def test_no_login_is_needed_but_a_session_is_not_a_token(client, token, engineer):
    client.force_login(engineer)
    assert client.get("/metrics").status_code == 401


def test_only_get(client, token):
    response = client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 405
    assert Job.objects.count() == 0


# --- the web tier stays free of torch --------------------------------------------------------------


def test_the_web_tier_with_metrics_never_imports_torch():
    code = ("import sys, django; django.setup(); import lifecycle.urls, lifecycle.core.metrics; "
            "from lifecycle.core.metrics import exposition; print('torch' in sys.modules)")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
