"""The README's run command prepares a working demo on embedded defaults."""
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from lifecycle.core.management.commands.demo import WORKERS
from tests.core.test_file_modes import open_to_others

ROOT = Path(__file__).resolve().parents[2]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_demo_prepares_sqlite_private_redis_and_one_login_per_role(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "DEBUG": "true",
        "LIFECYCLE_DATA_DIR": str(tmp_path),
        "REDIS_URL": f"unix://{tmp_path}/redis.sock",
    }
    for _ in range(2):  # a second start reuses everything
        result = subprocess.run([sys.executable, "manage.py", "demo", "--no-server"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert "Lifecycle demo is ready at http://127.0.0.1:8000/" in result.stdout
    # Two workers, training on its own, each named with its log: an upload never waits behind a fine-tune.
    assert "The demo runs 2 workers, training on its own, each with its own log:" in result.stdout
    assert re.search(rf"queues default, monitoring +{re.escape(str(tmp_path / 'worker.log'))}\n", result.stdout)
    assert re.search(rf"queues training +{re.escape(str(tmp_path / 'training-worker.log'))}\n", result.stdout)
    assert sorted(q for _, queue_names in WORKERS for q in queue_names) == sorted(settings.RQ_QUEUE_NAMES)
    assert [queue_names for _, queue_names in WORKERS if "training" in queue_names] == [("training",)]
    logins = dict(line.split() for line in (tmp_path / "demo-logins.txt").read_text().splitlines())
    assert set(logins) == {"admin", "demo-labeler", "demo-ml-engineer", "demo-approver", "demo-oncall", "demo-viewer",
                           "demo-labeler-2", "demo-labeler-3", "demo-approver-2"}
    assert (tmp_path / "demo-logins.txt").stat().st_mode & 0o077 == 0
    for username, password in logins.items():
        assert f"{username:<20} {password}" in result.stdout  # the printed logins are the stored ones
    with sqlite3.connect(tmp_path / "lifecycle.sqlite3") as db:
        groups = {name for (name,) in db.execute("SELECT g.name FROM auth_group g")}
        assert groups == {"labeler", "ml_engineer", "approver", "oncall", "viewer"}
        assert db.execute("SELECT count(*) FROM auth_user").fetchone()[0] == 9
        # The demo dataset went in through the real path: an upload and its ingest job, queued once.
        assert db.execute("SELECT slug FROM datasets_dataset").fetchall() == [("support-intents",)]
        jobs = db.execute("SELECT j.task, j.status FROM datasets_upload u JOIN core_job j ON u.job_id = j.id").fetchall()
        assert jobs == [("lifecycle.datasets.tasks.ingest_upload", "queued")]
        # Then the labeling project's, queued once, after the ingest (the worker takes them in order).
        seeds = db.execute("SELECT status FROM core_job WHERE task = 'lifecycle.labeling.tasks.seed_demo_project'").fetchall()
        assert seeds == [("queued",)]
        # Nothing else yet: the fine-tune, the registry's and the deployment's chapters are queued
        # behind the labels' freeze, which the labeling job queues (tour/signals.py).
        later = db.execute("SELECT count(*) FROM core_job WHERE task IN ('lifecycle.runs.tasks.start_demo_run', "
                           "'lifecycle.registry.tasks.queue_demo_registration', "
                           "'lifecycle.deployments.tasks.start_demo_candidate')").fetchone()[0]
        assert later == 0
    assert not (tmp_path / "redis.sock").exists() or not _redis_alive(tmp_path / "redis.sock")


def _burst(env, timeout):
    return subprocess.run([sys.executable, "manage.py", "rqworker", "default", "monitoring", "training", "--burst",
                           "--worker-class", "lifecycle.core.worker.LifecycleWorker"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _logged(tmp_path):
    with sqlite3.connect(tmp_path / "lifecycle.sqlite3") as db:
        return db.execute("SELECT count(*) FROM deployments_predictionlog WHERE route != 'shadow'").fetchone()[0]


def _traffic_with_a_restart(env, tmp_path):
    """`manage.py demo_traffic` as the demo starts it, stopped a third of the way (Ctrl-C) and
    started again: the second one continues from what the log holds."""
    import time

    command = [sys.executable, "manage.py", "demo_traffic", "--rate", "10"]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while _logged(tmp_path) < 150 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGINT)
    first.wait(timeout=30)
    time.sleep(3)  # the serving process writes what it answered
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert re.search(r"Demo traffic: (\d+) of 600 requests already answered", second.stdout), second.stdout
    assert 150 <= int(re.search(r"(\d+) of 600", second.stdout).group(1)) < 600


def _redis_alive(socket_path):
    import redis

    try:
        return redis.Redis(unix_socket_path=str(socket_path), socket_connect_timeout=0.5).ping()
    except (redis.RedisError, OSError):
        return False


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ingest, two fine-tunes, suggestions, registration, traffic: ~7 min idle, twice that busy
def test_the_demo_really_ingests_and_trains_on_its_worker(tmp_path):
    """What `scripts/demo` leaves to its worker: the ingest, then a LoRA fine-tune of MiniLM."""
    import redis as redis_lib

    url = os.environ["REDIS_URL"]  # the test Redis, emptied first: the demo's jobs only
    assert url.endswith(f"/{settings.TEST_REDIS_DB}")
    redis_lib.Redis.from_url(url).flushdb()
    env = {"PATH": os.environ["PATH"], "DEBUG": "true", "LIFECYCLE_DATA_DIR": str(tmp_path), "REDIS_URL": url}
    env["SERVING_PORT"] = str(_free_port())
    subprocess.run([sys.executable, "manage.py", "demo", "--no-server"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    # The demo's serving process, as `manage.py demo` starts it: the traffic job talks to it.
    # Owner-only, as the demo's own logs are (scripts/demo runs under umask 077).
    with open(os.open(tmp_path / "serving.log", os.O_WRONLY | os.O_CREAT, 0o600), "w") as serving_log:
        serving = subprocess.Popen([sys.executable, "manage.py", "serve"], cwd=ROOT, env=env, stdout=serving_log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            worker = _burst(env, timeout=1200)  # the story up to the canary
            assert worker.returncode == 0, worker.stderr[-3000:]
            _traffic_with_a_restart(env, tmp_path)
            worker = _burst(env, timeout=600)  # monitoring's check of the traffic
        finally:
            os.killpg(serving.pid, signal.SIGTERM)
            serving.wait(timeout=30)
    assert worker.returncode == 0, worker.stderr[-3000:]
    with sqlite3.connect(tmp_path / "lifecycle.sqlite3") as db:
        jobs = db.execute("SELECT task, status, error FROM core_job").fetchall()
        assert [job for job in jobs if job[1] != "succeeded"] == [], worker.stderr[-3000:]
        # The maintenance pass may add scheduled drift checks; these are the story's own jobs.
        assert {task for task, _, _ in jobs} >= {
            "lifecycle.datasets.tasks.ingest_upload", "lifecycle.runs.tasks.start_demo_run",
            "lifecycle.labeling.tasks.freeze_project", "lifecycle.labeling.tasks.seed_demo_round_two",
            "lifecycle.runs.tasks.train_run", "lifecycle.labeling.tasks.seed_demo_project",
            "lifecycle.labeling.tasks.suggest_labels", "lifecycle.registry.tasks.queue_demo_registration",
            "lifecycle.registry.tasks.register_demo_version", "lifecycle.deployments.tasks.start_demo_candidate",
            "lifecycle.deployments.tasks.deploy_demo", "lifecycle.monitoring.reference.compute_reference",
            "lifecycle.monitoring.tasks.check_demo_traffic",
            "lifecycle.monitoring.retrain.prepare_draft"}
        runs = db.execute("SELECT r.name, r.test_metrics, r.output_sha256, j.status FROM runs_run r "
                          "JOIN core_job j ON r.job_id = j.id ORDER BY r.id").fetchall()
        [(name, metrics, output, _), (_, _, second_output, second_status)] = runs
        projects = dict(db.execute("SELECT name, id FROM labeling_labelingproject").fetchall())
        first, second = projects["Demo: support intents review"], projects["Demo: support intents, round 2"]
        states = dict(db.execute(f"SELECT state, count(*) FROM labeling_item WHERE project_id = {first} GROUP BY state").fetchall())
        reports = db.execute(f"SELECT passes, data FROM labeling_qcreport WHERE project_id = {first}").fetchall()
        frozen = db.execute(f"SELECT p.status, v.number, v.id, p.freeze_override FROM labeling_labelingproject p "
                            f"JOIN datasets_datasetversion v ON p.frozen_version_id = v.id WHERE p.id = {first}").fetchone()
        trained_on = [v for (v,) in db.execute("SELECT dataset_version_id FROM runs_run ORDER BY id")]
        second_items, suggested = db.execute(f"SELECT count(*), count(NULLIF(suggested_label, '')) FROM labeling_item "
                                             f"WHERE project_id = {second}").fetchone()
        second_on = db.execute(f"SELECT version_id FROM labeling_labelingproject WHERE id = {second}").fetchone()[0]
        versions = db.execute("SELECT v.number, v.stage, v.signature_status, m.slug FROM registry_modelversion v "
                              "JOIN registry_registeredmodel m ON v.model_id = m.id").fetchall()
        requests = db.execute("SELECT v.number, r.to_stage, r.status FROM registry_promotionrequest r "
                              "JOIN registry_modelversion v ON r.version_id = v.id ORDER BY r.id").fetchall()
        releases = db.execute("SELECT number, mode, share, status FROM deployments_release ORDER BY number").fetchall()
        routes = dict(db.execute("SELECT route, count(*) FROM deployments_predictionlog GROUP BY route").fetchall())
        feedback = db.execute("SELECT count(*) FROM deployments_feedback").fetchone()[0]
        references = db.execute("SELECT status, rows FROM monitoring_reference").fetchall()
        slos = db.execute("SELECT count(*), count(evaluated_at) FROM monitoring_slo").fetchone()
        checks = db.execute("SELECT trigger, drifted, requests, estimated_accuracy FROM monitoring_driftcheck "
                            "WHERE trigger = 'demand'").fetchall()
        alerts = dict(db.execute("SELECT kind, count(*) FROM monitoring_alert GROUP BY kind").fetchall())
        drafts = db.execute("SELECT status FROM monitoring_retraindraft").fetchall()
        rolled = db.execute("SELECT sum(requests) FROM monitoring_rollup").fetchone()[0]
        production_approvers = [name for (name,) in db.execute(
            "SELECT u.username FROM registry_approval a JOIN registry_promotionrequest r ON a.request_id = r.id "
            "JOIN registry_modelversion v ON r.version_id = v.id JOIN auth_user u ON a.approver_id = u.id "
            "WHERE v.number = 1 AND r.to_stage = 'production' ORDER BY u.username")]
        answers = dict(db.execute("SELECT u.username, count(*) FROM labeling_assignment a JOIN auth_user u "
                                  "ON a.annotator_id = u.id WHERE a.state = 'answered' GROUP BY u.username").fetchall())
    assert name.startswith("Demo: LoRA") and output
    assert json.loads(metrics)["accuracy"] > 0.8  # twelve intents: the majority class is far below
    # The labeling project: answers by three labelers, one tie and one flag to adjudicate, QC
    # computed (the careless labeler's gold misses fail it), suggestions from the demo run.
    assert answers == {"demo-labeler": 40, "demo-labeler-2": 80, "demo-labeler-3": 80}
    assert states["tie"] == 1 and states["flagged"] == 1 and states["agreed"] > 20 and states["gold"] > 100
    [(passes, data)] = reports
    annotators = {a["username"]: a for a in json.loads(data)["annotators"]}
    careless = annotators["demo-labeler-3"]
    assert not passes and careless["unreliable"] and careless["gold_accuracy"] < 0.8
    # Scripted paces, not the split second a script takes: the careless labeler is the fastest.
    medians = [annotators[name]["median_seconds"] for name in ("demo-labeler-3", "demo-labeler-2", "demo-labeler")]
    assert 1 < medians[0] < medians[1] < medians[2] < 15
    # QC failed, so the demo approver overrode it in writing and froze the labels; both
    # fine-tunes trained on the frozen version, and round 2 over it has the run's suggestions.
    status, number, frozen_id, override = frozen
    assert status == "frozen" and number == 3 and json.loads(override)["approver"] == "demo-approver"
    assert trained_on == [frozen_id, frozen_id] and second_on == frozen_id
    assert second_items == 3000 and suggested == second_items
    # Version 1 went to staging and production, version 2 (the second run) to staging; both signed.
    assert second_status == "succeeded" and second_output and second_output != output
    assert sorted(versions) == [(1, "production", "valid", "support-intent-router"),
                                (2, "staging", "valid", "support-intent-router")]
    assert requests == [(1, "staging", "approved"), (1, "production", "approved"), (2, "staging", "approved"),
                        (2, "production", "blocked")]  # in the inbox: the labels' overridden QC gate wants a written override
    # support-router: v1 stable, v2 a 20 % canary waiting for its promotion; real traffic and feedback.
    assert releases == [(1, "", 0.0, "superseded"), (2, "canary", 20.0, "promoting")]
    # The traffic (stopped once and started again): 300 plain, then 300 drifting answers, each
    # sent once; feedback on every third plain answer and on every drifting one.
    assert sum(routes.values()) == 600 and 0 < routes.get("canary", 0) < 300
    assert 395 <= feedback <= 400
    assert production_approvers == ["demo-approver", "demo-approver-2"]
    # Monitoring: both versions' references from their own validation and test rows, the five
    # SLOs evaluated, the drifting wave found drifted on the stable version by the on-call
    # user's check, its alert open, every answer rolled up, and the feedback rule's retrain
    # draft waiting for a person.
    assert len(references) == 2 and {status for status, _ in references} == {"ready"} and references[0][1] > 0
    assert slos == (5, 5)
    assert len(checks) == 2 and any(drifted and requests >= 100 and estimated is not None
                                    for _, drifted, requests, estimated in checks), checks
    assert alerts.get("drift", 0) >= 1
    # The drifting tickets hide most of their message behind a long header: the model misses
    # more, the agents override it, and the feedback SLOs burn their budgets.
    assert alerts.get("slo", 0) >= 1
    assert drafts == [("ready",)]
    assert rolled == 600
    assert open_to_others(tmp_path) == []  # checkpoints, model cache and run outputs included
    # The start page's story panel reads where it got to.
    story = subprocess.run([sys.executable, "manage.py", "shell", "-c", "from lifecycle.tour import progress; "
                            "s = progress.steps(progress.demo_objects()); print(progress.now(s)); print([x.state for x in s])"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    headline, states = story.stdout.strip().splitlines()[-2:]
    assert headline == "retrain draft waiting for a person" and "later" not in states, story.stdout + story.stderr


@pytest.mark.django_db(transaction=True)
def test_the_demo_starts_two_workers_with_training_on_its_own(tmp_path, settings, redis, monkeypatch):
    """What `manage.py demo` starts beside its server: a worker for default and monitoring,
    and one for training, each registered in Redis and logging to its own file."""
    from rq import Worker

    from lifecycle.core.management.commands.demo import Command
    from tests.workers import wait_for, worker_env

    for name, value in worker_env().items():  # the workers are children: they read the environment
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SERVING_PORT", str(_free_port()))
    settings.DATA_DIR = tmp_path
    command = Command()
    command.children = []
    command.start_workers()
    try:
        workers = wait_for(lambda: len(Worker.all(connection=redis)) == 2 and Worker.all(connection=redis), 60,
                           "the demo's two workers to register")
        assert sorted(tuple(worker.queue_names()) for worker in workers) == [("default", "monitoring"), ("training",)]
    finally:
        command.stop_children()
    assert (tmp_path / "worker.log").exists() and (tmp_path / "training-worker.log").exists()
    assert (tmp_path / "serving.log").exists()  # and the serving process
