"""Tasks that exist only for tests/core/test_jobs.py.

Worker subprocesses import this module by the task's dotted name (perform() does it), which
works because the repository root is on sys.path when manage.py runs from it.
"""
import os
import time

from lifecycle.core import queues
from lifecycle.core.jobs import task


@task(queue="default")
def count_runs(job, *, counter):
    """The side effect shows how often the body ran: one Redis INCR per run."""
    runs = queues.get_connection("default").incr(counter)
    return {"runs": runs}


@task(queue="default")
def fail(job, *, message):
    raise ValueError(message)


@task(queue="default")
def sleep_until_cancelled(job, *, seconds=60):
    # The pid lets a test kill this work horse; its own process group keeps it apart from the worker.
    job.set_progress(phase="sleeping", pid=os.getpid())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job.check_cancelled()
        time.sleep(0.05)
    return {"slept": seconds}


@task(queue="default")
def progress_inside_a_transaction(job, *, seconds=30):
    """Reports progress while holding a transaction open, as a version's write does."""
    from django.db import transaction

    with transaction.atomic():
        job.set_progress(phase="inside", done=1, total=2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            job.check_cancelled()
            time.sleep(0.05)
    return {}
