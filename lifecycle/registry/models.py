"""The model registry: registered models, their signed versions, the stages they move through,
and the promotion requests, gates and approvals that move them.

Every stage move is a PromotionRequest; the move itself happens in `_promote`, called only
from the request once its approvals are in (or at once, for a target that needs none). The
database holds the invariants code alone could lose in a race: one version per model in
`production` and one in `staging` (partial unique indexes), one version per (model, run),
one open request per version, one approval per (request, approver).
"""
import hashlib
import re
import shutil

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.dispatch import Signal
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify

from lifecycle.core.artifacts import get_store
from lifecycle.core.models import AuditEvent, Job
from lifecycle.core.roles import APPROVER, has_role
from lifecycle.runs.models import Run

HEX64 = re.compile(r"^[0-9a-f]{64}$")


class RegistryError(Exception):
    """A registry action the current state does not allow; the message says why."""


class ApprovalDenied(RegistryError):
    """An approval the user may not give (role, separation of duties): answered 403."""


class EvidenceChanged(RegistryError):
    """The evidence differs from what the approver saw or what earlier approvals pinned."""

    def __init__(self, message, changed):
        super().__init__(message)
        self.changed = changed


class Stage(models.TextChoices):
    CANDIDATE = "candidate"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"


# Where a version may be asked to go from where it is. Archived versions may come back to
# staging (a rollback target must be re-approved), never straight to production.
MOVES = {
    Stage.CANDIDATE: (Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED),
    Stage.STAGING: (Stage.PRODUCTION, Stage.ARCHIVED),
    Stage.PRODUCTION: (Stage.ARCHIVED,),
    Stage.ARCHIVED: (Stage.STAGING,),
}
# Stages only one version per model holds; a version promoted into one archives the holder.
SINGLE_STAGES = (Stage.STAGING, Stage.PRODUCTION)
DEFAULT_APPROVALS = {Stage.STAGING: 1, Stage.PRODUCTION: 2, Stage.ARCHIVED: 0}
# Gate thresholds a new model starts with (registry/gates.py reads them): per target stage,
# metric name -> {"min": x} or {"max": x}; `regression_tolerance` is the largest drop in
# each "min" metric allowed against the production version.
DEFAULT_GATE_SETTINGS = {
    Stage.STAGING: {"metrics": {"accuracy": {"min": 0.5}}, "regression_tolerance": None},
    Stage.PRODUCTION: {"metrics": {"accuracy": {"min": 0.8}, "macro_f1": {"min": 0.7}, "ece": {"max": 0.15}},
                       "regression_tolerance": 0.02},
}


def default_gate_settings():
    return {str(stage): dict(value) for stage, value in DEFAULT_GATE_SETTINGS.items()}


def default_approvals():
    return {str(stage): n for stage, n in DEFAULT_APPROVALS.items()}


# --- registered models -----------------------------------------------------------------------


class RegisteredModelQuerySet(models.QuerySet):
    def for_listing(self):
        return self.select_related("created_by").annotate(version_count=models.Count("versions"))


class RegisteredModel(models.Model):
    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True)  # becomes the card's "Intended use"
    gate_settings = models.JSONField(default=default_gate_settings)
    approvals_required = models.JSONField(default=default_approvals)
    # Version numbers come from here, so a number is never given twice, whatever happens to versions.
    last_number = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RegisteredModelQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("registry:model", args=[self.slug])

    @classmethod
    def create(cls, user, *, name, slug="", description=""):
        slug = slug or slugify(name)[:80]
        if not slug:
            raise RegistryError("A model needs a name with letters or digits.")
        with transaction.atomic():
            if cls.objects.filter(models.Q(name=name) | models.Q(slug=slug)).exists():
                raise RegistryError(f"A model named {name!r} (or with the slug {slug!r}) already exists.")
            model = cls.objects.create(name=name, slug=slug, description=description, created_by=user)
            AuditEvent.record(user, "registered_model.created", model, {"name": name, "slug": slug})
        return model

    def approvals_for(self, stage):
        return int(self.approvals_required.get(str(stage), DEFAULT_APPROVALS.get(stage, 1)))

    def holder(self, stage):
        return self.versions.filter(stage=stage).first()

    def held_at(self, stage, when):
        """The version that held `stage` at time `when`, or None: the last move into or out of
        that stage before `when` says it (one query)."""
        change = (StageChange.objects.filter(version__model=self, changed_at__lte=when)
                  .filter(models.Q(to_stage=stage) | models.Q(from_stage=stage))
                  .select_related("version").order_by("-changed_at", "-pk").first())
        return change.version if change and change.to_stage == stage else None

    # --- settings (the model's settings page)

    def update_settings(self, user, gate_settings, approvals_required):
        """Replace the gate thresholds and the approvals required per target stage (cleaned by
        registry/forms.py), audited with the values before and after. False when nothing
        changed. Requests already open keep the approvals they were opened with; their gates
        run again at each approval, so new thresholds count there."""
        for stage in SINGLE_STAGES:
            if int(approvals_required.get(str(stage), 0)) < 1:
                raise RegistryError(f"A move to {stage} needs at least one approval.")
        with transaction.atomic():
            current = RegisteredModel.objects.select_for_update().get(pk=self.pk)
            before = {"gate_settings": current.gate_settings, "approvals_required": current.approvals_required}
            after = {"gate_settings": gate_settings, "approvals_required": approvals_required}
            if before == after:
                return False
            RegisteredModel.objects.filter(pk=self.pk).update(**after)
            self.gate_settings, self.approvals_required = gate_settings, approvals_required
            AuditEvent.record(user, "registered_model.settings_changed", self, {"before": before, "after": after})
        return True


# --- versions --------------------------------------------------------------------------------


class ModelVersionQuerySet(models.QuerySet):
    def for_listing(self):
        return self.select_related("model", "run", "run__dataset_version__dataset", "registered_by")


class ModelVersion(models.Model):
    class Signature(models.TextChoices):
        VALID = "valid"
        INVALID = "invalid"  # a file or the bundle no longer matches: never loaded again

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="model_versions")
    output_sha256 = models.CharField(max_length=64)  # the run output's manifest key (runs/outputs.py)
    artifact_bytes = models.BigIntegerField()  # the manifest and every file it lists
    task = models.CharField(max_length=20)
    labels = models.JSONField(default=list, blank=True)
    base_model_name = models.CharField(max_length=300)
    base_model_sha256 = models.CharField(max_length=64)
    metrics = models.JSONField(default=dict, blank=True)  # the run's test metrics at registration
    # The test split's evaluation at registration: per-class scores, confusion, calibration.
    evaluation = models.JSONField(default=dict, blank=True)
    lineage = models.JSONField(default=dict)  # registry/lineage.py: run -> data -> parents -> labeling
    stage = models.CharField(max_length=20, choices=Stage.choices, default=Stage.CANDIDATE)
    signature_sha256 = models.CharField(max_length=64)  # the Sigstore bundle's artifact key
    signature_status = models.CharField(max_length=10, choices=Signature.choices, default=Signature.VALID)
    signature_checked_at = models.DateTimeField(null=True, blank=True)
    signature_error = models.TextField(blank=True)
    card = models.TextField(blank=True)  # Markdown; rendered with raw HTML off (registry/cards.py)
    registered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["model", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="modelversion_number_unique"),
            models.UniqueConstraint(fields=["model", "run"], name="modelversion_run_unique"),
            models.UniqueConstraint(fields=["model"], condition=models.Q(stage="production"),
                                    name="modelversion_one_production"),
            models.UniqueConstraint(fields=["model"], condition=models.Q(stage="staging"),
                                    name="modelversion_one_staging"),
        ]
        indexes = [models.Index(fields=["model", "stage"], name="modelversion_stage_idx")]

    def __str__(self):
        return f"{self.model.name} v{self.number}"

    def get_absolute_url(self):
        return reverse("registry:version", args=[self.model.slug, self.number])

    @property
    def card_sha256(self):
        return hashlib.sha256(self.card.encode()).hexdigest()

    @property
    def is_signed_valid(self):
        return self.signature_status == self.Signature.VALID

    # --- registration

    @classmethod
    def register(cls, user, model, run, *, artifact=None):
        """Register `run`'s output as the next version of `model`, signed. `artifact`, when a
        caller names one, must be that output's key in our own store (never a path or URL)."""
        from lifecycle.registry import cards, lineage, signing

        output = check_registrable(model, run, artifact)
        signed = signing.sign_output(run.output_sha256)  # slow (reads the files): outside any lock
        with transaction.atomic():
            model = RegisteredModel.objects.select_for_update().get(pk=model.pk)
            if cls.objects.filter(model=model, run=run).exists():
                raise RegistryError(f"Run {run.pk} is already registered as a version of {model.name}.")
            number = model.last_number + 1
            RegisteredModel.objects.filter(pk=model.pk).update(last_number=number)
            version = cls(model=model, number=number, run=run, output_sha256=run.output_sha256,
                          artifact_bytes=output["bytes"], task=run.task, labels=output["manifest"].get("labels", []),
                          base_model_name=output["manifest"]["base_model"]["name"],
                          base_model_sha256=output["manifest"]["base_model"]["sha256"],
                          metrics=run.test_metrics or {}, evaluation=_test_evaluation(run),
                          lineage=lineage.of_run(run), signature_sha256=signed,
                          signature_checked_at=timezone.now(), registered_by=user)
            version.card = cards.generate(version)
            try:
                with transaction.atomic():
                    version.save(force_insert=True)
            except IntegrityError:  # the same run registered at the same moment by another request
                raise RegistryError(f"Run {run.pk} is already registered as a version of {model.name}.") from None
            AuditEvent.record(user, "model_version.created", version, {
                "model": model.slug, "number": number, "run": run.pk, "output": run.output_sha256,
                "signature": signed, "card_sha256": version.card_sha256})
            _notify("model_version.created", version, {"model": model.slug, "version": number, "run": run.pk})
        return version

    # --- signature

    def verify(self, *, actor=None, folder=None):
        """Check the stored signature over the output's files now (materialized into `folder`,
        or a temporary one). A failure marks the version invalid for good (audited) and
        returns the result; loads must refuse it."""
        from lifecycle.registry import signing

        result = signing.verify_output(self.output_sha256, self.signature_sha256, folder)
        now = timezone.now()
        with transaction.atomic():
            current = ModelVersion.objects.select_for_update().get(pk=self.pk)
            changes = {"signature_checked_at": now}
            if not result.ok and current.signature_status == self.Signature.VALID:
                changes.update(signature_status=self.Signature.INVALID, signature_error=result.message)
                AuditEvent.record(actor, "model_version.signature_failed", self, {"error": result.message})
            ModelVersion.objects.filter(pk=self.pk).update(**changes)
        for name, value in changes.items():
            setattr(self, name, value)
        if result.ok and self.signature_status != self.Signature.VALID:
            return signing.Verification(False, f"marked invalid earlier: {self.signature_error}")
        return result

    def load_checked(self):
        """A fresh local folder holding the output, whose files just passed the signature
        check; raises RegistryError otherwise. Every load for serving goes through here; the
        caller loads from the folder and then removes it."""
        from lifecycle.registry import signing

        folder = signing.new_verified_folder()
        result = self.verify(folder=folder)
        if not result.ok:
            shutil.rmtree(folder, ignore_errors=True)
            raise RegistryError(f"{self} failed its signature check and is not loaded: {result.message}")
        return folder

    # --- the card

    def edit_card(self, user, text):
        text = text.replace("\r\n", "\n")
        if len(text) > 100_000:
            raise RegistryError("A model card holds at most 100,000 characters.")
        with transaction.atomic():
            current = ModelVersion.objects.select_for_update().get(pk=self.pk)
            if current.card == text:
                return False
            before = current.card_sha256
            ModelVersion.objects.filter(pk=self.pk).update(card=text)
            self.card = text
            AuditEvent.record(user, "model_version.card_edited", self, {
                "before_sha256": before, "after_sha256": self.card_sha256, "chars": len(text)})
        return True

    # --- stages

    def request_promotion(self, user, to_stage, reason):
        return PromotionRequest.open(user, self, to_stage, reason)

    def timeline(self):
        return self.stage_changes.select_related("request", "actor").order_by("changed_at", "pk")


def check_registrable(model, run, artifact=None):
    """What registration needs from the run, or RegistryError saying what is missing."""
    from lifecycle.runs import outputs

    if run.status != Job.Status.SUCCEEDED:
        raise RegistryError(f"Run {run.pk} has not succeeded (it is {run.status or 'not started'}); only a succeeded run's output can be registered.")
    if not run.output_sha256:
        raise RegistryError(f"Run {run.pk} left no output to register.")
    if artifact is not None:
        check_artifact_reference(artifact)
        if artifact != run.output_sha256:
            raise RegistryError("The artifact named is not this run's output.")
    store = get_store()
    if not store.exists(run.output_sha256):
        raise RegistryError(f"Run {run.pk}'s output is not in the artifact store.")
    manifest = outputs.read_manifest(run.output_sha256)
    size = store.size(run.output_sha256) + sum(store.size(sha) for sha in manifest["files"].values())
    return {"manifest": manifest, "bytes": size}


def check_artifact_reference(value):
    """An artifact reference from a request: a 64-hex key our store holds. Paths, URLs and
    anything else are refused before the store is asked."""
    if not isinstance(value, str) or not HEX64.match(value):
        raise RegistryError("An artifact is named by its 64-hex key in Lifecycle's artifact store; paths and URLs are not accepted.")
    if not get_store().exists(value):
        raise RegistryError("No artifact with that key is in Lifecycle's artifact store.")


def _test_evaluation(run):
    report = run.reports.filter(split="test").first()
    if report is None:
        return {}
    return {"split": "test", "metrics": report.metrics, "per_class": report.per_class,
            "confusion": report.confusion, "calibration": report.calibration}


# Sent with every registry event (inside its transaction): how a higher app follows the
# registry without the registry importing it (deployments finishes a waiting promotion).
registry_event = Signal()


def _notify(event, obj, data):
    """Hand an event to the webhooks (registry/webhooks.py) once the transaction commits, and
    to registry_event's receivers now."""
    from lifecycle.registry import webhooks

    webhooks.emit(event, obj, data)
    registry_event.send(sender=type(obj), event=event, obj=obj, data=data)


# --- stage history ---------------------------------------------------------------------------


class StageChange(models.Model):
    """One move of one version from one stage to another: the timeline, and the answer to
    "which version was in production at time T" (RegisteredModel.held_at)."""

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="stage_changes")
    from_stage = models.CharField(max_length=20, choices=Stage.choices)
    to_stage = models.CharField(max_length=20, choices=Stage.choices)
    request = models.ForeignKey("PromotionRequest", on_delete=models.PROTECT, related_name="stage_changes")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    changed_at = models.DateTimeField()

    class Meta:
        ordering = ["-changed_at", "-pk"]
        indexes = [models.Index(fields=["version", "changed_at"], name="stagechange_version_idx"),
                   models.Index(fields=["to_stage", "changed_at"], name="stagechange_to_idx"),
                   models.Index(fields=["from_stage", "changed_at"], name="stagechange_from_idx")]


# --- promotion requests ----------------------------------------------------------------------


class PromotionRequestQuerySet(models.QuerySet):
    def for_inbox(self):
        """Open and blocked requests, oldest first (a blocked one waits for an approver's
        override), with their count of standing approvals."""
        return (self.filter(status__in=[PromotionRequest.Status.OPEN, PromotionRequest.Status.BLOCKED])
                .select_related("version__model", "version__run", "requester")
                .annotate(approval_count=models.Count("approvals", filter=models.Q(approvals__void=False)))
                .order_by("created_at", "pk"))


class PromotionRequest(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        APPROVED = "approved"  # and carried out: the version moved
        REJECTED = "rejected"
        BLOCKED = "blocked"  # a gate failed and no approver overrode it yet (still open for overrides)

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="requests")
    from_stage = models.CharField(max_length=20, choices=Stage.choices)
    to_stage = models.CharField(max_length=20, choices=Stage.choices)
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    approvals_required = models.PositiveSmallIntegerField()
    # What the gates found (registry/gates.py) and the whole evidence, with its hash; both
    # replaced when the evidence changes, which voids the approvals given on the old one.
    gate_results = models.JSONField(default=list)
    evidence = models.JSONField(default=dict)
    evidence_sha256 = models.CharField(max_length=64)
    # Failed gates an approver let through: [{"gate", "by", "reason", "at"}], shown in red forever.
    overrides = models.JSONField(default=list, blank=True)
    void_note = models.TextField(blank=True)  # why earlier approvals were voided, when they were
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    decision_comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    objects = PromotionRequestQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["version"], condition=models.Q(status__in=["open", "blocked"]),
                                               name="promotionrequest_one_open")]
        indexes = [models.Index(fields=["status", "created_at"], name="promotion_status_idx")]

    def __str__(self):
        return f"request {self.pk}: {self.version} {self.from_stage} → {self.to_stage}"

    def get_absolute_url(self):
        return reverse("registry:request", args=[self.pk])

    @property
    def is_open(self):
        return self.status in (self.Status.OPEN, self.Status.BLOCKED)

    @property
    def failed_gates(self):
        overridden = {o["gate"] for o in self.overrides}
        return [g for g in self.gate_results if g["status"] == "fail" and g["gate"] not in overridden]

    def valid_approvals(self):
        return self.approvals.filter(void=False)

    # --- opening

    @classmethod
    def open(cls, user, version, to_stage, reason):
        from lifecycle.registry import evidence as evidence_module

        reason = (reason or "").strip()
        if not reason:
            raise RegistryError("Say why this version should move: a reason is required.")
        to_stage = Stage(to_stage) if to_stage in Stage.values else None
        if to_stage is None:
            raise RegistryError("Unknown target stage.")
        if version.stage == Stage.ARCHIVED and to_stage == Stage.PRODUCTION:
            raise RegistryError("An archived version goes back to staging first.")
        if to_stage not in MOVES[Stage(version.stage)]:
            raise RegistryError(f"A {version.stage} version cannot be moved to {to_stage}.")
        found = evidence_module.collect(version, to_stage)  # runs the gates: outside the lock
        with transaction.atomic():
            version = ModelVersion.objects.select_for_update().get(pk=version.pk)
            if cls.objects.filter(version=version, status__in=[cls.Status.OPEN, cls.Status.BLOCKED]).exists():
                raise RegistryError(f"{version} already has an open request; decide that one first.")
            if version.stage != found["from_stage"]:
                raise RegistryError(f"{version} moved to {version.stage} meanwhile; ask again.")
            failed = any(g["status"] == "fail" for g in found["gates"])
            request = cls.objects.create(
                version=version, from_stage=version.stage, to_stage=to_stage, requester=user, reason=reason,
                status=cls.Status.BLOCKED if failed else cls.Status.OPEN,
                approvals_required=version.model.approvals_for(to_stage), gate_results=found["gates"],
                evidence=found, evidence_sha256=evidence_module.digest(found))
            AuditEvent.record(user, "promotion.requested", request, {
                "version": version.pk, "model": version.model.slug, "number": version.number,
                "from": version.stage, "to": to_stage, "reason": reason, "evidence_sha256": request.evidence_sha256,
                "gates": {g["gate"]: g["status"] for g in found["gates"]}, "approvals_required": request.approvals_required})
            _notify("promotion.requested", request, _request_data(request))
            if request.approvals_required == 0 and not failed:
                request._promote(user)
        return request

    # --- approving

    def check_may_approve(self, user):
        """Raise ApprovalDenied when `user` may not approve this request (role, or separation
        of duties: the requester, the run's author and the registrar never approve)."""
        if not has_role(user, APPROVER):
            raise ApprovalDenied("Only approvers approve promotions.")
        version = self.version
        if user.pk == self.requester_id:
            raise ApprovalDenied("You asked for this promotion; someone else must approve it.")
        if user.pk == version.run.created_by_id:
            raise ApprovalDenied("You started the run behind this version; someone else must approve it.")
        if user.pk == version.registered_by_id:
            raise ApprovalDenied("You registered this version; someone else must approve it.")

    def approve(self, user, comment="", *, seen_sha256=None, overrides=None):
        """Add `user`'s approval, pinned to the current evidence; the N-th approval carries the
        promotion out in the same transaction, exactly once. `seen_sha256` is the evidence hash
        the approver was shown (the page sends it); `overrides` maps failed gate names to the
        written reason for letting them through."""
        from lifecycle.registry import evidence as evidence_module

        try:
            self.check_may_approve(user)
        except ApprovalDenied as denied:
            _record_denied(user, self, "approve", str(denied))
            raise
        current = evidence_module.collect(self.version, self.to_stage)  # outside the lock: reads files
        current_sha = evidence_module.digest(current)
        changed = None
        with transaction.atomic():
            request = PromotionRequest.objects.select_for_update().select_related("version__model").get(pk=self.pk)
            if request.status == self.Status.APPROVED and seen_sha256 == request.evidence_sha256:
                # Approved on the same evidence while this approver was clicking: counted, and
                # the promotion (already done) is not done again.
                approval = request._add_approval(user, comment, current_sha, after_promotion=True)
            elif not request.is_open:
                raise RegistryError(f"This request is {request.status}; it takes no more approvals.")
            elif current_sha != request.evidence_sha256:
                changed = evidence_module.changed_keys(request.evidence, current)
                request._replace_evidence(current, current_sha, changed)  # committed: the approval below is refused
            elif seen_sha256 is not None and seen_sha256 != current_sha:
                raise EvidenceChanged("The evidence changed since you opened this page; review it again.", [])
            else:
                request._apply_overrides(user, overrides or {})
                if request.failed_gates:
                    names = ", ".join(g["gate"] for g in request.failed_gates)
                    raise RegistryError(f"Failed gates block this request ({names}); an approver may override each "
                                        "with a written reason.")
                approval = request._add_approval(user, comment, current_sha)
                if request.valid_approvals().count() >= request.approvals_required:
                    request._promote(user)
        if changed is not None:
            raise EvidenceChanged(f"The evidence changed since it was pinned ({', '.join(changed)}); earlier approvals "
                                  "are void. Review it again.", changed)
        self.refresh_from_db()
        return approval

    def _add_approval(self, user, comment, evidence_sha256, after_promotion=False):
        if self.approvals.filter(approver=user, void=False).exists():
            raise RegistryError("You have already approved this request.")
        approval = Approval.objects.create(request=self, approver=user, comment=(comment or "").strip(),
                                           evidence_sha256=evidence_sha256)
        count = self.valid_approvals().count()
        AuditEvent.record(user, "promotion.approved", self, {
            "approval": approval.pk, "evidence_sha256": evidence_sha256, "comment": approval.comment,
            "count": count, "required": self.approvals_required, "after_promotion": after_promotion})
        _notify("promotion.approved", self, {**_request_data(self), "approver": user.username, "count": count})
        return approval

    def _apply_overrides(self, user, overrides):
        failing = {g["gate"] for g in self.failed_gates}
        added = []
        for gate, reason in overrides.items():
            reason = (reason or "").strip()
            if gate not in failing:
                continue
            if not reason:
                raise RegistryError(f"Overriding the failed gate {gate!r} needs a written reason.")
            added.append({"gate": gate, "by": user.username, "reason": reason, "at": timezone.now().isoformat()})
        if added:
            self.overrides = self.overrides + added
            status = self.Status.OPEN if not self.failed_gates else self.status
            PromotionRequest.objects.filter(pk=self.pk).update(overrides=self.overrides, status=status)
            self.status = status
            for item in added:
                AuditEvent.record(user, "promotion.gate_overridden", self, item)

    def _replace_evidence(self, current, current_sha, changed):
        """The evidence moved under this request: earlier approvals are void, the new evidence
        (and gates) stand, and the request says why. The caller commits this, then refuses the approval."""
        voided = self.approvals.filter(void=False).update(void=True)
        note = f"Evidence changed ({', '.join(changed)}) at {timezone.now():%Y-%m-%d %H:%M} UTC; {voided} earlier approval(s) void."
        failed = any(g["status"] == "fail" and g["gate"] not in {o["gate"] for o in self.overrides} for g in current["gates"])
        status = self.Status.BLOCKED if failed else self.Status.OPEN
        PromotionRequest.objects.filter(pk=self.pk).update(
            evidence=current, evidence_sha256=current_sha, gate_results=current["gates"], void_note=note, status=status)
        AuditEvent.record(None, "promotion.evidence_changed", self, {
            "changed": changed, "voided": voided, "evidence_sha256": current_sha})

    def reject(self, user, comment):
        comment = (comment or "").strip()
        if not has_role(user, APPROVER):
            _record_denied(user, self, "reject", "Only approvers reject promotions.")
            raise ApprovalDenied("Only approvers reject promotions.")
        if not comment:
            raise RegistryError("Say why: rejecting needs a comment.")
        with transaction.atomic():
            request = PromotionRequest.objects.select_for_update().get(pk=self.pk)
            if not request.is_open:
                raise RegistryError(f"This request is {request.status}; it cannot be rejected.")
            PromotionRequest.objects.filter(pk=self.pk).update(
                status=self.Status.REJECTED, decided_by=user, decision_comment=comment, closed_at=timezone.now())
            AuditEvent.record(user, "promotion.rejected", request, {"comment": comment})
            _notify("promotion.rejected", request, {**_request_data(request), "by": user.username, "comment": comment})
        self.refresh_from_db()

    # --- carrying it out

    def _promote(self, user):
        """Move the version (and the stage's previous holder to archived). Called inside the
        transaction that holds this request's row lock; the model row lock orders two
        requests of one model, and the partial unique indexes make a second holder impossible."""
        RegisteredModel.objects.select_for_update().get(pk=self.version.model_id)
        version = ModelVersion.objects.select_for_update().get(pk=self.version_id)
        if version.stage != self.from_stage:
            raise RegistryError(f"{version} is {version.stage} now, not {self.from_stage}; this request no longer applies.")
        now = timezone.now()
        if self.to_stage in SINGLE_STAGES:
            for holder in ModelVersion.objects.select_for_update().filter(model_id=version.model_id, stage=self.to_stage):
                self._move(holder, Stage.ARCHIVED, user, now)
        self._move(version, self.to_stage, user, now)
        PromotionRequest.objects.filter(pk=self.pk).update(status=self.Status.APPROVED, decided_by=user, closed_at=now)
        self.status = self.Status.APPROVED

    def _move(self, version, to_stage, user, when):
        from_stage = version.stage
        ModelVersion.objects.filter(pk=version.pk).update(stage=to_stage)
        StageChange.objects.create(version=version, from_stage=from_stage, to_stage=to_stage, request=self,
                                   actor=user, changed_at=when)
        AuditEvent.record(user, "stage.changed", version, {
            "model": version.model.slug, "number": version.number, "from": from_stage, "to": to_stage, "request": self.pk})
        _notify("stage.changed", version, {"model": version.model.slug, "version": version.number,
                                           "from": from_stage, "to": to_stage, "request": self.pk})


def _request_data(request):
    return {"request": request.pk, "model": request.version.model.slug, "version": request.version.number,
            "from": request.from_stage, "to": request.to_stage}


def _record_denied(user, request, what, reason):
    with transaction.atomic():
        AuditEvent.record(user, "promotion.denied", request, {"attempt": what, "reason": reason})


class Approval(models.Model):
    request = models.ForeignKey(PromotionRequest, on_delete=models.PROTECT, related_name="approvals")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    comment = models.TextField(blank=True)
    evidence_sha256 = models.CharField(max_length=64)  # the evidence this approval was given on
    void = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [models.UniqueConstraint(fields=["request", "approver"], condition=models.Q(void=False),
                                               name="approval_once_per_approver")]


# --- webhooks --------------------------------------------------------------------------------
# Registry events POSTed, signed (Standard Webhooks), to URLs engineers register:
# registry/webhooks.py builds, signs and sends them; lib/outbound.py guards every URL, at
# creation and before each attempt. A webhook is disabled, never deleted: its log stays.

WEBHOOK_EVENTS = ("model_version.created", "promotion.requested", "promotion.approved", "promotion.rejected",
                  "stage.changed")


class WebhookError(RegistryError):
    """A webhook cannot be made as asked (name, URL, events); the message says why."""


class WebhookQuerySet(models.QuerySet):
    def subscribed_to(self, event):
        # A handful of rows, and SQLite has no JSON containment lookup: filtered in Python.
        return [hook for hook in self.filter(active=True).order_by("pk") if event in hook.events]

    def for_listing(self):
        pending, failed = WebhookDelivery.Status.PENDING, WebhookDelivery.Status.FAILED
        return self.select_related("created_by").annotate(
            pending_count=models.Count("deliveries", filter=models.Q(deliveries__status=pending)),
            failed_count=models.Count("deliveries", filter=models.Q(deliveries__status=failed)))


class Webhook(models.Model):
    name = models.CharField(max_length=100)
    url = models.CharField(max_length=2000)  # may hold a receiver's token: engineers' pages only, never audited
    events = models.JSONField(default=list)  # a subset of WEBHOOK_EVENTS
    # The Standard Webhooks signing secret ("whsec_" + base64 of 32 random bytes). Stored as it
    # is because every attempt is signed with it; shown once, on the page that made it, and
    # never logged, audited or shown again.
    secret = models.CharField(max_length=100, editable=False)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    disabled_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    disabled_at = models.DateTimeField(null=True, blank=True)

    objects = WebhookQuerySet.as_manager()

    class Meta:
        ordering = ["name", "pk"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("registry:webhook", args=[self.pk])

    @property
    def host(self):
        from urllib.parse import urlsplit

        try:
            return urlsplit(self.url).hostname or ""
        except ValueError:
            return ""

    @classmethod
    def create(cls, user, *, name, url, events):
        """A new active webhook with a fresh secret (read it from `.secret` now: no page shows
        it again). The URL is checked here, resolution included, whatever form sent it."""
        from lifecycle.lib import outbound
        from lifecycle.registry import webhooks

        name = (name or "").strip()
        if not name or len(name) > 100:
            raise WebhookError("A webhook needs a name of 1 to 100 characters.")
        events = check_webhook_events(events)
        try:
            target = outbound.check_url(url)
        except outbound.Refused as exc:
            raise WebhookError(str(exc)) from None
        with transaction.atomic():
            hook = cls.objects.create(name=name, url=url, events=events, secret=webhooks.new_secret(), created_by=user)
            AuditEvent.record(user, "webhook.created", hook, {"name": name, "host": target.host, "events": events})
        return hook

    def disable(self, user):
        """Stop sending to this webhook; deliveries not yet made fail now. False if it already was."""
        now = timezone.now()
        with transaction.atomic():
            updated = Webhook.objects.filter(pk=self.pk, active=True).update(active=False, disabled_by=user,
                                                                             disabled_at=now)
            if not updated:
                return False
            dropped = self.deliveries.filter(status=WebhookDelivery.Status.PENDING).update(
                status=WebhookDelivery.Status.FAILED, next_attempt_at=None, updated_at=now,
                last_error="The webhook was disabled before this was delivered.")
            AuditEvent.record(user, "webhook.disabled", self, {"name": self.name, "undelivered": dropped})
        self.active, self.disabled_by, self.disabled_at = False, user, now
        return True


def check_webhook_events(events):
    """The events asked for, in WEBHOOK_EVENTS order, or WebhookError."""
    if not isinstance(events, (list, tuple)) or not events:
        raise WebhookError("Choose at least one event to send.")
    unknown = sorted({str(e) for e in events} - set(WEBHOOK_EVENTS))
    if unknown:
        raise WebhookError(f"Unknown event(s): {', '.join(unknown)}; the events are {', '.join(WEBHOOK_EVENTS)}.")
    return [event for event in WEBHOOK_EVENTS if event in events]


class WebhookDelivery(models.Model):
    """One event for one webhook, and where its sending stands. Attempts are numbered; an
    attempt is taken by one conditional UPDATE (`claim`), so however many jobs are sent for
    it (the first, a dispatcher's resend, RQ running one twice) it is made once."""

    class Status(models.TextChoices):
        PENDING = "pending"  # an attempt is due, under way, or waiting for its retry time
        DELIVERED = "delivered"  # a 2xx answer
        FAILED = "failed"  # every attempt failed, or the webhook was disabled first

    webhook = models.ForeignKey(Webhook, on_delete=models.PROTECT, related_name="deliveries")
    event = models.CharField(max_length=40)
    # The idempotency key: the webhook-id header, the same on every attempt, so a receiver
    # that saw an attempt whose answer got lost can tell the retry is no new event.
    event_id = models.CharField(max_length=40)
    payload = models.TextField()  # the exact JSON body of every attempt: the signature covers these bytes
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)  # attempts claimed so far
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)  # what went wrong, never headers or the secret
    # When the dispatcher (registry/webhooks.py) sends a job for the next attempt; None once
    # settled. While an attempt is sent or under way it is a lease: if that job dies, the
    # dispatcher sends another once it runs out.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-pk"]
        constraints = [models.UniqueConstraint(fields=["webhook", "event_id"], name="webhookdelivery_event_once")]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhookdelivery_due_idx"),
                   models.Index(fields=["webhook", "id"], name="webhookdelivery_log_idx")]

    def __str__(self):
        return f"{self.event} {self.event_id} to {self.webhook_id}"

    @classmethod
    def claim(cls, pk, attempt, *, lease):
        """Take attempt number `attempt` of delivery `pk`: the WebhookAttempt row now logged
        for it, or None when that attempt is no longer to be made (made already, or the
        delivery settled). `lease`: how long before the dispatcher may assume it died."""
        now = timezone.now()
        with transaction.atomic():
            updated = cls.objects.filter(pk=pk, status=cls.Status.PENDING, attempts=attempt - 1).update(
                attempts=attempt, next_attempt_at=now + lease, updated_at=now)
            if updated != 1:
                return None
            return WebhookAttempt.objects.create(delivery_id=pk, number=attempt, started_at=now)

    def settle(self, attempt, *, status_code=None, error="", address=None, retry_in=None):
        """Record how `attempt` (a claimed WebhookAttempt) ended, and what comes next: delivered
        on a 2xx, a retry after `retry_in` (a timedelta), or failed for good when None."""
        now = timezone.now()
        ok = status_code is not None and 200 <= status_code < 300
        error = "" if ok else (error or f"HTTP {status_code}")[:1000]
        changes = {"last_status_code": status_code, "last_error": error, "updated_at": now}
        if ok:
            changes.update(status=self.Status.DELIVERED, delivered_at=now, next_attempt_at=None)
        elif retry_in is None:
            changes.update(status=self.Status.FAILED, next_attempt_at=None)
        else:
            changes.update(next_attempt_at=now + retry_in)
        with transaction.atomic():
            WebhookAttempt.objects.filter(pk=attempt.pk).update(finished_at=now, status_code=status_code, error=error,
                                                                 address=address)
            # Only while this attempt is still the delivery's latest: a disable meanwhile stands.
            WebhookDelivery.objects.filter(pk=self.pk, status=self.Status.PENDING, attempts=attempt.number).update(**changes)
        self.refresh_from_db()

    def dispatch(self, *, lease):
        """Take this due delivery for the dispatcher: moves next_attempt_at on by `lease` if it
        is still what this instance read, so of several workers' passes one sends the job."""
        now = timezone.now()
        moved = WebhookDelivery.objects.filter(pk=self.pk, status=self.Status.PENDING, attempts=self.attempts,
                                               next_attempt_at=self.next_attempt_at).update(
            next_attempt_at=now + lease, updated_at=now)
        return moved == 1

    def give_up(self, reason):
        """Fail a delivery whose last attempt ended without a result (its worker died)."""
        return WebhookDelivery.objects.filter(pk=self.pk, status=self.Status.PENDING, attempts=self.attempts).update(
            status=self.Status.FAILED, next_attempt_at=None, last_error=reason, updated_at=timezone.now()) == 1


class WebhookAttempt(models.Model):
    """One request (or refusal to make it) for one delivery: the webhook page's log."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)  # None: the worker stopped mid-attempt
    address = models.GenericIPAddressField(null=True, blank=True)  # the checked address it connected to
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="webhookattempt_number_once")]

    @property
    def duration_ms(self):
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds() * 1000)
