"""On the embedded SQLite database, a long write must not break other work: pages keep
answering, the job's heartbeat and the reaper keep going, and the job ends as it really did.

The end-to-end test runs real processes on a SQLite file (the suite's own database is
PostgreSQL): a worker ingesting a big upload, a web server polled as a person would, and a
second writer that holds SQLite's one write lock for longer than the heartbeat window.
"""
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from lifecycle.core import queues
from lifecycle.core.jobs import alive_key, alive_seconds, perform, reap_interrupted
from lifecycle.core.models import Job
from tests.core import jobtasks
from tests.workers import output, stop, wait_for

ROOT = Path(__file__).resolve().parents[2]
ROWS = 160_000  # ~20 MB of CSV: one transaction over its examples held SQLite's lock for 25 s
HEARTBEAT, WINDOW = 1, 3
LOCK_HELD = 2 * WINDOW  # the other writer's transaction: the database heartbeat goes stale


# --- the end-to-end test -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_big_ingest_on_sqlite_leaves_pages_answering_and_the_job_alive(tmp_path, redis):
    env = sqlite_env(tmp_path)
    manage(env, "migrate", "-v0")
    ids = json.loads(manage(env, "shell", "-c", f"from tests.core.test_sqlite_long_write import prepare; "
                                                f"prepare({str(tmp_path)!r}, {ROWS})").splitlines()[-1])
    port = free_port()
    server = start(tmp_path, env, "runserver", "--noreload", f"127.0.0.1:{port}")
    worker = None
    try:
        client = Poller(port, ids)
        wait_for(client.server_up, 60, "the web server")
        worker = start(tmp_path, env, "lifecycle_worker", "default", "--burst")
        wait_for(lambda: client.poll() == "running", 60, "the ingest to start")
        writer = hold_write_lock(tmp_path / "db.sqlite3", LOCK_HELD)
        while worker.poll() is None:
            client.poll()
            time.sleep(0.2)
        writer.join()
        worker_log = output(worker)
    finally:
        for process in (worker, server):
            if process:
                stop(process)

    job = json.loads(manage(env, "shell", "-c", f"from tests.core.test_sqlite_long_write import outcome; "
                                                f"outcome({ids['job']}, {ids['upload']})").splitlines()[-1])
    assert job["status"] == "succeeded", (job, worker_log[-3000:])
    assert "outcome discarded" not in worker_log
    assert job["rows"] > 0.9 * ROWS and job["problems"] == []  # every example in, none twice
    assert writer.held >= LOCK_HELD  # the other writer really held the lock that long
    assert client.phases >= {"running", "succeeded"}
    assert client.failures == [], client.failures[:5]  # no 500, no timeout, while the lock was held too
    assert client.count > 20


def sqlite_env(tmp_path):
    return dict(
        os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", LIFECYCLE_DATA_DIR=str(tmp_path),
        ARTIFACT_DIR=str(tmp_path / "artifacts"), JOB_HEARTBEAT_SECONDS=str(HEARTBEAT),
        JOB_HEARTBEAT_WINDOW_SECONDS=str(WINDOW), JOB_MAINTENANCE_SECONDS="1", PYTHONUNBUFFERED="1",
    )


def manage(env, *args):
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def start(log_dir, env, *args):
    log = open(Path(log_dir) / f"{args[0]}.log", "w+")
    process = subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    process.log = log
    return process


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Poller:
    """Another user watching: a run's live JSON (session cookie) and the upload's API status
    (bearer token), each poll recorded."""

    def __init__(self, port, ids):
        self.base = f"http://127.0.0.1:{port}"
        self.ids = ids
        self.failures, self.phases, self.count = [], set(), 0

    def server_up(self):
        try:
            urllib.request.urlopen(self.base + "/", timeout=2)
        except urllib.error.HTTPError:
            pass  # an answer all the same
        except OSError:
            return False
        return True

    def poll(self):
        self.get(f"/runs/{self.ids['run']}/live", Cookie=f"sessionid={self.ids['session']}")
        upload = self.get(f"/api/v1/uploads/{self.ids['upload']}", Authorization=f"Bearer {self.ids['token']}")
        if upload:
            self.phases.add(upload["status"])
            return upload["status"]

    def get(self, path, **headers):
        self.count += 1
        started = time.monotonic()
        try:
            with urllib.request.urlopen(urllib.request.Request(self.base + path, headers=headers), timeout=60) as r:
                return json.load(r)
        except (OSError, ValueError) as exc:  # HTTPError (a 500) is an OSError too
            self.failures.append(f"{path}: {exc} after {time.monotonic() - started:.1f} s")


def hold_write_lock(path, seconds):
    """Another writer (a second big import, say) holding SQLite's write lock for `seconds`."""

    def hold():
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        time.sleep(seconds)
        thread.held = time.monotonic() - started
        db.execute("COMMIT")
        db.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.held = 0
    thread.start()
    return thread


# What the subprocesses run (`manage.py shell -c`), on the SQLite database.


def prepare(folder, rows):
    """A user with a session and a token, a small dataset with a run, and a big upload whose
    ingest is queued; prints their ids as JSON."""
    from django.test import Client

    from lifecycle.core.models import ApiToken
    from lifecycle.datasets import ingest, pipeline, uploads
    from lifecycle.datasets.models import Dataset
    from lifecycle.datasets.readers import ColumnMapping
    from lifecycle.datasets.synthetic import generate
    from lifecycle.runs.models import Run
    from tests.conftest import make_user

    engineer = make_user("erin-engineer", "ml_engineer")
    mapping = {"text": "text", "label": "label"}
    small = Dataset.create(engineer, slug="small", name="Small", pii_policy="allow")
    path = Path(folder) / "small.csv"
    write_csv(path, generate(60, pii_rate=0, dup_rate=0))
    [version] = pipeline.upload(small, str(path), "csv", ingest.Options.for_dataset(small, ColumnMapping(mapping), "drop"))
    job = Job.create_queued("lifecycle.runs.tasks.train_run", "training", {})
    Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED, error="stopped")
    run = Run.objects.create(name="baseline", dataset_version=version, base_model="all-MiniLM-L6-v2",
                             task="classification", method="lora", seed=1, config={}, job=job, created_by=engineer)

    big = Dataset.create(engineer, slug="big", name="Big", pii_policy="allow")
    path = Path(folder) / "big.csv"
    write_csv(path, generate(rows, seed=3))
    upload = uploads.receive(big, str(path), "big.csv", user=engineer, on_error="drop")
    ingest_job = uploads.start_ingest(upload, mapping, engineer)
    browser = Client()
    browser.force_login(engineer)
    _, token = ApiToken.issue(engineer, "poller")
    print(json.dumps({"run": run.pk, "upload": upload.pk, "job": ingest_job.pk, "token": token,
                      "session": browser.cookies[settings.SESSION_COOKIE_NAME].value}))


def write_csv(path, records):
    import csv

    with open(path, "w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["text", "label"])
        rows.writerows([record["text"], record["label"]] for record in records)


def outcome(job_id, upload_id):
    """The job's end, and whether the version's examples match its manifest; as JSON."""
    from lifecycle.datasets.models import Upload
    from lifecycle.datasets.versions import verify_version

    job = Job.objects.get(pk=job_id)
    version = Upload.objects.get(pk=upload_id).version
    print(json.dumps({"status": job.status, "error": job.error, "rows": version.row_count if version else 0,
                      "problems": verify_version(version) if version else ["no version"]}))


# --- the reaper's rule, on the suite's database ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_reaper_spares_a_stale_job_whose_heartbeat_is_alive_in_redis(redis):
    blocked, dead = running_job("blocked"), running_job("dead")
    Job.objects.update(heartbeat_at=timezone.now() - timedelta(seconds=60))
    redis.set(alive_key(blocked.pk), 1, ex=30)  # what a beat stuck behind SQLite's lock leaves

    assert reap_interrupted(window_seconds=10) == 1
    assert Job.objects.get(pk=blocked.pk).status == "running"
    assert Job.objects.get(pk=dead.pk).status == "interrupted"


@pytest.mark.django_db(transaction=True)
def test_with_redis_down_the_reaper_goes_by_the_database_heartbeat(redis):
    job = running_job("blocked")
    Job.objects.update(heartbeat_at=timezone.now() - timedelta(seconds=60))
    redis.set(alive_key(job.pk), 1, ex=30)
    dead_redis = {name: {"URL": f"redis://127.0.0.1:{free_port()}/15"} for name in settings.RQ_QUEUES}

    with override_settings(RQ_QUEUES=dead_redis):
        assert reap_interrupted(window_seconds=10) == 1
    assert Job.objects.get(pk=job.pk).status == "interrupted"


@pytest.mark.django_db(transaction=True)
def test_a_running_job_keeps_its_liveness_key_fresh(redis):
    job = Job.create_queued(jobtasks.sleep_until_cancelled.task_name, "default", {"seconds": 30})
    thread = threading.Thread(target=perform_and_close, args=(job.pk,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: redis.exists(alive_key(job.pk)), 5, "the liveness key")
        # No lock wait to cover on PostgreSQL: the key lasts the window.
        assert 0 < redis.ttl(alive_key(job.pk)) <= alive_seconds() == settings.JOB_HEARTBEAT_WINDOW_SECONDS
    finally:
        job.request_cancel(None)
        thread.join(timeout=10)
    assert Job.objects.get(pk=job.pk).status == "cancelled"


def perform_and_close(job_id):
    try:
        perform(job_id)
    finally:
        connections.close_all()


def running_job(counter):
    job = Job.create_queued(jobtasks.count_runs.task_name, "default", {"counter": counter})
    assert job.claim("w1")
    return job
