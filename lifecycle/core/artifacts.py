"""The content-addressed artifact store: a file's name is the sha256 of its bytes.

Datasets, checkpoints, adapters, model weights and reports all go through `get_store()`.
Because a key is a digest, an artifact can never be overwritten with other content, and a
key is checked against a strict pattern before anything else happens, so no path or object
name is ever built from user input. Every write is streamed and hashed on the way in;
every read is hashed on the way out and a mismatch raises `ArtifactCorrupt`.

Backends are classes with one job, selected by settings.ARTIFACT_BACKEND:
"local" (a folder, the default) or "s3" (any S3-compatible bucket). See docs/artifacts.md.
"""
import contextlib
import functools
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

logger = logging.getLogger(__name__)

# Big enough that hashing and syscalls dominate, small enough that a write of any size
# keeps a flat memory profile.
CHUNK_SIZE = 1024 * 1024

# fullmatch, not ^...$: "$" also matches before a trailing newline.
_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")


class ArtifactError(Exception):
    """Base class for every artifact store error."""


class InvalidArtifactKey(ArtifactError, ValueError):
    """The key is not a lowercase sha256 hex digest."""


class ArtifactNotFound(ArtifactError):
    """No artifact is stored under this key."""


class ArtifactCorrupt(ArtifactError):
    """The stored bytes do not hash to their key."""


class ArtifactInfo(NamedTuple):
    sha256: str
    size: int


def validate_key(sha256):
    """Return the key unchanged if it is a lowercase sha256 hex digest, else raise."""
    if not isinstance(sha256, str) or not _KEY_PATTERN.fullmatch(sha256):
        raise InvalidArtifactKey(f"not a sha256 hex digest: {sha256!r:.80}")
    return sha256


def _fan_out(sha256):
    """ab/cd/<sha256>: keeps any one directory (or S3 prefix) small."""
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


def _copy_hashing(source, destination):
    """Copy source to destination chunk by chunk, returning the digest and size."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK_SIZE):
        digest.update(chunk)
        destination.write(chunk)
        size += len(chunk)
    return ArtifactInfo(digest.hexdigest(), size)


def _fsync_file(fileobj):
    fileobj.flush()
    os.fsync(fileobj.fileno())


def _fsync_dir(path):
    # A rename is only durable once the directory entry itself reaches the disk.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class VerifyingReader(io.RawIOBase):
    """A read-only file object that hashes the bytes as they go by.

    The check runs when the end is reached: the read that hits end-of-file raises
    ArtifactCorrupt on a mismatch (and so does every read after it), and so does close()
    when every byte was consumed but end-of-file was never asked for. A reader closed
    before the end has verified nothing; read_bytes() and copy_to() always read to the end.
    """

    def __init__(self, raw, sha256, size):
        super().__init__()
        self._raw = raw
        self.sha256 = sha256
        self.size = size
        self._digest = hashlib.sha256()
        self._consumed = 0
        self._error = None
        self._checked = False

    def readable(self):
        return True

    def readinto(self, buffer):
        if self._checked:
            return self._end()
        if not len(buffer):
            return 0  # read(0) must not look like end-of-file and trigger the check
        data = self._raw.read(len(buffer))
        if not data:
            self._check()
            return self._end()
        buffer[: len(data)] = data
        self._digest.update(data)
        self._consumed += len(data)
        return len(data)

    def readall(self):
        # io's default reads 8 KiB at a time; whole chunks are much faster to hash.
        chunks = []
        while chunk := self.read(CHUNK_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self):
        if self.closed:
            return
        try:
            if not self._checked and self._consumed >= self.size:
                self.read(1)  # confirms end-of-file and runs the check
        finally:
            self._raw.close()
            super().close()

    def _check(self):
        self._checked = True
        actual = self._digest.hexdigest()
        if actual != self.sha256 or self._consumed != self.size:
            self._error = ArtifactCorrupt(
                f"artifact {self.sha256} is corrupt: read {self._consumed} of {self.size} "
                f"bytes hashing to {actual}"
            )
            logger.error("%s", self._error)

    def _end(self):
        if self._error is not None:
            raise self._error
        return 0


class ArtifactStore:
    """The interface every backend implements: put_stream, open, exists, size, delete."""

    def put_stream(self, fileobj):
        """Store everything read from fileobj; return its ArtifactInfo(sha256, size)."""
        raise NotImplementedError

    def open(self, sha256):
        """Return a VerifyingReader; raises ArtifactNotFound if there is no such artifact."""
        raise NotImplementedError

    def exists(self, sha256):
        raise NotImplementedError

    def size(self, sha256):
        raise NotImplementedError

    def delete(self, sha256):
        """Remove an artifact (garbage collection of orphans); False if it was not there."""
        raise NotImplementedError

    def put_bytes(self, data):
        return self.put_stream(io.BytesIO(data))

    def put_file(self, path):
        with open(path, "rb") as source:
            return self.put_stream(source)

    def read_bytes(self, sha256):
        with self.open(sha256) as reader:
            return reader.read()

    def verify(self, sha256):
        """Read the artifact through, raising ArtifactCorrupt on a mismatch."""
        with self.open(sha256) as reader:
            while reader.read(CHUNK_SIZE):
                pass
        return ArtifactInfo(sha256, reader.size)

    def copy_to(self, sha256, dest_path):
        """Write a verified copy to dest_path; on corruption dest_path is left untouched."""
        dest = Path(dest_path)
        with self.open(sha256) as reader:
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(reader, out, CHUNK_SIZE)
                    _fsync_file(out)
                os.replace(tmp, dest)
            except BaseException:
                _unlink_quietly(tmp)
                raise
        return dest


class LocalArtifactStore(ArtifactStore):
    """Files under root laid out as ab/cd/<sha256>, written atomically, read-only once there."""

    def __init__(self, root):
        self.root = Path(root)
        # Temporary files live in the same file system so that os.replace is a rename.
        self.tmp_dir = self.root / "tmp"

    @classmethod
    def from_settings(cls):
        return cls(settings.ARTIFACT_DIR)

    def path(self, sha256):
        return self.root / _fan_out(validate_key(sha256))

    def put_stream(self, fileobj):
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tmp_dir.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix="put-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                info = _copy_hashing(fileobj, out)
                _fsync_file(out)
            self._publish(tmp, info)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return info

    def _publish(self, tmp, info):
        final = self.path(info.sha256)
        self._make_parents(final.parent)
        if self._has_size(final, info.size):
            # Same name, same content: another writer got here first. A file of the wrong
            # size is damaged, and the rename below replaces it with a good copy.
            os.unlink(tmp)
            return
        os.chmod(tmp, 0o400)  # read-only, and for the owner alone like the rest of the data dir
        # Concurrent writers of the same content each rename a complete file; whichever
        # lands last wins, and a reader only ever sees one whole file.
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        logger.info("stored artifact %s (%d bytes)", info.sha256, info.size)

    def _make_parents(self, directory):
        for level in (directory.parent, directory):
            try:
                level.mkdir(mode=0o700)
            except FileExistsError:
                continue
            _fsync_dir(level.parent)

    @staticmethod
    def _has_size(path, size):
        try:
            return path.stat().st_size == size
        except FileNotFoundError:
            return False

    def open(self, sha256):
        path = self.path(sha256)
        try:
            raw = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact {sha256}") from None
        return VerifyingReader(raw, sha256, os.fstat(raw.fileno()).st_size)

    def exists(self, sha256):
        return self.path(sha256).is_file()

    def size(self, sha256):
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact {sha256}") from None

    def delete(self, sha256):
        # The ab/cd directories stay: removing one could race a writer between its mkdir
        # and its rename.
        path = self.path(sha256)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True


class S3ArtifactStore(ArtifactStore):
    """Objects in an S3-compatible bucket under <prefix>ab/cd/<sha256>.

    Credentials come from boto3's standard chain (environment, shared files, instance role);
    this class never sees or logs them.
    """

    _MISSING = ("404", "NoSuchKey", "NotFound")

    def __init__(self, bucket, prefix="", client=None, spool_dir=None):
        if not bucket:
            raise ImproperlyConfigured("ARTIFACT_BACKEND is 's3' but ARTIFACT_S3_BUCKET is empty")
        self.bucket = bucket
        self.prefix = prefix
        self.client = client
        self.spool_dir = spool_dir

    @classmethod
    def from_settings(cls):
        import boto3  # only the s3 backend needs it

        client = boto3.client(
            "s3",
            endpoint_url=settings.ARTIFACT_S3_ENDPOINT_URL,
            region_name=settings.ARTIFACT_S3_REGION,
        )
        # Defaults to TMPDIR; set it to a disk when /tmp is a small tmpfs.
        spool_dir = getattr(settings, "ARTIFACT_S3_SPOOL_DIR", None)
        return cls(settings.ARTIFACT_S3_BUCKET, settings.ARTIFACT_S3_PREFIX, client, spool_dir)

    def key(self, sha256):
        return self.prefix + _fan_out(validate_key(sha256))

    def put_stream(self, fileobj):
        # The key is the digest, so the whole stream is hashed before the upload can start;
        # spooling to disk keeps memory flat and lets boto3 send a large file in parts.
        with tempfile.NamedTemporaryFile(dir=self.spool_dir, prefix="artifact-") as spool:
            info = _copy_hashing(fileobj, spool)
            spool.flush()
            # An object of the wrong size is damaged; uploading again replaces it.
            if self._stored_size(info.sha256) != info.size:
                self._upload(spool.name, info)
        return info

    def _stored_size(self, sha256):
        try:
            return self.size(sha256)
        except ArtifactNotFound:
            return None

    def _upload(self, filename, info):
        self.client.upload_file(
            filename, self.bucket, self.key(info.sha256),
            ExtraArgs={"Metadata": {"sha256": info.sha256}},
        )
        logger.info("uploaded artifact %s (%d bytes)", info.sha256, info.size)

    def open(self, sha256):
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))
        except self.client.exceptions.ClientError as exc:
            raise self._translate(exc, sha256) from None
        return VerifyingReader(response["Body"], sha256, response["ContentLength"])

    def _head(self, sha256):
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except self.client.exceptions.ClientError as exc:
            raise self._translate(exc, sha256) from None

    def _translate(self, exc, sha256):
        if exc.response.get("Error", {}).get("Code") in self._MISSING:
            return ArtifactNotFound(f"no artifact {sha256}")
        return exc

    def exists(self, sha256):
        try:
            self._head(sha256)
        except ArtifactNotFound:
            return False
        return True

    def size(self, sha256):
        return self._head(sha256)["ContentLength"]

    def delete(self, sha256):
        # S3 deletes succeed whether or not the object was there, so ask first.
        if not self.exists(sha256):
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))
        return True


BACKENDS = {"local": LocalArtifactStore, "s3": S3ArtifactStore}


@functools.cache
def get_store():
    """The store named by settings.ARTIFACT_BACKEND, built once per process."""
    name = settings.ARTIFACT_BACKEND
    try:
        backend = BACKENDS[name]
    except KeyError:
        raise ImproperlyConfigured(
            f"ARTIFACT_BACKEND is {name!r}; expected one of: {', '.join(sorted(BACKENDS))}"
        ) from None
    return backend.from_settings()


def _forget_store(*, setting, **kwargs):
    # Tests (and override_settings) change ARTIFACT_* at run time; the next get_store()
    # call must see the new configuration rather than the cached store.
    if setting.startswith("ARTIFACT_"):
        get_store.cache_clear()


setting_changed.connect(_forget_store, dispatch_uid="lifecycle.core.artifacts.forget_store")
