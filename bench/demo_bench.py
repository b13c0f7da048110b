"""How long a first `manage.py demo` takes to tell its story, chapter by chapter.

Starts the demo (as scripts/demo does, with the installed .venv) on a new data folder, reads
its SQLite database every second, and prints the seconds from the start to each chapter: the
first version ingested, the labeling project, the first fine-tune running and done, version 1
registered, the deployment, the canary's first answer ("canary receiving traffic", the goal:
under 10 minutes on 2 cores), the drift alert, an SLO alert and the retrain draft. Then it
stops the demo as Ctrl-C does.

    .venv/bin/python bench/demo_bench.py [--data-dir /tmp/demo-bench] [--timeout 1800]
"""
import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [
    ("first version ingested", "SELECT count(*) FROM datasets_datasetversion"),
    ("labeling project with answers", "SELECT count(*) FROM labeling_assignment WHERE state = 'answered'"),
    ("first fine-tune running", "SELECT count(*) FROM runs_run r JOIN core_job j ON r.job_id = j.id "
                                "WHERE j.status IN ('running', 'succeeded')"),
    ("first fine-tune done", "SELECT count(*) FROM runs_run r JOIN core_job j ON r.job_id = j.id WHERE j.status = 'succeeded'"),
    ("version 1 registered", "SELECT count(*) FROM registry_modelversion"),
    ("deployed with a canary", "SELECT count(*) FROM deployments_release WHERE candidate_id IS NOT NULL"),
    ("canary receiving traffic", "SELECT count(*) FROM deployments_predictionlog WHERE route = 'canary'"),
    ("drift alert open", "SELECT count(*) FROM monitoring_alert WHERE kind = 'drift'"),
    ("SLO alert open", "SELECT count(*) FROM monitoring_alert WHERE kind = 'slo'"),
    ("retrain draft waiting", "SELECT count(*) FROM monitoring_retraindraft WHERE status = 'ready'"),
]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def count(db_path, sql):
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="/tmp/demo-bench")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    data = Path(args.data_dir)
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(mode=0o700, parents=True)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "DEBUG": "true",
           "LIFECYCLE_DATA_DIR": str(data), "REDIS_URL": f"unix://{data}/redis.sock", "SERVING_PORT": str(free_port())}
    started = time.monotonic()
    with open(data.parent / f"{data.name}.log", "w") as log:
        demo = subprocess.Popen([str(ROOT / ".venv/bin/python"), "manage.py", "demo", "--port", str(free_port())],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    reached = {}
    try:
        while len(reached) < len(CHAPTERS) and time.monotonic() - started < args.timeout and demo.poll() is None:
            for name, sql in CHAPTERS:
                if name not in reached and count(data / "lifecycle.sqlite3", sql):
                    reached[name] = time.monotonic() - started
                    print(f"{reached[name]:7.0f} s  {name}", flush=True)
            time.sleep(1)
    finally:
        os.kill(demo.pid, signal.SIGINT)
        demo.wait(timeout=60)
    for name, _ in CHAPTERS:
        if name not in reached:
            print(f"   not reached  {name}")
    print(f"cores: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
