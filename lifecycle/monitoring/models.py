"""Monitoring: what the deployments' answers say about the models, kept small enough to read fast.

The prediction log is the raw record; nothing here scans it at page time. A job rolls each
log batch up once into per-minute `Rollup` rows (coarsened to hourly later), a version's
`Reference` is computed once from its own training data, and every check — drift, the
label-free accuracy estimate, SLOs and their burn rates — reads those two. What a check found
is kept (`DriftCheck`, `SLO.state`), what needs a person becomes an `Alert`, and the people's
answers (acknowledge, silence, incident mode, a retrain draft) are model methods, audited.

The state changes live beside the modules that compute them (rollups.py, reference.py,
drift.py, slo.py, alerts.py, policy.py, retrain.py); this file holds the rows.
"""
from django.conf import settings
from django.db import models
from django.urls import reverse

from lifecycle.core.models import Job
from lifecycle.datasets.models import DatasetVersion
from lifecycle.deployments.models import Deployment, Release
from lifecycle.registry.models import ModelVersion, RegisteredModel
from lifecycle.runs.models import Run


class MonitoringError(Exception):
    """A change the current state does not allow; the message says why (shown to the person)."""


class Resolution(models.TextChoices):
    MINUTE = "minute"
    HOUR = "hour"


# --- rollups and the reference ------------------------------------------------------------------


class Rollup(models.Model):
    """The counts of one bucket (a minute, or an hour once coarsened) of one deployment's
    answers from one version on one route within one release. Histograms are lists of counts
    over the fixed bins in monitoring/features.py (the same bins the reference uses)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="+")
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    route = models.CharField(max_length=8)  # deployments.models.Route
    resolution = models.CharField(max_length=6, choices=Resolution.choices, default=Resolution.MINUTE)
    start = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)  # answered inputs (a request of 3 inputs counts 3)
    errors = models.PositiveIntegerField(default=0)
    latency_sum_ms = models.FloatField(default=0.0)
    latency = models.JSONField(default=list)  # counts over features.LATENCY_EDGES_MS
    labels = models.JSONField(default=dict)  # predicted label -> count
    confidence = models.JSONField(default=list)  # counts over features.CONFIDENCE_EDGES
    features = models.JSONField(default=dict)  # drift feature name -> counts over its bins
    # A bottom-k sample of the bucket's embedding summaries: the SAMPLE_SIZE rows whose request
    # hash is smallest, as [hash, *embedding]. Merging two buckets keeps the smallest again, so
    # the sample of any window is exact and a re-run cannot change it (features.merge_sample).
    sample = models.JSONField(default=list)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "release", "version", "route", "resolution", "start"],
                                               name="rollup_unique")]
        indexes = [
            models.Index(fields=["deployment", "resolution", "start"], name="rollup_deployment_idx"),
            models.Index(fields=["version", "resolution", "start"], name="rollup_version_idx"),
            models.Index(fields=["resolution", "start"], name="rollup_coarsen_idx"),
        ]


class Reference(models.Model):
    """A version's reference statistics: its dataset version's validation and test rows run
    through the same feature extraction as served inputs, and through the model itself for the
    predicted label and confidence. Computed once per version (a job on the `training` queue:
    it loads the model), reused by every check."""

    class Status(models.TextChoices):
        PENDING = "pending"
        READY = "ready"
        FAILED = "failed"

    version = models.OneToOneField(ModelVersion, on_delete=models.PROTECT, related_name="monitoring_reference")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error = models.TextField(blank=True)
    splits = models.JSONField(default=list)  # the splits it was computed from, e.g. ["validation", "test"]
    rows = models.PositiveIntegerField(default=0)
    features = models.JSONField(default=dict)  # name -> {"counts", "n", "mean", "std", "min", "max"}
    labels = models.JSONField(default=dict)  # predicted label -> count
    true_labels = models.JSONField(default=dict)  # the dataset's label -> count
    confidence = models.JSONField(default=list)  # counts over features.CONFIDENCE_EDGES
    accuracy = models.FloatField(null=True)  # the model's accuracy on these rows
    # How confidence maps to the chance of being right, fitted on these rows (estimate.py).
    calibration = models.JSONField(default=dict)
    vocabulary_sha256 = models.CharField(max_length=64, blank=True)  # artifact: the training split's words (JSON)
    sample_sha256 = models.CharField(max_length=64, blank=True)  # artifact: per-row features and embeddings (Parquet)
    created_at = models.DateTimeField(auto_now_add=True)
    computed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"reference of {self.version}"


# --- drift ------------------------------------------------------------------------------------------


class DriftCheck(models.Model):
    """One drift check of a window of one version's answers against its reference, from the
    rollups. `results` holds one entry per feature (statistic, method, threshold, p-values
    before and after the correction for many features, PSI, both histograms)."""

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        DEMAND = "demand"

    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    reference = models.ForeignKey(Reference, on_delete=models.PROTECT, related_name="checks")
    route = models.CharField(max_length=8, blank=True)  # blank: every route the version answered on
    trigger = models.CharField(max_length=8, choices=Trigger.choices, default=Trigger.SCHEDULE)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    results = models.JSONField(default=list)
    embedding = models.JSONField(default=dict)  # the embedding test: method, statistic, p-value, drifted
    correction = models.CharField(max_length=30, blank=True)  # e.g. "benjamini-hochberg"
    drifted = models.BooleanField(default=False)
    drifted_features = models.PositiveIntegerField(default=0)
    # The label-free estimate (estimate.py) and what feedback says for the same window.
    estimated_accuracy = models.FloatField(null=True)
    feedback_accuracy = models.FloatField(null=True)
    feedback_count = models.PositiveIntegerField(default=0)
    skipped = models.TextField(blank=True)  # why a check did not run (too few answers, no reference)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    seconds = models.FloatField(null=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["deployment", "version", "created_at"], name="driftcheck_idx")]

    def get_absolute_url(self):
        return reverse("monitoring:drift_check", args=[self.pk])


class DriftReport(models.Model):
    """The full Evidently report for a window, run on demand from a sample of the raw log
    (a job on the `monitoring` queue), stored as HTML and JSON artifacts."""

    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    rows = models.PositiveIntegerField(default=0)  # current rows the report read
    reference_rows = models.PositiveIntegerField(default=0)
    html_sha256 = models.CharField(max_length=64, blank=True)
    json_sha256 = models.CharField(max_length=64, blank=True)
    summary = models.JSONField(default=dict)  # per column: Evidently's method, score, drifted
    seconds = models.FloatField(null=True)
    peak_mb = models.FloatField(null=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["deployment", "created_at"], name="driftreport_idx")]

    def get_absolute_url(self):
        return reverse("monitoring:drift_report", args=[self.pk])


# --- SLOs and alerts ------------------------------------------------------------------------------


def default_burn_windows():
    """The SRE Workbook's multi-window, multi-burn-rate alerts for a 30-day SLO (table 5-8),
    with Sloth's 3x over a day; see docs/monitoring.md."""
    return [
        {"severity": "page", "long_minutes": 60, "short_minutes": 5, "factor": 14.4},
        {"severity": "page", "long_minutes": 360, "short_minutes": 30, "factor": 6.0},
        {"severity": "ticket", "long_minutes": 1440, "short_minutes": 120, "factor": 3.0},
        {"severity": "ticket", "long_minutes": 4320, "short_minutes": 360, "factor": 1.0},
    ]


class SLO(models.Model):
    class Kind(models.TextChoices):
        LATENCY = "latency"  # share of answers faster than threshold_ms
        AVAILABILITY = "availability"  # share of answers without a server error
        FEEDBACK_ACCURACY = "feedback_accuracy"  # share of answers with feedback that feedback says were right
        OVERRIDE_RATE = "override_rate"  # share of answers a person did not override
        ESTIMATED_ACCURACY = "estimated_accuracy"  # the label-free estimate, per window

    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="slos")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    target = models.FloatField()  # e.g. 0.99: the share of good events the SLO promises
    threshold_ms = models.FloatField(null=True, blank=True)  # latency only
    window_days = models.PositiveSmallIntegerField(default=30)
    burn_windows = models.JSONField(default=default_burn_windows)
    enabled = models.BooleanField(default=True)
    # The last evaluation (slo.py): sli, good, total, budget_remaining, burn rates per window.
    state = models.JSONField(default=dict, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["deployment", "name"]
        constraints = [models.UniqueConstraint(fields=["deployment", "name"], name="slo_unique_name")]

    def __str__(self):
        return f"{self.deployment.name}: {self.name}"

    def get_absolute_url(self):
        return reverse("monitoring:slo", args=[self.pk])


class Alert(models.Model):
    """Something a person should look at. One open alert per fingerprint: firing again
    updates it (count, last time, evidence) instead of adding another."""

    class Kind(models.TextChoices):
        DRIFT = "drift"
        SLO = "slo"
        QUALITY_GAP = "quality_gap"  # estimated vs feedback accuracy apart: concept drift

    class Severity(models.TextChoices):
        PAGE = "page"
        TICKET = "ticket"

    class Status(models.TextChoices):
        FIRING = "firing"
        ACKNOWLEDGED = "acknowledged"
        RESOLVED = "resolved"

    fingerprint = models.CharField(max_length=64)
    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="alerts")
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="alerts")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    severity = models.CharField(max_length=6, choices=Severity.choices)
    title = models.CharField(max_length=300)
    evidence = models.JSONField(default=dict)  # numbers, window, link
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.FIRING)
    slo = models.ForeignKey(SLO, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    drift_check = models.ForeignKey(DriftCheck, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    fired_count = models.PositiveIntegerField(default=1)
    first_fired_at = models.DateTimeField()
    last_fired_at = models.DateTimeField()
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+")
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolve_reason = models.TextField(blank=True)  # "condition cleared" when the system resolves it

    class Meta:
        ordering = ["-last_fired_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["fingerprint"], condition=~models.Q(status="resolved"),
                                               name="alert_one_open_per_fingerprint")]
        indexes = [
            models.Index(fields=["status", "deployment", "last_fired_at"], name="alert_status_idx"),
            models.Index(fields=["model", "status", "severity"], name="alert_model_idx"),
        ]

    def __str__(self):
        return self.title

    def get_absolute_url(self):
        return reverse("monitoring:alert", args=[self.pk])

    @property
    def is_open(self):
        return self.status != self.Status.RESOLVED


class Silence(models.Model):
    """While active, matching alerts still fire and are kept, but notify nobody (no webhook)
    and are shown as silenced. Matches a deployment and optionally one kind of alert."""

    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="silences")
    kind = models.CharField(max_length=12, choices=Alert.Kind.choices, blank=True)  # blank: every kind
    reason = models.TextField()
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    lifted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    lifted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-ends_at"]
        indexes = [models.Index(fields=["deployment", "ends_at"], name="silence_idx")]


# --- the error-budget policy, incidents and retraining ---------------------------------------------------


class Incident(models.Model):
    """Incident mode for one model, opened and lifted by a person: promotions and retrain
    triggers of the model are frozen while it is open; the failing window's inputs are kept
    as a dataset version; the timeline is read from the audit trail."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="incidents")
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    title = models.CharField(max_length=300)
    reason = models.TextField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    opened_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    opened_at = models.DateTimeField(auto_now_add=True)
    capture_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    captured_version = models.ForeignKey(DatasetVersion, null=True, blank=True, on_delete=models.PROTECT,
                                         related_name="+")
    lifted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    lifted_at = models.DateTimeField(null=True, blank=True)
    lift_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [models.UniqueConstraint(fields=["model"], condition=models.Q(lifted_at__isnull=True),
                                               name="incident_one_open_per_model")]

    def __str__(self):
        return f"incident {self.pk}: {self.title}"

    def get_absolute_url(self):
        return reverse("monitoring:incident", args=[self.pk])

    @property
    def is_open(self):
        return self.lifted_at is None


class RetrainRule(models.Model):
    class Kind(models.TextChoices):
        DRIFT = "drift"  # drift above its threshold for `consecutive` scheduled windows in a row
        SLO_BURN = "slo_burn"  # a quality SLO's alert firing
        FEEDBACK = "feedback"  # at least `min_feedback` corrections since the production version was released

    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="retrain_rules")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    consecutive = models.PositiveSmallIntegerField(default=3)
    min_feedback = models.PositiveIntegerField(default=100)
    enabled = models.BooleanField(default=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "kind"], name="retrainrule_unique")]


class RetrainDraft(models.Model):
    """A run waiting for a person: the production version's config on the newest frozen
    dataset version, with the deployment's feedback corrections folded in as a child version.
    Nothing trains until someone reviews it and starts it."""

    class Status(models.TextChoices):
        PREPARING = "preparing"  # the feedback child version is being made
        READY = "ready"  # waiting for a person
        STARTED = "started"
        DISMISSED = "dismissed"
        FAILED = "failed"

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="retrain_drafts")
    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="retrain_drafts")
    rule = models.ForeignKey(RetrainRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="drafts")
    reason = models.TextField()
    evidence = models.JSONField(default=dict)
    source_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    base_dataset_version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="+")
    dataset_version = models.ForeignKey(DatasetVersion, null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="+")  # the child with the corrections, once made
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    config = models.JSONField(default=dict)  # RunConfig.as_dict() for the draft run
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PREPARING)
    error = models.TextField(blank=True)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        # One draft waiting per deployment: a trigger firing again adds to its evidence.
        constraints = [models.UniqueConstraint(fields=["deployment"], condition=models.Q(status__in=["preparing", "ready"]),
                                               name="retraindraft_one_waiting")]

    def __str__(self):
        return f"retrain draft {self.pk} for {self.model}"

    def get_absolute_url(self):
        return reverse("monitoring:retrain", args=[self.pk])
