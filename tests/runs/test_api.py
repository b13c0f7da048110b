"""The runs JSON API: start a run with a bearer token, read it back, read its curves."""
import json

import pytest
from django.test import Client

from lifecycle.core.models import ApiToken, Job
from lifecycle.runs.models import Run
from tests.conftest import make_user
from tests.runs.test_web import MINILM, add_points, make_run, make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(tmp_path):
    return make_version(tmp_path)


def api_client(*roles, username="ci-bot"):
    _, key = ApiToken.issue(make_user(username, *roles), "ci")
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def api():
    return api_client("ml_engineer")


def post_json(client, body, **extra):
    return client.post("/api/v1/runs", body if isinstance(body, str) else json.dumps(body),
                       content_type="application/json", **extra)


def config(version, **changes):
    return {"dataset_version": version.pk, "base_model": MINILM, "method": "lora", "epochs": 1, "max_length": 64, **changes}


def training_jobs():
    return Job.objects.filter(queue="training")


def test_create_with_a_token(api, version):
    response = post_json(api, config(version, name="from CI", target_modules=["query", "value"], learning_rate=2e-4))
    assert response.status_code == 201, response.content
    run = Run.objects.get()
    assert response.json() == {"id": run.pk, "status": "queued", "url": f"/runs/{run.pk}/", "api_url": f"/api/v1/runs/{run.pk}"}
    assert run.name == "from CI" and run.created_by.username == "ci-bot"
    assert run.config["target_modules"] == ["query", "value"] and run.config["learning_rate"] == 2e-4
    assert training_jobs().get() == run.job and run.job.kwargs == {"run_id": run.pk}


@pytest.mark.parametrize("changes, field, message", [
    ({"learning_rate": 0}, "learning_rate", "must be a number above 0"),
    ({"learning_rate": "NaN"}, "learning_rate", "not NaN"),
    ({"dataset_version": 999999}, "dataset_version", "there is no dataset version 999999"),
    ({"target_modules": ["q_proj"]}, "target_modules", "has no module called q_proj"),
    ({"max_length": 10000}, "max_length", "limit of 512 positions"),
    ({"epochs": {"a": 1}}, "epochs", "must be a number"),
    ({"learning_rat": 0.1}, "", "unknown settings: learning_rat"),
    ({"name": ["x"]}, "name", "must be text"),
    ({"name": "x" * 201}, "name", "at most 200 characters"),
])
def test_config_errors_are_400_with_every_message(api, version, changes, field, message):
    response = post_json(api, config(version, **changes))
    assert response.status_code == 400
    assert any(message in m for m in response.json()["errors"][field]), response.json()
    assert not Run.objects.exists() and not training_jobs().exists()


@pytest.mark.parametrize("body, message", [
    ('{"dataset_version": ', "the body is not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ("", "must be a JSON object"),
    ('"lora"', "must be a JSON object"),
])
def test_malformed_bodies_are_400(api, version, body, message):
    response = post_json(api, body)
    assert response.status_code == 400 and message in response.json()["errors"][""][0]
    assert not Run.objects.exists()


def test_queue_down_is_503_and_writes_nothing(api, version, monkeypatch):
    from lifecycle.core import queues

    def down(queue_name="default"):
        raise queues.QueueUnavailable("ConnectionError")

    monkeypatch.setattr(queues, "ping", down)
    response = post_json(api, config(version))
    assert response.status_code == 503 and "The job queue is unavailable" in response.json()["error"]
    assert not Run.objects.exists() and not training_jobs().exists()


def test_who_may_call(version):
    run = make_run(version)
    assert post_json(api_client("viewer", username="v"), config(version)).status_code == 403
    assert post_json(api_client("approver", username="a"), config(version)).status_code == 403
    labeler = api_client("labeler", username="l")
    assert labeler.get(f"/api/v1/runs/{run.pk}").status_code == 403
    assert labeler.get(f"/api/v1/runs/{run.pk}/metrics").status_code == 403
    assert api_client("viewer", username="v2").get(f"/api/v1/runs/{run.pk}").status_code == 200
    assert post_json(Client(), config(version)).status_code == 401
    assert Client().get(f"/api/v1/runs/{run.pk}").status_code == 401
    assert post_json(Client(HTTP_AUTHORIZATION="Bearer lc_not-a-token"), config(version)).status_code == 401
    assert Run.objects.count() == 1


def test_a_session_post_needs_the_csrf_token(client, version):
    """As for the datasets API: only a bearer token waives CSRF, a browser session does not."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(make_user("erin", "ml_engineer"))
    assert post_json(browser, config(version)).status_code == 403
    _, key = ApiToken.issue(make_user("bot", "ml_engineer"), "ci")
    with_token = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {key}")
    assert post_json(with_token, config(version)).status_code == 201
    assert Run.objects.count() == 1


def test_detail_and_metrics(api, version):
    run = make_run(version, status=Job.Status.FAILED, error="ValueError: bad batch", progress={"step": 4, "total_steps": 8},
                   test_metrics={"accuracy": 0.5})
    add_points(run, "train", [1, 2, 3, 4], loss=[1.0, 0.9, 0.8, 0.7])
    add_points(run, "eval", [4], eval_loss=[0.85])
    body = api.get(f"/api/v1/runs/{run.pk}").json()
    assert {"id", "name", "status", "config", "progress", "test_metrics", "output_sha256", "environment",
            "warnings", "error"} <= set(body)
    assert body["id"] == run.pk and body["status"] == "failed" and body["error"] == "ValueError: bad batch"
    assert body["config"]["base_model"] == MINILM and body["progress"]["step"] == 4 and body["test_metrics"] == {"accuracy": 0.5}
    metrics = api.get(f"/api/v1/runs/{run.pk}/metrics").json()
    assert metrics == {"run": run.pk, "train": {"loss": {"steps": [1, 2, 3, 4], "values": [1.0, 0.9, 0.8, 0.7]}},
                       "eval": {"eval_loss": {"steps": [4], "values": [0.85]}}}
    newer = api.get(f"/api/v1/runs/{run.pk}/metrics", {"since": 3}).json()
    assert newer["train"]["loss"]["steps"] == [4] and newer["eval"]["eval_loss"]["steps"] == [4]
    assert api.get("/api/v1/runs/999999").status_code == 404
    assert api.get(f"/api/v1/runs/{run.pk}/metrics", {"since": "soon"}).status_code == 400
