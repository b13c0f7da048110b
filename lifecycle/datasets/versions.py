"""Writing an immutable dataset version: rows to Parquet in the artifact store, examples to
the database, a manifest that hashes it all — in one transaction, or not at all.

The row stream arrives in batches (dicts of equal-length column lists) so that a version of
any size is written with flat memory. Every path that makes a version — an upload, a
redaction, a dedup, a new split, frozen labels — goes through `VersionWriter`.
"""
import hashlib
import io
import json
import logging
import os
import tempfile
from collections import Counter, defaultdict
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from django.db import connection, transaction
from django.utils import timezone

from lifecycle.core.artifacts import get_store
from lifecycle.core.models import AuditEvent
from lifecycle.datasets.models import SPLIT_NAMES, Dataset, DatasetVersion, Example
from lifecycle.datasets.rows import metadata_json, row_sha256  # noqa: F401 (re-exported for callers)

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
ROW_FIELDS = ("text", "response", "label", "group", "timestamp", "metadata")
SCHEMA = pa.schema([
    ("row", pa.uint32()),
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
EXAMPLE_COLUMNS = ("version_id", "row", "text", "response", "label", "split", "group", "timestamp",
                   "row_sha256", "content_key", "has_pii", "pii_kinds", "duplicate_cluster", "metadata")
READ_BATCH = 20_000


class VersionWriter:
    """Collects row batches into a Parquet file, counts and hashes them, then commits."""

    def __init__(self, dataset, *, operation, parent=None, user=None, source_sha256=""):
        self.dataset, self.operation, self.parent, self.user = dataset, operation, parent, user
        self.source_sha256 = source_sha256
        self.counts = defaultdict(Counter)
        self.rows = 0
        self.content = hashlib.sha256()
        self.pii_rows = 0
        fd, self.path = tempfile.mkstemp(prefix="lifecycle-version-", suffix=".parquet")
        os.close(fd)
        self.writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")

    def add(self, batch):
        """Append a batch: a dict of column lists for every SCHEMA column but `row`."""
        size = len(batch["text"])
        batch = dict(batch, row=list(range(self.rows, self.rows + size)))
        for sha, split, label, kinds in zip(batch["row_sha256"], batch["split"], batch["label"], batch["pii_kinds"]):
            self.content.update(f"{sha}:{split}\n".encode())
            self.counts[split][label] += 1
            self.pii_rows += bool(kinds)
        self.writer.write_table(pa.Table.from_pydict(batch, schema=SCHEMA))
        self.rows += size

    def discard(self):
        self.writer.close()
        os.unlink(self.path)

    def commit(self, *, reports, label_set, pii_status, has_leakage):
        """Store the Parquet artifact, then create the version and its examples atomically.

        The artifact goes first (content-addressed, so harmless if it already exists); if the
        database transaction fails, an artifact no version refers to is removed again.
        """
        self.writer.close()
        try:
            info = get_store().put_file(self.path)
            try:
                return self._create(info, reports, label_set, pii_status, has_leakage)
            except BaseException:
                _remove_if_unreferenced(info.sha256)
                raise
        finally:
            os.unlink(self.path)

    def _create(self, info, reports, label_set, pii_status, has_leakage):
        with transaction.atomic():
            # The dataset row lock orders concurrent writers: numbers and parents are well-defined.
            dataset = Dataset.objects.select_for_update().get(pk=self.dataset.pk)
            latest = dataset.versions.order_by("-number").first()
            number = latest.number + 1 if latest else 1
            parent = self.parent or latest
            manifest = self._manifest(dataset, number, parent, info, reports, label_set)
            version = DatasetVersion(
                dataset=dataset, number=number, parent=parent, operation=self.operation,
                rows_sha256=info.sha256, rows_bytes=info.size, source_sha256=self.source_sha256,
                row_count=self.rows, content_sha256=manifest["content_sha256"], manifest=manifest,
                manifest_sha256=DatasetVersion.hash_manifest(manifest), label_set=label_set,
                validation_report=reports.get("validation", {}), pii_report=reports.get("pii", {}),
                pii_status=pii_status, dedup_report=reports.get("dedup", {}),
                leakage_report=reports.get("leakage", {}), has_leakage=has_leakage,
                created_by=self.user, created_at=datetime.fromisoformat(manifest["created_at"]),
            )
            version.save(force_insert=True)
            insert_examples(version, self.path)
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
    """Copy the version's rows from its Parquet file at `path` (the local file just stored,
    not a second read through the store) into `Example`: COPY on PostgreSQL, bulk inserts
    elsewhere."""
    batches = pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH)
    if connection.vendor == "postgresql":
        _copy_examples(version, batches)
        # Fresh statistics, so the planner knows this version's size at once (autovacuum may
        # take minutes) and picks the text index for searches instead of scanning every row.
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Example._meta.db_table}")
        return
    for batch in batches:
        rows = _example_table(version.pk, batch).to_pylist()
        Example.objects.bulk_create([Example(**row | {"metadata": json.loads(row["metadata"])}) for row in rows], batch_size=2000)


def _copy_examples(version, batches):
    """COPY … FROM STDIN in CSV made by Arrow's C++ writer: a Python call per row (write_row)
    cost more than the rest of the ingest's write phase together."""
    columns = ", ".join(f'"{name}"' for name in EXAMPLE_COLUMNS)
    options = pa_csv.WriteOptions(include_header=False, quoting_style="all_valid")
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {Example._meta.db_table} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
            for batch in batches:
                buffer = io.BytesIO()
                pa_csv.write_csv(_example_table(version.pk, batch), buffer, options)
                copy.write(buffer.getvalue())


def _example_table(version_id, batch):
    """The Example columns of one Arrow batch, in EXAMPLE_COLUMNS order. Empty strings stay
    quoted ("") so PostgreSQL keeps them apart from NULL."""
    column = batch.column
    empty = pa.scalar("", pa.string())
    kinds = pc.fill_null(column("pii_kinds"), empty)
    return pa.table([
        pa.array(np.full(batch.num_rows, version_id, dtype=np.int64)),
        column("row"), column("text"),
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
