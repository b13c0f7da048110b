"""The README's run command is restartable: Ctrl-C in the middle of the demo's fine-tune and
`scripts/demo` again continues the same run (no second dataset, no second run); `--reset`
starts over, and is refused while a demo still runs from the folder."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.core.test_demo import ROOT, _free_port


def _query(tmp_path, sql):
    try:
        with sqlite3.connect(tmp_path / "lifecycle.sqlite3", timeout=30) as db:
            return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []


def _wait(tmp_path, sql, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _query(tmp_path, sql)
        if rows and all(rows[0]):
            return rows
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _start(env, tmp_path, n):
    log = open(tmp_path / f"demo-{n}.log", "w")
    return subprocess.Popen([sys.executable, "manage.py", "demo", "--port", str(_free_port())], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _ctrl_c(demo, tmp_path):
    os.kill(demo.pid, signal.SIGINT)  # what the terminal sends the demo; it stops its children
    demo.wait(timeout=120)
    # Nothing of it trains on: no process (a work horse leads a session of its own) is left.
    assert _left_running(tmp_path) == []


def _left_running(tmp_path):
    mine = f"LIFECYCLE_DATA_DIR={tmp_path}".encode()
    left = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mine in environ.read_bytes().split(b"\0"):
                command = (environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                left.append(f"{environ.parent.name}: {command}")
        except OSError:  # gone, or not ours to read
            continue
    return left


RUN = "Demo: LoRA on MiniLM, support intents"
TRAINING = ("SELECT r.attempt, json_extract(r.progress, '$.step') FROM runs_run r JOIN core_job j ON r.job_id = j.id "
            f"WHERE r.name = '{RUN}' AND j.status = 'running' "
            "AND json_extract(r.progress, '$.step') >= {step} AND r.attempt = {attempt}")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_ctrl_c_mid_training_and_the_demo_again_continues_the_same_run_then_reset_starts_over(tmp_path):
    env = {"PATH": os.environ["PATH"], "DEBUG": "true", "LIFECYCLE_DATA_DIR": str(tmp_path),
           "REDIS_URL": f"unix://{tmp_path}/redis.sock", "SERVING_PORT": str(_free_port()), "PYTHONUNBUFFERED": "1"}
    (tmp_path / "notes.txt").write_text("the user's own file")
    demo = _start(env, tmp_path, 1)
    try:
        _wait(tmp_path, TRAINING.format(step=3, attempt=1), 900, "the demo run to train a few steps")
        # --reset while the demo runs from this folder: refused, nothing deleted.
        refused = subprocess.run([sys.executable, "manage.py", "demo", "--reset", "--no-server"], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "a demo is still running from" in refused.stderr
        assert (tmp_path / "lifecycle.sqlite3").exists()
    finally:
        _ctrl_c(demo, tmp_path)
    [(status,)] = _query(tmp_path, f"SELECT j.status FROM runs_run r JOIN core_job j ON r.job_id = j.id WHERE r.name = '{RUN}'")
    assert status == "running"  # cut off: nobody was left to say otherwise

    demo = _start(env, tmp_path, 2)
    try:
        _wait(tmp_path, TRAINING.format(step=1, attempt=2), 600, "the same run to train again")
    finally:
        _ctrl_c(demo, tmp_path)
    second_start = (tmp_path / "demo-2.log").read_text()
    assert "continues from step" in second_start, second_start
    # The same runs (the canary's, queued behind the first, has the name of its own), one each.
    assert _query(tmp_path, "SELECT count(*), count(DISTINCT name) FROM runs_run") == [(2, 2)]
    assert _query(tmp_path, "SELECT count(*) FROM datasets_dataset") == [(1,)]
    assert _query(tmp_path, "SELECT count(*) FROM datasets_upload") == [(1,)]
    assert _query(tmp_path, "SELECT count(*) FROM datasets_datasetversion WHERE number = 1") == [(1,)]
    [(run_id,)] = _query(tmp_path, f"SELECT id FROM runs_run WHERE name = '{RUN}'")
    attempts = _query(tmp_path, f"SELECT key, status FROM core_job WHERE key LIKE 'run:{run_id}:%' ORDER BY id")
    assert attempts == [(f"run:{run_id}:1", "interrupted"), (f"run:{run_id}:2", "running")], attempts
    assert _query(tmp_path, "SELECT count(*) FROM core_auditevent WHERE action = 'run.resumed'") == [(1,)]
    logins = (tmp_path / "demo-logins.txt").read_text()

    reset = subprocess.run([sys.executable, "manage.py", "demo", "--reset", "--no-server"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert reset.returncode == 0, reset.stderr[-3000:]
    assert "Reset: removed" in reset.stdout
    assert (tmp_path / "notes.txt").read_text() == "the user's own file"  # only the demo's own files go
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("*.safetensors"))
    assert _query(tmp_path, "SELECT count(*) FROM runs_run") == [(0,)]
    assert _query(tmp_path, "SELECT count(*) FROM datasets_upload") == [(1,)]  # the story starts over
    assert (tmp_path / "demo-logins.txt").read_text() != logins  # new demo passwords
