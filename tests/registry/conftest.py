import shutil
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    return settings.ARTIFACT_DIR


@pytest.fixture
def store_with_output(trained, artifacts):
    """This test's own copy of the trained output's artifacts (a test may tamper with it)."""
    shutil.copytree(trained["artifacts"], artifacts, dirs_exist_ok=True)
    for path in Path(artifacts).rglob("*"):
        if path.is_file():
            path.chmod(0o600)  # the store writes 0400; a tampering test must be able to write
    return artifacts
