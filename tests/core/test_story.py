"""Picking the demo's story up after Ctrl-C (core/story.py) and trying a job again (core/jobs.py
`retry`): real job rows, the real test Redis, a real worker that runs what was sent again."""
import io
from datetime import timedelta

import pytest
from django.utils import timezone
from rq.job import Job as RQJob

from lifecycle.core import jobs, story
from lifecycle.core.models import AuditEvent, Job
from tests.workers import run_burst

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "tests.core.jobtasks.count_runs"


def _job(key, status, **changes):
    job = jobs.enqueue(TASK, key=key, counter=f"runs:{key}")
    Job.objects.filter(pk=job.pk).update(status=status, **changes)
    job.refresh_from_db()
    return job


def _in_rq(job, redis):
    return redis.exists(RQJob.key_for(str(job.rq_id)))


def test_a_failed_job_is_tried_again_under_its_key_and_its_old_row_keeps_what_happened(redis):
    failed = _job("demo:step", Job.Status.FAILED, error="boom")
    again = jobs.retry(failed)
    failed.refresh_from_db()
    assert (again.key, again.status, again.task, again.kwargs) == ("demo:step", "queued", TASK, {"counter": "runs:demo:step"})
    assert failed.key == f"demo:step~{failed.pk}" and failed.status == "failed" and failed.error == "boom"
    assert jobs.enqueue(TASK, key="demo:step", counter="x") == again  # the key finds the new attempt
    assert _in_rq(again, redis)


@pytest.mark.parametrize("status", ["succeeded", "queued", "running", "cancelled"])
def test_only_a_failed_or_interrupted_job_is_tried_again(redis, status):
    job = _job(f"demo:{status}", status)
    with pytest.raises(ValueError, match=f"is {status}; only a failed or interrupted job is tried again"):
        jobs.retry(job)
    assert Job.objects.count() == 1


def test_after_ctrl_c_the_story_picks_up_cut_off_failed_and_lost_jobs_in_their_order(redis, tmp_path):
    """A new private Redis holds nothing: the row still `running` was cut off, the `queued` one
    was lost with the old Redis; the story's failed step runs again, a failure outside the
    story stays as it was, and what succeeded is not touched."""
    long_ago = timezone.now() - timedelta(minutes=5)
    done = _job("demo:done", Job.Status.SUCCEEDED)
    failed = _job("demo:failed", Job.Status.FAILED, error="the run had not succeeded")
    cut_off = _job("demo:cut-off", Job.Status.RUNNING, started_at=long_ago, heartbeat_at=long_ago)
    lost = jobs.enqueue(TASK, key="demo:lost", counter="runs:demo:lost")
    someone_elses = _job("upload:7", Job.Status.FAILED)
    redis.flushdb()  # the old Redis is gone

    out = io.StringIO()
    story.recover(out, fresh_redis=True)

    assert "demo:failed stopped (failed); tried again" in out.getvalue()
    assert "demo:cut-off stopped (interrupted); tried again" in out.getvalue()
    assert "1 queued jobs sent to the new Redis again" in out.getvalue()
    current = {job.key: job for job in Job.objects.filter(key__startswith="demo:")}
    assert current["demo:done"] == done and current["demo:lost"] == lost
    assert current["demo:failed"] != failed and current["demo:cut-off"] != cut_off
    assert Job.objects.get(pk=cut_off.pk).status == "interrupted"
    assert Job.objects.get(pk=someone_elses.pk).status == "failed" and Job.objects.filter(key__startswith="upload:7").count() == 1
    # Tried again in the order they first ran, then the lost one: the queue keeps the story's order.
    order = [current[key].rq_id for key in ("demo:failed", "demo:cut-off", "demo:lost")]
    assert [str(i) for i in order] == [i.decode() for i in redis.lrange("rq:queue:default", 0, -1)]
    assert AuditEvent.verify_chain() is None

    run_burst(tmp_path, "default")
    for key in ("demo:failed", "demo:cut-off", "demo:lost"):
        assert Job.objects.get(key=key).status == "succeeded"
        assert int(redis.get(f"runs:{key}")) == 1
    assert redis.get("runs:demo:done") is None  # what had succeeded did not run again


def test_without_a_new_redis_nothing_running_or_queued_is_touched(redis):
    recent = timezone.now()
    running = _job("demo:running", Job.Status.RUNNING, started_at=recent, heartbeat_at=recent)
    queued = jobs.enqueue(TASK, key="demo:queued", counter="c")
    story.recover(io.StringIO(), fresh_redis=False)
    assert Job.objects.get(pk=running.pk).status == "running" and Job.objects.get(pk=queued.pk).status == "queued"
    assert Job.objects.count() == 2


def test_reset_is_refused_off_the_embedded_sqlite_database(tmp_path):
    (tmp_path / "lifecycle.sqlite3").write_text("not ours to delete here")
    with pytest.raises(ValueError, match="--reset starts over on the embedded SQLite database only"):
        story.reset(tmp_path)
    assert (tmp_path / "lifecycle.sqlite3").exists()
