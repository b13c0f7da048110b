"""The data dir (SQLite file with sessions and password hashes, artifacts, logs, the private
Redis) and everything in it is for the owner alone."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.core.artifacts import LocalArtifactStore

ROOT = Path(__file__).resolve().parents[2]


def open_to_others(root):
    """Every path under root (root included) that grants group or other any permission."""
    paths = [Path(root)]
    for folder, dirs, files in os.walk(root):
        paths += [Path(folder) / name for name in dirs + files]
    return [f"{oct(path.lstat().st_mode & 0o777)} {path}" for path in paths if path.lstat().st_mode & 0o077]


@pytest.mark.slow
def test_the_demo_makes_its_data_dir_owner_only(tmp_path):
    data = tmp_path / "demo"
    data.mkdir(mode=0o755)  # as an older version left it
    data.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "DEBUG": "true", "LIFECYCLE_DATA_DIR": str(data),
           "REDIS_URL": f"unix://{data}/redis.sock"}
    result = subprocess.run([sys.executable, "manage.py", "demo", "--no-server"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert {"lifecycle.sqlite3", "redis.log", "demo-logins.txt", "artifacts"} <= {p.name for p in data.iterdir()}
    assert any((data / "artifacts").rglob("[0-9a-f]" * 64))  # the demo upload went into the store
    assert open_to_others(data) == []


def test_artifact_folders_and_files_are_owner_only_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store = LocalArtifactStore(tmp_path / "artifacts")
        info = store.put_bytes(b"weights")
    finally:
        os.umask(old)
    assert open_to_others(store.root) == []
    assert store.path(info.sha256).stat().st_mode & 0o777 == 0o400
