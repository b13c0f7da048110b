"""Path parameters never reach the file system; artifacts stream back verified."""
import hashlib
from pathlib import Path

import pytest
from django.conf import settings

from lifecycle.core.artifacts import get_store
from tests.conftest import make_user

EVIL = ["../x", "..\\x", "%2e%2e%2f", "%252e%252e%252f", "a;/../", "..%2f..%2fetc%2fpasswd", "%00", "a%00b",
        "/etc/passwd", "....//....//etc/passwd", "A" * 64, "0" * 63]


def snapshot(root):
    return sorted(str(p) for p in Path(root).rglob("*"))


@pytest.fixture
def engineer_client(client, db, tmp_path, settings):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    client.force_login(make_user("erin", "ml_engineer"))
    return client


@pytest.mark.parametrize("value", EVIL)
def test_path_parameters_never_reach_the_file_system(engineer_client, value, tmp_path):
    before_data, before_tmp = snapshot(settings.DATA_DIR), snapshot(tmp_path)
    response = engineer_client.get(f"/artifacts/{value}")
    assert response.status_code == 400
    assert snapshot(settings.DATA_DIR) == before_data
    assert snapshot(tmp_path) == before_tmp


@pytest.mark.parametrize("value", ["../x", "%2e%2e%2f", "a;/../", "a%00b", "A" * 64])
def test_bad_artifact_ids_answer_400_with_a_reason(engineer_client, value):
    response = engineer_client.get(f"/artifacts/{value}")
    assert response.status_code == 400
    assert b"expected a sha256 hex digest" in response.content


def test_artifact_downloads_verified_with_etag(engineer_client):
    data = b"weights" * 1000
    info = get_store().put_bytes(data)
    response = engineer_client.get(f"/artifacts/{info.sha256}")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == data
    assert response["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert engineer_client.get(f"/artifacts/{'0' * 64}").status_code == 404


def test_labeler_cannot_download_artifacts(client, db):
    client.force_login(make_user("lee", "labeler"))
    assert client.get(f"/artifacts/{'0' * 64}").status_code == 403
