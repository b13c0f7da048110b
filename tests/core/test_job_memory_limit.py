"""A job's work horse runs under a memory limit: past it the job fails and says so, and the
worker lives on. Real worker subprocesses against the real PostgreSQL and Redis."""
import pytest

from lifecycle.core.jobs import enqueue
from lifecycle.core.models import Job
from tests.core import memory_tasks
from tests.workers import run_burst

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_job_over_its_memory_limit_fails_and_says_so(tmp_path, redis, engineer):
    over = enqueue(memory_tasks.allocate, user=engineer, megabytes=1024)
    under = enqueue(memory_tasks.allocate, user=engineer, megabytes=16)
    log = run_burst(tmp_path, "default", env={"JOB_MEMORY_LIMIT_MB": "600"})
    over, under = Job.objects.get(pk=over.pk), Job.objects.get(pk=under.pk)
    assert over.status == "failed", log
    assert "ran out of its memory limit (600 MB)" in over.error, over.error
    assert under.status == "succeeded", log
    print(under.result)
