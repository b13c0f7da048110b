import pytest

from lifecycle.core import queues
from tests.workers import output, start_manage, stop


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.ARTIFACT_DIR


@pytest.fixture
def redis():
    conn = queues.get_connection("monitoring")
    assert conn.connection_pool.connection_kwargs.get("db") == 15, "the tests use Redis db 15 only"
    conn.flushdb()
    yield conn
    conn.flushdb()


def run_worker_burst(log_dir, *queue_names, timeout=120):
    """A real worker process that runs what is queued on `queue_names` and exits."""
    worker = start_manage(log_dir, "lifecycle_worker", *queue_names, "--burst")
    try:
        worker.wait(timeout=timeout)
        return output(worker)
    finally:
        stop(worker)
