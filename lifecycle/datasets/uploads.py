"""Receiving a file: sniff it, keep it as an artifact, record the upload, start the ingest."""
import itertools
import json
import os
import tempfile
from contextlib import contextmanager

from django.conf import settings
from django.db import transaction

from lifecycle.core.artifacts import get_store
from lifecycle.core.jobs import enqueue
from lifecycle.core.models import AuditEvent
from lifecycle.datasets.models import Upload
from lifecycle.datasets.readers import (  # noqa: F401 (FileFormatError: callers catch it from here)
    ColumnMapping,
    FileFormatError,
    Row,
    detect_format,
    guess_mapping,
    open_rows,
)
from lifecycle.datasets.tasks import ingest_upload

HEAD_BYTES = 64 * 1024


@contextmanager
def local_path(uploaded):
    """A path to the uploaded bytes: Django's temporary file, or a copy of a small in-memory one."""
    if hasattr(uploaded, "temporary_file_path"):
        yield uploaded.temporary_file_path()
        return
    fd, path = tempfile.mkstemp(prefix="lifecycle-upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in uploaded.chunks():
                out.write(chunk)
        yield path
    finally:
        os.unlink(path)


PREVIEW_ROWS = 5
PREVIEW_CELL_CHARS = 200


def sniff(path, filename, max_cell_chars, fmt=None):
    """Format, columns and the first rows (PREVIEW_ROWS, as the readers parse them) of a
    file, or FileFormatError with a message for people. A file with more than
    DATASET_MAX_COLUMNS columns is refused as soon as its header is read."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    fmt = fmt or detect_format(filename, head)
    with open_rows(path, fmt, max_cell_chars=max_cell_chars, max_columns=settings.DATASET_MAX_COLUMNS) as reader:
        return fmt, reader.columns, _preview(reader)


def _preview(reader):
    """The first rows as lists of short strings, one per column (a bad row says why)."""
    rows = []
    try:
        for item in itertools.islice(reader, PREVIEW_ROWS):
            if isinstance(item, Row):
                rows.append([_cell(item.values.get(column)) for column in reader.columns])
            else:
                rows.append(_problem_row(f"line {item.line}: {item.reason}", reader.columns))
    except FileFormatError as exc:  # the ingest refuses the file with its full report; the preview just stops
        rows.append(_problem_row(str(exc), reader.columns))
    return rows


def _problem_row(text, columns):
    return [f"({text})"[:PREVIEW_CELL_CHARS]] + [""] * (len(columns) - 1)


def _cell(value):
    text = "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= PREVIEW_CELL_CHARS else text[:PREVIEW_CELL_CHARS - 1] + "…"


def receive(dataset, path, filename, *, user, on_error, mapping=None, fmt=None):
    """Store the file and record an Upload. Raises FileFormatError before storing anything.
    The first rows are kept in its report for the mapping step (the ingest replaces it)."""
    fmt, columns, preview = sniff(path, filename, dataset.max_text_chars, fmt)
    info = get_store().put_file(path)
    with transaction.atomic():
        upload = Upload.objects.create(
            dataset=dataset, source_sha256=info.sha256, filename=os.path.basename(filename)[:255], size=info.size,
            format=fmt, columns=columns, mapping=mapping or {}, on_error=on_error, created_by=user,
            report={"preview": preview})
        AuditEvent.record(user, "upload.received", upload, {"dataset": dataset.slug, "sha256": info.sha256,
                                                            "bytes": info.size, "format": fmt})
    return upload


def parse_mapping_arg(text):
    """"text=body,label=intent" → {"text": "body", "label": "intent"}; ValueError if malformed."""
    return ColumnMapping.parse(text).pairs if text.strip() else {}


def suggested_mapping(upload):
    return guess_mapping(upload.columns, upload.dataset.task)


def start_ingest(upload, mapping, user, *, split_by_time=False):
    """Fix the mapping and enqueue the ingest (once: the job key makes a second click a no-op).
    Raises QueueUnavailable, with nothing changed, when Redis does not answer."""
    ColumnMapping(mapping)  # refuses a malformed mapping before anything is written
    with transaction.atomic():
        locked = Upload.objects.select_for_update().get(pk=upload.pk)
        if locked.job_id:
            return locked.job
        job = enqueue(ingest_upload, user=user, key=f"ingest:upload:{upload.pk}", upload_id=upload.pk)
        Upload.objects.filter(pk=upload.pk).update(mapping=mapping, split_by_time=split_by_time, job=job)
        AuditEvent.record(user, "upload.mapped", upload, {"mapping": mapping, "split_by_time": split_by_time})
    return job

