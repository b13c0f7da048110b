"""The prediction log's writer in the serving process.

A request never waits on the database for its log entries: `PredictionBuffer.add` appends to
an in-process deque, and a background thread writes what has gathered every `flush_seconds`
(sooner past FLUSH_ROWS) as one transaction: COPY on PostgreSQL, bulk_create on SQLite. A
batch is all-or-nothing, so a process killed mid-write leaves no half of one behind.

While the database is unreachable, batches go to a spool on local disk instead (JSON lines,
fsync'd, one file sequence per process). Once the spool holds anything, every later batch goes
after it, and the spool is replayed oldest first before anything new is written: the log keeps
the order entries were made in. The spool is bounded: past `spool_max_bytes`, new entries are
dropped and counted (never the requests), with a warning.

A process that dies with a spool leaves it for the next one: each process holds an flock on
its own lock file, and `start()` adopts the files of any process whose lock is free.
"""
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections import deque
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from django.db import DEFAULT_DB_ALIAS, DatabaseError, DataError, IntegrityError, connections, transaction
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

# The serving process's /metrics (serving/metrics.py re-exports these). prometheus_client adds
# "_total" to a counter's name.
BUFFERED = Gauge("lifecycle_serving_prediction_log_buffered",
                 "Prediction log entries waiting in the process's buffer.", multiprocess_mode="livesum")
WRITTEN = Counter("lifecycle_serving_prediction_log_written",
                  "Prediction log entries committed to the database (directly or replayed from the spool).")
SPOOLED = Counter("lifecycle_serving_prediction_log_spooled",
                  "Prediction log entries written to the local spool while the database was unreachable.")
DROPPED = Counter("lifecycle_serving_prediction_log_dropped",
                  "Prediction log entries dropped: spool or buffer full, or refused by the database.")

FLUSH_ROWS = 2_000  # wake the writer early past this many buffered entries
BATCH_ROWS = 10_000  # entries per transaction
REPLAY_ROWS = 5_000  # spooled entries per transaction when replaying
# Past this many waiting entries add() drops: only reached when the writer is stuck (a
# database that hangs rather than refuses), so memory stays bounded even then.
MAX_BUFFERED = 200_000
SPOOL_FILE_BYTES = 16 * 1024 * 1024  # a spool file is rotated past this size
RETRY_SECONDS, RETRY_MAX_SECONDS = 1.0, 30.0  # after a failure the writer waits, doubling, before trying again
WARN_EVERY_SECONDS = 30.0
# A row's content refused (a bad value, an entry already there): that batch is narrowed down.
# Any other database error (unreachable, OperationalError/InterfaceError; or a table not
# migrated yet) spools the batch and retries later, so nothing is lost while it is fixed.
CONTENT_ERRORS = (DataError, IntegrityError)
# What a row must carry; the other fields take the model's defaults.
REQUIRED = frozenset({"request_id", "deployment_id", "release_id", "version_id", "route", "latency_ms", "created_at"})
INCOMING = "predlog_incoming"
JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))  # one encoder, not one per row
NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


class PredictionBuffer:
    """One per serving process. `add` from any thread (or the event loop); one background
    thread writes. `flush` and `stop` block, so call them off the event loop."""

    batch_rows = BATCH_ROWS
    replay_rows = REPLAY_ROWS
    max_buffered = MAX_BUFFERED

    def __init__(self, process_id, *, flush_seconds, spool_dir, spool_max_bytes, using=DEFAULT_DB_ALIAS):
        self.process_id = process_id
        self.flush_seconds = float(flush_seconds)
        self.using = using
        self.spool = Spool(Path(spool_dir), spool_tag(process_id), int(spool_max_bytes))
        self._rows = deque()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()  # one writer at a time keeps the spool and the table in order
        self._requested = self._completed = 0
        self._stopping = self._stopped = False
        self._thread = None
        self._counts = dict.fromkeys(("written", "spooled", "replayed", "dropped", "skipped"), 0)
        self._failures = 0
        self._retry_at = 0.0
        self._warned = {}

    # --- the request side ----------------------------------------------------------------------

    def add(self, rows):
        """Queue log entries (dicts keyed by PredictionLog field names). Never touches the
        database or the disk; past `max_buffered` waiting entries the excess is dropped."""
        if not isinstance(rows, (list, tuple)):
            raise TypeError(f"add() takes a list of log entries, not {type(rows).__name__}.")
        for row in rows:
            if not isinstance(row, dict):
                raise TypeError(f"A log entry is a dict, not {type(row).__name__}.")
            missing = REQUIRED - row.keys()
            if missing:
                raise ValueError(f"A log entry lacks {', '.join(sorted(missing))}.")
        with self._cond:
            room = max(0, self.max_buffered - len(self._rows))
            self._rows.extend(rows[:room])
            if len(self._rows) >= FLUSH_ROWS:
                self._cond.notify_all()
            buffered = len(self._rows)
        BUFFERED.set(buffered)
        if len(rows) > room:
            self._drop(len(rows) - room, "the buffer holds %d entries already (the writer is stuck?)", buffered)

    def stats(self):
        with self._cond:
            buffered = len(self._rows)
            counts = dict(self._counts)
        return {"buffered": buffered, **counts, "spool_bytes": self.spool.bytes}

    # --- the writer thread ----------------------------------------------------------------------

    def start(self):
        self.spool.claim()
        self.spool.adopt()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        return self

    def flush(self, timeout=30.0):
        """Write (or spool) what is buffered now; True once done. With the thread running, it
        does the work (one connection, one writer); otherwise it happens in this thread."""
        if not self._running():
            self._drain(force=True)
            return True
        with self._cond:
            self._requested += 1
            target = self._requested
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._completed >= target or not self._running(), timeout)

    def stop(self, timeout=10):
        """Write what is left (to the spool if the database is down) and end the thread."""
        if self._stopped:
            return
        if self._running():
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("prediction log: the writer did not finish within %s s; %d entries may be lost",
                            timeout, len(self._rows))
                return
        else:
            self._drain(force=True)
        self.spool.release()
        self._stopped = True

    def _running(self):
        return self._thread is not None and self._thread.is_alive()

    def _run(self):
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: (self._stopping or self._requested > self._completed
                                                 or len(self._rows) >= FLUSH_ROWS), self.flush_seconds)
                    target, stopping = self._requested, self._stopping
                self._drain(force=stopping or target > self._completed)
                with self._cond:
                    self._completed = target
                    self._cond.notify_all()
                if stopping:
                    return
        finally:
            _close(connections[self.using])

    def _drain(self, force=False):
        """Write the entries buffered now, a batch per transaction, after whatever the spool
        holds. `force` (flush, stop) tries the database even while backing off."""
        with self._write_lock:
            todo = len(self._rows)
            while True:
                batch = self._take(min(todo, self.batch_rows))
                todo -= len(batch)
                try:
                    self._write_or_spool(batch, force)
                except Exception:  # a bug must not end the thread; the batch is counted, not hidden
                    log.exception("prediction log: a batch of %d entries could not be written", len(batch))
                    self._count(dropped=len(batch))
                    DROPPED.inc(len(batch))
                if todo <= 0 or not batch:
                    return

    def _take(self, n):
        with self._cond:
            batch = [self._rows.popleft() for _ in range(min(n, len(self._rows)))]
            buffered = len(self._rows)
        BUFFERED.set(buffered)
        return batch

    def _write_or_spool(self, batch, force):
        if not (force or time.monotonic() >= self._retry_at):
            self._to_spool(batch)
            return
        try:
            self._replay()
            if batch:
                self._written(len(batch), *self._write(batch, idempotent=False))
        except DatabaseError as exc:  # CONTENT_ERRORS are handled inside _write
            self._failed(exc)
            self._to_spool(batch)
        else:
            self._recovered()

    # --- the database ---------------------------------------------------------------------------

    def _write(self, rows, *, idempotent):
        """Commit `rows` in one transaction; returns (inserted, refused). A batch the database
        refuses for its content (not the connection) is retried the idempotent way (a unique
        violation: an entry that is there already is skipped), then halved until the entries
        it refuses are found and dropped, so one bad entry never blocks the log behind it."""
        try:
            return self._commit(rows, idempotent=idempotent), 0
        except CONTENT_ERRORS as exc:
            if not idempotent:
                return self._write(rows, idempotent=True)
            if len(rows) == 1:
                self._warn("refused", log.error, "prediction log: the database refused an entry of request %s "
                           "(%s: %s); it is dropped", rows[0].get("request_id"), type(exc).__name__,
                           str(exc).strip()[:300])
                return 0, 1
            half = len(rows) // 2
            (a, refused_a), (b, refused_b) = (self._write(rows[:half], idempotent=True),
                                              self._write(rows[half:], idempotent=True))
            return a + b, refused_a + refused_b

    def _commit(self, rows, *, idempotent):
        from lifecycle.deployments.models import PredictionBatch

        connection = connections[self.using]
        with transaction.atomic(using=self.using):
            # The batch row commits with its rows, so monitoring never sees one without the other.
            batch = PredictionBatch.objects.using(self.using).create(process=self.process_id[:200], rows=len(rows))
            rows = [{**row, "batch_id": batch.pk} for row in rows]
            if connection.vendor == "postgresql":
                inserted = _copy(connection, rows, idempotent)
            else:
                inserted = _bulk_create(connection, self.using, rows, idempotent)
            if inserted != len(rows):
                PredictionBatch.objects.using(self.using).filter(pk=batch.pk).update(rows=inserted)
            return inserted

    def _written(self, sent, inserted, refused, *, replayed=False):
        self._count(written=inserted, replayed=inserted if replayed else 0, skipped=sent - inserted - refused,
                    dropped=refused)
        WRITTEN.inc(inserted)
        if refused:
            DROPPED.inc(refused)

    def _replay(self):
        """Write the spool, oldest file first, a chunk per transaction. A database error
        stops it with the place kept; the next attempt goes on from there."""
        while self.spool.files:
            for rows, end, unreadable in self.spool.read_head(self.replay_rows):
                if rows:
                    self._written(len(rows), *self._write(rows, idempotent=True), replayed=True)
                if unreadable:
                    self._count(dropped=unreadable)
                    DROPPED.inc(unreadable)
                self.spool.advance(end)
            self.spool.finish_head()

    def _failed(self, exc):
        # The connection may be half-dead: close it so the next attempt reconnects.
        _close(connections[self.using])
        self._failures += 1
        self._retry_at = time.monotonic() + min(RETRY_MAX_SECONDS, RETRY_SECONDS * 2 ** (self._failures - 1))
        if self._failures == 1:
            log.warning("prediction log: the database cannot take entries (%s: %s); they go to the spool in %s",
                        type(exc).__name__, str(exc).strip()[:300], self.spool.folder)

    def _recovered(self):
        if self._failures:
            log.warning("prediction log: the database is reachable again; the spool is replayed (%s)", self.stats())
        self._failures = 0
        self._retry_at = 0.0

    # --- the spool ------------------------------------------------------------------------------

    def _to_spool(self, batch):
        if not batch:
            return
        spooled = self.spool.append(batch)
        self._count(spooled=spooled)
        SPOOLED.inc(spooled)
        if spooled < len(batch):
            self._drop(len(batch) - spooled, "the spool holds %d bytes, its bound is %d", self.spool.bytes,
                       self.spool.max_bytes)

    def _drop(self, n, why, *args):
        self._count(dropped=n)
        DROPPED.inc(n)
        self._warn(why, log.warning, "prediction log: dropping new entries, " + why + " (%d dropped so far)",
                   *args, self._counts["dropped"])

    def _warn(self, key, emit, message, *args):
        """Log at most every WARN_EVERY_SECONDS per kind of trouble: a full spool or a refused
        row can repeat thousands of times a second."""
        now = time.monotonic()
        if now - self._warned.get(key, -math.inf) >= WARN_EVERY_SECONDS:
            self._warned[key] = now
            emit(message, *args)

    def _count(self, **deltas):
        with self._cond:
            for key, n in deltas.items():
                self._counts[key] += n


# --- writing rows --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _fields():
    """(attname, column, kind, field) of every PredictionLog column but the id; kind is
    "json", "text" (cleaned) or "" (passed as is)."""
    from lifecycle.deployments.models import PredictionLog

    def kind(field):
        internal = field.get_internal_type()
        return "json" if internal == "JSONField" else "text" if internal in ("CharField", "TextField") else ""

    return tuple((f.attname, f.column, kind(f), f) for f in PredictionLog._meta.concrete_fields if not f.primary_key)


def _clean_text(value, field):
    # PostgreSQL text cannot hold NUL (a client may send one), and a value longer than its
    # column would refuse the whole batch.
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value[:field.max_length] if field.max_length else value


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_text(value):
    """JSON text for a jsonb column, which refuses NaN and the \\u0000 escape."""
    try:
        text = JSON.encode(value)
    except ValueError:
        text = JSON.encode(_finite(value))
    # Only an escape (an odd number of backslashes before "u0000"), not an escaped backslash.
    return NUL_ESCAPE.sub(r"\1\\ufffd", text) if "\\u0000" in text else text


def _column_values(row, *, json_as_text):
    values = []
    for attname, _, kind, field in _fields():
        value = row[attname] if attname in row else field.get_default()
        if kind == "json":
            value = _json_text(value) if json_as_text else value
        elif kind == "text" and isinstance(value, str):
            value = _clean_text(value, field)
        values.append(value)
    return values


def _copy(connection, rows, idempotent):
    """COPY `rows` in; inside the caller's transaction. COPY has no ON CONFLICT, so the
    idempotent form (a replay) copies into a temporary table and inserts from there skipping
    what the log holds already: a chunk that committed just before the connection dropped, or
    a file a dead process had half replayed, is sent again and adds nothing."""
    from lifecycle.deployments.models import PredictionLog

    qn = connection.ops.quote_name
    table = qn(PredictionLog._meta.db_table)
    columns = ", ".join(qn(column) for _, column, _, _ in _fields())
    with connection.cursor() as wrapper, connection.wrap_database_errors:
        cursor = wrapper.cursor  # psycopg's own: Django's wrapper has no copy()
        target = table
        if idempotent:
            cursor.execute(f"CREATE TEMPORARY TABLE {INCOMING} ON COMMIT DROP AS "
                           f"SELECT {columns} FROM {table} WITH NO DATA")
            target = INCOMING
        with cursor.copy(f"COPY {target} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(_column_values(row, json_as_text=True))
        if not idempotent:
            return len(rows)
        # ctid order is the order COPY wrote them in (a fresh table), so ids follow the log's order.
        cursor.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {INCOMING} ORDER BY ctid "
                       "ON CONFLICT (request_id, route, position) DO NOTHING")
        return cursor.rowcount


def _bulk_create(connection, using, rows, idempotent):
    """SQLite (the embedded default): bulk_create; a replay ignores entries already there
    (INSERT OR IGNORE), counted by SQLite's own change counter."""
    from lifecycle.deployments.models import PredictionLog

    names = [attname for attname, _, _, _ in _fields()]
    objects = [PredictionLog(**dict(zip(names, _column_values(row, json_as_text=False)))) for row in rows]
    connection.ensure_connection()
    before = connection.connection.total_changes
    PredictionLog.objects.using(using).bulk_create(objects, ignore_conflicts=idempotent)
    return connection.connection.total_changes - before if idempotent else len(objects)


def _close(connection):
    try:
        connection.close()
    except Exception:  # closing a dead connection may raise; it is gone either way
        pass


# --- the spool -----------------------------------------------------------------------------------


def spool_tag(process_id):
    """A file-name-safe, unique name for a process's spool files."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", str(process_id))[:80]
    return f"{safe}-{hashlib.sha256(str(process_id).encode()).hexdigest()[:8]}"


def _json_default(value):
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _from_spool(row):
    row["request_id"] = uuid.UUID(row["request_id"])
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    return row


class SpoolFile:
    __slots__ = ("path", "owner", "size")

    def __init__(self, path, owner, size):
        self.path, self.owner, self.size = path, owner, size


class Spool:
    """Log entries waiting for the database: JSON lines in `folder`, files named
    `<tag>.<seq>.jsonl`, oldest first in `files`. Each process holds an flock on
    `<tag>.lock` from its first spooled entry, so a file whose lock is free belongs to a
    process that has died and may be adopted."""

    def __init__(self, folder, tag, max_bytes):
        self.folder, self.tag, self.max_bytes = folder, tag, max_bytes
        self.files = deque()  # SpoolFile, oldest first
        self.bytes = 0  # the size of the files waiting (the bound is on the disk used)
        self.offset = 0  # bytes of files[0] already replayed
        self._seq = 0
        self._locks = {}  # tag -> open lock file (ours and adopted ones)

    def _lock_path(self, tag):
        return self.folder / f"{tag}.lock"

    def _lock(self, tag, *, wait=False):
        """Take `tag`'s lock; False if a live process holds it. The file is checked to still
        be the one at its path after locking: a sweeper may have unlinked it meanwhile."""
        if tag in self._locks:
            return True
        path = self._lock_path(tag)
        for _ in range(100):
            handle = open(path, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                if not wait:
                    return False
                time.sleep(0.01)
                continue
            if os.fstat(handle.fileno()).st_ino == _inode(path):
                self._locks[tag] = handle
                return True
            handle.close()
        return False

    def _unlock(self, tag):
        handle = self._locks.pop(tag, None)
        if handle is not None:
            # Unlinked while still held: a process that opened it before sees no files left.
            self._lock_path(tag).unlink(missing_ok=True)
            handle.close()

    def claim(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self._lock(self.tag, wait=True):
            raise RuntimeError(f"Another live process spools as {self.tag} in {self.folder}.")

    def _data_files(self):
        found = {}
        for path in self.folder.glob("*.jsonl"):
            tag, _, seq = path.name[:-len(".jsonl")].rpartition(".")
            if tag and seq.isdigit():
                found.setdefault(tag, []).append((int(seq), path))
        return {tag: [p for _, p in sorted(files)] for tag, files in found.items()}

    def adopt(self):
        """Queue, ahead of our own, the files of processes that died with a spool."""
        orphans = []
        for tag, paths in self._data_files().items():
            if tag != self.tag and self._lock(tag):
                paths = [p for p in paths if p.exists()]  # re-read under the lock
                if paths:
                    orphans.append((paths[0].stat().st_mtime, tag, paths))
                else:
                    self._unlock(tag)
        for _, tag, paths in sorted(orphans, reverse=True):
            for path in reversed(paths):
                self.files.appendleft(SpoolFile(path, tag, path.stat().st_size))
                self.bytes += self.files[0].size
        self._sweep_locks()
        if orphans:
            log.warning("prediction log: adopted %d spool files of processes that stopped (%d bytes)",
                        sum(len(p) for _, _, p in orphans), self.bytes)

    def _sweep_locks(self):
        """Remove the lock files of processes that died with nothing spooled."""
        with_files = set(self._data_files())
        for path in self.folder.glob("*.lock"):
            tag = path.name[:-len(".lock")]
            if tag not in with_files and tag not in self._locks and self._lock(tag):
                self._unlock(tag)

    def append(self, rows):
        """Write rows to the newest file, fsync'd; returns how many fitted under the bound."""
        self.claim()
        lines = []
        size = self.bytes
        for row in rows:
            line = (json.dumps(row, default=_json_default, separators=(",", ":")) + "\n").encode()
            if size + len(line) > self.max_bytes:
                break
            lines.append(line)
            size += len(line)
        if lines:
            current = self._current()
            with open(current.path, "ab") as handle:
                handle.writelines(lines)
                handle.flush()
                os.fsync(handle.fileno())
            current.size += size - self.bytes
            self.bytes = size
        return len(lines)

    def _current(self):
        if self.files and self.files[-1].owner == self.tag and self.files[-1].size < SPOOL_FILE_BYTES:
            return self.files[-1]
        self._seq += 1
        path = self.folder / f"{self.tag}.{self._seq:08d}.jsonl"
        path.touch()
        _fsync_dir(self.folder)  # the new name survives a crash
        self.files.append(SpoolFile(path, self.tag, 0))
        return self.files[-1]

    def read_head(self, chunk):
        """Yield (rows, end offset, unreadable lines) for the oldest file from the place
        reached. A torn last line (the process died mid-write) is counted and skipped."""
        path = self.files[0].path
        if not path.exists():  # nothing should remove it; if something did, it is gone either way
            log.error("prediction log: the spool file %s vanished", path.name)
            return
        with open(path, "rb") as handle:
            handle.seek(self.offset)
            rows, unreadable = [], 0
            for line in handle:
                try:
                    rows.append(_from_spool(json.loads(line)))
                except (ValueError, KeyError, TypeError):
                    log.error("prediction log: an unreadable line in %s is skipped", path.name)
                    unreadable += 1
                if len(rows) >= chunk:
                    yield rows, handle.tell(), unreadable
                    rows, unreadable = [], 0
            if rows or unreadable:
                yield rows, handle.tell(), unreadable

    def advance(self, end):
        self.offset = end

    def finish_head(self):
        done = self.files.popleft()
        self.bytes -= done.size
        done.path.unlink(missing_ok=True)
        self.offset = 0
        if done.owner != self.tag and not self._holds(done.owner):
            self._unlock(done.owner)

    def _holds(self, tag):
        return any(f.owner == tag for f in self.files)

    def release(self):
        """At stop: give up every lock. A spool left behind (the database still down) keeps
        its lock file, free for the next process to adopt; it is no longer this one's."""
        for tag in list(self._locks):
            if self._holds(tag):
                self._locks.pop(tag).close()
            else:
                self._unlock(tag)
        self.files.clear()
        self.bytes = self.offset = 0


def _inode(path):
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
