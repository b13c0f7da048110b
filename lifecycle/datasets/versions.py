"""Writing an immutable dataset version: rows to Parquet in the artifact store, examples to
the database, a manifest that hashes it all — the version appears in one transaction, or not
at all. Every path that makes a version (an upload, a redaction, a dedup, a new split, frozen
labels) goes through `VersionWriter`, batch by batch, so any size is written in flat memory.
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
from lifecycle.datasets.rows import row_sha256

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
ROW_FIELDS = ("text", "response", "label", "group", "timestamp", "metadata")
SCHEMA = pa.schema([  # origin_row is Example.origin_row: the row's identity across versions
    ("row", pa.uint32()), ("origin_row", pa.uint32()), ("text", pa.string()), ("response", pa.string()),
    ("label", pa.string()), ("split", pa.string()), ("group", pa.string()), ("timestamp", pa.timestamp("us", tz="UTC")),
    ("metadata", pa.string()), ("row_sha256", pa.string()), ("content_key", pa.int64()), ("pii_kinds", pa.string()),
    ("duplicate_cluster", pa.int64()),
])
EXAMPLE_COLUMNS = ("version_id", "row", "origin_row", "text", "response", "label", "split", "group", "timestamp",
                   "row_sha256", "content_key", "has_pii", "pii_kinds", "duplicate_cluster", "metadata")
READ_BATCH = 20_000
# Rows turned into COPY data at a time: a COPY holds one slice's CSV (and Arrow's copy of
# it), not a whole batch's.
COPY_SLICE = 5_000


_QUOTED = ", ".join(f'"{name}"' for name in EXAMPLE_COLUMNS)
COPY_EXAMPLES = f"COPY {Example._meta.db_table} ({_QUOTED}) FROM STDIN WITH (FORMAT csv)"
INSERT_EXAMPLES = f"INSERT INTO {Example._meta.db_table} ({_QUOTED}) VALUES ({', '.join(['%s'] * len(EXAMPLE_COLUMNS))})"
COPY_TEXTS = f'COPY {ExampleText._meta.db_table} ("version_id", "row", "text") FROM STDIN WITH (FORMAT csv)'


class VersionWriter:
    """Collects row batches into a Parquet file, counts and hashes them, then commits.

    The examples go into the database as the batches arrive, under a version id reserved up
    front; the version row goes in last. On PostgreSQL they stream in one COPY inside the
    transaction that commit() ends, so the server stores and indexes them while this process
    writes Parquet; until end_rows() no other query may use this thread's connection.

    SQLite has one writer: one transaction over a big version's rows would lock heartbeats, the
    reaper and people's clicks out for as long. There each batch commits on its own, with the
    foreign key off meanwhile; no page reaches examples but through their version, and discard()
    or a failed commit deletes them again. Inside a caller's transaction they go into one.
    """

    def __init__(self, dataset, *, operation, parent=None, user=None, source_sha256="", texts=None):
        self.dataset, self.operation, self.parent, self.user = dataset, operation, parent, user
        self.source_sha256 = source_sha256
        # A TextIndexWriter already filling the search table for this version (uploads), or None.
        self.texts, self.version_id = texts, texts.version_id if texts else None
        self.counts, self.rows, self.pii_rows, self.content = defaultdict(Counter), 0, 0, hashlib.sha256()
        self.files = tempfile.TemporaryDirectory(prefix="lifecycle-version-")
        self.path = os.path.join(self.files.name, "rows.parquet")
        self.writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")
        # The diff's row keys (diff.ROW_KEYS), written batch by batch beside the rows.
        self.keys_path = os.path.join(self.files.name, "keys.parquet")
        self.keys_writer = pq.ParquetWriter(self.keys_path, diff.ROW_KEYS, compression="zstd")
        # What the row stream holds open: the transaction; the COPY, or the foreign key switched off.
        self._transaction, self._copying = ExitStack(), ExitStack()
        self._copy, self._streamed = None, False  # the COPY while it is open; whether rows streamed
        self._sliced = connection.vendor == "sqlite" and not connection.in_atomic_block

    def add(self, batch):
        """Append a batch: a dict of column lists, or an Arrow table, with every SCHEMA column but
        `row` (and `origin_row` for an upload, whose rows are their own origin)."""
        names = batch.keys() if isinstance(batch, dict) else batch.column_names
        rows = pa.array(np.arange(self.rows, self.rows + len(batch["text"]), dtype=np.uint32))
        given = {"row": rows, "origin_row": rows} | {name: batch[name] for name in names if name != "row"}
        table = pa.table([given[name] for name in SCHEMA.names], schema=SCHEMA)
        self._count(table)
        self.writer.write_table(table)
        self.keys_writer.write_table(diff.keys_of_batch(table))
        if not self._streamed:
            self._start_rows()
        examples = _example_table(self.version_id, table)
        if self._copy is not None:
            _copy_rows(self._copy, examples)
        else:
            insert_rows(examples)
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

    def _start_rows(self):
        if self.version_id is None:
            self.version_id = reserve_version_id()
        if self._sliced:
            self._copying.callback(connection.enable_constraint_checking)
            connection.disable_constraint_checking()
        else:
            self._transaction.enter_context(transaction.atomic())
        if connection.vendor == "postgresql":
            cursor = self._copying.enter_context(connection.cursor())
            self._copy = self._copying.enter_context(cursor.cursor.copy(COPY_EXAMPLES))
            self._copying.enter_context(connection.execute_wrapper(_refuse_during_copy))
        self._streamed = True

    def _rollback(self, exc):
        """End the COPY and the transaction with `exc`: the database drops every streamed row;
        on SQLite in slices, the slices already committed are deleted."""
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
        """No more rows: the COPY ends, the transaction goes on (so reports that need every row
        can query again); on SQLite the foreign key is back on. commit() calls it too."""
        self._copying.close()
        self._copy = None

    def discard(self):
        self.writer.close()
        self.keys_writer.close()
        self.files.cleanup()
        self._rollback(RuntimeError("version discarded"))

    def commit(self, *, reports, label_set, pii_status, has_leakage):
        """Store the artifacts (content-addressed: harmless if they exist), then create the
        version atomically; if that fails, an artifact nothing refers to is removed again."""
        self.writer.close()
        self.keys_writer.close()
        with self.files:  # removed when done
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
                if info is not None and not DatasetVersion.objects.filter(rows_sha256=info.sha256).exists():
                    get_store().delete(info.sha256)
                if keys_sha256 is not None and not RowKeys.objects.filter(keys_sha256=keys_sha256).exists():
                    get_store().delete(keys_sha256)
                raise
            if self.texts and not self.texts.finish():
                with transaction.atomic():  # its connection failed: index the texts from here
                    insert_texts(version.pk, self.path)
            return version

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
                pii_status=pii_status, has_leakage=has_leakage, created_by=self.user,
                created_at=datetime.fromisoformat(manifest["created_at"]),
                **{f"{name}_report": reports.get(name, {}) for name in ("validation", "pii", "dedup", "leakage")},
            )
            version.save(force_insert=True)
            RowKeys.objects.create(version=version, keys_sha256=keys_sha256)
            if self.texts is None:
                insert_texts(version.pk, self.path)
            analyze(Example, *([ExampleText] if self.texts is None else []))
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
            "format": MANIFEST_FORMAT, "dataset": dataset.slug, "task": dataset.task, "version": number,
            "operation": self.operation,
            "parent": {"version": parent.number, "manifest_sha256": parent.manifest_sha256} if parent else None,
            "schema": {field.name: str(field.type) for field in SCHEMA}, "label_set": label_set, "row_count": self.rows,
            "counts": {split: dict(sorted(labels.items())) for split, labels in sorted(self.counts.items())},
            "rows_artifact": {"sha256": info.sha256, "bytes": info.size, "format": "parquet"},
            "row_hash": "sha256 of the JSON array [text, response, label, group, timestamp, metadata JSON]",
            "content_sha256": self.content.hexdigest(), "source_sha256": self.source_sha256, "pii_rows": self.pii_rows,
            # A report's counts, not its examples.
            "reports": {name: {key: value for key, value in report.items() if key not in ("examples", "errors", "pairs")}
                        for name, report in reports.items()},
            "created_by": getattr(self.user, "username", "") or "system", "created_at": timezone.now().isoformat(),
        }


def _example_table(version_id, batch):
    """The Example columns of one Arrow batch, in EXAMPLE_COLUMNS order. Empty strings stay
    quoted ("") so PostgreSQL keeps them apart from NULL."""
    column, empty = batch.column, pa.scalar("", pa.string())
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


def iter_row_batches(version, columns=None, batch_size=READ_BATCH):
    """The version's rows from its (verified) Parquet artifact, in batches of column lists."""
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        get_store().copy_to(version.rows_sha256, tmp.name)
        for batch in pq.ParquetFile(tmp.name).iter_batches(batch_size=batch_size, columns=columns):
            yield batch.to_pydict()


def insert_rows(table):
    """Example rows (an _example_table) in a transaction (SQLite in slices: committed) by one
    executemany: a model instance per row, as bulk_create makes, took several times as long."""
    columns = [table.column(name).to_pylist() for name in EXAMPLE_COLUMNS]
    when = EXAMPLE_COLUMNS.index("timestamp")
    columns[when] = [connection.ops.adapt_datetimefield_value(value) for value in columns[when]]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(INSERT_EXAMPLES, list(zip(*columns)))


def delete_examples(version_id):
    """Delete the examples under `version_id` (of a version given up), 20,000 rows per
    transaction: SQLite's lock is held for one slice at a time."""
    table = Example._meta.db_table
    sql = f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE version_id = %s LIMIT 20000)"
    deleted = None
    while deleted != 0:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [version_id])
            deleted = cursor.rowcount


def _copy_rows(copy, table):
    """Write `table` to a COPY … FROM STDIN as CSV made by Arrow's C++ writer, a slice at a
    time: a Python call per row (psycopg's write_row) cost more than all the rest of writing."""
    options = pa_csv.WriteOptions(include_header=False, quoting_style="all_valid")
    for start in range(0, table.num_rows, COPY_SLICE):
        buffer = io.BytesIO()
        pa_csv.write_csv(table.slice(start, COPY_SLICE), buffer, options)
        copy.write(buffer.getvalue())


def _refuse_during_copy(execute, sql, params, many, context):
    # psycopg would make such a query wait for ever.
    raise RuntimeError("this connection is streaming a dataset version's rows (COPY): no query may run on it "
                       "until VersionWriter.end_rows(), commit() or discard()")


def reserve_version_id():
    """The next DatasetVersion id, taken now: rows can refer to a version that is inserted
    later in the same transaction, or in another one."""
    table = DatasetVersion._meta.db_table
    if connection.vendor != "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [table])
            return cursor.fetchone()[0]
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
    with connection.cursor() as cursor, cursor.cursor.copy(COPY_TEXTS) as copy:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=COPY_SLICE, columns=["text"]):
            if stop:
                stop()
            n = batch.num_rows
            ids, rows = np.full(n, version_id, dtype=np.int64), np.arange(offset, offset + n, dtype=np.int64)
            _copy_rows(copy, pa.table([ids, rows, batch.column(0)], names=["version_id", "row", "text"]))
            offset += n


def analyze(*models):
    """Fresh statistics after a version's rows went in, so the planner knows its size at once
    (autovacuum may take minutes) and uses the text index for searches instead of scanning."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE " + ", ".join(model._meta.db_table for model in models))


class TextIndexWriter:
    """Fills ExampleText for a version that does not exist yet, in a thread with its own
    connection and transaction: the GIN index upkeep, most of PostgreSQL's work for a big
    upload, runs on the other core while the upload is still finding duplicates.

    VersionWriter(..., texts=TextIndexWriter.start(path)) gives the version the id reserved
    here; its commit() calls finish() (ExampleText has no foreign key in the database) or
    abandon(), as the caller must on any failure before. None but on PostgreSQL outside a
    transaction (inside one, the version would commit after the texts).
    """

    def __init__(self, path):
        self.path, self.version_id = path, reserve_version_id()
        self.decided, self.keep, self.committed = threading.Event(), False, False
        self.thread = threading.Thread(target=self._run, name=f"texts-for-version-{self.version_id}", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, path):
        return cls(path) if connection.vendor == "postgresql" and not connection.in_atomic_block else None

    def finish(self, keep=True):
        """The version has committed: commit the texts too (keep=False: roll them back).
        False if they were not committed."""
        self.keep = keep
        self.decided.set()
        self.thread.join()
        return self.committed

    def abandon(self):
        """No version after all: roll the texts back (at once, if still copying)."""
        if not self.decided.is_set():
            self.finish(keep=False)

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
    content = hashlib.sha256()
    examples = version.examples.order_by("row").values_list(*ROW_FIELDS, "row_sha256", "split")
    for *fields, sha, split in examples.iterator(chunk_size=5000):
        if row_sha256(*fields) != sha:
            return problems + ["an example row in the database does not match its hash"]
        content.update(f"{sha}:{SPLIT_NAMES[split]}\n".encode())
    if content.hexdigest() != version.manifest.get("content_sha256"):
        problems.append("the examples in the database do not match the manifest")
    return problems
