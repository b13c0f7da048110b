"""Writing an immutable dataset version: rows to Parquet in the artifact store, examples to
the database, a manifest that hashes it all — the version appears in one transaction, or
not at all.

The row stream arrives in batches (dicts of equal-length column lists) so that a version of
any size is written with flat memory. Every path that makes a version — an upload, a
redaction, a dedup, a new split, frozen labels — goes through `VersionWriter`.
"""
import hashlib
import io
import logging
import os
import tempfile
import threading
from collections import Counter, defaultdict
from contextlib import ExitStack
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from django.db import connection, connections, transaction
from django.utils import timezone

from lifecycle.core.artifacts import get_store
from lifecycle.core.models import AuditEvent
from lifecycle.datasets import diff
from lifecycle.datasets.models import SPLIT_NAMES, Dataset, DatasetVersion, Example, ExampleText, RowKeys
from lifecycle.datasets.rows import metadata_json, row_sha256  # noqa: F401 (re-exported for callers)

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
ROW_FIELDS = ("text", "response", "label", "group", "timestamp", "metadata")
SCHEMA = pa.schema([
    ("row", pa.uint32()),
    ("origin_row", pa.uint32()),  # Example.origin_row: the row's identity across versions
    ("text", pa.string()),
    ("response", pa.string()),
    ("label", pa.string()),
    ("split", pa.string()),
    ("group", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("metadata", pa.string()),
    ("row_sha256", pa.string()),
    ("content_key", pa.int64()),
    ("pii_kinds", pa.string()),
    ("duplicate_cluster", pa.int64()),
])
EXAMPLE_COLUMNS = ("version_id", "row", "origin_row", "text", "response", "label", "split", "group", "timestamp",
                   "row_sha256", "content_key", "has_pii", "pii_kinds", "duplicate_cluster", "metadata")
READ_BATCH = 20_000
# Rows turned into COPY data at a time: a slice's CSV (~2 MB) and Arrow's copy of it are all
# a COPY holds, where a whole 20k-row batch held ~10 MB twice over.
COPY_SLICE = 5_000


def _copy_sql(model, columns):
    quoted = ", ".join(f'"{name}"' for name in columns)
    return f"COPY {model._meta.db_table} ({quoted}) FROM STDIN WITH (FORMAT csv)"


def _insert_sql(model, columns):
    quoted = ", ".join(f'"{name}"' for name in columns)
    return f"INSERT INTO {model._meta.db_table} ({quoted}) VALUES ({', '.join(['%s'] * len(columns))})"


COPY_EXAMPLES = _copy_sql(Example, EXAMPLE_COLUMNS)
COPY_TEXTS = _copy_sql(ExampleText, ("version_id", "row", "text"))
INSERT_EXAMPLES = _insert_sql(Example, EXAMPLE_COLUMNS)
# Examples removed per transaction when a version written in slices is given up (SQLite).
DELETE_SLICE = 20_000


class VersionWriter:
    """Collects row batches into a Parquet file, counts and hashes them, then commits.

    On PostgreSQL the examples stream into the database as the batches arrive (one COPY,
    inside the transaction that commit() ends), so the server stores and indexes them while
    this process writes Parquet; the version row goes in last, under an id reserved up front
    (the examples' foreign key is checked at commit). Between the first add() and commit() or
    discard(), nothing else may use this thread's connection: job progress goes through the
    heartbeat's own connection for that reason. (psycopg would make such a query wait for
    ever; an execute wrapper makes it fail with a clear message instead.)

    SQLite has one writer for the whole database, so one transaction over a big version's
    rows would lock every other writer out (heartbeats, the reaper, people's clicks) for as
    long. There each batch's examples commit on their own, under the reserved id of a version
    row that does not exist yet: no page reaches examples but through their version, so
    nothing half-written shows, and discard() (or a failed commit) deletes them again. The
    foreign key is off on this connection meanwhile (it would refuse every batch's commit).
    Inside a caller's transaction no batch could commit: the examples go in at commit() then.
    """

    def __init__(self, dataset, *, operation, parent=None, user=None, source_sha256="", texts=None):
        self.dataset, self.operation, self.parent, self.user = dataset, operation, parent, user
        self.source_sha256 = source_sha256
        # A TextIndexWriter already filling the search table for this version (uploads), or None.
        self.texts = texts
        self.version_id = texts.version_id if texts else None
        self.counts = defaultdict(Counter)
        self.rows = 0
        self.content = hashlib.sha256()
        self.pii_rows = 0
        fd, self.path = tempfile.mkstemp(prefix="lifecycle-version-", suffix=".parquet")
        os.close(fd)
        self.writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")
        # The diff's row keys (diff.ROW_KEYS), written batch by batch beside the rows.
        fd, self.keys_path = tempfile.mkstemp(prefix="lifecycle-keys-", suffix=".parquet")
        os.close(fd)
        self.keys_writer = pq.ParquetWriter(self.keys_path, diff.ROW_KEYS, compression="zstd")
        # What the row stream holds open: the transaction and the COPY (PostgreSQL), or the
        # foreign key switched off (SQLite, in slices).
        self._transaction, self._copying = ExitStack(), ExitStack()
        self._copy, self._streamed = None, False  # the COPY while it is open; whether rows streamed
        self._sliced = connection.vendor == "sqlite" and not connection.in_atomic_block

    def add(self, batch):
        """Append a batch: a dict of column lists, or an Arrow table, with every SCHEMA column but
        `row` (and `origin_row` for an upload, whose rows are their own origin)."""
        table = _as_table(batch, self.rows)
        self._count(table)
        self.writer.write_table(table)
        self.keys_writer.write_table(diff.keys_of_batch(table))
        if connection.vendor == "postgresql":
            if not self._streamed:
                self._start_copy()
            _copy_rows(self._copy, _example_table(self.version_id, table))
        elif self._sliced:
            self._commit_slice(table)
        self.rows += table.num_rows

    def _count(self, table):
        if not table.num_rows:
            return
        lines = pc.binary_join_element_wise(table.column("row_sha256"), table.column("split"), ":").combine_chunks()
        one_list = pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines)
        self.content.update((pc.binary_join(one_list, "\n")[0].as_py() + "\n").encode())
        for group in table.group_by(["split", "label"]).aggregate([([], "count_all")]).to_pylist():
            self.counts[group["split"]][group["label"]] += group["count_all"]
        kinds = pc.fill_null(table.column("pii_kinds"), "")
        self.pii_rows += pc.sum(pc.not_equal(kinds, "")).as_py() or 0

    def _start_copy(self):
        if self.version_id is None:
            self.version_id = reserve_version_id()
        self._transaction.enter_context(transaction.atomic())
        cursor = self._copying.enter_context(connection.cursor())
        self._copy = self._copying.enter_context(cursor.cursor.copy(COPY_EXAMPLES))
        self._copying.enter_context(connection.execute_wrapper(_refuse_during_copy))
        self._streamed = True

    def _commit_slice(self, table):
        if not self._streamed:
            self.version_id = reserve_version_id()
            self._copying.callback(connection.enable_constraint_checking)
            connection.disable_constraint_checking()
            self._streamed = True
        with transaction.atomic():
            insert_rows(_example_table(self.version_id, table))

    def _rollback(self, exc):
        """End the COPY and the transaction with `exc`: PostgreSQL drops every streamed row;
        on SQLite, the slices already committed are deleted."""
        for stack in (self._copying, self._transaction):
            try:
                stack.__exit__(type(exc), exc, exc.__traceback__)
            except Exception:
                log.exception("rolling back a version's examples")
        if self._sliced and self._streamed:
            try:
                delete_examples(self.version_id)
            except Exception:
                log.exception("deleting the examples of version id %s, which was not made", self.version_id)

    def end_rows(self):
        """No more rows: the COPY ends (the transaction goes on), so the connection can be used
        again — for reports that need every row, say; on SQLite the foreign key is back on.
        commit() calls it too."""
        self._copying.close()
        self._copy = None

    def discard(self):
        self.writer.close()
        self.keys_writer.close()
        os.unlink(self.path)
        os.unlink(self.keys_path)
        self._rollback(RuntimeError("version discarded"))

    def commit(self, *, reports, label_set, pii_status, has_leakage):
        """Store the Parquet artifact, then create the version and its examples atomically.

        The artifact goes first (content-addressed, so harmless if it already exists); if the
        database transaction fails, an artifact no version refers to is removed again.
        """
        self.writer.close()
        self.keys_writer.close()
        try:
            info = keys_sha256 = None
            try:
                self.end_rows()
                info = get_store().put_file(self.path)
                keys_sha256 = get_store().put_file(self.keys_path).sha256
                version = self._create(info, reports, label_set, pii_status, has_leakage, keys_sha256)
                self._transaction.close()  # commit
            except BaseException as exc:
                self._rollback(exc)
                if self.texts:
                    self.texts.abandon()
                if info is not None:
                    _remove_if_unreferenced(info.sha256)
                if keys_sha256 is not None and not RowKeys.objects.filter(keys_sha256=keys_sha256).exists():
                    get_store().delete(keys_sha256)
                raise
            if self.texts and not self.texts.finish():
                with transaction.atomic():  # its connection failed: index the texts from here
                    insert_texts(version.pk, self.path)
            return version
        finally:
            os.unlink(self.path)
            os.unlink(self.keys_path)

    def _create(self, info, reports, label_set, pii_status, has_leakage, keys_sha256):
        with transaction.atomic():
            # The dataset row lock orders concurrent writers: numbers and parents are well-defined.
            dataset = Dataset.objects.select_for_update().get(pk=self.dataset.pk)
            latest = dataset.versions.order_by("-number").first()
            number = latest.number + 1 if latest else 1
            parent = self.parent or latest
            manifest = self._manifest(dataset, number, parent, info, reports, label_set)
            version = DatasetVersion(
                id=self.version_id, dataset=dataset, number=number, parent=parent, operation=self.operation,
                rows_sha256=info.sha256, rows_bytes=info.size, source_sha256=self.source_sha256,
                row_count=self.rows, content_sha256=manifest["content_sha256"], manifest=manifest,
                manifest_sha256=DatasetVersion.hash_manifest(manifest), label_set=label_set,
                validation_report=reports.get("validation", {}), pii_report=reports.get("pii", {}),
                pii_status=pii_status, dedup_report=reports.get("dedup", {}),
                leakage_report=reports.get("leakage", {}), has_leakage=has_leakage,
                created_by=self.user, created_at=datetime.fromisoformat(manifest["created_at"]),
            )
            version.save(force_insert=True)
            RowKeys.objects.create(version=version, keys_sha256=keys_sha256)
            if not self._streamed:  # SQLite, or no rows
                insert_examples(version, self.path)
            tables = [Example]
            if self.texts is None:
                insert_texts(version.pk, self.path)
                tables.append(ExampleText)
            analyze(*tables)
            if not dataset.label_set and label_set and dataset.task == Dataset.Task.CLASSIFICATION:
                # The first version's labels become the dataset's label set; later uploads must fit it.
                Dataset.objects.filter(pk=dataset.pk).update(label_set=label_set)
                AuditEvent.record(self.user, "dataset.label_set_fixed", dataset, {"labels": label_set, "from_version": number})
            AuditEvent.record(self.user, "dataset_version.created", version, {
                "dataset": dataset.slug, "number": number, "operation": self.operation,
                "parent": parent.number if parent else None, "rows": self.rows,
                "manifest_sha256": version.manifest_sha256, "has_leakage": has_leakage, "pii_status": pii_status,
            })
        return version

    def _manifest(self, dataset, number, parent, info, reports, label_set):
        return {
            "format": MANIFEST_FORMAT,
            "dataset": dataset.slug,
            "task": dataset.task,
            "version": number,
            "operation": self.operation,
            "parent": {"version": parent.number, "manifest_sha256": parent.manifest_sha256} if parent else None,
            "schema": {field.name: str(field.type) for field in SCHEMA},
            "label_set": label_set,
            "row_count": self.rows,
            "counts": {split: dict(sorted(labels.items())) for split, labels in sorted(self.counts.items())},
            "rows_artifact": {"sha256": info.sha256, "bytes": info.size, "format": "parquet"},
            "row_hash": "sha256 of the JSON array [text, response, label, group, timestamp, metadata JSON]",
            "content_sha256": self.content.hexdigest(),
            "source_sha256": self.source_sha256,
            "pii_rows": self.pii_rows,
            "reports": {name: _summary(report) for name, report in reports.items()},
            "created_by": getattr(self.user, "username", "") or "system",
            "created_at": timezone.now().isoformat(),
        }


def _summary(report):
    """What of a report goes into the manifest: its counts, not its examples."""
    return {key: value for key, value in report.items() if key not in ("examples", "errors", "pairs")}


def _remove_if_unreferenced(sha256):
    if not DatasetVersion.objects.filter(rows_sha256=sha256).exists():
        get_store().delete(sha256)


# --- examples ---------------------------------------------------------------------------------


def iter_row_batches(version, columns=None, batch_size=READ_BATCH):
    """The version's rows from its (verified) Parquet artifact, batch by batch, as dicts of
    column lists."""
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        get_store().copy_to(version.rows_sha256, tmp.name)
        parquet = pq.ParquetFile(tmp.name)
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            yield batch.to_pydict()


def insert_examples(version, path):
    """Insert the version's rows from its Parquet file at `path` (the local file just stored)
    into `Example`: the path where nothing was streamed (SQLite inside a caller's transaction;
    otherwise the rows went in as they were added, see VersionWriter)."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH):
        insert_rows(_example_table(version.pk, batch))


def insert_rows(table):
    """Example rows (an _example_table) by one executemany: a model instance per row, as
    bulk_create makes, took several times as long (SQLite; PostgreSQL uses COPY)."""
    columns = [table.column(name).to_pylist() for name in EXAMPLE_COLUMNS]
    when = EXAMPLE_COLUMNS.index("timestamp")
    columns[when] = [connection.ops.adapt_datetimefield_value(value) for value in columns[when]]
    with connection.cursor() as cursor:
        cursor.executemany(INSERT_EXAMPLES, list(zip(*columns)))


def delete_examples(version_id):
    """Delete the examples under `version_id`, DELETE_SLICE rows per transaction (SQLite's
    lock is held for one slice at a time)."""
    table = Example._meta.db_table
    sql = f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE version_id = %s LIMIT {DELETE_SLICE})"
    deleted = None
    while deleted != 0:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [version_id])
            deleted = cursor.rowcount


def _copy_rows(copy, table):
    for start in range(0, table.num_rows, COPY_SLICE):
        copy.write(_csv(table.slice(start, COPY_SLICE)))


def _csv(table):
    """COPY … FROM STDIN data in CSV made by Arrow's C++ writer: a Python call per row
    (psycopg's write_row) cost more than the rest of the ingest's write phase together."""
    buffer = io.BytesIO()
    pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
    return buffer.getvalue()


def _refuse_during_copy(execute, sql, params, many, context):
    raise RuntimeError("this connection is streaming a dataset version's rows (COPY): no query may run on it "
                       "until VersionWriter.end_rows(), commit() or discard()")


def _as_table(batch, first_row):
    if isinstance(batch, dict):
        rows = list(range(first_row, first_row + len(batch["text"])))
        return pa.Table.from_pydict({"origin_row": rows, **batch, "row": rows}, schema=SCHEMA)
    rows = pa.array(np.arange(first_row, first_row + batch.num_rows, dtype=np.uint32))
    given = {"row": rows, "origin_row": rows} | {name: batch.column(name) for name in batch.column_names if name != "row"}
    return pa.table([given[name] for name in SCHEMA.names], schema=SCHEMA)


def reserve_version_id():
    """The next DatasetVersion id, taken now: rows can refer to a version that is inserted
    later in the same transaction, or in another one."""
    table = DatasetVersion._meta.db_table
    if connection.vendor == "sqlite":
        return _reserve_sqlite_id(table)
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [table])
        return cursor.fetchone()[0]


def _reserve_sqlite_id(table):
    # The table is AUTOINCREMENT (as Django makes it), so SQLite never hands out an id at or
    # below its sqlite_sequence entry: raising that entry takes the id for good.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = %s), 0), "
                       f"coalesce((SELECT max(id) FROM {table}), 0)) + 1", [table])
        reserved = cursor.fetchone()[0]
        cursor.execute("DELETE FROM sqlite_sequence WHERE name = %s", [table])
        cursor.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)", [table, reserved])
    return reserved


def insert_texts(version_id, path, stop=None):
    """COPY the texts of the Parquet file at `path` (row order) into ExampleText on PostgreSQL;
    `stop()` is asked between batches and may raise to give up."""
    if connection.vendor != "postgresql":
        return
    offset = 0
    with connection.cursor() as cursor:
        with cursor.cursor.copy(COPY_TEXTS) as copy:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=COPY_SLICE, columns=["text"]):
                if stop:
                    stop()
                n = batch.num_rows
                table = pa.table([pa.array(np.full(n, version_id, dtype=np.int64)),
                                  pa.array(np.arange(offset, offset + n, dtype=np.int64)), batch.column(0)],
                                 names=["version_id", "row", "text"])
                _copy_rows(copy, table)
                offset += n


def analyze(*models):
    """Fresh statistics after a version's rows went in, so the planner knows its size at once
    (autovacuum may take minutes) and uses the text index for searches instead of scanning."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE " + ", ".join(model._meta.db_table for model in models))


class TextIndexWriter:
    """Fills ExampleText for a version that does not exist yet, in a thread with its own
    connection and transaction, and commits it right after the version commits. The GIN index
    maintenance is most of PostgreSQL's work for a big upload; this way it runs on the other
    core while the upload is still finding duplicates.

        texts = TextIndexWriter.start(staged_parquet)   # None where it cannot help (see below)
        VersionWriter(..., texts=texts) ... .commit()   # the version gets texts.version_id;
                                                        # commit() calls finish(), or abandon()
        texts.abandon()                                 # any failure before that: roll back

    The version's id is taken from its sequence up front, and the thread commits only after
    the version has (the table has no foreign key in the database: see ExampleText). Only on
    PostgreSQL and outside a transaction (inside one the version would not be committed when
    the thread commits); `start` returns None otherwise and VersionWriter indexes the texts
    inside its own transaction.
    """

    def __init__(self, path, version_id):
        self.path, self.version_id = path, version_id
        self.decided, self.keep, self.committed = threading.Event(), False, False
        self.thread = threading.Thread(target=self._run, name=f"texts-for-version-{version_id}", daemon=True)

    @classmethod
    def start(cls, path):
        if connection.vendor != "postgresql" or connection.in_atomic_block:
            return None
        writer = cls(path, reserve_version_id())
        writer.thread.start()
        return writer

    def finish(self):
        """The version has committed: commit the texts too. False if they could not be."""
        self._decide(keep=True)
        return self.committed

    def abandon(self):
        """No version after all: roll the texts back (at once, if still copying)."""
        if not self.decided.is_set():
            self._decide(keep=False)

    def _decide(self, keep):
        self.keep = keep
        self.decided.set()
        self.thread.join()

    def _stop_if_abandoned(self):
        if self.decided.is_set() and not self.keep:
            raise _Abandoned

    def _run(self):
        try:
            with transaction.atomic():
                insert_texts(self.version_id, self.path, stop=self._stop_if_abandoned)
                # Statistics now, while the upload still works on duplicates: ANALYZE counts
                # its own transaction's new rows, and commits with them.
                analyze(ExampleText)
                self.decided.wait()
                self._stop_if_abandoned()
            self.committed = True
        except _Abandoned:
            pass
        except Exception:
            log.exception("indexing the texts of version id %s on a second connection failed", self.version_id)
        finally:
            connections.close_all()  # connections are per thread: this closes only this thread's


class _Abandoned(Exception):
    pass


def _example_table(version_id, batch):
    """The Example columns of one Arrow batch, in EXAMPLE_COLUMNS order. Empty strings stay
    quoted ("") so PostgreSQL keeps them apart from NULL."""
    column = batch.column
    empty = pa.scalar("", pa.string())
    kinds = pc.fill_null(column("pii_kinds"), empty)
    return pa.table([
        pa.array(np.full(batch.num_rows, version_id, dtype=np.int64)),
        column("row"), column("origin_row"), column("text"),
        pc.fill_null(column("response"), empty), pc.fill_null(column("label"), empty),
        pc.index_in(column("split"), value_set=pa.array(SPLIT_NAMES)),
        pc.fill_null(column("group"), empty), column("timestamp"), column("row_sha256"), column("content_key"),
        pc.not_equal(kinds, empty), kinds, column("duplicate_cluster"),
        pc.fill_null(column("metadata"), pa.scalar("{}", pa.string())),
    ], names=list(EXAMPLE_COLUMNS))


def verify_version(version):
    """Re-derive every hash of a stored version; return a list of problems (empty = intact)."""
    problems = []
    if DatasetVersion.hash_manifest(version.manifest) != version.manifest_sha256:
        problems.append("the manifest does not match its hash")
    content, rows = hashlib.sha256(), 0
    try:
        for batch in iter_row_batches(version):
            for i, sha in enumerate(batch["row_sha256"]):
                if row_sha256(*(batch[f][i] or ("" if f != "timestamp" else None) for f in ROW_FIELDS)) != sha:
                    problems.append(f"row {batch['row'][i]} does not match its hash")
                content.update(f"{sha}:{batch['split'][i]}\n".encode())
                rows += 1
    except Exception as exc:  # a corrupt or missing artifact is one of the problems we report
        return problems + [f"rows artifact unreadable: {type(exc).__name__}: {exc}"]
    if content.hexdigest() != version.manifest.get("content_sha256") or rows != version.row_count:
        problems.append("the rows do not match the manifest's content hash")
    problems += _verify_examples(version)
    return problems


def _verify_examples(version):
    content = hashlib.sha256()
    examples = version.examples.order_by("row").values_list("text", "response", "label", "group", "timestamp", "metadata", "row_sha256", "split")
    for *fields, sha, split in examples.iterator(chunk_size=5000):
        if row_sha256(*fields) != sha:
            return ["an example row in the database does not match its hash"]
        content.update(f"{sha}:{SPLIT_NAMES[split]}\n".encode())
    if content.hexdigest() != version.manifest.get("content_sha256"):
        return ["the examples in the database do not match the manifest"]
    return []
