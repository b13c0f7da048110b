"""The serving process end to end: one real `manage.py serve` for the whole module, driven over
HTTP with a plain client. Each test makes its own deployment (the database is emptied between
tests; the process follows it as it would follow any change of routes)."""
import shutil
from pathlib import Path

import pytest
from django.test import override_settings

from lifecycle.deployments.models import PredictionLog, ServingToken
from tests.deployments.factories import make_deployment
from tests.deployments.serving_helpers import Client, start_serving, stop_serving, wait_applied
from tests.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, trained):
    """One artifact store for the module: the serving process started once reads it."""
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
        process = start_serving(store_dir)
    yield process
    stop_serving(process)


@pytest.fixture
def deployment(trained, store_with_output, people, tmp_path):
    return make_deployment(trained, people, tmp_path, mode="canary", share=10.0)


def token_for(people, *deployments, **kwargs):
    return ServingToken.issue(people["erin"], "test client", deployments, **kwargs)[1]


def test_predict_answers_labels_and_probabilities_and_logs_each_input(server, deployment, people):
    key = token_for(people, deployment)
    wait_applied(deployment)
    client = Client(server.url, key)
    reply = client.predict(deployment.name, ["my card was charged twice", "where is my parcel"])
    assert reply.status == 200, reply
    body = reply.json
    assert body["deployment"] == deployment.name and body["route"] in ("stable", "canary")
    assert len(body["outputs"]) == 2
    for output in body["outputs"]:
        assert output["label"] in deployment.current_release.stable.labels
        assert abs(sum(output["probabilities"].values()) - 1) < 1e-3
    rows = wait_for(lambda: list(PredictionLog.objects.filter(request_id=body["request_id"]).order_by("position")) or None,
                    10, "the log rows")
    assert [r.position for r in rows] == [0, 1]
    assert len(rows[0].embedding) == 16 and rows[0].token_count > 2 and rows[0].text_length == len("my card was charged twice")
