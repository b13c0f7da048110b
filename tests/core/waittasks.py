"""Tasks for tests/core/test_job_wait.py and tests/browser/test_job_status.py.

Worker subprocesses import this module by the task's dotted name (perform() does it).
"""
import time

from lifecycle.core import queues
from lifecycle.core.jobs import task


@task(queue="default")
def hold(job, *, release_key, seconds=60):
    """Runs, a quarter done, until the test sets `release_key` in Redis: a job running ahead."""
    redis = queues.get_connection("default")
    job.set_progress(phase="holding", done=1, total=4)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not redis.exists(release_key):
        job.check_cancelled()
        time.sleep(0.05)
    return {"held": True}


@task(queue="training")
def on_training(job):
    return {}
