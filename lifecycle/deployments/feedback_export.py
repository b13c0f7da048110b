"""Feedback as a new dataset version, for retraining.

The corrections people (and clients) gave on a deployment's answers become rows of text and
the right label, uploaded into the dataset the deployment's stable version was trained on and
ingested by the datasets app's own pipeline (datasets/uploads.py, the `ingest_upload` job): the
same validation against the dataset's label set, PII scan under the dataset's own policy (block
refuses the file, redact adds a redacted child, allow waits for an approver's sign-off), dedup,
splits with each request's inputs kept together, and leakage check as any upload. The texts
are the ones the prediction log kept, already masked by that policy when they were served.

Two jobs: this module's `export_feedback` writes the rows to a file and hands it to the datasets
app as an upload; that upload's own ingest job makes the version.
"""
import json
import os
import tempfile

from django.db import transaction
from django.db.models import OuterRef, Q, Subquery
from django.urls import reverse
from django.utils import timezone

from lifecycle.core.jobs import Outcome, enqueue, task
from lifecycle.core.models import AuditEvent, Job
from lifecycle.core.roles import ML_ENGINEER
from lifecycle.datasets.models import Dataset, Upload
from lifecycle.deployments.models import Deployment, DeploymentError, Feedback, PredictionLog, Route

# The file's columns as the datasets app maps them; the rest is kept as each row's metadata.
MAPPING = {"text": "text", "label": "label", "group": "request_id", "timestamp": "answered_at"}
READ_CHUNK = 2000
PROGRESS_EVERY = 5000


def source_dataset(deployment):
    """The dataset the deployment's stable version was trained on."""
    return Dataset.objects.get(versions__runs__model_versions=deployment.current_release.stable_id)


def usable(deployment):
    """Feedback that says the right label: a correction, or a confirmed answer."""
    return Feedback.objects.filter(deployment=deployment).filter(Q(label__gt="") | Q(correct=True))


def latest_job(deployment):
    return Job.objects.filter(task=export_feedback.task_name, kwargs__deployment_id=deployment.pk).order_by("-pk").first()


def start(user, deployment):
    """Enqueue an export of the deployment's feedback; DeploymentError says why not. Raises
    QueueUnavailable, with nothing written, when Redis does not answer."""
    dataset = source_dataset(deployment)
    if dataset.task != Dataset.Task.CLASSIFICATION:
        raise DeploymentError(f"Feedback exports labels, and {dataset.name} holds instruction pairs.")
    count = usable(deployment).count()
    if not count:
        raise DeploymentError("No feedback gives a right label yet: correct some answers first.")
    running = latest_job(deployment)
    if running is not None and not running.is_terminal:
        raise DeploymentError(f"An export of this deployment's feedback is {running.status} already (job {running.pk}).")
    with transaction.atomic():
        job = enqueue(export_feedback, user=user, deployment_id=deployment.pk)
        AuditEvent.record(user, "deployment.feedback_export_requested", deployment, {
            "dataset": dataset.slug, "feedback": count, "job": job.pk})
    return job


def _rows(deployment):
    """One dict per usable piece of feedback, in the file's shape; None where the prediction
    it was about has left the log (retention)."""
    answered = (PredictionLog.objects.filter(request_id=OuterRef("request_id"), position=OuterRef("position"))
                .exclude(route=Route.SHADOW))
    found = (usable(deployment).annotate(text=Subquery(answered.values("input_text")[:1]),
                                         answered_at=Subquery(answered.values("created_at")[:1]),
                                         version_id=Subquery(answered.values("version_id")[:1]))
             .order_by("pk").values("pk", "request_id", "position", "label", "correct", "predicted_label", "text",
                                    "answered_at", "version_id"))
    for row in found.iterator(chunk_size=READ_CHUNK):
        if row["text"] is None:
            yield None
            continue
        yield {"text": row["text"], "label": row["label"] or row["predicted_label"],
               "request_id": str(row["request_id"]), "answered_at": row["answered_at"].isoformat(),
               "position": row["position"], "predicted_label": row["predicted_label"],
               "model_version": row["version_id"], "deployment": deployment.name, "feedback": row["pk"]}


def write_file(deployment, path, progress=lambda done: None):
    """The feedback rows as JSON lines at `path`; returns (rows written, rows whose prediction is gone)."""
    written = gone = 0
    with open(path, "w", encoding="utf-8") as out:
        for row in _rows(deployment):
            if row is None:
                gone += 1
                continue
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += 1
            if written % PROGRESS_EVERY == 0:
                progress(written)
    return written, gone


def _outcome(job):
    upload = Upload.objects.select_related("dataset").get(pk=job.result["upload"])
    gone = f"; {job.result['gone']} whose prediction has left the log were left out" if job.result["gone"] else ""
    return Outcome(f"Wrote {job.result['rows']} corrected rows{gone}. The upload's ingest into "
                   f"{upload.dataset.name} makes the version.",
                   (("The upload", reverse("datasets:upload", args=[upload.pk])),
                    ("Its ingest job", reverse("job_detail", args=[job.result["ingest_job"]]))))


@task(queue="default", roles=(ML_ENGINEER,), outcome=_outcome)
def export_feedback(job, *, deployment_id):
    from lifecycle.datasets import uploads

    deployment = Deployment.objects.select_related("current_release__stable").get(pk=deployment_id)
    dataset = source_dataset(deployment)
    user = job.row.created_by
    job.set_progress(phase="writing rows", done=0)
    fd, path = tempfile.mkstemp(prefix="lifecycle-feedback-", suffix=".jsonl")
    os.close(fd)
    try:
        written, gone = write_file(deployment, path, lambda done: job.set_progress(phase="writing rows", done=done))
        if not written:
            raise DeploymentError("No feedback row still has its prediction in the log; nothing to export.")
        job.check_cancelled()
        filename = f"feedback-{deployment.name}-{timezone.now():%Y%m%d-%H%M%S}.jsonl"
        upload = uploads.receive(dataset, path, filename, user=user, on_error=Upload.OnError.DROP, mapping=MAPPING,
                                 fmt="jsonl")
    finally:
        os.unlink(path)
    ingest = uploads.start_ingest(upload, MAPPING, user)
    return {"upload": upload.pk, "ingest_job": ingest.pk, "rows": written, "gone": gone, "dataset": dataset.pk}
