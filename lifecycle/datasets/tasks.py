import os
import tempfile

from django.db import transaction

from lifecycle.core.artifacts import get_store
from lifecycle.core.jobs import Outcome, task
from lifecycle.core.models import AuditEvent
from lifecycle.core.roles import READ_ROLES
from lifecycle.datasets import ingest, operations, pipeline, splits
from lifecycle.datasets.models import DatasetVersion, Upload
from lifecycle.datasets.readers import ColumnMapping


def _progress(job):
    def report(phase, done, total, **extra):
        job.set_progress(phase=phase, done=done, total=total, **extra)
        job.check_cancelled()

    return report


def _versions_made(dataset_id, numbers, rows):
    versions = list(DatasetVersion.objects.filter(dataset_id=dataset_id, number__in=numbers)
                    .select_related("dataset").order_by("number"))
    if not versions:
        return Outcome("Finished; the versions it made no longer exist.")
    names = " and ".join(f"version {v.number}" for v in versions)
    return Outcome(f"Made {names} of {versions[0].dataset.name} ({rows:,} rows).",
                   tuple((f"Version {v.number}", v.get_absolute_url()) for v in versions))


def _ingest_outcome(job):
    upload = Upload.objects.get(pk=job.kwargs["upload_id"])
    return _versions_made(upload.dataset_id, job.result["versions"], job.result["rows"])


def _derive_outcome(job):
    parent = DatasetVersion.objects.get(pk=job.kwargs["version_id"])
    return _versions_made(parent.dataset_id, [job.result["version"]], job.result["rows"])


# A refused file (bad rows, one label, missing columns, PII under "block") is the user's to
# fix, not a bug: its job fails with the reason, logged in one line without a traceback.
@task(queue="default", roles=READ_ROLES, outcome=_ingest_outcome, refusals=(ingest.IngestRejected,))
def ingest_upload(job, *, upload_id):
    """Turn an upload into a version. A refusal keeps its report on the upload and makes nothing else."""
    upload = Upload.objects.select_related("dataset", "created_by").get(pk=upload_id)
    options = ingest.Options.for_dataset(upload.dataset, ColumnMapping(upload.mapping), upload.on_error,
                                         by_time=upload.split_by_time)
    fd, path = tempfile.mkstemp(prefix="lifecycle-upload-")
    os.close(fd)
    try:
        get_store().copy_to(upload.source_sha256, path)
        versions = pipeline.upload(upload.dataset, path, upload.format, options, user=upload.created_by,
                                      source_sha256=upload.source_sha256, progress=_progress(job))
    except ingest.IngestRejected as exc:
        _record_refusal(upload, str(exc), exc.report)
        raise
    finally:
        os.unlink(path)
    _record_success(upload, versions)
    return {"versions": [v.number for v in versions], "rows": versions[-1].row_count}


def _record_refusal(upload, message, report):
    with transaction.atomic():
        Upload.objects.filter(pk=upload.pk).update(report={**report, "refused": message})
        AuditEvent.record(upload.created_by, "upload.refused", upload, {"reason": message})


def _record_success(upload, versions):
    final = versions[-1]
    with transaction.atomic():
        Upload.objects.filter(pk=upload.pk).update(version=final, report=versions[0].validation_report)
        AuditEvent.record(upload.created_by, "upload.ingested", upload, {"versions": [v.number for v in versions]})


@task(queue="default", roles=READ_ROLES, outcome=_derive_outcome)
def derive_version(job, *, version_id, operation, user_id=None, seed=None, keep_together="all", column=""):
    """Make a child version: remove duplicates, redact PII, or split again. A child the same
    operation with the same settings already made is the answer instead of a second one."""
    from django.contrib.auth import get_user_model

    parent = DatasetVersion.objects.select_related("dataset").get(pk=version_id)
    options = splits.SplitOptions(seed=seed or 0, keep_together=keep_together, column=column)
    existing = parent.existing_child(operation, options)
    if existing is not None:
        return {"version": existing.number, "rows": existing.row_count, "existing": True}
    user = get_user_model().objects.filter(pk=user_id).first()
    job.set_progress(phase=operation, done=0, total=parent.row_count)
    if operation == "dedup":
        child = operations.remove_duplicates(parent, user=user)
    elif operation == "redact":
        child = operations.redact_version(parent, user=user)
    elif operation == "resplit":
        child = operations.resplit_version(parent, options, user=user)
    else:
        raise ValueError(f"unknown operation {operation!r}")
    return {"version": child.number, "rows": child.row_count}
