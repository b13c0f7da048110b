"""The prediction log writer (serving/predlog.py) against the real PostgreSQL: COPY writes what
was added; with the database cut (tests/deployments/pgproxy.py) entries are spooled and replayed
in order, none lost or duplicated, also when a replay is interrupted or its process killed; the
spool's bound drops and counts; SQLite writes by bulk_create (a subprocess on a SQLite file)."""
import json
import logging
import os
import random
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone
from prometheus_client import REGISTRY

from lifecycle.deployments.models import PredictionLog
from lifecycle.deployments.serving.predlog import PredictionBuffer, spool_tag
from tests.deployments.factories import make_deployment
from tests.deployments.pgproxy import PgProxy
from tests.workers import ROOT, output, start_manage, stop, wait_for

FIELDS = ("request_id", "position", "deployment_id", "release_id", "version_id", "route", "input_text", "output",
          "label", "confidence", "latency_ms", "status", "error", "text_length", "token_count", "embedding",
          "process", "created_at")
T0 = timezone.now().replace(microsecond=123456)


def make_rows(n, *, seed=0, ids=(1, 1, 2, 3), inputs_per_request=2, text="ticket"):
    """`n` log entries as the serving process makes them: requests of a few inputs, each with a
    stable answer and (every third request) a shadow's, a 16-number embedding, an error now and then."""
    rng = random.Random(seed)
    deployment, release, stable, candidate = ids
    rows, request = [], None
    while len(rows) < n:
        request, shadow = uuid.UUID(int=rng.getrandbits(128)), rng.random() < 0.33
        for position in range(inputs_per_request):
            for route, version in (("stable", stable), ("shadow", candidate))[:2 if shadow else 1]:
                failed = rng.random() < 0.05
                p = round(rng.random(), 6)
                label = rng.choice(["billing", "refund", "login"])
                rows.append({
                    "request_id": request, "position": position, "deployment_id": deployment, "release_id": release,
                    "version_id": version, "route": route, "input_text": f"{text} {len(rows)} — naïve café ☕",
                    "output": {} if failed else {"label": label, "probabilities": {label: p, "other": 1 - p}},
                    "label": "" if failed else label, "confidence": None if failed else p,
                    "latency_ms": rng.uniform(1, 50), "status": "error" if failed else "ok",
                    "error": "RuntimeError: out of memory" if failed else "", "text_length": 20 + position,
                    "token_count": 7, "embedding": [rng.gauss(0, 1) for _ in range(16)], "process": "host:1:t0",
                    "created_at": T0 + timedelta(milliseconds=len(rows)),
                })
    return rows[:n]


def logged(**filters):
    """The log as stored, in write order (ids), as dicts of the fields add() takes."""
    return list(PredictionLog.objects.filter(**filters).order_by("id").values(*FIELDS))


def keys(rows):
    return [(r["request_id"], r["route"], r["position"]) for r in rows]


@pytest.fixture
def proxy():
    db = connections["default"].settings_dict
    with PgProxy(upstream=(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))) as proxy:
        yield proxy


# A second alias for the test database that goes through the proxy (the port is set when a test
# starts one). Declared at import, before the test databases are set up: a test mirror of
# "default" gets no database of its own and is not flushed, and a test that names it in
# `databases` may use it from the buffer's thread.
PROXIED = "proxied"
_default = connections.settings["default"]
connections.settings[PROXIED] = {**_default, "HOST": "127.0.0.1", "PORT": "9",
                                 "TEST": {**_default["TEST"], "MIRROR": "default", "NAME": None}}
through_proxy = pytest.mark.django_db(transaction=True, databases=["default", PROXIED])


@pytest.fixture
def proxied(proxy):
    """The alias's connections go through `proxy`."""
    connections.settings[PROXIED]["PORT"] = str(proxy.port)
    yield PROXIED
    connections[PROXIED].close()


@pytest.fixture
def buffers(tmp_path):
    """Make buffers that are stopped (their thread and connection gone) after the test."""
    made = []

    def make(process_id="host:1:t0", *, using="default", flush_seconds=0.05, spool_max_bytes=10**9, start=True):
        buffer = PredictionBuffer(process_id, flush_seconds=flush_seconds, spool_dir=tmp_path / "spool",
                                  spool_max_bytes=spool_max_bytes, using=using)
        made.append(buffer)
        return buffer.start() if start else buffer

    yield make
    for buffer in made:
        buffer.stop()


def spool_files(tmp_path):
    return sorted((tmp_path / "spool").glob("*.jsonl"))


def metric(name):
    return REGISTRY.get_sample_value(name) or 0.0


# --- COPY ------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_copy_writes_every_entry_as_added(store_with_output, trained, people, tmp_path, buffers):
    deployment = make_deployment(trained, people, tmp_path, mode="shadow")
    release = deployment.current_release
    rows = make_rows(600, ids=(deployment.pk, release.pk, release.stable_id, release.candidate_id))
    rows[5]["input_text"] = "a NUL \x00 inside"  # PostgreSQL text cannot hold one
    rows[6]["output"] = {"text": "nul \x00 too", "probabilities": {"x": float("nan")}}
    rows[7]["error"] = "E" * 500  # longer than the column
    written_before = metric("lifecycle_serving_prediction_log_written_total")
    buffer = buffers()
    for start in range(0, 600, 37):  # many small adds, as requests come
        buffer.add(rows[start:start + 37])
    assert buffer.flush()

    assert buffer.stats() == {"buffered": 0, "written": 600, "spooled": 0, "replayed": 0, "dropped": 0,
                              "skipped": 0, "spool_bytes": 0}
    assert metric("lifecycle_serving_prediction_log_written_total") - written_before == 600
    stored = logged()
    assert len(stored) == 600
    rows[5]["input_text"] = "a NUL \ufffd inside"
    rows[6]["output"] = {"text": "nul \ufffd too", "probabilities": {"x": None}}
    rows[7]["error"] = "E" * 300
    assert stored == rows  # every field, in the order added: uuids, JSON, embeddings, times
    assert {r.version_id for r in PredictionLog.objects.filter(route="shadow")} == {release.candidate_id}
    assert not spool_files(tmp_path)


# --- the database cut for a moment -------------------------------------------------------------------


@through_proxy
def test_a_cut_spools_then_replays_in_order(proxied, proxy, buffers, tmp_path):
    rows = make_rows(400)
    a, b, c, d = rows[:100], rows[100:250], rows[250:300], rows[300:]
    buffer = buffers(using=proxied)
    buffer.add(a)
    assert buffer.flush()
    assert buffer.stats()["written"] == 100

    proxy.cut()
    buffer.add(b)
    assert buffer.flush()
    buffer.add(c)  # goes after b in the spool, though the writer tried the database again
    assert buffer.flush()
    assert buffer.stats() | {"spool_bytes": 0} == {"buffered": 0, "written": 100, "spooled": 200, "replayed": 0,
                                                   "dropped": 0, "skipped": 0, "spool_bytes": 0}
    files = spool_files(tmp_path)
    assert [json.loads(line)["request_id"] for f in files for line in f.read_text().splitlines()] == \
        [str(r["request_id"]) for r in b + c]
    assert keys(logged()) == keys(a)  # nothing of b or c half-written

    proxy.restore()
    buffer.add(d)
    assert buffer.flush()
    assert keys(logged()) == keys(rows)  # the spool first, oldest first, then what came after
    assert buffer.stats() | {"spool_bytes": 0} == {"buffered": 0, "written": 400, "spooled": 200, "replayed": 200,
                                                   "dropped": 0, "skipped": 0, "spool_bytes": 0}
    assert not spool_files(tmp_path)
    assert proxy.connections >= 2  # the connection the cut killed was closed and a new one made


@through_proxy
def test_the_background_thread_replays_when_the_database_returns(proxied, proxy, buffers, tmp_path):
    """No flush() call: the periodic writer spools during the cut and replays after it."""
    rows = make_rows(300)
    buffer = buffers(using=proxied)
    proxy.cut()
    buffer.add(rows[:200])
    wait_for(lambda: buffer.stats()["spooled"] == 200, 10, "the writer to spool the entries")
    proxy.restore()
    buffer.add(rows[200:])
    wait_for(lambda: buffer.stats()["written"] == 300, 40, "the writer to replay and write")
    assert keys(logged()) == keys(rows)
    stats = buffer.stats()  # entries added while it waits to try again are spooled behind the others
    assert stats["replayed"] == stats["spooled"] >= 200 and not spool_files(tmp_path)


@through_proxy
def test_a_cut_in_the_middle_of_a_copy_leaves_no_half_batch(proxied, proxy, buffers, tmp_path):
    rows = make_rows(12_000, text="a longer ticket text " * 10)
    buffer = buffers(using=proxied, start=False)
    buffer.add(rows)
    proxy.cut_after(1_000_000)  # about a third of the first batch's COPY
    buffer.flush()

    assert proxy.is_cut
    assert PredictionLog.objects.count() == 0  # the transaction died with its connection
    assert buffer.stats()["spooled"] == 12_000
    proxy.restore()
    buffer.flush()
    assert keys(logged()) == keys(rows)
    assert buffer.stats()["replayed"] == 12_000 and buffer.stats()["skipped"] == 0


@through_proxy
def test_a_replay_interrupted_half_way_and_run_again(proxied, proxy, buffers, tmp_path):
    rows = make_rows(2_000)
    buffer = buffers(using=proxied, start=False)
    buffer.replay_rows = 200  # ten transactions
    proxy.cut()
    buffer.add(rows)
    buffer.flush()
    assert buffer.stats()["spooled"] == 2_000

    proxy.cut_after(400_000)
    buffer.flush()
    committed = PredictionLog.objects.count()
    assert 0 < committed < 2_000, committed  # some chunks in, then the cut
    assert committed % 200 == 0  # whole chunks only
    assert spool_files(tmp_path)

    proxy.restore()
    buffer.flush()
    assert keys(logged()) == keys(rows)
    assert buffer.stats() | {"spool_bytes": 0} == {"buffered": 0, "written": 2_000, "spooled": 2_000,
                                                   "replayed": 2_000, "dropped": 0, "skipped": 0, "spool_bytes": 0}
    assert not spool_files(tmp_path)


CHILD = """
import json, os, time
from django.db import connections
from lifecycle.deployments.serving.predlog import PredictionBuffer
from tests.deployments.test_predlog import make_rows

connections.settings["proxied"] = dict(connections["default"].settings_dict, HOST="127.0.0.1",
                                       PORT=os.environ["PGPROXY_PORT"])
buffer = PredictionBuffer("dying:1:t0", flush_seconds=3600, spool_dir=os.environ["SPOOL"], spool_max_bytes=10**9,
                          using="proxied")
buffer.replay_rows = 200
buffer.add(make_rows(2000, seed=7))
buffer.flush()
print("SPOOLED", json.dumps(buffer.stats()), flush=True)
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.05)
buffer.flush()
print("REPLAY STOPPED", json.dumps(buffer.stats()), flush=True)
time.sleep(600)
"""


@through_proxy
def test_the_spool_of_a_process_killed_mid_replay_is_adopted_without_duplicates(proxied, proxy, buffers,
                                                                                   tmp_path):
    """A serving process spools, starts replaying, is killed half-way. The next process adopts
    its file and replays all of it: what had committed is skipped, the rest written, once."""
    proxy.cut()
    child = start_manage(tmp_path, "shell", "-c", CHILD, env={
        "PGPROXY_PORT": str(proxy.port), "SPOOL": str(tmp_path / "spool"), "GO": str(tmp_path / "go")})
    try:
        wait_for(lambda: "SPOOLED" in output(child), 60, "the child to spool")
        proxy.cut_after(400_000)
        (tmp_path / "go").touch()
        wait_for(lambda: "REPLAY STOPPED" in output(child), 60, "the child's replay to be cut")
        committed = PredictionLog.objects.count()
        assert 0 < committed < 2_000, output(child)
    finally:
        stop(child)  # SIGKILL: no stop(), no flush, the lock freed by the kernel
    assert [f.name.split(".")[0] for f in spool_files(tmp_path)] == [spool_tag("dying:1:t0")]

    proxy.restore()
    heir = buffers("host:2:t1", using=proxied)
    assert heir.flush()
    rows = make_rows(2000, seed=7)
    assert keys(logged()) == keys(rows)
    stats = heir.stats()
    assert (stats["replayed"], stats["skipped"]) == (2_000 - committed, committed)
    assert not spool_files(tmp_path) and not list((tmp_path / "spool").glob("dying*.lock"))


@through_proxy
def test_stop_spools_what_is_left_and_the_next_process_replays_it(proxied, proxy, buffers, tmp_path):
    rows = make_rows(50)
    first = buffers(using=proxied, flush_seconds=3600)
    proxy.cut()
    first.add(rows)
    first.stop()
    assert first.stats()["spooled"] == 50 and PredictionLog.objects.count() == 0

    proxy.restore()
    second = buffers("host:2:t1", using=proxied)
    assert second.flush()
    assert keys(logged()) == keys(rows)
    assert not spool_files(tmp_path)


# --- bounds and bad input ------------------------------------------------------------------------------


@through_proxy
def test_past_the_spool_bound_new_entries_are_dropped_and_counted(proxied, proxy, buffers, tmp_path, caplog):
    rows = make_rows(500)
    dropped_before = metric("lifecycle_serving_prediction_log_dropped_total")
    spooled_before = metric("lifecycle_serving_prediction_log_spooled_total")
    buffer = buffers(using=proxied, start=False, spool_max_bytes=60_000)
    proxy.cut()
    with caplog.at_level(logging.WARNING, logger="lifecycle.deployments.serving.predlog"):
        buffer.add(rows[:300])
        buffer.flush()
        buffer.add(rows[300:])  # the spool is full: all of these go
        buffer.flush()
    stats = buffer.stats()
    assert 0 < stats["spooled"] < 300
    assert stats["spooled"] + stats["dropped"] == 500
    assert stats["spool_bytes"] == sum(f.stat().st_size for f in spool_files(tmp_path)) <= 60_000
    assert "dropping new entries, the spool holds" in caplog.text
    assert metric("lifecycle_serving_prediction_log_dropped_total") - dropped_before == stats["dropped"]
    assert metric("lifecycle_serving_prediction_log_spooled_total") - spooled_before == stats["spooled"]

    proxy.restore()
    buffer.flush()
    assert keys(logged()) == keys(rows[:stats["spooled"]])  # the oldest kept, the newest dropped
    assert buffer.stats()["written"] == stats["spooled"] and not spool_files(tmp_path)


def test_past_the_buffer_bound_add_drops_and_counts(tmp_path):
    """Only reached when the writer is stuck; add() still returns at once."""
    buffer = PredictionBuffer("host:1:t0", flush_seconds=1, spool_dir=tmp_path, spool_max_bytes=10**6)
    buffer.max_buffered = 100
    buffer.add(make_rows(60))
    buffer.add(make_rows(60, seed=1))
    assert buffer.stats()["buffered"] == 100 and buffer.stats()["dropped"] == 20
    assert metric("lifecycle_serving_prediction_log_buffered") == 100


@pytest.mark.parametrize("rows, error, message", [
    ("not a list", TypeError, "takes a list"),
    ([["a", "list"]], TypeError, "is a dict"),
    (make_rows(2)[:1] + [{"request_id": uuid.uuid4(), "route": "stable"}], ValueError,
     "lacks created_at, deployment_id, latency_ms, release_id, version_id"),
])
def test_bad_entries_are_refused_at_add_and_nothing_is_buffered(tmp_path, rows, error, message):
    buffer = PredictionBuffer("host:1:t0", flush_seconds=1, spool_dir=tmp_path, spool_max_bytes=10**6)
    with pytest.raises(error, match=message):
        buffer.add(rows)
    assert buffer.stats()["buffered"] == 0


def test_an_entry_the_database_refuses_is_dropped_alone_and_a_repeat_is_skipped(transactional_db, buffers, caplog):
    rows = make_rows(100)
    buffer = buffers(start=False)
    buffer.add(rows[:10])
    buffer.flush()
    bad = dict(rows[40], position=-1)  # the column's check refuses it
    buffer.add(rows[5:40] + [bad] + rows[41:])  # 5 already written
    with caplog.at_level(logging.ERROR, logger="lifecycle.deployments.serving.predlog"):
        buffer.flush()
    assert keys(logged()) == keys(rows[:40] + rows[41:])
    assert buffer.stats() | {"spool_bytes": 0} == {"buffered": 0, "written": 99, "spooled": 0, "replayed": 0,
                                                   "dropped": 1, "skipped": 5, "spool_bytes": 0}
    assert f"refused an entry of request {bad['request_id']}" in caplog.text


# --- SQLite ------------------------------------------------------------------------------------------------


SQLITE_CHILD = """
import json
from lifecycle.deployments.models import PredictionLog
from lifecycle.deployments.serving.predlog import PredictionBuffer
from tests.deployments.test_predlog import FIELDS, make_rows, logged

rows = make_rows(700)
buffer = PredictionBuffer("host:1:t0", flush_seconds=0.05, spool_dir="{spool}", spool_max_bytes=10**6).start()
buffer.add(rows)
buffer.flush()
first = buffer.stats()
buffer.add(rows[600:])  # again: a repeat is skipped, not duplicated
buffer.flush()
buffer.stop()
print("RESULT", json.dumps({{"first": first, "then": buffer.stats(), "count": PredictionLog.objects.count(),
                            "same": logged() == rows}}))
"""


def test_sqlite_writes_by_bulk_create(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "LIFECYCLE_DATA_DIR": str(tmp_path),
           "PYTHONUNBUFFERED": "1"}
    for args in (["migrate", "-v0"], ["shell", "-c", SQLITE_CHILD.format(spool=tmp_path / "spool")]):
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert report["first"] | {"spool_bytes": 0} == {"buffered": 0, "written": 700, "spooled": 0, "replayed": 0,
                                                    "dropped": 0, "skipped": 0, "spool_bytes": 0}
    assert report["then"]["written"] == 700 and report["then"]["skipped"] == 100
    assert report["count"] == 700 and report["same"]
    assert not list(Path(tmp_path / "spool").glob("*.jsonl"))
