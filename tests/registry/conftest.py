import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The session's one real training run: its report (tests/registry/trained.py) and the
    artifact folder holding its output."""
    out = tmp_path_factory.mktemp("trained")
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{out / 'db.sqlite3'}", "DEBUG": "true",
           "LIFECYCLE_DATA_DIR": str(out), "ARTIFACT_DIR": str(out / "artifacts"),
           "MODEL_CACHE_DIR": str(out / "model-cache")}
    for args in (["migrate", "-v0"], ["shell", "-c", f"from tests.registry.trained import train; train({str(out)!r})"]):
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "trained.json").read_text())
    report["artifacts"] = out / "artifacts"
    return report


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
