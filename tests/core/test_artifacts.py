"""The content-addressed artifact store: local folder and S3 (against moto's S3 server)."""
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import boto3
import pytest
from django.core.exceptions import ImproperlyConfigured

from lifecycle.core.artifacts import (
    ArtifactCorrupt,
    ArtifactInfo,
    ArtifactNotFound,
    InvalidArtifactKey,
    LocalArtifactStore,
    S3ArtifactStore,
    get_store,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024

VALID = hashlib.sha256(b"never stored").hexdigest()
INVALID_KEYS = [
    "../x",
    "..\\x",
    "%2e%2e%2f",
    VALID.upper(),
    VALID[:63],
    VALID + "0",
    VALID[:63] + "\x00",
    VALID + "\n",
    f"{VALID[:2]}/{VALID[2:4]}/{VALID}",
    "/etc/passwd",
    "",
    VALID.encode(),
    None,
]


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(settings, tmp_path):
    settings.ARTIFACT_BACKEND = "local"
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return get_store()


def stored_files(root):
    """Every file in the store except the temporary folder."""
    return sorted(p for p in root.rglob("*") if p.is_file() and "tmp" not in p.relative_to(root).parts)


def leftover_temp_files(root):
    tmp = root / "tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


def flip_byte(path, offset):
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


# --- selection -----------------------------------------------------------------------


def test_get_store_is_cached_and_follows_settings(settings, tmp_path):
    settings.ARTIFACT_BACKEND = "local"
    settings.ARTIFACT_DIR = tmp_path / "one"
    first = get_store()
    assert isinstance(first, LocalArtifactStore)
    assert get_store() is first
    settings.ARTIFACT_DIR = tmp_path / "two"
    assert get_store().root == tmp_path / "two"


def test_unknown_backend_is_refused(settings):
    settings.ARTIFACT_BACKEND = "ftp"
    with pytest.raises(ImproperlyConfigured, match="ARTIFACT_BACKEND is 'ftp'.*local, s3"):
        get_store()


def test_s3_without_bucket_is_refused(settings):
    settings.ARTIFACT_BACKEND = "s3"
    settings.ARTIFACT_S3_BUCKET = ""
    with pytest.raises(ImproperlyConfigured, match="ARTIFACT_S3_BUCKET"):
        get_store()


# --- local: round trip and layout -----------------------------------------------------


def test_bytes_round_trip_and_layout(store):
    data = b"weights" * 1000
    info = store.put_bytes(data)
    assert info == ArtifactInfo(sha(data), len(data))
    path = store.root / info.sha256[:2] / info.sha256[2:4] / info.sha256
    assert stored_files(store.root) == [path]
    assert path.stat().st_mode & 0o777 == 0o400
    assert store.read_bytes(info.sha256) == data
    assert store.exists(info.sha256) and store.size(info.sha256) == len(data)
    assert leftover_temp_files(store.root) == []


def test_stream_round_trip_larger_than_a_chunk(store, tmp_path):
    data = os.urandom(3 * MiB + 17)
    info = store.put_stream(io.BytesIO(data))
    assert info.sha256 == sha(data)
    with store.open(info.sha256) as reader:
        assert reader.read(0) == b""
        assert reader.read(10) == data[:10]
        assert reader.read() == data[10:]
    dest = store.copy_to(info.sha256, tmp_path / "copy.bin")
    assert dest.read_bytes() == data
    assert store.verify(info.sha256) == info


def test_put_file_and_empty_artifact(store, tmp_path):
    source = tmp_path / "report.json"
    source.write_bytes(b'{"f1": 0.91}')
    assert store.put_file(source).sha256 == sha(b'{"f1": 0.91}')
    empty = store.put_bytes(b"")
    assert store.read_bytes(empty.sha256) == b""


def test_same_content_twice_keeps_the_first_file(store):
    info = store.put_bytes(b"same")
    inode = store.path(info.sha256).stat().st_ino
    assert store.put_bytes(b"same") == info
    assert store.path(info.sha256).stat().st_ino == inode
    assert leftover_temp_files(store.root) == []


def test_truncated_file_is_replaced_by_a_new_put(store):
    info = store.put_bytes(b"0123456789")
    path = store.path(info.sha256)
    path.chmod(0o644)
    path.write_bytes(b"01234")
    store.put_bytes(b"0123456789")
    assert store.read_bytes(info.sha256) == b"0123456789"


def test_missing_artifact(store, tmp_path):
    with pytest.raises(ArtifactNotFound):
        store.open(VALID)
    with pytest.raises(ArtifactNotFound):
        store.size(VALID)
    with pytest.raises(ArtifactNotFound):
        store.copy_to(VALID, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert store.exists(VALID) is False
    assert store.delete(VALID) is False


def test_delete(store):
    info = store.put_bytes(b"orphan")
    assert store.delete(info.sha256) is True
    assert not store.exists(info.sha256)
    assert stored_files(store.root) == []


def test_failed_write_leaves_nothing_behind(store):
    class Broken:
        calls = 0

        def read(self, n):
            self.calls += 1
            if self.calls > 2:
                raise OSError("connection reset")
            return b"data"

    with pytest.raises(OSError, match="connection reset"):
        store.put_stream(Broken())
    assert stored_files(store.root) == []
    assert leftover_temp_files(store.root) == []


# --- local: corruption -----------------------------------------------------------------


def test_flipped_byte_is_detected_on_every_read_path(store, tmp_path):
    data = os.urandom(2 * MiB)
    info = store.put_bytes(data)
    flip_byte(store.path(info.sha256), MiB + 5)

    with pytest.raises(ArtifactCorrupt, match=info.sha256):
        store.read_bytes(info.sha256)
    with pytest.raises(ArtifactCorrupt):
        store.verify(info.sha256)
    with pytest.raises(ArtifactCorrupt):
        store.copy_to(info.sha256, tmp_path / "dest.bin")
    assert list(tmp_path.glob("*dest.bin*")) == []

    reader = store.open(info.sha256)
    assert len(reader.read(MiB)) == MiB  # bytes before the end are not yet known to be bad
    with pytest.raises(ArtifactCorrupt):
        while reader.read(MiB):
            pass
    with pytest.raises(ArtifactCorrupt):
        reader.read(1)  # the end keeps failing: it cannot be mistaken for a clean EOF
    reader.close()


def test_close_after_reading_every_byte_verifies(store):
    info = store.put_bytes(b"exactly these bytes")
    flip_byte(store.path(info.sha256), 0)
    reader = store.open(info.sha256)
    assert len(reader.read(info.size)) == info.size
    with pytest.raises(ArtifactCorrupt):
        reader.close()


def test_truncated_file_is_corrupt(store):
    info = store.put_bytes(b"0123456789")
    path = store.path(info.sha256)
    path.chmod(0o644)
    path.write_bytes(b"01234")
    with pytest.raises(ArtifactCorrupt):
        store.read_bytes(info.sha256)


# --- keys --------------------------------------------------------------------------------

_FS_EVENTS = {"open", "os.mkdir", "os.remove", "os.rename", "os.chmod", "os.listdir", "os.scandir"}
_watch = threading.local()
_hook_installed = []


def _audit(event, args):
    events = getattr(_watch, "events", None)
    if events is not None and event in _FS_EVENTS:
        events.append((event, args))


@pytest.fixture
def fs_spy(monkeypatch):
    """Records file system access made by this thread: audit events plus os.stat/lstat."""
    if not _hook_installed:
        sys.addaudithook(_audit)  # cannot be removed, so it is installed once and gated
        _hook_installed.append(True)
    events = []
    for name in ("stat", "lstat"):
        real = getattr(os, name)

        def spy(path, *args, _real=real, _name=name, **kwargs):
            if getattr(_watch, "events", None) is not None:
                _watch.events.append((f"os.{_name}", (path,)))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    _watch.events = events
    yield events
    _watch.events = None


@pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
def test_invalid_keys_never_touch_the_file_system(settings, tmp_path, fs_spy, key):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.ARTIFACT_BACKEND = "local"
    store = get_store()
    calls = [
        lambda: store.open(key),
        lambda: store.read_bytes(key),
        lambda: store.exists(key),
        lambda: store.size(key),
        lambda: store.delete(key),
        lambda: store.verify(key),
        lambda: store.copy_to(key, tmp_path / "dest"),
        lambda: store.path(key),
    ]
    for call in calls:
        with pytest.raises(InvalidArtifactKey):
            call()
    assert fs_spy == []
    assert list(tmp_path.iterdir()) == []


def test_spy_sees_file_system_access(store, fs_spy):
    # Guards the test above: the spy must notice the accesses a valid key makes.
    store.exists(VALID)
    with pytest.raises(ArtifactNotFound):
        store.open(VALID)
    assert {event for event, _ in fs_spy} >= {"os.stat", "open"}


def test_invalid_key_is_a_value_error():
    assert issubclass(InvalidArtifactKey, ValueError)


# --- local: concurrent writers -------------------------------------------------------------


def assert_one_intact_file(store, data):
    digest = sha(data)
    assert stored_files(store.root) == [store.path(digest)]
    assert store.read_bytes(digest) == data
    assert store.path(digest).stat().st_mode & 0o777 == 0o400
    assert leftover_temp_files(store.root) == []


def test_threads_writing_the_same_content(store):
    data = os.urandom(8 * MiB)
    barrier = threading.Barrier(8)
    results, errors = [], []

    def write():
        barrier.wait()
        try:
            results.append(store.put_bytes(data))
        except Exception as exc:  # reported below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(results) == {ArtifactInfo(sha(data), len(data))}
    assert_one_intact_file(store, data)


WRITER = """
import os, sys, time
from pathlib import Path
from lifecycle.core.artifacts import get_store

store = get_store()
data = bytes(range(256)) * (32 * 1024)  # 8 MiB, the same in every process
go = Path(sys.argv[1])
while not go.exists():  # start together so that the writes overlap
    time.sleep(0.001)
for _ in range(3):
    print(store.put_bytes(data).sha256)
"""


def child_env(artifact_dir):
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="lifecycle.settings",
        ARTIFACT_BACKEND="local",
        ARTIFACT_DIR=str(artifact_dir),
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


def test_processes_writing_the_same_content(store, tmp_path):
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(go)],
            cwd=REPO_ROOT, env=child_env(store.root), stdout=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    go.touch()
    outputs = [child.communicate(timeout=60)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0, 0, 0]
    data = bytes(range(256)) * (32 * 1024)
    assert {line for out in outputs for line in out.split()} == {sha(data)}
    assert_one_intact_file(store, data)


# --- local: memory stays flat for a large stream ----------------------------------------------

LARGE_WRITE = """
import hashlib, json, os, resource, sys, time
from lifecycle.core.artifacts import get_store

MiB = 1024 * 1024


class GeneratedFile:
    '''read() hands out the next generated block; the whole stream never exists at once.'''

    def __init__(self, total):
        self.blocks = self._generate(total)
        self.pending = b""
        self.digest = hashlib.sha256()

    @staticmethod
    def _generate(total):
        base = os.urandom(MiB)
        for i in range(total // MiB):
            yield i.to_bytes(8, "big") + base[8:]

    def read(self, n=-1):
        if not self.pending:
            self.pending = next(self.blocks, b"")
        n = len(self.pending) if n < 0 else n
        out, self.pending = self.pending[:n], self.pending[n:]
        self.digest.update(out)
        return out


def peak_mb():
    # ru_maxrss survives execve on Linux, so in a child it starts at the parent's peak
    # (pytest's); VmHWM belongs to this process's own address space.
    try:
        with open("/proc/self/status") as status:
            line = next(l for l in status if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


store = get_store()
small = GeneratedFile(5 * MiB)
assert store.put_stream(small).sha256 == small.digest.hexdigest()
store.verify(small.digest.hexdigest())
baseline = peak_mb()

started = time.monotonic()
large = GeneratedFile(int(sys.argv[1]) * MiB)
info = store.put_stream(large)
after_write = peak_mb()
written = time.monotonic()
verified = store.verify(info.sha256)
after_read = peak_mb()
print(json.dumps({
    "sha256_ok": info.sha256 == large.digest.hexdigest() and verified == info,
    "size": info.size,
    "baseline_mb": baseline,
    "after_write_mb": after_write,
    "after_read_mb": after_read,
    "write_s": written - started,
    "read_s": time.monotonic() - written,
}))
store.delete(info.sha256)
"""


@pytest.mark.slow
def test_500_mb_stream_is_written_and_read_with_flat_memory(store, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", LARGE_WRITE, "500"],
        cwd=REPO_ROOT, env=child_env(store.root), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    print("500 MB stream:", report)
    assert report["sha256_ok"] and report["size"] == 500 * MiB
    assert report["after_write_mb"] - report["baseline_mb"] < 100
    assert report["after_read_mb"] - report["baseline_mb"] < 100
    assert report["after_read_mb"] < 250
    assert leftover_temp_files(store.root) == []


# --- S3 (moto's S3 server over real HTTP) ---------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    access_log = logging.getLogger("werkzeug")  # one line per request drowns failure output
    level = access_log.level
    access_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # a free port
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    access_log.setLevel(level)


@pytest.fixture
def s3_store(s3_endpoint, settings, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    bucket = f"artifacts-{uuid.uuid4().hex[:12]}"
    settings.ARTIFACT_BACKEND = "s3"
    settings.ARTIFACT_S3_BUCKET = bucket
    settings.ARTIFACT_S3_PREFIX = "lifecycle/"
    settings.ARTIFACT_S3_ENDPOINT_URL = s3_endpoint
    settings.ARTIFACT_S3_REGION = "us-east-1"
    raw_client(s3_endpoint).create_bucket(Bucket=bucket)
    return get_store()


def raw_client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def record_operations(client):
    operations = []
    client.meta.events.register("before-call.s3", lambda model, **kw: operations.append(model.name))
    return operations


def test_s3_round_trip(s3_store, tmp_path):
    assert isinstance(s3_store, S3ArtifactStore)
    data = b"adapter weights" * 100
    info = s3_store.put_bytes(data)
    assert info == ArtifactInfo(sha(data), len(data))
    assert s3_store.read_bytes(info.sha256) == data
    assert s3_store.exists(info.sha256) and s3_store.size(info.sha256) == len(data)
    head = s3_store.client.head_object(
        Bucket=s3_store.bucket, Key=f"lifecycle/{info.sha256[:2]}/{info.sha256[2:4]}/{info.sha256}"
    )
    assert head["Metadata"] == {"sha256": info.sha256}
    assert s3_store.copy_to(info.sha256, tmp_path / "a.bin").read_bytes() == data


def test_s3_large_stream_goes_up_in_parts(s3_store):
    data = os.urandom(20 * MiB)
    info = s3_store.put_stream(io.BytesIO(data))
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=s3_store.key(info.sha256))
    assert head["ETag"].strip('"').endswith("-3")  # 3 parts of 8 MiB: a multipart upload
    assert s3_store.verify(info.sha256) == info


def test_s3_existing_object_is_not_uploaded_again(s3_store):
    s3_store.put_bytes(b"checkpoint")
    operations = record_operations(s3_store.client)
    s3_store.put_bytes(b"checkpoint")
    assert operations == ["HeadObject"]


def test_s3_missing_and_delete(s3_store):
    assert s3_store.exists(VALID) is False
    with pytest.raises(ArtifactNotFound):
        s3_store.open(VALID)
    with pytest.raises(ArtifactNotFound):
        s3_store.size(VALID)
    assert s3_store.delete(VALID) is False
    info = s3_store.put_bytes(b"orphan")
    assert s3_store.delete(info.sha256) is True
    assert s3_store.exists(info.sha256) is False


@pytest.mark.parametrize("replacement", [b"Xdapter weights", b"short"], ids=["flipped", "truncated"])
def test_s3_corrupt_object_is_detected(s3_store, tmp_path, replacement):
    info = s3_store.put_bytes(b"adapter weights")
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=s3_store.key(info.sha256), Body=replacement)
    with pytest.raises(ArtifactCorrupt, match=info.sha256):
        s3_store.read_bytes(info.sha256)
    with pytest.raises(ArtifactCorrupt):
        s3_store.copy_to(info.sha256, tmp_path / "dest.bin")
    assert list(tmp_path.glob("*dest.bin*")) == []


@pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
def test_s3_invalid_keys_are_refused_without_a_request(s3_store, tmp_path, key):
    operations = record_operations(s3_store.client)
    for call in (s3_store.open, s3_store.exists, s3_store.size, s3_store.delete, s3_store.read_bytes):
        with pytest.raises(InvalidArtifactKey):
            call(key)
    with pytest.raises(InvalidArtifactKey):
        s3_store.copy_to(key, tmp_path / "dest")
    assert operations == []
    assert s3_store.client.list_objects_v2(Bucket=s3_store.bucket)["KeyCount"] == 0
