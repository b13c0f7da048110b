"""Faults a serving process must ride out, each against real serving processes of its own: an
artifact tampered with after release, Redis down, a process killed mid-traffic while another
keeps serving (that one with two workers sharing its port)."""
import importlib.util
import threading

import pytest
from django.db import connection

from lifecycle.core.artifacts import get_store
from lifecycle.core.models import AuditEvent
from lifecycle.deployments.models import PredictionLog, Release, Rollback, RouteAck, ServingProcess, ServingToken
from lifecycle.registry.models import ModelVersion
from lifecycle.runs import outputs
from tests.deployments.factories import make_deployment
from tests.deployments.serving_helpers import (Client, CuttableProxy, database_url_via, free_port, start_serving,
                                               stop_serving, wait_ready)
from tests.workers import output, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("store_with_output")]
SPOOLING_BUFFER = importlib.util.find_spec("lifecycle.deployments.serving.predlog") is not None


def tamper_weights(version):
    """Flip one byte of the version's weights in the artifact store, as a disk fault or an
    attacker would."""
    manifest = outputs.read_manifest(version.output_sha256)
    weights = next(sha for name, sha in manifest["files"].items() if name.endswith(".safetensors"))
    path = get_store().path(weights)
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_candidate_tampered_on_disk_is_dropped_with_the_reason_and_stable_keeps_serving(trained, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path)
    key = ServingToken.issue(people["erin"], "client", [deployment])[1]
    server = start_serving(tmp_path)
    try:
        client = Client(server.url, key)
        assert client.predict(deployment.name, ["before"]).status == 200
        candidate = deployment.model.versions.get(stage="staging")
        tamper_weights(candidate)  # stable is loaded already; the candidate is verified when it loads
        release = deployment.start_release(people["erin"], candidate=candidate, mode="canary", share=50.0,
                                           reason="try v2")
        rollback = wait_for(lambda: Rollback.objects.filter(release=release, completed_at__isnull=False).first(), 60,
                            "the candidate to be dropped")
        assert rollback.automatic and "could not be loaded" in rollback.reason and "signature" in rollback.reason
        assert Release.objects.get(pk=release.pk).status == Release.Status.ROLLED_BACK
        assert ModelVersion.objects.get(pk=candidate.pk).signature_status == ModelVersion.Signature.INVALID
        event = AuditEvent.objects.get(action="release.rolled_back", object_id=str(release.pk))
        assert event.payload["automatic"] and "signature" in event.payload["reason"]
        replies = [client.predict(deployment.name, ["after"], key=f"user-{i}") for i in range(30)]
        assert {(r.status, r.json["route"], r.json["version"]) for r in replies} == {
            (200, "stable", release.stable.number)}
        assert not PredictionLog.objects.filter(version_id=candidate.pk).exists()
        assert client.get("/metrics").status == 404  # no METRICS_TOKEN and DEBUG off: not there
    finally:
        stop_serving(server)


def test_with_redis_down_routes_are_still_served_and_followed_and_notices_are_marked_late(trained, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path)
    # A burst of one: with Redis away the limit cannot be checked, and requests are let through.
    key = ServingToken.issue(people["erin"], "client", [deployment], rate_per_second=0.1, burst=1)[1]
    closed = free_port()  # nothing listens there
    server = start_serving(tmp_path, {"REDIS_URL": f"redis://127.0.0.1:{closed}/0", "METRICS_TOKEN": "scrape"})
    try:
        client = Client(server.url, key)
        assert [client.predict(deployment.name, ["hello"]).status for _ in range(3)] == [200, 200, 200]
        process = wait_for(lambda: ServingProcess.objects.filter(port=server.port, notices_ok=False).first(), 10,
                           "the heartbeat to say notices are down")
        assert not process.notices_ok
        # No notice reaches it; the periodic re-read still picks up a release.
        candidate = deployment.model.versions.get(stage="staging")
        deployment.start_release(people["erin"], candidate=candidate, mode="canary", share=50.0, reason="try")
        deployment.refresh_from_db()
        wait_for(lambda: RouteAck.objects.filter(process=process, deployment=deployment,
                                                 generation=deployment.generation).exists(), 30,
                 "the re-read to apply the release")
        sides = {client.predict(deployment.name, ["hi"], key=f"k{i}").json["route"] for i in range(30)}
        assert sides == {"stable", "canary"}
        scrape = client.get("/metrics", token="scrape").body.decode()
        unchecked = next(line for line in scrape.splitlines()
                         if line.startswith("lifecycle_serving_rate_limit_unchecked_total "))
        assert float(unchecked.split()[1]) >= 3
    finally:
        stop_serving(server)


def test_a_process_killed_mid_traffic_leaves_the_other_serving_and_no_half_written_log(trained, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path)
    key = ServingToken.issue(people["erin"], "client", [deployment])[1]
    doomed = start_serving(tmp_path, ready=False)
    (tmp_path / "metrics").mkdir()
    survivor = start_serving(tmp_path, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
                                        "METRICS_TOKEN": "scrape"}, args=["--workers", "2"], ready=False)
    try:
        wait_ready(doomed)
        wait_ready(survivor)
        # Both of the survivor's workers are serving processes of their own.
        wait_for(lambda: RouteAck.objects.filter(process__port=survivor.port, deployment=deployment).count() == 2, 60,
                 "both workers to apply the routes")
        results = {doomed.url: [], survivor.url: []}
        stop = threading.Event()

        def load(url):
            client = Client(url, key, timeout=10)
            while not stop.is_set():
                try:
                    reply = client.predict(deployment.name, ["one", "two", "three"])
                    results[url].append((reply.status, reply.json.get("request_id")))
                except OSError:
                    results[url].append(("down", None))
                    client.close()

        threads = [threading.Thread(target=load, args=(url,)) for url in (doomed.url, doomed.url, survivor.url,
                                                                          survivor.url)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(results[doomed.url]) >= 20, 60, "traffic on the doomed process")
            stop_serving(doomed)  # SIGKILL: no shutdown, no last flush
            served = len(results[survivor.url])
            wait_for(lambda: len(results[survivor.url]) >= served + 40, 60, "traffic after the kill")
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert {status for status, _ in results[survivor.url]} == {200}
        assert ("down", None) in results[doomed.url]
        answered = {rid for status, rid in results[survivor.url]}
        logged = wait_for(lambda: set(map(str, PredictionLog.objects.filter(request_id__in=answered)
                                          .values_list("request_id", flat=True).distinct())) >= answered or None,
                          30, "the survivor's log rows")
        assert logged
        # Every request in the log is whole: all three inputs or none (a batch is written at once).
        positions = {}
        for request_id, position in PredictionLog.objects.filter(deployment_id=deployment.pk).values_list(
                "request_id", "position"):
            positions.setdefault(request_id, set()).add(position)
        assert positions and all(found == {0, 1, 2} for found in positions.values())
        # Either worker's /metrics sums both (one version loaded in each).
        scrape = Client(survivor.url, "scrape").get("/metrics").body.decode()
        assert "lifecycle_serving_loaded_models 2.0" in scrape.splitlines()
    finally:
        stop_serving(doomed)
        stop_serving(survivor)


@pytest.mark.skipif(not SPOOLING_BUFFER, reason="needs the spooling prediction log buffer (serving/predlog.py)")
def test_with_the_database_away_for_a_moment_answers_go_on_and_every_log_row_arrives_once(trained, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path)
    key = ServingToken.issue(people["erin"], "client", [deployment])[1]
    db = connection.settings_dict
    proxy = CuttableProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
    server = start_serving(tmp_path, {"DATABASE_URL": database_url_via(proxy.port)})
    try:
        client = Client(server.url, key)
        before = [client.predict(deployment.name, [f"before {i}"]) for i in range(5)]
        proxy.cut()
        during = [client.predict(deployment.name, [f"during {i}", "and a second input"]) for i in range(20)]
        wait_for(lambda: "heartbeat not written" in output(server), 10, "the process to find the database away")
        during += [client.predict(deployment.name, [f"still {i}", "and a second input"]) for i in range(5)]
        assert {r.status for r in before + during} == {200}
        proxy.restore()
        expected = {r.json["request_id"]: len(r.json["outputs"]) for r in before + during}
        rows = PredictionLog.objects.filter(request_id__in=list(expected))
        wait_for(lambda: rows.count() >= sum(expected.values()), 30, "the spooled rows to be written")
        counts = {}
        for request_id in rows.values_list("request_id", flat=True):
            counts[str(request_id)] = counts.get(str(request_id), 0) + 1
        assert counts == expected  # none lost, none twice
    finally:
        stop_serving(server)
        proxy.cut()
