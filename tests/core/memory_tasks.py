"""Tasks that exist only for tests/core/test_job_memory_limit.py (imported by worker
subprocesses by the task's dotted name, as tests/core/jobtasks.py is)."""
from lifecycle.core.jobs import task
from lifecycle.core.jobs import memory_limit_in_force

MiB = 1024 * 1024


def _allocate(megabytes):
    block = bytearray(megabytes * MiB)  # zero pages: resident only once touched
    block[::4096] = b"x" * len(range(0, len(block), 4096))
    return {"allocated_mb": len(block) // MiB, "limit_mb": memory_limit_in_force()}


@task(queue="default")
def allocate(job, *, megabytes):
    return _allocate(megabytes)


@task(queue="training")
def allocate_for_training(job, *, megabytes):
    return _allocate(megabytes)
