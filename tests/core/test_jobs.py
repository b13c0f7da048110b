"""Background jobs against the real PostgreSQL and Redis: the Job row is the truth, RQ the carrier.

Transactional tests throughout: workers run in other processes and threads and must see
committed rows (and enqueue sends to RQ only on commit).
"""
import io
import os
import signal
import socket
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections, transaction
from django.test import override_settings
from django.utils import timezone
from rq.job import Job as RQJob

from lifecycle.core import queues
from lifecycle.core.jobs import enqueue, perform, reap_interrupted, reconcile_queued
from lifecycle.core.models import AuditEvent, Job
from lifecycle.core.queues import QueueUnavailable
from lifecycle.core.tasks import verify_audit_chain
from lifecycle.core.worker import LifecycleWorker
from tests.core import jobtasks
from tests.workers import WINDOW, output, start_manage, stop, wait_for

pytestmark = pytest.mark.django_db(transaction=True)



@pytest.fixture(autouse=True)
def redis():
    conn = queues.get_connection("default")
    db = conn.connection_pool.connection_kwargs.get("db")
    assert db == settings.TEST_REDIS_DB, f"refusing to flush Redis db {db}: not the test database"
    conn.flushdb()
    yield conn
    conn.flushdb()


# --- helpers ------------------------------------------------------------------------------


def reload(job):
    return Job.objects.get(pk=job.pk)


def audit_trail(job):
    events = AuditEvent.objects.filter(object_type="core.job", object_id=str(job.pk)).order_by("seq")
    return [(event.action, event.actor) for event in events]


def run_burst_worker(redis):
    # RQ installs SIGINT/SIGTERM handlers for its loop; give pytest its own back afterwards.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return LifecycleWorker(["default", "monitoring"], connection=redis).work(burst=True)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def in_thread(target, *args):
    def run():
        try:
            target(*args)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- round trips --------------------------------------------------------------------------


def test_a_job_round_trips_through_an_in_process_burst_worker(redis, engineer):
    job = enqueue(jobtasks.count_runs, user=engineer, counter="round-trip")
    assert reload(job).status == "queued"
    assert RQJob.exists(str(job.rq_id), connection=redis)

    assert run_burst_worker(redis) is True

    job = reload(job)
    assert job.status == "succeeded"
    assert job.result == {"runs": 1}
    assert job.created_by == engineer and job.worker and job.finished_at >= job.started_at
    assert audit_trail(job) == [("job.queued", engineer.username), ("job.running", ""), ("job.succeeded", "")]


@pytest.mark.slow
def test_a_job_round_trips_through_a_worker_subprocess(tmp_path, redis, engineer):
    counted = enqueue(jobtasks.count_runs, user=engineer, counter="subprocess")
    audit = enqueue(verify_audit_chain, user=engineer)
    assert audit.queue == "monitoring"

    worker = start_manage(tmp_path, "lifecycle_worker", "default", "monitoring", "--burst")
    try:
        assert worker.wait(timeout=60) == 0, output(worker)
    finally:
        stop(worker)

    assert reload(counted).result == {"runs": 1}
    audit = reload(audit)
    assert audit.status == "succeeded", audit.error
    assert audit.result == {"intact": True, "first_bad_seq": None, "reason": ""}


def test_a_failing_task_records_the_cause_not_a_traceback(engineer):
    job = enqueue(jobtasks.fail, user=engineer, message="disk full")
    perform(job.pk)
    job = reload(job)
    assert job.status == "failed"
    assert job.error == "ValueError: disk full"
    assert audit_trail(job)[-1] == ("job.failed", "")


# --- idempotency and the state machine ----------------------------------------------------


def test_the_same_job_run_twice_yields_one_result(redis, engineer):
    job = enqueue(jobtasks.count_runs, user=engineer, counter="twice")
    queues.get_queue("default").push_job_id(str(job.rq_id))  # RQ now holds it twice

    run_burst_worker(redis)
    perform(job.pk)  # and a third time, straight in

    assert redis.get("twice") == b"1"
    job = reload(job)
    assert job.status == "succeeded" and job.result == {"runs": 1}
    assert [action for action, _ in audit_trail(job)] == ["job.queued", "job.running", "job.succeeded"]


def test_a_late_failure_cannot_turn_a_success_into_a_failure(engineer):
    job = enqueue(jobtasks.count_runs, user=engineer, counter="late")
    perform(job.pk)

    job = reload(job)
    assert job.mark_failed("late failure callback") is False
    assert job.mark_interrupted("late reaper") is False
    assert job.claim("another worker") is False

    job = reload(job)
    assert job.status == "succeeded" and job.error == "" and job.result == {"runs": 1}
    assert [action for action, _ in audit_trail(job)][-1] == "job.succeeded"


def test_enqueue_with_a_key_is_idempotent(engineer):
    first = enqueue(jobtasks.count_runs, user=engineer, key="count:1", counter="keyed")
    again = enqueue(jobtasks.count_runs, user=engineer, key="count:1", counter="keyed")
    assert again.pk == first.pk
    assert Job.objects.count() == 1


def test_enqueue_refuses_objects_as_arguments(engineer):
    with pytest.raises(TypeError, match="pass primary keys"):
        enqueue(jobtasks.count_runs, counter=engineer)
    assert Job.objects.count() == 0


# --- the reconciler -----------------------------------------------------------------------


def test_a_queued_row_that_rq_never_got_is_resent_and_runs(redis):
    # As if the process died between COMMIT and the send to Redis.
    job = Job.create_queued(jobtasks.count_runs.task_name, "default", {"counter": "lost"})
    assert not RQJob.exists(str(job.rq_id), connection=redis)

    assert reconcile_queued(min_age_seconds=0) == 1
    assert RQJob.exists(str(job.rq_id), connection=redis)
    assert reconcile_queued(min_age_seconds=0) == 0  # RQ holds it now

    run_burst_worker(redis)
    assert reload(job).status == "succeeded"
    assert redis.get("lost") == b"1"


def test_jobs_maintain_once_resends_only_rows_older_than_the_window(redis):
    old = Job.create_queued(jobtasks.count_runs.task_name, "default", {"counter": "old"})
    Job.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=1))
    fresh = Job.create_queued(jobtasks.count_runs.task_name, "default", {"counter": "fresh"})

    out = io.StringIO()
    call_command("jobs_maintain", "--once", stdout=out)

    assert out.getvalue().strip().startswith("interrupted 0, resent 1")  # then the apps' steps (expired claims 0)
    assert RQJob.exists(str(old.rq_id), connection=redis)
    assert not RQJob.exists(str(fresh.rq_id), connection=redis)  # its send may still be on the way


# --- Redis down ---------------------------------------------------------------------------


def test_enqueue_with_redis_down_raises_and_writes_nothing(engineer):
    events_before = AuditEvent.objects.count()
    dead = {name: {"URL": f"redis://127.0.0.1:{closed_port()}/15"} for name in settings.RQ_QUEUES}

    with override_settings(RQ_QUEUES=dead):
        with pytest.raises(QueueUnavailable) as caught:
            with transaction.atomic():
                enqueue(jobtasks.count_runs, user=engineer, counter="never")
        assert queues.redis_status().startswith("unavailable")

    assert str(caught.value) == (
        "The job queue is unavailable (Redis cannot be reached). Nothing was started; try again when it is back."
    )
    assert Job.objects.count() == 0
    assert AuditEvent.objects.count() == events_before


# --- cancel -------------------------------------------------------------------------------


def test_cancelling_a_queued_job_cancels_it_at_once(redis, engineer, stranger):
    job = enqueue(jobtasks.count_runs, user=engineer, counter="cancelled")

    assert job.request_cancel(stranger) is True
    assert job.request_cancel(stranger) is False  # nothing left to do

    run_burst_worker(redis)  # RQ still delivers it: the claim refuses, the task never starts
    assert redis.get("cancelled") is None
    job = reload(job)
    assert job.status == "cancelled" and job.started_at is None
    assert audit_trail(job)[-1] == ("job.cancelled", stranger.username)


def test_cancelling_a_running_job_stops_it_within_seconds(engineer):
    job = enqueue(jobtasks.sleep_until_cancelled, user=engineer, seconds=30)
    runner = in_thread(perform, job.pk)
    wait_for(lambda: reload(job).progress.get("phase") == "sleeping", 10, "the task to start")

    asked_at = time.monotonic()
    assert job.request_cancel(engineer) is True
    assert reload(job).status == "running"
    runner.join(timeout=5)

    assert not runner.is_alive()
    assert time.monotonic() - asked_at < 5
    assert reload(job).status == "cancelled"
    assert [action for action, _ in audit_trail(job)][-2:] == ["job.cancel_requested", "job.cancelled"]


def test_progress_shows_while_the_task_is_inside_a_transaction(engineer):
    # The heartbeat writes it on its own connection: the task's uncommitted writes stay hidden.
    job = enqueue(jobtasks.progress_inside_a_transaction, user=engineer, seconds=30)
    runner = in_thread(perform, job.pk)
    progress = wait_for(lambda: reload(job).progress or None, 10, "the progress to show")
    assert progress == {"phase": "inside", "done": 1, "total": 2}
    assert job.request_cancel(engineer) is True
    runner.join(timeout=5)
    assert reload(job).status == "cancelled"


# --- the reaper ---------------------------------------------------------------------------


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_killed_worker_takes_its_horse_down_and_leaves_the_job_interrupted_within_the_window(tmp_path, engineer):
    # A second, idle worker does the reaping: it must wake from its blocking dequeue to do so.
    reaper = start_manage(tmp_path, "lifecycle_worker", "monitoring")
    worker = start_manage(tmp_path, "rqworker", "default", "--worker-class", "lifecycle.core.worker.LifecycleWorker")
    try:
        job = enqueue(jobtasks.sleep_until_cancelled, user=engineer)
        horse_pid = wait_for(lambda: reload(job).progress.get("pid"), 30, "the job to run")
        started = reload(job)
        wait_for(lambda: reload(job).heartbeat_at > started.heartbeat_at, 5, "a heartbeat")

        os.killpg(worker.pid, signal.SIGKILL)  # not the horse: it leads a process group of its own
        killed_at = time.monotonic()
        # ...and dies with its worker rather than run on unwatched.
        wait_for(lambda: not _alive(horse_pid), 5, "the horse to die with its worker")

        wait_for(lambda: reload(job).status != "running", WINDOW + 5, "the reaper")
        elapsed = time.monotonic() - killed_at
    finally:
        stop(worker)
        stop(reaper)

    job = reload(job)
    assert job.status == "interrupted", output(reaper)
    assert job.error.startswith("no heartbeat for 3 s")
    assert elapsed < WINDOW + 3
    assert audit_trail(job)[-1] == ("job.interrupted", "")


def test_the_reaper_spares_jobs_with_a_fresh_heartbeat(engineer):
    now = timezone.now()
    fresh = Job.create_queued(jobtasks.count_runs.task_name, "default", {"counter": "x"})
    stale = Job.create_queued(jobtasks.count_runs.task_name, "default", {"counter": "y"})
    assert fresh.claim("w1") and stale.claim("w2")
    Job.objects.filter(pk=stale.pk).update(heartbeat_at=now - timedelta(seconds=60))

    assert reap_interrupted(window_seconds=10) == 1
    assert reload(fresh).status == "running"
    assert reload(stale).status == "interrupted"


def test_a_work_horse_killed_alone_is_marked_interrupted_by_its_worker_at_once(redis, engineer):
    job = enqueue(jobtasks.sleep_until_cancelled, user=engineer)

    def kill_the_horse():  # as the OOM killer would, while the worker lives on
        pid = wait_for(lambda: reload(job).progress.get("pid"), 10, "the job to run")
        os.kill(pid, signal.SIGKILL)

    killer = in_thread(kill_the_horse)
    started = time.monotonic()
    run_burst_worker(redis)
    killer.join(timeout=1)

    job = reload(job)
    assert job.status == "interrupted"
    assert job.error == f"the work horse died (wait status {signal.SIGKILL})"
    assert time.monotonic() - started < WINDOW  # the worker saw it; no reaper was needed
