"""Retrain triggers: rules that turn what monitoring found into a draft run a person reviews.

Three kinds of RetrainRule, per deployment, each evaluated where its evidence appears:
- drift: the production version's last `consecutive` scheduled drift checks all drifted
  (`after_drift_check`, called by drift.py after each check);
- slo_burn: a quality SLO (feedback accuracy, override rate, estimated accuracy) has an open
  alert (`after_slo_evaluation`, called by slo.py after each evaluation);
- feedback: at least `min_feedback` usable feedback (a right label, or a confirmed answer) since
  the production version's release started (`check_feedback_rules`, a maintenance step).
Each count starts again after the rule fires, so one condition makes one firing.

A firing rule makes the deployment's waiting RetrainDraft (or adds its evidence to the one
waiting), audited, unless the model is in incident mode. The draft's job makes the training
data: the newest labeling-frozen version of the production version's dataset (else the version
it trained on) with the deployment's feedback folded in as a child version (`fold_in`), and
fills the draft's config from the production run's. Nothing trains until an engineer starts it.
"""
import time

from django.db import IntegrityError, transaction
from django.utils import timezone

from lifecycle.core.jobs import enqueue, maintenance_step, task
from lifecycle.core.models import AuditEvent
from lifecycle.core.roles import APPROVER, ML_ENGINEER, ONCALL, VIEWER, has_role
from lifecycle.datasets.models import DatasetVersion
from lifecycle.deployments import feedback_export
from lifecycle.deployments.models import Deployment, Release
from lifecycle.monitoring.models import SLO, Alert, DriftCheck, Incident, MonitoringError, RetrainDraft, RetrainRule

QUALITY_KINDS = (SLO.Kind.FEEDBACK_ACCURACY, SLO.Kind.OVERRIDE_RATE, SLO.Kind.ESTIMATED_ACCURACY)
READ_ROLES = (ML_ENGINEER, APPROVER, VIEWER, ONCALL)
WAITING = (RetrainDraft.Status.PREPARING, RetrainDraft.Status.READY)
MAX_FIRINGS_KEPT = 20  # a draft's evidence keeps the newest firings; the audit trail keeps all


# --- the rules -------------------------------------------------------------------------------------


def _rule(deployment_id, kind):
    return RetrainRule.objects.filter(deployment_id=deployment_id, kind=kind, enabled=True).first()


def after_drift_check(check):
    """Fire the deployment's drift rule when the production version's last `consecutive`
    scheduled checks (since the rule last fired) all drifted. Returns the draft or None."""
    if check.trigger != DriftCheck.Trigger.SCHEDULE or check.skipped:
        return None
    rule = _rule(check.deployment_id, RetrainRule.Kind.DRIFT)
    deployment = Deployment.objects.select_related("current_release").get(pk=check.deployment_id)
    if rule is None or deployment.current_release.stable_id != check.version_id:
        return None
    recent = (DriftCheck.objects.filter(deployment_id=check.deployment_id, version_id=check.version_id,
                                        trigger=DriftCheck.Trigger.SCHEDULE, skipped="")
              .order_by("-created_at", "-pk"))
    if rule.last_fired_at:
        recent = recent.filter(created_at__gt=rule.last_fired_at)
    window = list(recent.values("pk", "drifted", "drifted_features", "window_start", "window_end")[:rule.consecutive])
    if len(window) < rule.consecutive or not all(c["drifted"] for c in window):
        return None
    return fire(rule, reason=f"drift in {rule.consecutive} scheduled checks in a row of the production version",
                evidence={"checks": [{"id": c["pk"], "drifted_features": c["drifted_features"],
                                      "window_start": c["window_start"].isoformat(),
                                      "window_end": c["window_end"].isoformat()} for c in window]})


def after_slo_evaluation(slo):
    """Fire the deployment's slo_burn rule once per open alert of a quality SLO."""
    if slo.kind not in QUALITY_KINDS:
        return None
    rule = _rule(slo.deployment_id, RetrainRule.Kind.SLO_BURN)
    if rule is None:
        return None
    alerts = Alert.objects.filter(slo=slo, status__in=(Alert.Status.FIRING, Alert.Status.ACKNOWLEDGED))
    if rule.last_fired_at:
        alerts = alerts.filter(first_fired_at__gt=rule.last_fired_at)
    alert = alerts.order_by("first_fired_at").first()
    if alert is None:
        return None
    state = slo.state or {}
    return fire(rule, reason=f"the quality SLO “{slo.name}” is burning its error budget (alert #{alert.pk})",
                evidence={"slo": slo.pk, "slo_name": slo.name, "slo_kind": slo.kind, "alert": alert.pk,
                          "severity": alert.severity, "sli": state.get("sli"), "target": slo.target,
                          "budget_remaining": state.get("budget_remaining")})


def feedback_since(deployment, since=None):
    """(count, from when): usable feedback since the production version's release started
    (or since `since`, when later)."""
    release = deployment.current_release
    first = (Release.objects.filter(deployment=deployment, stable_id=release.stable_id).order_by("number")
             .values_list("started_at", flat=True).first()) or release.started_at
    start = max(first, since) if since else first
    return feedback_export.usable(deployment).filter(created_at__gte=start).count(), start


def check_feedback(rule):
    deployment = Deployment.objects.select_related("current_release").get(pk=rule.deployment_id)
    count, start = feedback_since(deployment, rule.last_fired_at)
    if count < rule.min_feedback:
        return None
    return fire(rule, reason=f"{count} pieces of usable feedback since {start:%Y-%m-%d %H:%M} UTC "
                f"(the rule wants {rule.min_feedback})", evidence={"feedback": count, "since": start.isoformat()})


@maintenance_step("monitoring_retrain")
def check_feedback_rules(max_seconds=1.0):
    """Evaluate the enabled feedback rules, oldest fired first, for at most `max_seconds`."""
    deadline, fired = time.monotonic() + max_seconds, 0
    for rule in RetrainRule.objects.filter(kind=RetrainRule.Kind.FEEDBACK, enabled=True).order_by("last_fired_at", "pk"):
        fired += check_feedback(rule) is not None
        if time.monotonic() > deadline:
            break
    return fired


# --- firing: the draft -----------------------------------------------------------------------------


def base_version(version):
    """The data a retrain starts from: the newest labeling-frozen (relabel) version of the
    dataset `version` trained on, else the version it trained on."""
    trained_on = version.run.dataset_version
    frozen = (DatasetVersion.objects.filter(dataset_id=trained_on.dataset_id, operation=DatasetVersion.Operation.RELABEL)
              .order_by("-number").first())
    return frozen or trained_on


def fire(rule, *, reason, evidence):
    """Record a firing of `rule`: a new waiting draft, or evidence added to the waiting one;
    audited. None, with nothing written, while the model is in incident mode."""
    firing = {"rule": rule.pk, "kind": rule.kind, "reason": reason, "at": timezone.now().isoformat(), **evidence}
    for attempt in range(2):
        try:
            with transaction.atomic():
                return _fire_locked(rule, firing)
        except IntegrityError:
            if attempt:  # a concurrent firing made the draft: the second pass adds to it
                raise
    return None


def _fire_locked(rule, firing):
    # Lock the rule alone (a join in a locking query cannot reach the nullable release), then read on.
    rule = RetrainRule.objects.select_for_update().get(pk=rule.pk)
    deployment = Deployment.objects.select_related("current_release__stable__run").get(pk=rule.deployment_id)
    if Incident.objects.filter(model_id=deployment.model_id, lifted_at__isnull=True).exists():
        return None  # incident mode freezes retrain triggers
    RetrainRule.objects.filter(pk=rule.pk).update(last_fired_at=timezone.now())
    draft = RetrainDraft.objects.select_for_update().filter(deployment=deployment, status__in=WAITING).first()
    if draft is not None:
        firings = (draft.evidence.get("firings", []) + [firing])[-MAX_FIRINGS_KEPT:]
        RetrainDraft.objects.filter(pk=draft.pk).update(evidence={**draft.evidence, "firings": firings})
        AuditEvent.record(None, "retrain.evidence_added", draft, firing)
        return draft
    source = deployment.current_release.stable
    draft = RetrainDraft.objects.create(model_id=deployment.model_id, deployment=deployment, rule=rule,
                                        reason=firing["reason"], evidence={"firings": [firing]}, source_version=source,
                                        base_dataset_version=base_version(source))
    draft.job = enqueue(prepare_draft, draft_id=draft.pk)
    draft.save(update_fields=["job"])
    AuditEvent.record(None, "retrain.drafted", draft, {**firing, "source_version": source.pk,
                                                       "base_dataset_version": draft.base_dataset_version_id})
    return draft


# --- the draft's job -------------------------------------------------------------------------------


def draft_config(source_version, dataset_version):
    """The production run's config with the new dataset version, checked (ConfigError says why not)."""
    from lifecycle.runs.config import RunConfig

    config = dict(source_version.run.config)
    config["dataset_version"] = dataset_version.pk
    return RunConfig.parse(config).as_dict()


@task(queue="default", roles=READ_ROLES)
def prepare_draft(job, *, draft_id):
    """Make the draft's training data and config; the draft is then ready for a person."""
    draft = RetrainDraft.objects.select_related("deployment", "source_version__run", "base_dataset_version__dataset").get(
        pk=draft_id)
    job.set_progress(phase="folding feedback in", done=0, total=draft.base_dataset_version.row_count)
    try:
        child = fold_in(draft.base_dataset_version, draft.deployment)
        config = draft_config(draft.source_version, child)
    except Exception as exc:
        with transaction.atomic():
            RetrainDraft.objects.filter(pk=draft.pk, status=RetrainDraft.Status.PREPARING).update(
                status=RetrainDraft.Status.FAILED, error=str(exc)[:2000])
            AuditEvent.record(None, "retrain.failed", draft, {"error": str(exc)[:2000]})
        raise
    with transaction.atomic():
        ready = RetrainDraft.objects.filter(pk=draft.pk, status=RetrainDraft.Status.PREPARING).update(
            status=RetrainDraft.Status.READY, dataset_version=child, config=config)
        if ready:
            AuditEvent.record(None, "retrain.ready", draft, {"dataset_version": child.pk, "rows": child.row_count,
                                                             "feedback": child.manifest["reports"].get("feedback", {})})
    return {"draft": draft.pk, "dataset_version": child.pk, "number": child.number, "ready": bool(ready)}


# --- folding the feedback in ------------------------------------------------------------------------
#
# How the child stays honest (docs/monitoring.md): a row of the base whose normalized text
# (its content key, the dataset's own notion of "the same text") matches a corrected input
# takes the feedback's label, in whatever split it is. A corrected input the base does not hold
# is appended to the TRAIN split only, so validation and test stay the rows the production
# version was measured on (relabeled where a person said so) and the two versions remain
# comparable. The leakage report is computed again over every row for exact duplicates and
# groups; near duplicates were checked for the base's rows only, so the appended rows' entry
# says "not checked" and why, and the time overlap is not checked at all.


def corrections(deployment, label_set):
    """{content key: the newest usable feedback on an input with that text} and counts of
    what was left out (prediction gone from the log, a label outside the dataset's, superseded)."""
    from django.db.models import OuterRef, Subquery

    from lifecycle.datasets import dedup
    from lifecycle.deployments.models import PredictionLog, Route

    answered = (PredictionLog.objects.filter(request_id=OuterRef("request_id"), position=OuterRef("position"))
                .exclude(route=Route.SHADOW))
    found = (feedback_export.usable(deployment)
             .annotate(text=Subquery(answered.values("input_text")[:1]), answered_at=Subquery(answered.values("created_at")[:1]))
             .order_by("updated_at", "pk").values("pk", "request_id", "label", "predicted_label", "text", "answered_at"))
    by_key, left_out = {}, {"gone": 0, "unknown_label": 0, "superseded": 0}
    for row in found.iterator(chunk_size=2000):
        label = row["label"] or row["predicted_label"]
        if row["text"] is None:
            left_out["gone"] += 1
        elif label_set and label not in label_set:
            left_out["unknown_label"] += 1
        else:
            key = dedup.exact_key(row["text"])
            left_out["superseded"] += key in by_key
            by_key[key] = {**row, "label": label, "request_id": str(row["request_id"])}
    return by_key, left_out


def _keys_in(version):
    from lifecycle.datasets.versions import iter_row_batches

    held = set()
    for batch in iter_row_batches(version, columns=["content_key"]):
        held.update(batch["content_key"])
    return held


def _appended_rows(deployment, missing):
    """The corrections the base does not hold, as rows of the TRAIN split with no origin row."""
    from lifecycle.datasets import pii
    from lifecycle.datasets.rows import metadata_json, row_sha256

    rows = {name: [] for name in ("origin_row", "text", "response", "label", "split", "group", "timestamp", "metadata",
                                  "row_sha256", "content_key", "pii_kinds", "duplicate_cluster")}
    for key, c in missing:
        metadata = metadata_json({"source": "feedback", "feedback": c["pk"], "deployment": deployment.name,
                                  "predicted_label": c["predicted_label"]})
        values = {"origin_row": None, "text": c["text"], "response": "", "label": c["label"], "split": "train",
                  "group": c["request_id"], "timestamp": c["answered_at"], "metadata": metadata,
                  "row_sha256": row_sha256(c["text"], "", c["label"], c["request_id"], c["answered_at"], metadata),
                  "content_key": key, "pii_kinds": ",".join(sorted({m.kind for m in pii.scan(c["text"])})),
                  "duplicate_cluster": None}
        for name, value in values.items():
            rows[name].append(value)
    return rows


def _codes(values):
    import numpy as np

    ids = {}
    return np.asarray([ids.setdefault(v, len(ids)) if v else -1 for v in values], dtype=np.int64)


def _leakage_after(parent, split_names, keys, groups, appended):
    import numpy as np

    from lifecycle.datasets import splits
    from lifecycle.datasets.models import SPLIT_NAMES

    before = parent.leakage_report or {}
    group_codes = _codes(groups)
    leak = splits.leakage_report(np.asarray([SPLIT_NAMES.index(s) for s in split_names], dtype=np.int8),
                                 exact_keys=np.asarray(keys, dtype=np.int64), near_pairs=None,
                                 groups=group_codes if (group_codes >= 0).any() else None,
                                 accepted=tuple(before.get("accepted", ())))
    near = before.get("near_duplicates")
    leak["near_duplicates"] = near  # the base's rows and splits are unchanged: its check still holds for them
    leak["near_duplicates_appended"] = {"checked": False, "rows": appended, "why": (
        f"the {appended} rows appended from feedback were not compared with the others for near duplicates")}
    leak["has_leakage"] = bool(leak["has_leakage"] or (near and near.get("rows")))
    leak["splits_from"] = f"{before.get('splits_from', '')}; {appended} feedback rows appended to train".strip("; ")
    return leak


class _Fold:
    """derive_version's transform: relabels matched rows, appends `extra` after the last batch,
    and keeps each row's split, content key and group for the leakage check after the last row."""

    def __init__(self, found, extra, rows):
        self.found, self.extra, self.rows = found, extra, rows
        self.offset = self.relabeled = self.agreed = 0
        self.splits, self.keys, self.groups = [], [], []

    def __call__(self, batch):
        from lifecycle.datasets.operations import rehash_row

        for i, key in enumerate(batch["content_key"]):
            c = self.found.get(key)
            if c is not None and c["label"] != batch["label"][i]:
                batch["label"][i] = c["label"]
                batch["row_sha256"][i] = rehash_row(batch, i)
                self.relabeled += 1
            elif c is not None:
                self.agreed += 1
        self.offset += len(batch["text"])
        if self.offset == self.rows:  # the last batch: the appended rows go after it
            for name, values in self.extra.items():
                batch[name] = list(batch[name]) + values
        self.splits += batch["split"]
        self.keys += batch["content_key"]
        self.groups += batch["group"]
        return batch


def fold_in(base, deployment, user=None):
    """A child of `base` with the deployment's feedback corrections folded in (see above)."""
    from lifecycle.datasets.operations import derive_version, inherited_reports

    if base.dataset.task != base.dataset.Task.CLASSIFICATION:
        raise MonitoringError(f"Feedback gives labels, and {base.dataset.name} holds instruction pairs.")
    found, left_out = corrections(deployment, base.label_set)
    held = _keys_in(base)
    extra = _appended_rows(deployment, [(k, c) for k, c in found.items() if k not in held])
    appended = len(extra["text"])
    fold = _Fold(found, extra, base.row_count)
    pii_rows = sum(bool(kinds) for kinds in extra["pii_kinds"])
    reports = inherited_reports(base)
    reports["pii"] = {**base.pii_report, "appended_rows_scanned": appended, "appended_rows_with_pii": pii_rows}
    reports["dedup"] = {**base.dedup_report, "appended_rows": appended, "appended_near_duplicates": "not checked"}

    def late_reports():
        return {"leakage": _leakage_after(base, fold.splits, fold.keys, fold.groups, appended),
                "feedback": {"deployment": deployment.name, "corrections": len(found), "relabeled": fold.relabeled,
                             "already_so": fold.agreed, "appended_to_train": appended, "left_out": left_out,
                             "base_version": base.number}}

    return derive_version(base, DatasetVersion.Operation.FEEDBACK, fold, user=user, reports=reports,
                          pii_status=DatasetVersion.PiiStatus.FOUND if pii_rows else base.pii_status,
                          late_reports=late_reports)


# --- a person's decision ---------------------------------------------------------------------------


def _locked_waiting(draft, *statuses):
    locked = RetrainDraft.objects.select_for_update().get(pk=draft.pk)
    if locked.status not in statuses:
        raise MonitoringError(f"This draft is {locked.status}; it cannot be decided again.")
    return locked


def start_draft(user, draft):
    """Start the draft's run (runs.launch.start: a queued Run) and mark the draft started, in one
    transaction; audited. MonitoringError or ConfigError (nothing written) when it cannot start."""
    from lifecycle.runs import launch

    if not has_role(user, ML_ENGINEER):
        raise MonitoringError("Only ML engineers start retrain runs.")
    with transaction.atomic():
        locked = _locked_waiting(draft, RetrainDraft.Status.READY)
        run = launch.start(user, locked.config, name=f"retrain {draft.model.slug} from v{draft.source_version.number} "
                           f"(draft {draft.pk})")
        RetrainDraft.objects.filter(pk=draft.pk).update(status=RetrainDraft.Status.STARTED, run=run, decided_by=user,
                                                         decided_at=timezone.now())
        AuditEvent.record(user, "retrain.started", draft, {"run": run.pk, "dataset_version": locked.dataset_version_id})
    draft.refresh_from_db()
    return run


def dismiss(user, draft, reason):
    """Dismiss a waiting draft with a written reason; audited."""
    if not has_role(user, ML_ENGINEER):
        raise MonitoringError("Only ML engineers dismiss retrain drafts.")
    reason = (reason or "").strip()
    if not reason:
        raise MonitoringError("Say why: dismissing a draft needs a reason.")
    with transaction.atomic():
        locked = _locked_waiting(draft, *WAITING)
        RetrainDraft.objects.filter(pk=draft.pk).update(status=RetrainDraft.Status.DISMISSED, decided_by=user,
                                                         decided_at=timezone.now(), error="")
        AuditEvent.record(user, "retrain.dismissed", draft, {"reason": reason, "was": locked.status})
    draft.refresh_from_db()
    return draft


# --- rules, set by engineers -----------------------------------------------------------------------


def save_rule(user, deployment, *, kind, consecutive=3, min_feedback=100, enabled=True):
    """Create or change the deployment's rule of `kind`; audited with the values before and after."""
    if not has_role(user, ML_ENGINEER):
        raise MonitoringError("Only ML engineers set retrain rules.")
    with transaction.atomic():
        Deployment.objects.select_for_update().get(pk=deployment.pk)
        rule = RetrainRule.objects.filter(deployment=deployment, kind=kind).first()
        before = None if rule is None else _rule_values(rule)
        if rule is None:
            rule = RetrainRule(deployment=deployment, kind=kind, created_by=user)
        rule.consecutive, rule.min_feedback, rule.enabled = consecutive, min_feedback, enabled
        rule.save()
        AuditEvent.record(user, "retrain.rule_saved", rule, {"deployment": deployment.name, "before": before,
                                                            "after": _rule_values(rule)})
    return rule


def _rule_values(rule):
    return {"kind": rule.kind, "consecutive": rule.consecutive, "min_feedback": rule.min_feedback,
            "enabled": rule.enabled}
