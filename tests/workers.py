"""Real worker processes for tests: `manage.py` subprocesses pointed at the test database."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 3  # JOB_HEARTBEAT_WINDOW_SECONDS for worker subprocesses (beat every 1 s)


def worker_env(**extra):
    """os.environ (tests/settings.py's defaults) pointed at this run's test database and
    artifact folder, with fast heartbeats."""
    db = connection.settings_dict
    auth = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    url = f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return {
        **os.environ, "DATABASE_URL": url, "ARTIFACT_DIR": str(settings.ARTIFACT_DIR), "JOB_HEARTBEAT_SECONDS": "1",
        "JOB_HEARTBEAT_WINDOW_SECONDS": str(WINDOW), "JOB_MAINTENANCE_SECONDS": "1", "PYTHONUNBUFFERED": "1", **extra,
    }


def start_manage(log_dir, *args, env=None):
    log = open(Path(log_dir) / f"{args[0]}-{time.monotonic_ns()}.log", "w+")
    # A session of its own: its process group can be killed without touching pytest.
    process = subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=worker_env(**(env or {})),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    process.log = log
    return process


def output(process):
    process.log.seek(0)
    return process.log.read()


def stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    process.log.close()


def run_burst(log_dir, *queue_names, env=None, timeout=120):
    """A real worker process that runs what is queued on `queue_names`, exits, and leaves its
    log. A subprocess, not an in-process worker: its work horse would be a fork of pytest, and
    a fork of a process that has used torch's OpenMP pool can hang."""
    worker = start_manage(log_dir, "lifecycle_worker", *queue_names, "--burst", env=env)
    try:
        worker.wait(timeout=timeout)
        return output(worker)
    finally:
        stop(worker)


def wait_for(predicate, timeout, what):
    """Poll `predicate` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
