"""Deployments: what serves a registered model, the releases that change it, rollbacks with
their measured time-to-rollback, the serving processes and what they applied, the prediction
log and human feedback.

Routing state lives here (PostgreSQL), never in a serving process: a change bumps the
deployment's `generation` in the same transaction as its audit event, then a Redis notice
tells every serving process to re-read (serving/routes.py). Each process reports the
generation it applied (`ServingProcess.applied`), which is how a rollback's time is measured.
"""
import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from lifecycle.core.models import ApiToken, AuditEvent
from lifecycle.registry.models import ModelVersion, RegisteredModel, RegistryError, Stage

SERVABLE_STAGES = (Stage.STAGING, Stage.PRODUCTION)
# A serving process that has not reported for this long is not waited for (a rollback's time
# counts the live ones) and is shown as gone.
PROCESS_LIVE_SECONDS = 10
NAME_VALIDATOR = RegexValidator(r"^[a-z0-9][a-z0-9-]{0,62}$",
                                "Use lower-case letters, digits and hyphens (it is part of the URL).")


class DeploymentError(Exception):
    pass


def check_releasable(deployment_model, version, role):
    """Refuse a version that may not serve: another model's, not staging/production, or one
    whose signature is not valid."""
    if version.model_id != deployment_model.pk:
        raise DeploymentError(f"{version} is not a version of {deployment_model.name}.")
    if version.stage not in SERVABLE_STAGES:
        raise DeploymentError(f"{version} is {version.stage}; only staging or production versions can be released "
                              f"as the {role}.")
    if not version.is_signed_valid:
        raise DeploymentError(f"{version} failed its signature check ({version.signature_error}) and cannot be released.")


def _publish(deployment_id, generation):
    """Tell serving processes to re-read routes, once the change has committed. Redis down is
    not an error here: they re-read every SERVING_ROUTES_REFRESH_SECONDS anyway."""
    from lifecycle.deployments import notices

    transaction.on_commit(lambda: notices.publish(deployment_id, generation))


# --- deployments -------------------------------------------------------------------------------


class DeploymentQuerySet(models.QuerySet):
    def for_listing(self):
        return self.select_related("model", "current_release__stable", "current_release__candidate")


class Deployment(models.Model):
    name = models.CharField(max_length=63, unique=True, validators=[NAME_VALIDATOR])
    environment = models.CharField(max_length=40, default="production")
    description = models.TextField(blank=True)
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="deployments")
    # Bumped by every route change; serving processes report the generation they applied.
    generation = models.PositiveBigIntegerField(default=1)
    current_release = models.OneToOneField("Release", null=True, blank=True, on_delete=models.PROTECT,
                                           related_name="+")
    last_release_number = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("deployments:detail", args=[self.name])

    @classmethod
    def create(cls, user, *, name, model, stable, environment="production", description=""):
        """A new deployment serving `stable` at 100 %."""
        check_releasable(model, stable, "stable version")
        with transaction.atomic():
            if cls.objects.filter(name=name).exists():
                raise DeploymentError(f"A deployment named {name} exists already.")
            deployment = cls.objects.create(name=name, model=model, environment=environment,
                                            description=description, created_by=user)
            release = Release.objects.create(deployment=deployment, number=1, stable=stable, created_by=user)
            cls.objects.filter(pk=deployment.pk).update(current_release=release, last_release_number=1)
            deployment.current_release, deployment.last_release_number = release, 1
            AuditEvent.record(user, "deployment.created", deployment, {
                "model": model.slug, "environment": environment, "stable": stable.pk, "release": release.pk})
            _publish(deployment.pk, deployment.generation)
        return deployment

    def locked(self):
        """This deployment's row, locked: one release change at a time per deployment."""
        return Deployment.objects.select_for_update().get(pk=self.pk)

    def _bump(self):
        """Inside the caller's transaction, holding the lock: the next generation, published
        once it commits."""
        Deployment.objects.filter(pk=self.pk).update(generation=models.F("generation") + 1)
        self.generation = Deployment.objects.values_list("generation", flat=True).get(pk=self.pk)
        _publish(self.pk, self.generation)
        return self.generation

    def start_release(self, user, *, candidate, mode, share=0.0, rules=None, reason=""):
        """A new release: the current stable version stays; `candidate` joins as a canary
        (`share` percent of live traffic) or a shadow (a copy of every request)."""
        from lifecycle.deployments import verdicts

        if mode not in (Release.Mode.CANARY, Release.Mode.SHADOW):
            raise DeploymentError("A candidate is released as a canary or a shadow.")
        share = _check_share(share if mode == Release.Mode.CANARY else 0.0)
        rules = verdicts.clean_rules(rules or {})
        check_releasable(self.model, candidate, "candidate")
        with transaction.atomic():
            deployment = self.locked()
            current = deployment.current_release
            if current.candidate_id and current.status in (Release.Status.ACTIVE, Release.Status.PROMOTING):
                raise DeploymentError(f"Release {current.number} still has a candidate ({current.candidate}); "
                                      "roll it back or promote it first.")
            if candidate.pk == current.stable_id:
                raise DeploymentError(f"{candidate} is the stable version already.")
            number = deployment.last_release_number + 1
            release = Release.objects.create(
                deployment=deployment, number=number, stable_id=current.stable_id, candidate=candidate, mode=mode,
                share=share, rules=rules, created_by=user, reason=reason)
            current._end(Release.Status.SUPERSEDED)
            Deployment.objects.filter(pk=deployment.pk).update(current_release=release, last_release_number=number)
            generation = deployment._bump()
            AuditEvent.record(user, "release.started", release, {
                "deployment": deployment.name, "number": number, "stable": current.stable_id,
                "candidate": candidate.pk, "mode": mode, "share": share, "rules": rules, "reason": reason,
                "generation": generation})
        return release

    def routes(self):
        """What serving processes read: one dict per deployment (serving/routes.py)."""
        release = self.current_release
        candidate = release.candidate_id if release.candidate_is_live else None
        return {"deployment": self.pk, "name": self.name, "generation": self.generation, "release": release.pk,
                "stable": release.stable_id, "candidate": candidate,
                "mode": release.mode if candidate else "", "share": release.share if candidate else 0.0}

    @classmethod
    def all_routes(cls):
        return [d.routes() for d in cls.objects.select_related("current_release").filter(current_release__isnull=False)]


def _check_share(share):
    try:
        share = float(share)
    except (TypeError, ValueError):
        raise DeploymentError("The canary's share is a number of percent, 0 to 100.") from None
    if not 0.0 <= share <= 100.0:
        raise DeploymentError("The canary's share is a number of percent, 0 to 100.")
    return share


# --- releases ----------------------------------------------------------------------------------


class Release(models.Model):
    class Mode(models.TextChoices):
        NONE = "", "stable only"
        CANARY = "canary"
        SHADOW = "shadow"

    class Status(models.TextChoices):
        ACTIVE = "active"
        PROMOTING = "promoting"  # the candidate's move to production waits on the registry's gates and approvals
        PROMOTED = "promoted"  # the candidate became the next release's stable version
        ROLLED_BACK = "rolled_back"
        SUPERSEDED = "superseded"

    class Verdict(models.TextChoices):
        PENDING = "pending"
        PASSED = "passed"  # ready to promote
        FAILED = "failed"  # rolled back automatically

    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="releases")
    number = models.PositiveIntegerField()
    stable = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="stable_releases")
    candidate = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="candidate_releases")
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.NONE, blank=True)
    share = models.FloatField(default=0.0, validators=[MinValueValidator(0.0), MaxValueValidator(100.0)])
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.ACTIVE)
    rules = models.JSONField(default=dict, blank=True)  # verdicts.clean_rules
    verdict = models.CharField(max_length=8, choices=Verdict.choices, default=Verdict.PENDING)
    verdict_reason = models.TextField(blank=True)
    verdict_numbers = models.JSONField(default=dict, blank=True)  # the last evaluation, shown on the page
    verdict_at = models.DateTimeField(null=True, blank=True)
    promotion_request = models.ForeignKey("registry.PromotionRequest", null=True, blank=True,
                                          on_delete=models.PROTECT, related_name="releases")
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment", "-number"]
        constraints = [models.UniqueConstraint(fields=["deployment", "number"], name="release_number_unique")]

    def __str__(self):
        return f"{self.deployment.name} release {self.number}"

    def get_absolute_url(self):
        return reverse("deployments:detail", args=[self.deployment.name]) + f"#release-{self.number}"

    @property
    def candidate_is_live(self):
        return bool(self.candidate_id) and self.status in (self.Status.ACTIVE, self.Status.PROMOTING)

    @property
    def stable_share(self):
        if self.candidate_is_live and self.mode == self.Mode.CANARY:
            return 100.0 - self.share
        return 100.0

    def _locked_current(self):
        """Lock the deployment, then re-read this release; refuse if it is no longer current."""
        deployment = self.deployment.locked()
        if deployment.current_release_id != self.pk:
            raise DeploymentError(f"Release {self.number} is no longer the current release of {deployment.name}.")
        return deployment, Release.objects.get(pk=self.pk)

    def _end(self, status):
        """No longer current. A rolled-back release keeps that status in the history."""
        now = timezone.now()
        if self.status == self.Status.ROLLED_BACK:
            status = self.Status.ROLLED_BACK
        Release.objects.filter(pk=self.pk).update(status=status, ended_at=now)
        self.status, self.ended_at = status, now

    def set_share(self, user, share, reason=""):
        """Change a canary's share in place: the release (and so every sticky key's draw) stays."""
        share = _check_share(share)
        with transaction.atomic():
            deployment, current = self._locked_current()
            if current.mode != self.Mode.CANARY or not current.candidate_is_live:
                raise DeploymentError("Only a live canary's share can change.")
            if share == 100.0:
                raise DeploymentError("A canary reaches 100 % by promotion (the registry's gates and approvals).")
            Release.objects.filter(pk=self.pk).update(share=share)
            generation = deployment._bump()
            AuditEvent.record(user, "release.share_changed", self, {
                "deployment": deployment.name, "from": current.share, "to": share, "reason": reason,
                "generation": generation})
        self.share = share
        return self

    def rollback(self, user, reason, *, automatic=False):
        """Send all traffic back to stable: the candidate leaves the routes in this one
        transaction. Returns the Rollback, whose time is filled in as serving processes apply it."""
        if not reason.strip():
            raise DeploymentError("Say why you roll back; the reason goes into the audit trail.")
        clicked = timezone.now()
        with transaction.atomic():
            deployment, current = self._locked_current()
            if not current.candidate_is_live:
                raise DeploymentError(f"Release {self.number} serves only its stable version; there is nothing to roll back.")
            # Still the current release (stable at 100 %) until the next one starts.
            Release.objects.filter(pk=self.pk).update(status=self.Status.ROLLED_BACK)
            generation = deployment._bump()
            rollback = Rollback.objects.create(release=current, actor=user, reason=reason, automatic=automatic,
                                               generation=generation, clicked_at=clicked)
            AuditEvent.record(user, "release.rolled_back", self, {
                "deployment": deployment.name, "candidate": current.candidate_id, "reason": reason,
                "automatic": automatic, "generation": generation, "rollback": rollback.pk})
        self.status = self.Status.ROLLED_BACK
        transaction.on_commit(rollback.check_complete)
        return rollback

    def promote(self, user, reason):
        """Ask the registry to move the candidate to production; the release waits for its
        gates and approvals (`complete_promotion` runs once the stage change is made)."""
        from lifecycle.registry.models import PromotionRequest

        with transaction.atomic():
            deployment, current = self._locked_current()
            if not current.candidate_is_live or current.status == self.Status.PROMOTING:
                raise DeploymentError("Only a live candidate that is not already being promoted can be promoted.")
        candidate = current.candidate
        if candidate.stage == Stage.PRODUCTION:
            request = None
        else:
            request = PromotionRequest.open(user, candidate, Stage.PRODUCTION, reason)  # runs the gates
        with transaction.atomic():
            deployment, current = self._locked_current()
            if not current.candidate_is_live:
                raise DeploymentError("The candidate left meanwhile (rolled back?); nothing to promote.")
            Release.objects.filter(pk=self.pk).update(status=self.Status.PROMOTING, promotion_request=request)
            AuditEvent.record(user, "release.promotion_requested", self, {
                "deployment": deployment.name, "candidate": candidate.pk, "request": request.pk if request else None,
                "reason": reason})
        self.status, self.promotion_request = self.Status.PROMOTING, request
        if request is None:
            self.complete_promotion(user)
        return request

    def complete_promotion(self, user=None):
        """If the candidate now holds production, it becomes stable at 100 % in a new release;
        if its request was rejected, the canary carries on. Returns the new release or None."""
        with transaction.atomic():
            deployment, current = self._locked_current()
            if current.status != self.Status.PROMOTING:
                return None
            candidate = ModelVersion.objects.get(pk=current.candidate_id)
            request = current.promotion_request
            if request is not None and request.status == "rejected":
                Release.objects.filter(pk=self.pk).update(status=self.Status.ACTIVE)
                AuditEvent.record(user, "release.promotion_rejected", self, {
                    "deployment": deployment.name, "request": request.pk})
                return None
            if candidate.stage != Stage.PRODUCTION:
                return None
            number = deployment.last_release_number + 1
            release = Release.objects.create(deployment=deployment, number=number, stable=candidate, created_by=user,
                                             reason=f"promoted from release {current.number}")
            current._end(self.Status.PROMOTED)
            Deployment.objects.filter(pk=deployment.pk).update(current_release=release, last_release_number=number)
            generation = deployment._bump()
            AuditEvent.record(user, "release.promoted", release, {
                "deployment": deployment.name, "from_release": current.number, "stable": candidate.pk,
                "generation": generation})
        return release

    def record_verdict(self, result):
        """Store an evaluation (verdicts.Result). A failure rolls back automatically; a pass
        marks the release ready to promote. A pending verdict may pass or fail; a passed one
        may still fail (the confidence sequences stay valid however often they are read)."""
        now = timezone.now()
        with transaction.atomic():
            current = Release.objects.select_for_update().get(pk=self.pk)
            if not current.candidate_is_live or current.verdict == self.Verdict.FAILED:
                return None
            if current.verdict == self.Verdict.PASSED and result.verdict != self.Verdict.FAILED:
                Release.objects.filter(pk=self.pk).update(verdict_numbers=result.numbers, verdict_at=now)
                return None
            Release.objects.filter(pk=self.pk).update(
                verdict=result.verdict, verdict_reason=result.reason, verdict_numbers=result.numbers, verdict_at=now)
            if result.verdict == self.Verdict.PASSED:
                AuditEvent.record(None, "release.verdict_passed", self, {"reason": result.reason, "numbers": result.numbers})
        if result.verdict == self.Verdict.FAILED:
            try:
                return self.rollback(None, f"automatic verdict: {result.reason}", automatic=True)
            except DeploymentError:
                return None  # someone ended the candidate meanwhile
        return None

    def drop_candidate(self, reason):
        """A serving process could not load the candidate (its signature failed): roll it
        back with the reason, stable keeps serving."""
        try:
            return self.rollback(None, reason, automatic=True)
        except DeploymentError:
            return None


class Rollback(models.Model):
    """One rollback: who and why, and how long until every live serving process answered
    only from stable (`time_to_rollback_ms`, from the confirmed click to the last report)."""

    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="rollbacks")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField()
    automatic = models.BooleanField(default=False)
    generation = models.PositiveBigIntegerField()
    clicked_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    time_to_rollback_ms = models.FloatField(null=True, blank=True)
    processes = models.JSONField(default=list, blank=True)  # [{"process", "applied_at"}] that were waited for

    class Meta:
        ordering = ["-clicked_at"]

    def check_complete(self):
        """Complete once every live serving process has applied this generation. With no
        live process there is nothing to wait for: the time is then to the commit."""
        if self.completed_at:
            return True
        deployment_id = self.release.deployment_id
        live = ServingProcess.objects.live()
        acks = {a.process_id: a for a in RouteAck.objects.filter(deployment_id=deployment_id,
                                                                 process__in=live, generation__gte=self.generation)}
        waiting = [p for p in live if p.pk not in acks]
        if waiting:
            return False
        applied = [a.applied_at for a in acks.values()] or [timezone.now()]
        completed = max(max(applied), self.clicked_at)
        updated = Rollback.objects.filter(pk=self.pk, completed_at__isnull=True).update(
            completed_at=completed, time_to_rollback_ms=(completed - self.clicked_at).total_seconds() * 1000,
            processes=[{"process": a.process_id, "applied_at": a.applied_at.isoformat()} for a in acks.values()])
        return bool(updated)

    @classmethod
    def complete_pending(cls):
        """Complete every rollback that waits (a process that died is not waited for once it
        stops reporting). A maintenance step and a serving process's report both call this."""
        done = 0
        for rollback in cls.objects.filter(completed_at__isnull=True).select_related("release"):
            done += bool(rollback.check_complete())
        return done


# --- serving processes ---------------------------------------------------------------------------


class ServingProcessQuerySet(models.QuerySet):
    def live(self):
        return self.filter(last_seen_at__gte=timezone.now() - timedelta(seconds=PROCESS_LIVE_SECONDS))


class ServingProcess(models.Model):
    """A running `manage.py serve` process (one row per process; the id is host:pid:start)."""

    id = models.CharField(max_length=200, primary_key=True)
    host = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    port = models.PositiveIntegerField(null=True)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    loaded = models.JSONField(default=list, blank=True)  # [{"version", "bytes", "load_seconds"}]
    notices_ok = models.BooleanField(default=True)  # False while its Redis subscription is down

    objects = ServingProcessQuerySet.as_manager()

    class Meta:
        ordering = ["-last_seen_at"]

    @classmethod
    def beat(cls, process_id, *, host, pid, port, started_at, loaded, notices_ok):
        now = timezone.now()
        cls.objects.update_or_create(pk=process_id, defaults=dict(
            host=host, pid=pid, port=port, started_at=started_at, last_seen_at=now, loaded=loaded,
            notices_ok=notices_ok))

    @classmethod
    def leave(cls, process_id):
        """A clean stop: shown as gone at once, so no rollback waits for it (a killed
        process is waited for until its last beat is PROCESS_LIVE_SECONDS old)."""
        cls.objects.filter(pk=process_id).update(last_seen_at=timezone.now() - timedelta(seconds=PROCESS_LIVE_SECONDS + 1))

    @classmethod
    def applied(cls, process_id, deployment_id, generation, applied_at):
        """A serving process reports it now routes `deployment_id` by `generation` (it has
        loaded what that generation serves). Completes any rollback this was the last one for."""
        RouteAck.objects.update_or_create(process_id=process_id, deployment_id=deployment_id,
                                          defaults={"generation": generation, "applied_at": applied_at})
        for rollback in Rollback.objects.filter(release__deployment_id=deployment_id, completed_at__isnull=True,
                                                generation__lte=generation).select_related("release"):
            rollback.check_complete()


class RouteAck(models.Model):
    process = models.ForeignKey(ServingProcess, on_delete=models.CASCADE, related_name="acks")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    generation = models.PositiveBigIntegerField()
    applied_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["process", "deployment"], name="routeack_unique")]


# --- tokens --------------------------------------------------------------------------------------


class ServingTokenQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class ServingToken(models.Model):
    """A bearer token for the serving API, scoped to deployments. Only its sha256 is stored;
    `rate_per_second` and `burst` set its token bucket (serving/ratelimit.py)."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12)
    key_hash = models.CharField(max_length=64, unique=True)
    deployments = models.ManyToManyField(Deployment, related_name="tokens")
    rate_per_second = models.FloatField(default=100.0, validators=[MinValueValidator(0.1)])
    burst = models.PositiveIntegerField(default=200, validators=[MinValueValidator(1)])
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ServingTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    hash_key = staticmethod(ApiToken.hash_key)  # the same one-way hash as the API's tokens

    @classmethod
    def issue(cls, user, name, deployments, *, rate_per_second=100.0, burst=200):
        """Create a token; the plain key is returned once and never stored."""
        deployments = list(deployments)
        if not deployments:
            raise DeploymentError("A serving token names at least one deployment.")
        key = "lcs_" + secrets.token_urlsafe(32)
        with transaction.atomic():
            token = cls.objects.create(name=name, prefix=key[:12], key_hash=cls.hash_key(key), created_by=user,
                                       rate_per_second=rate_per_second, burst=burst)
            token.deployments.set(deployments)
            AuditEvent.record(user, "serving_token.issued", token, {
                "name": name, "deployments": [d.name for d in deployments], "rate_per_second": rate_per_second,
                "burst": burst})
        return token, key

    def revoke(self, user):
        with transaction.atomic():
            updated = ServingToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
            if updated:
                AuditEvent.record(user, "serving_token.revoked", self, {"name": self.name})
        return bool(updated)

    @classmethod
    def table(cls):
        """{key_hash: {"id", "deployments": {ids}, "rate", "burst", "user"}} for the active
        tokens: what a serving process caches and re-reads with its routes."""
        rows = {}
        for token in cls.objects.active().prefetch_related("deployments"):
            rows[token.key_hash] = {"id": token.pk, "deployments": {d.pk for d in token.deployments.all()},
                                    "rate": token.rate_per_second, "burst": token.burst, "user": token.created_by_id}
        return rows


# --- the prediction log and feedback -------------------------------------------------------------


class Route(models.TextChoices):
    STABLE = "stable"
    CANARY = "canary"
    SHADOW = "shadow"  # the candidate's answer to a copy of the request: logged, never returned


class PredictionBatch(models.Model):
    """One committed write of the prediction log (a flush, or a chunk of a spool replay),
    written in the same transaction as its rows. Monitoring rolls each batch up exactly once:
    it claims the batch (`rolled_up_at` set where it was empty) in the transaction that adds
    the batch's counts, so a batch processed twice adds nothing."""

    process = models.CharField(max_length=200, blank=True)
    rows = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    rolled_up_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["id"], condition=models.Q(rolled_up_at__isnull=True),
                                name="predbatch_pending_idx")]


class PredictionLog(models.Model):
    """One answer to one input of one request (a request of 3 inputs writes 3 rows; a
    shadow adds 3 more with route "shadow" and the same request id). Written in batches by the
    serving process (serving/predlog.py: COPY on PostgreSQL), so the foreign keys are not
    enforced by the database: deployments, releases and versions are never deleted."""

    class Status(models.TextChoices):
        OK = "ok"
        ERROR = "error"

    request_id = models.UUIDField(db_index=True)
    position = models.PositiveIntegerField(default=0)  # the input's index within its request
    deployment = models.ForeignKey(Deployment, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False,
                                   related_name="+")
    release = models.ForeignKey(Release, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False,
                                related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False,
                                related_name="+")
    route = models.CharField(max_length=8, choices=Route.choices)
    input_text = models.TextField()  # masked by the source dataset's PII policy
    output = models.JSONField(default=dict)  # {"label", "probabilities"} or {"text"}
    label = models.CharField(max_length=200, blank=True)
    confidence = models.FloatField(null=True)
    latency_ms = models.FloatField()
    status = models.CharField(max_length=5, choices=Status.choices, default=Status.OK)
    error = models.CharField(max_length=300, blank=True)
    text_length = models.PositiveIntegerField(default=0)
    token_count = models.PositiveIntegerField(default=0)
    embedding = models.JSONField(default=list, blank=True)  # the mean-pooled embedding, projected to 16 numbers
    process = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField()
    # The write it landed in (PredictionBatch); no database FK, as for the others.
    batch = models.ForeignKey(PredictionBatch, null=True, on_delete=models.DO_NOTHING, db_constraint=False,
                              db_index=False, related_name="+")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["deployment", "created_at"], name="predlog_deployment_idx"),
            models.Index(fields=["release", "route", "created_at"], name="predlog_release_idx"),
            models.Index(fields=["created_at"], name="predlog_created_idx"),  # the retention purge
            models.Index(fields=["batch"], name="predlog_batch_idx"),  # monitoring's rollups
        ]
        constraints = [models.UniqueConstraint(fields=["request_id", "route", "position"], name="predlog_unique")]


class Feedback(models.Model):
    """A person's (or a client's) word on one prediction: the right label, or right/wrong.
    An override is a correction that disagrees with what was answered; monitoring counts them."""

    request_id = models.UUIDField()
    position = models.PositiveIntegerField(default=0)
    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="feedback")
    release_id = models.PositiveBigIntegerField(null=True)
    predicted_label = models.CharField(max_length=200, blank=True)
    label = models.CharField(max_length=200, blank=True)
    correct = models.BooleanField(null=True)
    is_override = models.BooleanField(default=False)
    note = models.TextField(blank=True)
    given_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    token = models.ForeignKey(ServingToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [models.UniqueConstraint(fields=["request_id", "position"], name="feedback_unique")]
        indexes = [models.Index(fields=["deployment", "updated_at"], name="feedback_deployment_idx")]

    @classmethod
    def give(cls, *, request_id, position=0, label="", correct=None, note="", user=None, token=None):
        """Record (or replace) the word on one prediction; audited. Raises DeploymentError when
        the request is unknown, the label is not one the model has, or neither is given."""
        try:
            request_id = uuid.UUID(str(request_id))
        except ValueError:
            raise DeploymentError("request_id is not a request id this service returned.") from None
        if not label and correct is None:
            raise DeploymentError('Give "label" (the right answer) or "correct" (true or false).')
        answered = (PredictionLog.objects.filter(request_id=request_id, position=position)
                    .exclude(route=Route.SHADOW).first())
        if answered is None:
            raise DeploymentError("No prediction with that request id (and position) is in the log.")
        if token is not None and answered.deployment_id not in {d.pk for d in token.deployments.all()}:
            raise DeploymentError("That prediction belongs to a deployment this token is not for.")
        version = ModelVersion.objects.get(pk=answered.version_id)
        if label and version.labels and label not in version.labels:
            raise DeploymentError(f"{label!r} is not one of the model's labels ({', '.join(version.labels)}).")
        if label:
            correct = label == answered.label
        override = correct is False
        with transaction.atomic():
            feedback, _ = cls.objects.update_or_create(request_id=request_id, position=position, defaults=dict(
                deployment_id=answered.deployment_id, release_id=answered.release_id,
                predicted_label=answered.label, label=label, correct=correct, is_override=override, note=note,
                given_by=user, token=token))
            AuditEvent.record(user, "feedback.given", feedback, {
                "request_id": str(request_id), "position": position, "predicted": answered.label, "label": label,
                "correct": correct, "token": token.pk if token else None})
        return feedback


__all__ = ["Deployment", "DeploymentError", "Feedback", "PredictionBatch", "PredictionLog", "Release", "Rollback", "Route",
           "RouteAck", "ServingProcess", "ServingToken", "RegistryError", "check_releasable"]
