"""What a queued job waits for, the job status API and what a finished job links to: real
PostgreSQL, real Redis, real worker processes."""
import socket

import pytest
from django.db import transaction
from django.test import override_settings

from lifecycle.core import queues
from lifecycle.core.jobs import enqueue, job_status, outcome_of
from lifecycle.core.models import Job
from lifecycle.core.tasks import verify_audit_chain
from lifecycle.datasets.tasks import derive_version
from tests.conftest import client_for, make_user
from tests.core import waittasks
from tests.runs.factories import intent_version
from tests.workers import output, run_burst, start_manage, stop, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def clean_redis(redis):
    return redis


def queue_up(task_ref, **kwargs):
    with transaction.atomic():
        return enqueue(task_ref, **kwargs)


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_worker_on_the_queue_is_said_plainly():
    job = queue_up(waittasks.on_training)
    wait = Job.objects.get(pk=job.pk).wait_reason()
    assert (wait.queue, wait.position, wait.workers, wait.ahead) == ("training", 1, 0, [])
    assert wait.sentence().startswith("No worker is listening on queue training")


def test_second_in_line_behind_a_running_job_with_its_eta(tmp_path, redis):
    running = queue_up(waittasks.hold, release_key="release")
    worker = start_manage(tmp_path, "lifecycle_worker", "default", "--burst")
    try:
        wait_for(lambda: Job.objects.get(pk=running.pk).progress.get("done") == 1, 30, "the first job to run")
        first, second = queue_up(waittasks.hold, release_key="release"), queue_up(waittasks.hold, release_key="release")
        elsewhere = queue_up(waittasks.on_training)
        wait = Job.objects.get(pk=first.pk).wait_reason()
        assert (wait.queue, wait.position, wait.workers) == ("default", 1, 1)
        wait = Job.objects.get(pk=second.pk).wait_reason()
        assert (wait.position, [job.pk for job in wait.ahead]) == (2, [running.pk])
        assert wait.ahead[0].eta_seconds() > 0  # a quarter done: three times as long again
        text = wait.sentence()
        assert text.startswith(f"Waiting on queue default, 2nd in line, behind job {running.pk} (hold, running, about ")
        assert text.endswith(" left).")
        # The worker on default does not serve training: that job has none.
        assert Job.objects.get(pk=elsewhere.pk).wait_reason().workers == 0
        redis.set("release", 1)
        assert worker.wait(timeout=60) == 0, output(worker)
    finally:
        stop(worker)
    statuses = set(Job.objects.filter(pk__in=[running.pk, first.pk, second.pk]).values_list("status", flat=True))
    assert statuses == {"succeeded"}
    assert Job.objects.get(pk=second.pk).wait_reason() is None  # a finished job waits for nothing


def test_a_job_behind_another_queues_job_on_a_shared_worker_names_it(tmp_path, redis):
    """One worker for several queues (as the demo once ran): the job it is busy with is the one
    ahead, whatever its queue."""
    running = queue_up(waittasks.hold, release_key="release")
    worker = start_manage(tmp_path, "lifecycle_worker", "default", "training", "--burst")
    try:
        wait_for(lambda: Job.objects.get(pk=running.pk).progress.get("done") == 1, 30, "the first job to run")
        waiting = queue_up(waittasks.on_training)
        wait = Job.objects.get(pk=waiting.pk).wait_reason()
        assert (wait.queue, wait.position, wait.workers) == ("training", 1, 1)
        assert [job.pk for job in wait.ahead] == [running.pk]
        redis.set("release", 1)
        assert worker.wait(timeout=60) == 0, output(worker)
    finally:
        stop(worker)


def test_redis_down_is_said_plainly(settings):
    job = Job.create_queued(waittasks.on_training.task_name, "training", {})
    dead = {name: {"URL": f"redis://127.0.0.1:{closed_port()}/0"} for name in settings.RQ_QUEUES}
    with override_settings(RQ_QUEUES=dead):
        wait = job.wait_reason()
        status = job_status(job)
    assert wait.workers is None and wait.redis_error
    assert wait.sentence().startswith("The job queue is unavailable (Redis cannot be reached)")
    assert status["wait"]["redis_unavailable"] is True


# --- The status API ------------------------------------------------------------------------


def test_status_api_answers_the_creator_and_the_tasks_roles_and_404s_everyone_else(client):
    auditor = make_user("olga-oncall", "oncall")
    job = queue_up(verify_audit_chain, user=auditor)
    url = f"/api/v1/jobs/{job.pk}"
    data = client_for(client, auditor).get(url).json()
    assert data["status"] == "queued" and data["terminal"] is False and data["outcome"] is None
    assert data["wait"]["sentence"].startswith("No worker is listening on queue monitoring")
    assert data["url"] == f"/jobs/{job.pk}"
    assert client_for(client, make_user("abe-approver", "approver")).get(url).status_code == 200  # an audit role
    assert client_for(client, make_user("lee-labeler", "labeler")).get(url).status_code == 404
    # No role at all: refused before any job is looked up, as every API is.
    assert client_for(client, make_user("sam-stranger")).get(url).status_code == 403
    client.logout()
    assert client.get(url).status_code == 401
    assert client_for(client, auditor).get("/api/v1/jobs/999999").status_code == 404


def test_a_finished_derive_job_links_to_the_version_it_made(client, tmp_path, settings):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    engineer = make_user("erin-engineer", "ml_engineer")
    version = intent_version(tmp_path, engineer, n=120)
    job = queue_up(derive_version, user=engineer, version_id=version.pk, operation="resplit", seed=4)
    run_burst(tmp_path, "default")
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    child = version.dataset.versions.get(number=job.result["version"])
    data = client_for(client, engineer).get(f"/api/v1/jobs/{job.pk}").json()
    assert data["terminal"] is True and data["wait"] is None
    assert data["outcome"]["links"] == [{"label": f"Version {child.number}", "url": child.get_absolute_url()}]
    assert data["outcome"]["text"] == f"Made version {child.number} of {version.dataset.name} ({child.row_count:,} rows)."
    page = client.get(f"/jobs/{job.pk}").content.decode()
    assert f'href="{child.get_absolute_url()}"' in page
    assert "<details" in page  # the raw result, folded


def test_failed_and_cancelled_jobs_say_what_happened():
    failed = Job.create_queued(verify_audit_chain.task_name, "monitoring", {})
    failed.claim("w")
    failed.mark_failed("ValueError: disk full")
    assert outcome_of(failed).text == "Failed: ValueError: disk full" and outcome_of(failed).links == ()
    cancelled = Job.create_queued(verify_audit_chain.task_name, "monitoring", {})
    cancelled.request_cancel(None)
    assert outcome_of(cancelled).text.startswith("Cancelled")


def test_a_finished_job_whose_version_was_removed_says_so_instead_of_failing(client):
    engineer = make_user("erin-engineer", "ml_engineer")
    job = Job.create_queued(derive_version.task_name, "default", {"version_id": 987654, "operation": "dedup"},
                            user=engineer)
    job.claim("w")
    job.mark_succeeded({"version": 3, "rows": 10})
    assert outcome_of(Job.objects.get(pk=job.pk)).text == "Finished; what it made no longer exists."
    assert client_for(client, engineer).get(f"/jobs/{job.pk}").status_code == 200


def test_a_result_in_an_older_shape_still_opens_its_page(client):
    auditor = make_user("olga-oncall", "oncall")
    job = Job.create_queued(verify_audit_chain.task_name, "monitoring", {}, user=auditor)
    job.claim("w")
    job.mark_succeeded({"made": "something"})
    assert outcome_of(Job.objects.get(pk=job.pk)).text == "Finished."
    page = client_for(client, auditor).get(f"/jobs/{job.pk}").content.decode()
    assert "Finished." in page and "&quot;made&quot;" in page
