"""Alerts: what the checks found that a person should look at, one open alert per condition.

A condition is named by its fingerprint, sha256 of (deployment, kind, key, severity): an SLO's
page and ticket alerts are two conditions, a drift check of the same version firing again is
the same one. Firing an open condition again updates its alert (count, last time, evidence);
only once it is resolved does the condition open a new alert.

States: firing -> acknowledged (a person has it) -> resolved (a person, with a reason, or the
system once the condition cleared: "condition cleared"). A silence (deployment, optionally one
kind, until an end time, with a reason) keeps alerts firing and kept but notifies nobody: no
webhook is sent while it is active, and the pages show the alert as silenced.

Notifications go through the registry's signed webhooks (registry/webhooks.py: Standard
Webhooks, retried by the workers), as the events "alert.fired" and "alert.resolved".
Every change by a person, and every alert the system opens or clears, writes one AuditEvent in
the transaction of the change.
"""
import hashlib
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from lifecycle.core.models import AuditEvent
from lifecycle.monitoring.models import Alert, MonitoringError, Silence
from lifecycle.registry import webhooks

FIRED, RESOLVED = "alert.fired", "alert.resolved"
webhooks.register_events(FIRED, RESOLVED)

CLEARED = "condition cleared"
# A silence is for a known, bounded piece of work (a migration, a noisy rollout); longer
# than this it hides a broken alert instead, which should be changed or disabled.
MAX_SILENCE = timedelta(days=30)
MAX_REASON = 2000


def fingerprint(deployment, kind, key, severity):
    deployment_id = getattr(deployment, "pk", deployment)
    return hashlib.sha256(f"{deployment_id}\x1f{kind}\x1f{key}\x1f{severity}".encode()).hexdigest()


# --- the system: fire and clear ----------------------------------------------------------------


def fire(deployment, *, kind, severity, key, title, evidence, slo=None, drift_check=None):
    """The open alert of this condition, updated, or a new one (audited, notified unless
    silenced). Safe against a concurrent fire of the same condition (the database keeps one
    open alert per fingerprint; the loser of the race updates the winner's)."""
    if kind not in Alert.Kind.values or severity not in Alert.Severity.values:
        raise MonitoringError(f"Unknown alert kind or severity: {kind!r}, {severity!r}.")
    print_ = fingerprint(deployment, kind, key, severity)
    evidence = {**evidence, "key": key}
    for _ in range(2):
        try:
            with transaction.atomic():
                return _update_open(print_, title, evidence) or _open(
                    deployment, print_, kind, severity, title, evidence, slo, drift_check)
        except IntegrityError:
            continue  # another process opened it between our read and our insert: update that one
    raise MonitoringError("The alert could not be recorded (concurrent updates); the next evaluation retries.")


def _update_open(print_, title, evidence):
    alert = Alert.objects.select_for_update().filter(fingerprint=print_).exclude(status=Alert.Status.RESOLVED).first()
    if alert is None:
        return None
    alert.fired_count += 1
    alert.last_fired_at = timezone.now()
    alert.title, alert.evidence = title[:300], evidence
    alert.save(update_fields=["fired_count", "last_fired_at", "title", "evidence"])
    return alert


def _open(deployment, print_, kind, severity, title, evidence, slo, drift_check):
    now = timezone.now()
    with transaction.atomic():  # a savepoint: an IntegrityError leaves the outer transaction usable
        alert = Alert.objects.create(
            fingerprint=print_, deployment=deployment, model_id=deployment.model_id, kind=kind, severity=severity,
            title=title[:300], evidence=evidence, slo=slo, drift_check=drift_check, first_fired_at=now,
            last_fired_at=now)
    silenced = is_silenced(alert)
    AuditEvent.record(None, FIRED, alert, {"deployment": deployment.name, "kind": kind, "severity": severity,
                                           "title": alert.title, "silenced": silenced})
    if not silenced:
        webhooks.emit(FIRED, alert, payload(alert))
    return alert


def clear(deployment, *, kind, key, severity=None):
    """Resolve the open alerts of (deployment, kind, key) — of every severity, or of one —
    whose condition cleared; returns how many."""
    severities = [severity] if severity else Alert.Severity.values
    prints = [fingerprint(deployment, kind, key, s) for s in severities]
    resolved = 0
    with transaction.atomic():
        for alert in Alert.objects.select_for_update().filter(fingerprint__in=prints).exclude(
                status=Alert.Status.RESOLVED):
            _resolve(None, alert, CLEARED)
            resolved += 1
    return resolved


# --- people: acknowledge and resolve ----------------------------------------------------------------


def acknowledge(user, alert):
    """firing -> acknowledged: someone has it. Refused for an alert already acknowledged or resolved."""
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert.pk)
        if alert.status != Alert.Status.FIRING:
            raise MonitoringError(f"This alert is {alert.status} already; only a firing alert can be acknowledged.")
        alert.status, alert.acknowledged_by, alert.acknowledged_at = Alert.Status.ACKNOWLEDGED, user, timezone.now()
        alert.save(update_fields=["status", "acknowledged_by", "acknowledged_at"])
        AuditEvent.record(user, "alert.acknowledged", alert, {"deployment": alert.deployment.name,
                                                              "title": alert.title})
    return alert


def resolve(user, alert, reason):
    """An open alert -> resolved by a person, who says why (what was done or found)."""
    reason = _reason(reason, "Say why the alert is resolved (what was done or found).")
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert.pk)
        if not alert.is_open:
            raise MonitoringError("This alert is resolved already.")
        _resolve(user, alert, reason)
    return alert


def _resolve(user, alert, reason):
    """Inside the caller's transaction, holding the alert's lock."""
    alert.status, alert.resolved_by, alert.resolved_at = Alert.Status.RESOLVED, user, timezone.now()
    alert.resolve_reason = reason
    alert.save(update_fields=["status", "resolved_by", "resolved_at", "resolve_reason"])
    silenced = is_silenced(alert)
    AuditEvent.record(user, RESOLVED, alert, {"deployment": alert.deployment.name, "title": alert.title,
                                              "reason": reason, "silenced": silenced})
    if not silenced:
        webhooks.emit(RESOLVED, alert, payload(alert))


def _reason(reason, missing):
    reason = (reason or "").strip()
    if not reason:
        raise MonitoringError(missing)
    if len(reason) > MAX_REASON:
        raise MonitoringError(f"Keep the reason under {MAX_REASON} characters.")
    return reason


def payload(alert):
    """The webhook's data: enough to act on without opening Lifecycle, and the link to it."""
    return {"alert": alert.pk, "deployment": alert.deployment.name, "model": alert.deployment.model.slug,
            "kind": alert.kind, "severity": alert.severity, "status": alert.status, "title": alert.title,
            "fired_count": alert.fired_count, "first_fired_at": alert.first_fired_at,
            "last_fired_at": alert.last_fired_at, "resolve_reason": alert.resolve_reason,
            "evidence": alert.evidence, "url": alert.get_absolute_url()}


# --- silences ----------------------------------------------------------------------------------------


def silence(user, deployment, kind, ends_at, reason):
    """Silence the deployment's alerts (of `kind`, or every kind for "") until `ends_at`."""
    reason = _reason(reason, "Say why the alerts are silenced (what is being worked on).")
    now = timezone.now()
    if kind not in ("", *Alert.Kind.values):
        raise MonitoringError(f"Unknown kind {kind!r}; silence one of {', '.join(Alert.Kind.values)} or every kind.")
    if ends_at is None or ends_at <= now:
        raise MonitoringError("The end time is in the past: a silence must end in the future.")
    if ends_at - now > MAX_SILENCE:
        raise MonitoringError(f"A silence lasts at most {MAX_SILENCE.days} days; fix or disable the alert instead.")
    with transaction.atomic():
        made = Silence.objects.create(deployment=deployment, kind=kind, reason=reason, starts_at=now, ends_at=ends_at,
                                      created_by=user)
        AuditEvent.record(user, "silence.created", made, {"deployment": deployment.name, "kind": kind or "every",
                                                          "ends_at": ends_at.isoformat(), "reason": reason})
    return made


def lift(user, silence_):
    """End an active silence now; refused when it ended or was lifted already."""
    now = timezone.now()
    with transaction.atomic():
        locked = Silence.objects.select_for_update().get(pk=silence_.pk)
        if locked.lifted_at or locked.ends_at <= now:
            raise MonitoringError("This silence is over already.")
        locked.lifted_by, locked.lifted_at = user, now
        locked.save(update_fields=["lifted_by", "lifted_at"])
        AuditEvent.record(user, "silence.lifted", locked, {"deployment": locked.deployment.name,
                                                          "kind": locked.kind or "every"})
    return locked


def active_silences(deployment=None, at=None):
    at = at or timezone.now()
    found = Silence.objects.filter(starts_at__lte=at, ends_at__gt=at, lifted_at__isnull=True)
    return found.filter(deployment=deployment) if deployment is not None else found


def matching(alert, at=None):
    """The active silence that covers this alert (its deployment; its kind or every kind), or None."""
    return (active_silences(alert.deployment_id, at).filter(Q(kind="") | Q(kind=alert.kind))
            .order_by("-ends_at").first())


def is_silenced(alert, at=None):
    return matching(alert, at) is not None


def silenced_ids(alerts, at=None):
    """Of a page of alerts, the ids an active silence covers (one query, for the lists)."""
    alerts = list(alerts)
    found = active_silences(at=at).filter(deployment_id__in={a.deployment_id for a in alerts})
    covered = {(s.deployment_id, s.kind) for s in found.only("deployment_id", "kind")}
    return {a.pk for a in alerts if (a.deployment_id, "") in covered or (a.deployment_id, a.kind) in covered}


# --- reading -------------------------------------------------------------------------------------------


def open_alerts(model=None, deployment=None, severity=None):
    found = Alert.objects.exclude(status=Alert.Status.RESOLVED).select_related("deployment", "model")
    if model is not None:
        found = found.filter(model=model)
    if deployment is not None:
        found = found.filter(deployment=deployment)
    if severity:
        found = found.filter(severity=severity)
    return found
