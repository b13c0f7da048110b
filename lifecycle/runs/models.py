"""Training runs: what was asked (config), what ran (environment, attempts), what it
measured (metric points, evaluation reports) and what it left (checkpoints, the output).

A run's state is its current Job's state (core/jobs.py): the heartbeat, the reaper and the
cancel flag all work on the Job row, so there is no second status column to drift. A
resume is a new Job for the same run, continuing from the last checkpoint.
"""
from django.conf import settings
from django.db import models, transaction
from django.urls import reverse

from lifecycle.core.models import AuditEvent, Job
from lifecycle.datasets.models import DatasetVersion
from lifecycle.runs.config import METHODS, TASKS


class RunError(Exception):
    """A state change the run's current state does not allow; the message says why."""


class RunQuerySet(models.QuerySet):
    def for_listing(self):
        return self.select_related("dataset_version__dataset", "job", "created_by")


class Run(models.Model):
    RESUMABLE = (Job.Status.INTERRUPTED, Job.Status.FAILED, Job.Status.CANCELLED)

    name = models.CharField(max_length=200)
    dataset_version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="runs")
    base_model = models.CharField(max_length=300)  # its catalogue name (runs/basemodels.py)
    base_model_sha256 = models.CharField(max_length=64, blank=True)
    task = models.CharField(max_length=20, choices=list(TASKS.items()))
    method = models.CharField(max_length=20, choices=list(METHODS.items()))
    seed = models.PositiveIntegerField()
    config = models.JSONField()  # the full RunConfig.as_dict(), defaults filled in
    warnings = models.JSONField(default=list, blank=True)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    attempt = models.PositiveSmallIntegerField(default=1)
    environment = models.JSONField(default=dict, blank=True)
    # Live position, written with each telemetry flush: phase, step, total_steps, epoch, eta_seconds…
    progress = models.JSONField(default=dict, blank=True)
    test_metrics = models.JSONField(default=dict, blank=True)
    output_sha256 = models.CharField(max_length=64, blank=True)  # the output manifest's artifact key
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["dataset_version", "created_at"], name="run_version_created_idx")]

    def __str__(self):
        return f"run {self.pk} {self.name}"

    def get_absolute_url(self):
        return reverse("runs:detail", args=[self.pk])

    @property
    def status(self):
        return self.job.status if self.job_id else Job.Status.QUEUED

    @property
    def is_active(self):
        return self.status in (Job.Status.QUEUED, Job.Status.RUNNING)

    @property
    def can_resume(self):
        return self.status in self.RESUMABLE and self.checkpoints.exists()

    # --- State changes

    @classmethod
    def start(cls, user, plan, *, name="", dataset_version):
        """Create the run and queue its job in one transaction (sent to RQ after commit).
        Raises QueueUnavailable, writing nothing, when Redis does not answer."""
        from lifecycle.core.jobs import enqueue
        from lifecycle.runs.tasks import train_run

        config = plan.config
        with transaction.atomic():
            run = cls.objects.create(
                name=name or f"{config.method} {plan.model.name} on {dataset_version}",
                dataset_version=dataset_version, base_model=plan.model.name, task=config.task,
                method=config.method, seed=config.seed, config=config.as_dict(), warnings=plan.warnings,
                created_by=user if getattr(user, "pk", None) else None,
            )
            run.job = enqueue(train_run, user=user, key=f"run:{run.pk}:1", run_id=run.pk)
            run.save(update_fields=["job"])
            AuditEvent.record(user, "run.started", run, {"config": run.config, "dataset_version": dataset_version.pk})
        return run

    def cancel(self, user):
        """Ask the run's job to stop; the loop notices within a second or so."""
        if not self.is_active:
            raise RunError(f"the run is {self.status}; there is nothing to cancel")
        return self.job.request_cancel(user)

    def resume(self, user, *, or_from_start=False):
        """Queue a new attempt from the last checkpoint. The row lock makes two clicks one resume.
        With `or_from_start`, a run stopped before its first checkpoint starts again at step 0
        (the same seed, so the same batches); its telemetry so far is replaced."""
        from lifecycle.core.jobs import enqueue
        from lifecycle.runs.tasks import train_run

        with transaction.atomic():
            # Lock the run alone, then read its job in a new statement: a join in the locking
            # query would be re-checked against the old snapshot after waiting, and miss a job
            # the other resume has just created.
            run = Run.objects.select_for_update().get(pk=self.pk)
            if run.status not in self.RESUMABLE:
                raise RunError(f"the run is {run.status}; only an interrupted, failed or cancelled run can resume")
            checkpoint = run.checkpoints.order_by("-step").first()
            if checkpoint is None and not or_from_start:
                raise RunError("the run has no checkpoint to resume from")
            if checkpoint is None:
                run.points.all().delete()
            run.attempt += 1
            run.job = enqueue(train_run, user=user, key=f"run:{run.pk}:{run.attempt}", run_id=run.pk,
                              resume=checkpoint is not None)
            run.save(update_fields=["attempt", "job"])
            AuditEvent.record(user, "run.resumed", run, {"attempt": run.attempt, "from_step": checkpoint.step if checkpoint else 0})
        self.attempt, self.job = run.attempt, run.job
        return checkpoint

    # --- Written by the worker (not audited: telemetry changes no decision)

    def set_progress(self, **progress):
        Run.objects.filter(pk=self.pk).update(progress=progress)
        self.progress = progress

    def record_start(self, environment, base_model_sha256):
        Run.objects.filter(pk=self.pk).update(environment=environment, base_model_sha256=base_model_sha256)
        self.environment, self.base_model_sha256 = environment, base_model_sha256

    def record_output(self, output_sha256, test_metrics):
        with transaction.atomic():
            Run.objects.filter(pk=self.pk).update(output_sha256=output_sha256, test_metrics=test_metrics)
            AuditEvent.record(None, "run.output_written", self, {"output": output_sha256, "metrics": test_metrics})
        self.output_sha256, self.test_metrics = output_sha256, test_metrics

    # --- Reading

    def curves(self, kind="train", since=None):
        """{metric: ([steps], [values])} for every metric this run logged of that kind; only
        the points after step `since` when given (a page polling for what is new)."""
        series = {}
        points = self.points.filter(kind=kind)
        if since is not None:
            points = points.filter(step__gt=since)
        for step, values in points.order_by("step").values_list("step", "values"):
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    steps, ys = series.setdefault(key, ([], []))
                    steps.append(step)
                    ys.append(value)
        return series


class MetricPoint(models.Model):
    """The scalars of one step (training) or one evaluation, in one row: the loop writes
    them in batches (bulk_create every few seconds), never an INSERT per scalar."""

    class Kind(models.TextChoices):
        TRAIN = "train"
        EVAL = "eval"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="points")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    step = models.PositiveIntegerField()
    values = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["run", "kind", "step"], name="metric_run_kind_step_idx")]


class Checkpoint(models.Model):
    """Everything to continue exactly: trainable weights (safetensors) and the optimizer,
    scheduler, RNG and loop state (a torch file read back with weights_only=True)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField()
    weights_sha256 = models.CharField(max_length=64)
    state_sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "-step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="checkpoint_run_step_unique")]


class EvalReport(models.Model):
    """The held-out evaluation of a finished run (runs/metrics.py)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="reports")
    split = models.CharField(max_length=20)
    metrics = models.JSONField()  # accuracy, macro/micro F1, ECE… or loss, perplexity, exact match
    per_class = models.JSONField(default=list, blank=True)
    confusion = models.JSONField(default=dict, blank=True)
    calibration = models.JSONField(default=dict, blank=True)
    worst = models.JSONField(default=dict, blank=True)  # confident mistakes and highest-loss examples
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "split"], name="evalreport_run_split_unique")]
