"""The serving process end to end: one real `manage.py serve` for the whole module, driven over
HTTP with a plain client. Each test makes its own deployment (the database is emptied between
tests; the process follows it as it follows any change of routes)."""
import math
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import override_settings
from django.utils import timezone

from lifecycle.core.models import AuditEvent
from lifecycle.deployments import routing
from lifecycle.deployments.models import (Deployment, Feedback, PredictionLog, Release, Rollback, RouteAck,
                                          ServingProcess, ServingToken)
from tests.deployments.factories import make_deployment
from tests.deployments.serving_helpers import Client, start_serving, stop_serving, wait_applied
from tests.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
METRICS_TOKEN = "metrics-scrape-token-for-tests"
# Small, so that a burst of concurrent requests of MAX_QUEUE inputs each overloads the queue
# (the largest request allowed, SERVING_MAX_INPUTS, still fits it alone: a system check).
MAX_QUEUE = 64


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, trained):
    """One artifact store for the module: the serving process, started once, reads it."""
    folder = tmp_path_factory.mktemp("serving-store")
    shutil.copytree(trained["artifacts"], folder / "artifacts")
    for path in (folder / "artifacts").rglob("*"):
        if path.is_file():
            path.chmod(0o600)
    return folder


@pytest.fixture(autouse=True)
def artifacts(settings, store_dir):
    """The module's store for every test (in place of the registry conftest's per-test one)."""
    settings.ARTIFACT_DIR = store_dir / "artifacts"
    settings.MODEL_CACHE_DIR = store_dir / "model-cache"
    return settings.ARTIFACT_DIR


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, store_dir):
    with override_settings(ARTIFACT_DIR=store_dir / "artifacts", MODEL_CACHE_DIR=store_dir / "model-cache"):
        process = start_serving(store_dir, {"METRICS_TOKEN": METRICS_TOKEN, "SERVING_MAX_QUEUE": str(MAX_QUEUE),
                                           "SERVING_MAX_INPUTS": str(MAX_QUEUE)})
    yield process
    stop_serving(process)


def deploy(trained, people, tmp_path, server, **kwargs):
    """A deployment the module's serving process has applied, and a token for it that the
    process knows."""
    deployment = make_deployment(trained, people, tmp_path, **kwargs)
    key = ServingToken.issue(people["erin"], "test client", [deployment])[1]
    wait_known(server, deployment, key)
    return deployment, key


def wait_known(server, deployment, key):
    """Until the process serves `deployment`'s current release and knows `key`."""
    client = Client(server.url, key)
    wait_for(lambda: client.get(f"/v2/models/{deployment.name}/ready").status == 200, 60,
             f"{deployment.name} to be served with the new token")
    wait_applied(deployment)


def logged(request_ids, count, route=None):
    """The log rows of these requests, once `count` are written."""
    rows = PredictionLog.objects.filter(request_id__in=list(request_ids))
    if route:
        rows = rows.filter(route=route)
    return wait_for(lambda: list(rows.order_by("request_id", "position")) if rows.count() >= count else None,
                    15, f"{count} log rows")


def error_of(reply, status, code=None):
    """The reply's {"error": {"code", "message"}} after checking its status."""
    assert reply.status == status, reply
    error = reply.json["error"]
    assert set(error) == {"code", "message"} and error["message"], reply
    if code:
        assert error["code"] == code, reply
    return error


def test_predict_answers_each_input_and_logs_it_masked_with_its_features(server, trained, people, tmp_path):
    deployment, key = deploy(trained, people, tmp_path, server, mode="canary", share=10.0)
    release = deployment.current_release
    client = Client(server.url, key)
    reply = client.predict(deployment.name, ["my card was charged twice", "write to jane.doe@example.com please"])
    assert reply.status == 200, reply
    body = reply.json
    assert set(body) == {"request_id", "deployment", "model", "version", "route", "outputs"}
    side = body["route"]
    version = release.candidate if side == "canary" else release.stable
    assert (body["deployment"], body["model"], body["version"]) == (deployment.name, "intent-router", version.number)
    for output in body["outputs"]:
        assert output["label"] in version.labels and set(output["probabilities"]) == set(version.labels)
        assert math.isclose(sum(output["probabilities"].values()), 1, abs_tol=1e-3)
        assert output["label"] == max(output["probabilities"], key=output["probabilities"].get)
    rows = logged([body["request_id"]], 2)
    assert [(r.position, r.route, r.version_id, r.release_id, r.status) for r in rows] == [
        (0, side, version.pk, release.pk, "ok"), (1, side, version.pk, release.pk, "ok")]
    # The dataset's policy is "redact": the log keeps a placeholder, never the address.
    assert rows[1].input_text == "write to <EMAIL> please"
    assert rows[0].label == body["outputs"][0]["label"] and rows[0].output["probabilities"] == body["outputs"][0]["probabilities"]
    assert rows[0].text_length == len("my card was charged twice") and rows[0].token_count > 2
    assert len(rows[0].embedding) == 16 and rows[0].embedding != rows[1].embedding
    assert rows[0].latency_ms > 0 and rows[0].process
    # Its heartbeat (every second) says what it has loaded.
    process = wait_for(lambda: ServingProcess.objects.filter(
        pk=rows[0].process, loaded__contains=[{"version": release.stable_id}]).first(), 5, "the heartbeat")
    assert process.notices_ok and process.port == server.port
    assert {entry["version"] for entry in process.loaded} >= {release.stable_id, release.candidate_id}


def test_the_open_inference_protocol_endpoints_follow_the_spec(server, trained, people, tmp_path):
    deployment, key = deploy(trained, people, tmp_path, server)
    stable = deployment.current_release.stable
    client = Client(server.url, key)
    assert client.get("/v2/health/live").json == {"live": True}
    assert (client.get("/v2/health/ready").status, client.get("/v2/health/ready").json) == (200, {"ready": True})
    assert set(client.get("/v2").json) == {"name", "version", "extensions"}
    metadata = client.get(f"/v2/models/{deployment.name}")
    assert metadata.status == 200, metadata
    assert metadata.json["name"] == deployment.name and metadata.json["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o for o in metadata.json["outputs"]}["probabilities"] == {
        "name": "probabilities", "datatype": "FP32", "shape": [-1, len(stable.labels)]}
    assert client.get(f"/v2/models/{deployment.name}/ready").json == {"name": deployment.name, "ready": True}

    texts = ["where is my parcel", "reset my password", "cancel my subscription"]
    reply = client.post(f"/v2/models/{deployment.name}/infer", {
        "id": "req-42", "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": texts}]})
    assert reply.status == 200, reply
    body = reply.json
    assert (body["model_name"], body["model_version"], body["id"]) == (deployment.name, str(stable.number), "req-42")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert (outputs["label"]["datatype"], outputs["label"]["shape"]) == ("BYTES", [3])
    assert all(label in stable.labels for label in outputs["label"]["data"])
    probabilities = outputs["probabilities"]
    classes = len(stable.labels)
    assert (probabilities["datatype"], probabilities["shape"]) == ("FP32", [3, classes])
    assert len(probabilities["data"]) == 3 * classes
    for row in range(3):
        assert math.isclose(sum(probabilities["data"][row * classes:(row + 1) * classes]), 1, abs_tol=1e-3)
    logged([body["parameters"]["request_id"]], 3)

    only_label = client.post(f"/v2/models/{deployment.name}/infer", {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}], "outputs": [{"name": "label"}]})
    assert [o["name"] for o in only_label.json["outputs"]] == ["label"]
    assert only_label.json["id"] == only_label.json["parameters"]["request_id"]  # no id given: ours

    # Errors are {"error": "<message>"}, as the protocol says.
    for request, status in [
        ({"inputs": [{"name": "text", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}, 400),
        ({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}, 400),
        ({"inputs": []}, 400),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "logits"}]}, 400),
        ({"inputs": "text"}, 400),
    ]:
        refused = client.post(f"/v2/models/{deployment.name}/infer", request)
        assert refused.status == status and isinstance(refused.json["error"], str), (request, refused)
    assert client.post("/v2/models/no-such-model/infer", {"inputs": []}).status == 404
    assert isinstance(client.get("/v2/models/no-such-model").json["error"], str)
    assert client.post(f"/v2/models/{deployment.name}/infer", {"inputs": []}, token="").status == 401


def test_every_bad_input_gets_a_clear_error_in_one_shape_and_nothing_is_logged(server, trained, people, tmp_path,
                                                                               settings):
    deployment, key = deploy(trained, people, tmp_path, server)
    other = Deployment.create(people["erin"], name="other-router", model=deployment.model,
                              stable=deployment.current_release.stable)
    other_key = ServingToken.issue(people["erin"], "other client", [other])[1]
    revoked, revoked_key = ServingToken.issue(people["erin"], "old client", [deployment])
    client = Client(server.url, key)
    url = f"/v1/deployments/{deployment.name}/predict"
    answered = []

    def good(reply):
        if reply.status == 200:
            answered.append(reply.json["request_id"])
        return reply.status == 200

    wait_for(lambda: good(client.predict(deployment.name, ["ready?"], token=revoked_key)), 10, "the new tokens")

    error_of(client.predict(deployment.name, []), 422, "empty_inputs")
    error_of(client.predict(deployment.name, ["x"] * 10_000), 413, "too_many_inputs")
    error_of(client.predict(deployment.name, ["x" * 5_000_000]), 413, "body_too_large")
    error_of(client.predict(deployment.name, ["x" * (settings.SERVING_MAX_INPUT_CHARS + 1)]), 422, "input_too_long")
    for body in ({"inputs": "one text"}, {"inputs": [1, 2]}, {"inputs": [["nested"]]}, {"inputs": None}, {},
                 {"inputs": ["a"], "key": 5}, {"inputs": ["a"], "unknown": True}, ["a"], "a"):
        error_of(client.post(url, body), 422, "invalid_request")
    error_of(client.post(url, raw=b'{"inputs": ["a"'), 400, "invalid_json")
    error_of(client.post(url, raw=b'{"inputs": ["caf\xe9"]}'), 400, "invalid_utf8")
    error_of(client.post(url, raw=b'{"inputs": ["a\\u0000b"]}'), 422, "invalid_text")
    error_of(client.post(url, raw=b'{"inputs": ["\\ud800"]}'), 422, "invalid_text")
    error_of(client.predict("no-such-deployment", ["a"]), 404, "not_found")
    missing = client.predict(deployment.name, ["a"], token="")
    error_of(missing, 401, "unauthorized")
    assert missing.headers.get("www-authenticate") == "Bearer"
    error_of(client.predict(deployment.name, ["a"], token="lcs_not-a-token"), 401, "unauthorized")
    error_of(client.predict(deployment.name, ["a"], token=other_key), 403, "forbidden")
    revoked.revoke(people["erin"])
    # Until the process re-reads its tokens (at most SERVING_ROUTES_REFRESH_SECONDS) it still answers.
    wait_for(lambda: not good(client.predict(deployment.name, ["a"], token=revoked_key)), 10, "the revoked token refused")
    error_of(client.predict(deployment.name, ["a"], token=revoked_key), 401, "unauthorized")
    error_of(client.get(url), 405, "method_not_allowed")
    error_of(client.get("/v1/no-such-endpoint"), 404, "not_found")

    # Refused requests wrote nothing: the log holds the answered ones (the last one written
    # after every refusal), no more.
    assert good(client.predict(deployment.name, ["the good request after the refusals"]))
    logged(answered[-1:], 1)
    rows = PredictionLog.objects.filter(deployment_id__in=[deployment.pk, other.pk])
    assert sorted(str(r) for r in rows.values_list("request_id", flat=True)) == sorted(answered)


def test_overload_is_answered_503_with_retry_after_while_the_rest_are_answered(server, trained, people, tmp_path):
    deployment, key = deploy(trained, people, tmp_path, server)

    def send(_):
        client = Client(server.url, key)
        try:
            return client.predict(deployment.name, ["a long enough ticket about a parcel " * 4] * MAX_QUEUE)
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(send, range(16)))
    statuses = {r.status for r in replies}
    assert statuses == {200, 503}, statuses
    over = next(r for r in replies if r.status == 503)
    error_of(over, 503, "overloaded")
    assert over.headers.get("retry-after") == "1"


def test_a_token_over_its_rate_limit_is_answered_429_with_retry_after(server, trained, people, tmp_path):
    deployment, _ = deploy(trained, people, tmp_path, server)
    key = ServingToken.issue(people["erin"], "slow client", [deployment], rate_per_second=0.1, burst=3)[1]
    client = Client(server.url, key)
    wait_for(lambda: client.get(f"/v2/models/{deployment.name}/ready").status == 200, 10, "the new token")
    replies = [client.predict(deployment.name, [f"request {i}"]) for i in range(5)]
    assert [r.status for r in replies] == [200, 200, 200, 429, 429]
    error_of(replies[3], 429, "rate_limited")
    assert int(replies[3].headers["retry-after"]) >= 1
    logged([r.json["request_id"] for r in replies[:3]], 3)
    assert PredictionLog.objects.filter(deployment_id=deployment.pk).count() == 3


def test_a_canary_takes_its_share_and_a_sticky_key_keeps_its_side_as_the_share_grows(server, trained, people,
                                                                                      tmp_path):
    deployment, key = deploy(trained, people, tmp_path, server, mode="canary", share=30.0)
    release = deployment.current_release
    client = Client(server.url, key)
    n = 400
    sides = [client.predict(deployment.name, ["where is my order"]).json["route"] for _ in range(n)]
    canary = sides.count("canary")
    # Binomial(400, 0.3): mean 120, sd 9.2; five sd either way.
    assert abs(canary - 0.3 * n) <= 5 * math.sqrt(n * 0.3 * 0.7), canary

    release.set_share(people["erin"], 10.0)
    wait_applied(deployment)
    keys = [f"user-{i}" for i in range(150)]
    at_10 = {k: client.predict(deployment.name, ["hi"], key=k).json["route"] for k in keys}
    release.set_share(people["erin"], 20.0)
    wait_applied(deployment)
    at_20 = {k: client.predict(deployment.name, ["hi"], key=k).json["route"] for k in keys}
    # A key's side is the hash of (key, release) against the share: exactly what routing says.
    assert at_10 == {k: routing.choose(10.0, release.pk, k) for k in keys}
    assert at_20 == {k: routing.choose(20.0, release.pk, k) for k in keys}
    moved_back = [k for k in keys if at_10[k] == "canary" and at_20[k] != "canary"]
    assert not moved_back and sum(v == "canary" for v in at_20.values()) > sum(v == "canary" for v in at_10.values())
    again = {k: client.predict(deployment.name, ["again"], key=k).json["route"] for k in keys[:40]}
    assert again == {k: at_20[k] for k in keys[:40]}


def test_a_shadow_answers_a_copy_that_is_logged_and_never_returned(server, trained, people, tmp_path):
    deployment, key = deploy(trained, people, tmp_path, server, mode="shadow")
    release = deployment.current_release
    client = Client(server.url, key)
    replies = [client.predict(deployment.name, ["refund my order", "my app crashes"]) for _ in range(20)]
    assert {(r.json["route"], r.json["version"]) for r in replies} == {("stable", release.stable.number)}
    ids = [r.json["request_id"] for r in replies]
    shadow = logged(ids, 40, route="shadow")
    assert {(r.version_id, r.release_id) for r in shadow} == {(release.candidate_id, release.pk)}
    live = logged(ids, 40, route="stable")
    assert {str(r.request_id) for r in shadow} == {str(r.request_id) for r in live} == set(ids)
    assert all(r.label and len(r.embedding) == 16 for r in shadow)


def test_a_release_change_is_picked_up_without_a_restart_within_two_seconds(server, trained, people, tmp_path):
    deployment, key = deploy(trained, people, tmp_path, server)
    client = Client(server.url, key)
    assert client.predict(deployment.name, ["hi"]).json["route"] == "stable"
    candidate = deployment.model.versions.get(stage="staging")
    before = ServingProcess.objects.get(port=server.port).pk
    release = deployment.start_release(people["erin"], candidate=candidate, mode="canary", share=60.0, reason="try")
    generation = Deployment.objects.get(pk=deployment.pk).generation
    # The product's promise: every serving process switches within 2 s (the notice, or the re-read).
    wait_for(lambda: RouteAck.objects.filter(deployment=deployment, generation=generation).exists(), 2.0,
             "the serving process to apply the new release")
    sides = {client.predict(deployment.name, ["hi"], key=f"k{i}").json["route"] for i in range(40)}
    assert sides == {"stable", "canary"}
    assert ServingProcess.objects.get(port=server.port).pk == before  # the same process, not a restart
    assert release.number == 2


def test_rollback_under_load_fails_no_request_and_stores_its_time(server, trained, people, tmp_path):
    deployment, key = deploy(trained, people, tmp_path, server, mode="canary", share=50.0)
    release = deployment.current_release
    results, stop = [], threading.Event()

    def load(worker):
        client = Client(server.url, key)
        i = 0
        while not stop.is_set():
            started = timezone.now()
            reply = client.predict(deployment.name, [f"ticket {worker}-{i}"])
            results.append((started, reply.status, reply.json.get("route")))
            i += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(1 for r in results if r[2] == "canary") >= 10, 30, "canary traffic")
        rollback = release.rollback(people["ona"], "error rate up on the canary")
        done = wait_for(lambda: Rollback.objects.filter(pk=rollback.pk, completed_at__isnull=False).first(), 10,
                        "the rollback to complete")
        wait_for(lambda: sum(1 for r in results if r[0] > done.completed_at) >= 40, 30, "traffic after the rollback")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert [r for r in results if r[1] != 200] == []
    after = [r for r in results if r[0] > done.completed_at]
    assert after and {r[2] for r in after} == {"stable"}
    assert done.time_to_rollback_ms is not None and done.time_to_rollback_ms >= 0
    assert [p["process"] for p in done.processes] == [ServingProcess.objects.get(port=server.port).pk]
    assert Release.objects.get(pk=release.pk).status == Release.Status.ROLLED_BACK
    assert AuditEvent.objects.filter(action="release.rolled_back", object_id=str(release.pk)).count() == 1


def test_feedback_on_an_answer_is_stored_with_the_same_tokens(server, trained, people, tmp_path):
    deployment, key = deploy(trained, people, tmp_path, server)
    client = Client(server.url, key)
    answer = client.predict(deployment.name, ["my parcel never arrived", "hello"]).json
    predicted = answer["outputs"][1]["label"]
    other = next(label for label in deployment.current_release.stable.labels if label != predicted)
    # Straight after the answer: its row may still be in the process's buffer (flushed on demand).
    reply = client.post("/v1/feedback", {"request_id": answer["request_id"], "position": 1, "label": other,
                                         "note": "a person checked"})
    assert reply.status == 200, reply
    assert reply.json == {"request_id": answer["request_id"], "position": 1, "predicted_label": predicted,
                          "label": other, "correct": False, "override": True}
    given = Feedback.objects.get(request_id=answer["request_id"], position=1)
    assert (given.is_override, given.token.name, given.deployment_id) == (True, "test client", deployment.pk)
    assert client.post("/v1/feedback", {"request_id": answer["request_id"], "correct": True}).json["override"] is False

    error_of(client.post("/v1/feedback", {"request_id": str(uuid.uuid4()), "correct": True}), 404, "not_found")
    error_of(client.post("/v1/feedback", {"request_id": "not-an-id", "correct": True}), 422, "invalid_request")
    error_of(client.post("/v1/feedback", {"request_id": answer["request_id"]}), 422, "invalid_feedback")
    error_of(client.post("/v1/feedback", {"request_id": answer["request_id"], "label": "no-such-label"}), 422,
             "invalid_feedback")
    error_of(client.post("/v1/feedback", {"request_id": answer["request_id"], "correct": "yes"}), 422, "invalid_request")
    error_of(client.post("/v1/feedback", {"request_id": answer["request_id"], "correct": True}, token=""), 401)
    stranger = Deployment.create(people["erin"], name="elsewhere", model=deployment.model,
                                 stable=deployment.current_release.stable)
    stranger_key = ServingToken.issue(people["erin"], "elsewhere client", [stranger])[1]
    wait_for(lambda: client.post("/v1/feedback", {"request_id": answer["request_id"], "correct": True},
                                 token=stranger_key).status == 403, 10, "the other deployment's token refused")
    assert Feedback.objects.count() == 2


def test_metrics_need_the_token_and_carry_the_names_the_dashboards_read(server, trained, people, tmp_path):
    deployment, key = deploy(trained, people, tmp_path, server)
    client = Client(server.url, key)
    client.predict(deployment.name, ["one", "two", "three"])
    error_of(client.get("/metrics", token=""), 401)
    error_of(client.get("/metrics", token="wrong"), 401)
    reply = client.get("/metrics", token=METRICS_TOKEN)
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.body.decode()
    assert f'lifecycle_serving_requests_total{{deployment="{deployment.name}",route="stable",status="ok"}}' in text
    assert f'lifecycle_serving_request_duration_seconds_bucket{{deployment="{deployment.name}",le="0.05",route="stable"}}' in text
    stable = deployment.current_release.stable_id
    for name in (f'lifecycle_serving_batch_size_bucket{{le="4.0",version="{stable}"}}',
                 f'lifecycle_serving_queue_depth{{version="{stable}"}}',
                 f'lifecycle_serving_model_load_seconds_count{{version="{stable}"}}',
                 "lifecycle_serving_loaded_models ", "lifecycle_serving_loaded_model_bytes ",
                 "lifecycle_serving_prediction_log_buffered ", "lifecycle_serving_prediction_log_written_total ",
                 "lifecycle_serving_prediction_log_spooled_total ", "lifecycle_serving_prediction_log_dropped_total "):
        assert name in text, name


def test_the_openapi_document_is_served_and_no_docs_page_loads_from_a_cdn(server):
    client = Client(server.url)
    document = client.get("/openapi.json").json
    assert {"/v1/deployments/{name}/predict", "/v1/feedback", "/v2/models/{name}/infer"} <= set(document["paths"])
    body = document["paths"]["/v1/deployments/{name}/predict"]["post"]["requestBody"]
    assert "inputs" in body["content"]["application/json"]["schema"]["properties"]
    assert client.get("/docs").status == 404 and client.get("/redoc").status == 404
