"""Incident mode per model, opened and lifted by a person.

While an incident is open the error-budget gate (policy.py) fails every promotion of the model
and retrain triggers make no draft (retrain.py). Opening it enqueues a capture: the failing
window's answered inputs become a dataset version of the dataset the serving version was
trained on, through the datasets app's own upload and ingest (validation against the label
set, PII policy, dedup, splits, leakage), as deployments/feedback_export.py does for feedback.
Each row's label is the feedback's right label where a person gave one, else the label the
model answered; its metadata says which (`label_source`).

The timeline is read from the audit trail: nothing is written twice.
"""
import json
import os
import tempfile
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Q, Subquery
from django.urls import reverse
from django.utils import timezone

from lifecycle.core.jobs import Outcome, enqueue, maintenance_step, task
from lifecycle.core.models import AuditEvent, Job
from lifecycle.core.roles import APPROVER, ML_ENGINEER, ONCALL, VIEWER, has_role
from lifecycle.datasets.models import Upload
from lifecycle.deployments import feedback_export
from lifecycle.deployments.models import Deployment, Feedback, PredictionLog, Release, Route
from lifecycle.monitoring.models import Alert, Incident, MonitoringError, RetrainDraft
from lifecycle.registry.models import ModelVersion, PromotionRequest, RegisteredModel

INCIDENT_ROLES = (ONCALL, ML_ENGINEER)
READ_ROLES = (ONCALL, ML_ENGINEER, APPROVER, VIEWER)
# The longest window a capture reads, and the most rows it keeps (the newest): an incident
# wants the failing inputs, not a copy of the log.
MAX_WINDOW = timedelta(days=7)
MAX_CAPTURE_ROWS = 50_000
READ_CHUNK = 2000
TIMELINE_LIMIT = 500
MAPPING = {"text": "text", "label": "label", "group": "request_id", "timestamp": "answered_at"}


def check_window(start, end, now=None):
    """Refuse a window a capture cannot read; MonitoringError says why."""
    now = now or timezone.now()
    if start is None or end is None:
        raise MonitoringError("Give the failing window's start and end.")
    if end <= start:
        raise MonitoringError("The failing window must end after it starts.")
    if start > now:
        raise MonitoringError("The failing window starts in the future; nothing was answered then.")
    if end - start > MAX_WINDOW:
        raise MonitoringError(f"The failing window may span at most {MAX_WINDOW.days} days.")


def _check_opening(user, model, deployment, reason):
    if not has_role(user, *INCIDENT_ROLES):
        raise MonitoringError("Only on-call and ML engineers open incident mode.")
    if not (reason or "").strip():
        raise MonitoringError("Say what is wrong: opening incident mode needs a reason.")
    if deployment is not None and deployment.model_id != model.pk:
        raise MonitoringError(f"{deployment.name} serves {deployment.model.name}, not {model.name}.")


def open_incident(user, model, *, deployment, reason, window_start, window_end):
    """Open incident mode for `model` (audited) and enqueue the capture of the window's inputs.
    MonitoringError (nothing written) when not allowed; QueueUnavailable when Redis is down."""
    _check_opening(user, model, deployment, reason)
    check_window(window_start, window_end)
    reason = reason.strip()
    deployment = deployment or Deployment.objects.filter(model=model).order_by("name").first()
    try:
        with transaction.atomic():
            # The model row lock orders two on-call clicks; the partial unique index backs it.
            RegisteredModel.objects.select_for_update().get(pk=model.pk)
            _refuse_second(model)
            incident = Incident.objects.create(
                model=model, deployment=deployment, title=reason.splitlines()[0][:300], reason=reason,
                window_start=window_start, window_end=window_end, opened_by=user)
            if deployment is not None:
                incident.capture_job = enqueue(capture_window, user=user, incident_id=incident.pk)
                incident.save(update_fields=["capture_job"])
            AuditEvent.record(user, "incident.opened", incident, {
                "model": model.slug, "deployment": getattr(deployment, "name", None), "reason": reason,
                "window_start": window_start.isoformat(), "window_end": window_end.isoformat(),
                "capture_job": incident.capture_job_id})
    except IntegrityError:
        _refuse_second(model)  # a concurrent open won the race
        raise
    return incident


def _refuse_second(model):
    current = Incident.objects.filter(model=model, lifted_at__isnull=True).first()
    if current is not None:
        raise MonitoringError(f"{model.name} is in incident mode already (incident #{current.pk}, opened "
                              f"{current.opened_at:%Y-%m-%d %H:%M} UTC); lift that one first.")


def lift(user, incident, reason):
    """End incident mode (audited): promotions and retrain triggers of the model go on."""
    if not has_role(user, *INCIDENT_ROLES):
        raise MonitoringError("Only on-call and ML engineers lift incident mode.")
    reason = (reason or "").strip()
    if not reason:
        raise MonitoringError("Say why it is over: lifting incident mode needs a reason.")
    with transaction.atomic():
        locked = Incident.objects.select_for_update().get(pk=incident.pk)
        if not locked.is_open:
            raise MonitoringError(f"Incident #{locked.pk} was lifted already by someone else.")
        now = timezone.now()
        Incident.objects.filter(pk=locked.pk).update(lifted_by=user, lifted_at=now, lift_reason=reason)
        AuditEvent.record(user, "incident.lifted", locked, {"model": incident.model.slug, "reason": reason,
                                                            "open_minutes": round((now - locked.opened_at).total_seconds() / 60, 1)})
    incident.refresh_from_db()
    return incident


# --- the capture -----------------------------------------------------------------------------------


def window_rows(incident):
    """One dict per answered input of the window, newest first, in the upload's shape."""
    feedback = Feedback.objects.filter(request_id=OuterRef("request_id"), position=OuterRef("position"))
    found = (PredictionLog.objects.filter(deployment=incident.deployment, created_at__gte=incident.window_start,
                                          created_at__lt=incident.window_end)
             .exclude(route=Route.SHADOW)  # a shadow answered a copy of an input already here
             .annotate(feedback_label=Subquery(feedback.values("label")[:1]),
                       feedback_correct=Subquery(feedback.values("correct")[:1]))
             .order_by("-created_at", "-id")
             .values("request_id", "position", "input_text", "label", "confidence", "status", "route", "version_id",
                     "created_at", "feedback_label", "feedback_correct"))
    for row in found[:MAX_CAPTURE_ROWS].iterator(chunk_size=READ_CHUNK):
        yield _capture_row(incident, row)


def _capture_row(incident, row):
    """The row to upload, or None for an input with no label at all (a failed answer nobody corrected)."""
    if row["feedback_label"]:
        label, source = row["feedback_label"], "feedback"
    elif row["label"]:
        label, source = row["label"], "feedback_confirmed" if row["feedback_correct"] else "predicted"
    else:
        return None
    return {"text": row["input_text"], "label": label, "label_source": source, "predicted_label": row["label"],
            "confidence": row["confidence"], "status": row["status"], "route": row["route"],
            "request_id": str(row["request_id"]), "position": row["position"], "model_version": row["version_id"],
            "answered_at": row["created_at"].isoformat(), "deployment": incident.deployment.name,
            "incident": incident.pk}


def write_capture(incident, path, progress=lambda done: None):
    """The window's rows as JSON lines at `path`; returns counts by label source and the unlabeled."""
    counts = {"feedback": 0, "feedback_confirmed": 0, "predicted": 0, "unlabeled": 0}
    with open(path, "w", encoding="utf-8") as out:
        for i, row in enumerate(window_rows(incident), 1):
            if row is None:
                counts["unlabeled"] += 1
                continue
            counts[row["label_source"]] += 1
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            if i % 5000 == 0:
                progress(i)
    return counts


def _capture_outcome(job):
    result = job.result
    if not result.get("upload"):
        return Outcome(result.get("note", "Nothing was captured."))
    upload = Upload.objects.select_related("dataset").get(pk=result["upload"])
    return Outcome(f"Captured {result['rows']} inputs of the window ({result['counts']['feedback']} labeled by "
                   f"feedback, the rest by the model's answer); the upload's ingest into {upload.dataset.name} makes "
                   "the version.", (("The upload", reverse("datasets:upload", args=[upload.pk])),
                                    ("The incident", reverse("monitoring:incident", args=[result["incident"]]))))


@task(queue="monitoring", roles=READ_ROLES, outcome=_capture_outcome)
def capture_window(job, *, incident_id):
    from lifecycle.datasets import uploads

    incident = Incident.objects.select_related("deployment__current_release__stable", "model").get(pk=incident_id)
    dataset = feedback_export.source_dataset(incident.deployment)  # what its stable version trained on
    job.set_progress(phase="reading the window", done=0)
    fd, path = tempfile.mkstemp(prefix="lifecycle-incident-", suffix=".jsonl")
    os.close(fd)
    try:
        counts = write_capture(incident, path, lambda done: job.set_progress(phase="reading the window", done=done))
        rows = sum(v for k, v in counts.items() if k != "unlabeled")
        if not rows:
            return {"incident": incident.pk, "rows": 0, "counts": counts, "upload": None,
                    "note": "No answered input with a label was logged in the window; nothing was captured."}
        filename = f"incident-{incident.pk}-{incident.model.slug}-{incident.window_start:%Y%m%d-%H%M}.jsonl"
        upload = uploads.receive(dataset, path, filename, user=job.row.created_by, on_error=Upload.OnError.DROP,
                                 mapping=MAPPING, fmt="jsonl")
    finally:
        os.unlink(path)
    ingest = uploads.start_ingest(upload, MAPPING, job.row.created_by)
    return {"incident": incident.pk, "rows": rows, "counts": counts, "upload": upload.pk, "ingest_job": ingest.pk,
            "dataset": dataset.pk, "capped": rows + counts["unlabeled"] >= MAX_CAPTURE_ROWS}


def capture_upload(incident):
    """The capture's Upload, once the capture job made one; else None."""
    job = incident.capture_job
    if job is None or job.status != Job.Status.SUCCEEDED or not (job.result or {}).get("upload"):
        return None
    return Upload.objects.select_related("version", "job").filter(pk=job.result["upload"]).first()


def link_capture(incident):
    """Point the incident at its captured version once the upload's ingest made it (audited
    as the system's). Returns True when it linked one."""
    upload = capture_upload(incident)
    if upload is None or upload.version_id is None:
        return False
    with transaction.atomic():
        updated = Incident.objects.filter(pk=incident.pk, captured_version__isnull=True).update(
            captured_version=upload.version_id)
        if updated:
            AuditEvent.record(None, "incident.captured", incident, {
                "dataset_version": upload.version_id, "upload": upload.pk, "rows": upload.version.row_count})
    return bool(updated)


@maintenance_step("monitoring_incident_capture")
def link_captures():
    """Link finished captures to their incidents (a few at a time: the pass stays short)."""
    waiting = (Incident.objects.filter(captured_version__isnull=True, capture_job__status=Job.Status.SUCCEEDED)
               .select_related("capture_job").order_by("-pk")[:20])
    return sum(link_capture(incident) for incident in waiting)


# --- the timeline ----------------------------------------------------------------------------------


def _ids(queryset):
    return [str(pk) for pk in queryset.values_list("pk", flat=True)]


def _subjects(incident, end):
    """(object type, ids) whose audit events belong on the incident's timeline."""
    model = incident.model
    deployments = Deployment.objects.filter(model=model)
    versions = ModelVersion.objects.filter(model=model)
    return [
        ("monitoring.incident", [str(incident.pk)]),
        ("registry.registeredmodel", [str(model.pk)]),
        ("registry.modelversion", _ids(versions)),
        ("registry.promotionrequest", _ids(PromotionRequest.objects.filter(version__model=model, created_at__lt=end)
                                           .filter(Q(closed_at__isnull=True) | Q(closed_at__gte=incident.opened_at)))),
        ("deployments.deployment", _ids(deployments)),
        ("deployments.release", _ids(Release.objects.filter(deployment__in=deployments)
                                     .filter(Q(ended_at__isnull=True) | Q(ended_at__gte=incident.opened_at)))),
        ("monitoring.alert", _ids(Alert.objects.filter(model=model, first_fired_at__lt=end)
                                  .filter(Q(resolved_at__isnull=True) | Q(resolved_at__gte=incident.opened_at)))),
        ("monitoring.retraindraft", _ids(RetrainDraft.objects.filter(model=model, created_at__lt=end))),
        ("datasets.datasetversion", [str(incident.captured_version_id)] if incident.captured_version_id else []),
    ]


def timeline(incident, limit=TIMELINE_LIMIT):
    """The audit events of the model, its versions, deployments, releases (their rollbacks),
    alerts, retrain drafts and the incident itself, from the opening to the lift (or now),
    oldest first, at most `limit`."""
    end = incident.lifted_at or timezone.now()
    match = Q()
    for object_type, ids in _subjects(incident, end):
        if ids:
            match |= Q(object_type=object_type, object_id__in=ids)
    events = (AuditEvent.objects.filter(match, created_at__gte=incident.opened_at,
                                        created_at__lte=end + timedelta(seconds=1))
              .order_by("seq")[:limit])
    return list(events)

