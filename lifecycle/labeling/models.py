"""Labeling projects over a dataset version: queues, answers, consensus, adjudication, QC.

A project holds one `Item` per example of its version, in a seeded random order (`position`).
Labelers pull work: each pull claims a *slot* on an item (at most `overlap` per item, gold items
excepted: every labeler meets each gold item once), under `SELECT … FOR UPDATE SKIP LOCKED` so
two labelers pulling at the same moment never take the same slot. A labeler's claims only move
forward through the positions, so "the first open item after my last one" is never an item
they already saw — one index probe, whatever the project's size (docs/labeling.md).
"""
from collections import Counter
from datetime import timedelta

import numpy as np

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Exists, F, Max, OuterRef, Q
from django.urls import reverse
from django.utils import timezone

from lifecycle.core.jobs import enqueue
from lifecycle.core.models import AuditEvent, Job
from lifecycle.core.roles import APPROVER, has_role
from lifecycle.datasets.models import DatasetVersion, Example

# Keys 1–9 and 0 pick the first ten labels, then letters (s, f and u are the skip, flag and
# undo keys; `?` shows them all).
LABEL_KEYS = "1234567890abcdeghijklmnopqrtvwxyz"
MAX_LABELS = len(LABEL_KEYS)
# The start page counts a labeler's waiting examples up to this many ("1000+"): a bounded
# index walk whatever the project's size.
WAITING_CAP = 1000


class LabelingError(Exception):
    """A request the state of the project refuses; the message is shown to the user."""


class NotInQueue(LabelingError):
    pass


class FreezeRefused(LabelingError):
    def __init__(self, reasons):
        super().__init__(" ".join(reasons))
        self.reasons = reasons


class ProjectQuerySet(models.QuerySet):
    def for_listing(self):
        return self.select_related("version__dataset", "created_by", "frozen_version")


class LabelingProject(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        FREEZING = "freezing"
        FROZEN = "frozen"

    version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="labeling_projects")
    name = models.CharField(max_length=200)
    instructions = models.TextField(blank=True)
    label_set = models.JSONField()
    overlap = models.PositiveSmallIntegerField(default=3, validators=[MinValueValidator(1), MaxValueValidator(5)])
    gold_share = models.FloatField(default=0.05, validators=[MinValueValidator(0.0), MaxValueValidator(0.5)])
    seed = models.IntegerField(default=0)
    # QC thresholds. 0.667 is Krippendorff's own lowest acceptable alpha for tentative
    # conclusions; 0.6 is the usual floor of "substantial" kappa.
    min_gold_accuracy = models.FloatField(default=0.8, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    min_kappa = models.FloatField(default=0.6, validators=[MinValueValidator(-1.0), MaxValueValidator(1.0)])
    min_alpha = models.FloatField(default=0.667, validators=[MinValueValidator(-1.0), MaxValueValidator(1.0)])
    min_label_agreement = models.FloatField(default=0.6, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    # Fewer gold answers than this and an annotator's gold accuracy is not yet judged.
    min_gold_answers = models.PositiveIntegerField(default=5)
    low_confidence = models.FloatField(default=0.6, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    item_count = models.PositiveIntegerField(default=0)
    gold_count = models.PositiveIntegerField(default=0)
    frozen_version = models.OneToOneField(DatasetVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # The newest QC job: answers schedule one unless it is still queued (or started very recently).
    qc_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    freeze_job = models.OneToOneField(Job, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    freeze_override = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ProjectQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("labeling:detail", args=[self.pk])

    @property
    def label_keys(self):
        return list(zip(LABEL_KEYS, self.label_set))

    @property
    def is_open(self):
        return self.status == self.Status.OPEN

    # --- creation ---------------------------------------------------------------------------

    @staticmethod
    def problems_with(version, label_set):
        problems = []
        if version.dataset.task != version.dataset.Task.CLASSIFICATION:
            problems.append("Labeling projects label text-classification versions; this one holds instruction pairs.")
        unknown = [label for label in label_set if label not in version.label_set]
        if unknown:
            problems.append(f"Not in the version's label set: {', '.join(map(str, unknown))}.")
        if not 2 <= len(label_set) <= MAX_LABELS:
            problems.append(f"A project needs between 2 and {MAX_LABELS} labels.")
        return problems

    @classmethod
    def create(cls, user, version, **fields):
        """A project with one item per example of `version`, in a seeded random order; a
        `gold_share` of the examples whose label is in the label set become gold, their
        version label the known answer."""
        problems = cls.problems_with(version, fields.get("label_set") or [])
        if problems:
            raise LabelingError(" ".join(problems))
        with transaction.atomic():
            project = cls.objects.create(version=version, created_by=user, **fields)
            n, gold = _insert_items(project)
            cls.objects.filter(pk=project.pk).update(item_count=n, gold_count=gold)
            project.item_count, project.gold_count = n, gold
            AuditEvent.record(user, "labeling.project_created", project, {
                "version": version.pk, "dataset": version.dataset.slug, "labels": project.label_set,
                "overlap": project.overlap, "gold_share": project.gold_share, "items": n, "gold": gold,
                "seed": project.seed})
        return project

    # --- queues ---------------------------------------------------------------------------

    def next_for(self, user):
        """The labeler's current item, handed out to be shown now: their newest pending claim (an
        undone answer comes back first), or a newly claimed slot. Its answer time counts from
        this moment (`shown_at`), so a claim reloaded after a break is not timed from the claim."""
        self.check_open()
        pending = self.pending_for(user)
        if pending is not None:
            pending.shown_at = timezone.now()
            Assignment.objects.filter(pk=pending.pk).update(shown_at=pending.shown_at)
            return pending
        for _ in range(3):
            try:
                return self._claim(user)
            except IntegrityError:
                # The same labeler pulling in two tabs at once: the other pull won; use its claim.
                pending = self.pending_for(user)
                if pending is not None:
                    return pending
        return None

    def pending_for(self, user):
        return (Assignment.objects.filter(project=self, annotator=user, state=Assignment.State.PENDING)
                .select_related("item__example").order_by("-served_at", "-pk").first())

    def _claim(self, user):
        with transaction.atomic():
            item = self._open_item(user)
            if item is None:
                return None
            item.slots_taken += 1
            item.is_open = item.is_gold or item.slots_taken < self.overlap
            Item.objects.filter(pk=item.pk).update(slots_taken=item.slots_taken, is_open=item.is_open)
            now = timezone.now()
            return Assignment.objects.create(project=self, item=item, annotator=user, position=item.position,
                                             served_at=now, shown_at=now)

    def _open_item(self, user):
        # Items past the labeler's last claim are new to them (claims only move forward).
        # SKIP LOCKED: an item another labeler is claiming right now is passed over, not waited
        # on; a gold item passed over that way is met again on the path below.
        mine = Assignment.objects.filter(project=self, annotator=user)
        last = mine.aggregate(last=Max("position"))["last"]
        items = Item.objects.select_related("example").filter(project=self, is_open=True).order_by("position")
        ahead = items.select_for_update(skip_locked=True, of=("self",))
        item = ahead.filter(position__gt=-1 if last is None else last).first()
        if item is None and last is not None:
            # Nothing ahead: slots freed behind the labeler by skips, or gold items passed over
            # while locked. Rare, so this path waits for locks instead of skipping them: "your
            # queue is empty" must never be an item that was merely busy. NOT EXISTS probes the
            # (item, annotator) unique index (a NOT IN over every answer of the labeler falls
            # off a cliff once it no longer fits in work_mem).
            seen = Assignment.objects.filter(item=OuterRef("pk"), annotator=user)
            item = items.select_for_update(of=("self",)).filter(~Exists(seen)).first()
        return item

    def waiting_for(self, user, limit=WAITING_CAP):
        """How many examples wait for the labeler, counted up to `limit`: the one on their screen
        and the open items past their last claim (new to them: claims only move forward). Only
        when none is ahead are the open items behind it that they never met counted (slots freed
        by skips) — the queue's own rare path, the one a pull would take next."""
        mine = Assignment.objects.filter(project=self, annotator=user)
        pending = mine.filter(state=Assignment.State.PENDING).exists()
        last = mine.aggregate(last=Max("position"))["last"]
        items = Item.objects.filter(project=self, is_open=True)
        ahead = items.filter(position__gt=-1 if last is None else last)[:limit].count()
        if ahead == 0 and last is not None:
            seen = Assignment.objects.filter(item=OuterRef("pk"), annotator=user)
            ahead = items.filter(~Exists(seen))[:limit].count()
        return min(limit, pending + ahead)

    def assignment_for(self, user, item_id):
        assignment = (Assignment.objects.filter(project=self, annotator=user, item_id=item_id)
                      .select_related("item").first())
        if assignment is None:
            raise NotInQueue("This example is not in your queue.")
        if assignment.state == Assignment.State.EXPIRED:
            raise LabelingError("This example waited on your screen too long and went back to the pool; "
                                "here is the next one.")
        if assignment.state == Assignment.State.SKIPPED:
            if assignment.item.state == Item.State.DECIDED:
                raise LabelingError("A reviewer adjudicated this example while it was on your screen; "
                                    "here is the next one.")
            raise NotInQueue("This example is not in your queue.")
        return assignment

    def check_open(self):
        if self.status != self.Status.OPEN:
            raise LabelingError(f"This project is {self.status}: it takes no more answers.")

    def last_answer_of(self, user):
        return (Assignment.objects.filter(project=self, annotator=user, state=Assignment.State.ANSWERED)
                .order_by("-answered_at", "-pk").first())

    def undo_last(self, user):
        """Take back the labeler's most recent answer; its item comes back to them first."""
        self.check_open()
        last = self.last_answer_of(user)
        if last is None:
            raise LabelingError("There is no answer to undo.")
        last.undo()
        return last

    # --- progress and statistics ------------------------------------------------------------

    def state_counts(self):
        counts = dict(self.items.values_list("state").annotate(n=models.Count("pk")).order_by())
        return {state: counts.get(state, 0) for state in Item.State.values}

    def label_counts(self):
        """Items per final label (consensus, decision or gold), in label-set order."""
        final = (Item.State.AGREED, Item.State.DECIDED, Item.State.GOLD)
        rows = dict(self.items.filter(state__in=final).values_list("consensus_label").annotate(n=models.Count("pk"))
                    .order_by())
        return [(label, rows.get(label, 0)) for label in self.label_set]

    def progress(self):
        states = self.state_counts()
        done = states[Item.State.AGREED] + states[Item.State.DECIDED]
        to_label = self.item_count - self.gold_count
        return {"states": states, "done": done, "to_label": to_label,
                "percent": 100.0 * done / to_label if to_label else 100.0,
                "waiting": states[Item.State.TIE] + states[Item.State.FLAGGED]}

    def latest_qc(self):
        return self.qc_reports.order_by("-started_at", "-pk").first()

    # --- QC and freezing -----------------------------------------------------------------------

    def schedule_qc(self, user=None, *, min_interval=None):
        """Queue a QC computation unless one is already waiting (it will see every answer so far).
        With `min_interval` (seconds; automatic scheduling after answers), not within that long
        of the previous one."""
        from lifecycle.labeling.tasks import compute_qc

        def recent(job):
            if job is None or job.status == Job.Status.QUEUED:
                return job is not None
            return min_interval is not None and (timezone.now() - job.created_at).total_seconds() < min_interval

        if recent(Job.objects.filter(pk=self.qc_job_id).first()):
            return None
        with transaction.atomic():
            project = LabelingProject.objects.select_for_update(no_key=True).get(pk=self.pk)
            if recent(Job.objects.filter(pk=project.qc_job_id).first()):
                return None
            job = enqueue(compute_qc, user=user, project_id=self.pk)
            LabelingProject.objects.filter(pk=self.pk).update(qc_job=job)
        self.qc_job = job
        return job

    def request_suggestions(self, user, run, *, wait_for_run=False):
        """Queue the job that asks `run`'s trained model for a label on every item. With
        `wait_for_run`, the run may still be training (the demo's, queued before it)."""
        from lifecycle.labeling.suggestions import check_run
        from lifecycle.labeling.tasks import suggest_labels

        problems = check_run(self, run, wait_for_run=wait_for_run)
        if problems:
            raise LabelingError(" ".join(problems))
        with transaction.atomic():
            job = enqueue(suggest_labels, user=user, project_id=self.pk, run_id=run.pk)
            AuditEvent.record(user, "labeling.suggestions_requested", self, {"run": run.pk, "job": job.pk})
        return job

    def qc_is_current(self, report):
        return report is not None and not self.changed_since(report.started_at)

    def request_freeze(self, user, *, override_reason=""):
        """Queue the job that writes the labels into a child version. Refused with QC's reasons
        unless QC passes, or an approver overrides them in writing (audited)."""
        from lifecycle.labeling.tasks import freeze_project

        report = self.latest_qc()
        if not self.qc_is_current(report):
            self.schedule_qc(user)
            raise FreezeRefused(["QC is older than the latest answers: it is being recomputed now; "
                                 "try again when the QC page shows the new figures."])
        override = {}
        if not report.passes:
            if not override_reason.strip():
                raise FreezeRefused(report.reasons)
            if not has_role(user, APPROVER):
                raise FreezeRefused(report.reasons + ["Only an approver can override QC."])
            override = {"approver": user.username, "reason": override_reason.strip(), "reasons": report.reasons}
        with transaction.atomic():
            project = LabelingProject.objects.select_for_update(no_key=True).get(pk=self.pk)
            project.check_open()
            job = enqueue(freeze_project, user=user, project_id=self.pk, qc_report_id=report.pk)
            LabelingProject.objects.filter(pk=self.pk).update(status=self.Status.FREEZING, freeze_job=job,
                                                              freeze_override=override)
            AuditEvent.record(user, "labeling.freeze_requested", self, {"qc_report": report.pk, "passes": report.passes})
            if override:
                AuditEvent.record(user, "labeling.qc_overridden", self, override)
        self.status, self.freeze_job, self.freeze_override = self.Status.FREEZING, job, override
        return job

    def changed_since(self, moment):
        """Whether an answer or a decision changed after `moment` (then a QC report is stale)."""
        return (self.assignments.filter(changed_at__gt=moment).exists()
                or Decision.objects.filter(item__project=self, created_at__gt=moment).exists())


class ItemQuerySet(models.QuerySet):
    def for_table(self):
        return self.select_related("example").prefetch_related(
            models.Prefetch("assignments", queryset=Assignment.objects.filter(state=Assignment.State.ANSWERED)
                            .select_related("annotator").order_by("answered_at")),
            "decisions__reviewer")

    @staticmethod
    def show_filter(project, show, prefix=""):
        """The table's `show` filter as lookups on Item (with `prefix` from a related model)."""
        lookups = {
            "disagreements": {"disagreement": True},
            "flagged": {"state": Item.State.FLAGGED},
            "ties": {"state": Item.State.TIE},
            "gold_failures": {"gold_misses__gt": 0},
            "low_confidence": {"suggested_confidence__lt": project.low_confidence},
            "decided": {"state": Item.State.DECIDED},
        }.get(show, {})
        return {prefix + key: value for key, value in lookups.items()}

    def table_ids(self, project, *, show="", annotator=None):
        """Item ids for the table, in position order. With an annotator, read from their answers
        (which carry the position): one index walk instead of an IN over every answer."""
        if annotator is not None:
            return (Assignment.objects.filter(project=project, annotator=annotator, state=Assignment.State.ANSWERED,
                                              **self.show_filter(project, show, "item__"))
                    .order_by("position").values_list("item_id", flat=True))
        return (self.filter(project=project, **self.show_filter(project, show))
                .order_by("position").values_list("pk", flat=True))


class Item(models.Model):
    """One example of the project's version, with its consensus kept up to date by every answer."""

    class State(models.TextChoices):
        OPEN = "open", "waiting for answers"
        AGREED = "agreed", "majority agreed"
        TIE = "tie", "tie: needs adjudication"
        FLAGGED = "flagged", "flagged: needs adjudication"
        DECIDED = "decided", "adjudicated"
        GOLD = "gold", "gold (known answer)"

    ADJUDICATION = (State.TIE, State.FLAGGED)

    project = models.ForeignKey(LabelingProject, on_delete=models.CASCADE, related_name="items", db_index=False)
    example = models.ForeignKey(Example, on_delete=models.PROTECT, related_name="+", db_index=False)
    position = models.PositiveIntegerField()
    is_gold = models.BooleanField(default=False)
    gold_label = models.CharField(max_length=200, blank=True)
    suggested_label = models.CharField(max_length=200, blank=True)
    suggested_confidence = models.FloatField(null=True, blank=True)
    # Slots claimed by pending or answered assignments (a skip gives its slot back).
    slots_taken = models.PositiveSmallIntegerField(default=0)
    is_open = models.BooleanField(default=True)
    answer_count = models.PositiveSmallIntegerField(default=0)
    consensus_label = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.OPEN)
    disagreement = models.BooleanField(default=False)
    gold_misses = models.PositiveSmallIntegerField(default=0)

    objects = ItemQuerySet.as_manager()

    class Meta:
        ordering = ["project", "position"]
        constraints = [models.UniqueConstraint(fields=["project", "position"], name="item_position_unique")]
        indexes = [
            # The pull: the first open item after a position, one probe of a small index.
            models.Index(fields=["project", "position"], condition=Q(is_open=True), name="item_open_idx"),
            models.Index(fields=["project", "state", "position"], name="item_state_idx"),
            models.Index(fields=["project", "position"], condition=Q(disagreement=True), name="item_disagreement_idx"),
            models.Index(fields=["project", "position"], condition=Q(gold_misses__gt=0), name="item_gold_miss_idx"),
            models.Index(fields=["project", "suggested_confidence"], name="item_confidence_idx"),
            models.Index(fields=["example"], name="item_example_idx"),
        ]

    def __str__(self):
        return f"{self.project} item {self.position}"

    @property
    def needs_adjudication(self):
        return self.state in self.ADJUDICATION

    def refresh_consensus(self, overlap):
        """Recompute state and consensus from the answers; the caller holds the item's row lock."""
        answers = list(self.assignments.filter(state=Assignment.State.ANSWERED).values_list("label", "flagged"))
        labels = [label for label, _ in answers if label]
        self.answer_count = len(answers)
        self.disagreement = len(set(labels)) > 1
        if self.is_gold:
            self.gold_misses = sum(label != self.gold_label for label in labels)
            self.state, self.consensus_label = self.State.GOLD, self.gold_label
        elif self.state != self.State.DECIDED:
            self.state, self.consensus_label = self._consensus(answers, labels, overlap)
        Item.objects.filter(pk=self.pk).update(answer_count=self.answer_count, disagreement=self.disagreement,
                                               gold_misses=self.gold_misses, state=self.state,
                                               consensus_label=self.consensus_label)

    def _consensus(self, answers, labels, overlap):
        if any(flagged for _, flagged in answers):
            return self.State.FLAGGED, ""
        if len(answers) < overlap:
            return self.State.OPEN, ""
        ranked = Counter(labels).most_common(2)
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            return self.State.TIE, ""
        return self.State.AGREED, ranked[0][0]

    def decide(self, reviewer, label, note=""):
        """A reviewer's final word on a tie or a flagged item; every answer stays, the decision is audited."""
        with transaction.atomic():
            item = Item.objects.select_for_update(of=("self",)).select_related("project").get(pk=self.pk)
            item.project.check_open()
            if item.state == self.State.DECIDED:
                raise LabelingError("This example has already been adjudicated.")
            if item.state not in self.ADJUDICATION:
                raise LabelingError("Only ties and flagged examples go to adjudication.")
            if label not in item.project.label_set:
                raise LabelingError(f"{label!r} is not in this project's label set.")
            answers = [{"annotator": a.annotator.username, "label": a.label, "flagged": a.flagged, "note": a.note}
                       for a in item.assignments.filter(state=Assignment.State.ANSWERED).select_related("annotator")]
            decision = Decision.objects.create(item=item, reviewer=reviewer, label=label, note=note,
                                               previous_state=item.state, answers=answers)
            # Decided is final: no more slots, and whoever has it on screen moves on.
            released = item.assignments.filter(state=Assignment.State.PENDING).update(
                state=Assignment.State.SKIPPED, changed_at=timezone.now())
            Item.objects.filter(pk=item.pk).update(state=self.State.DECIDED, consensus_label=label, is_open=False,
                                                   slots_taken=F("slots_taken") - released)
            AuditEvent.record(reviewer, "labeling.adjudicated", item, {
                "project": item.project_id, "example_row": item.example.row, "label": label, "note": note,
                "was": item.state, "overruled": [a for a in answers if a["label"] != label]})
        self.state, self.consensus_label = self.State.DECIDED, label
        return decision


class Assignment(models.Model):
    """A labeler's slot on an item: pending while shown to them, then their answer (or a skip)."""

    class State(models.TextChoices):
        PENDING = "pending"
        ANSWERED = "answered"
        SKIPPED = "skipped"
        EXPIRED = "expired"  # left unanswered past LABELING_CLAIM_TTL: back to the pool

    project = models.ForeignKey(LabelingProject, on_delete=models.CASCADE, related_name="assignments", db_index=False)
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="assignments", db_index=False)
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # The item's position, copied so a labeler's last claim is one index probe.
    position = models.PositiveIntegerField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    label = models.CharField(max_length=200, blank=True)
    flagged = models.BooleanField(default=False)
    note = models.TextField(blank=True)
    served_at = models.DateTimeField()
    # When the review page last handed the example out; None for claims made before it was
    # recorded. The answer time is answered_at − shown_at.
    shown_at = models.DateTimeField(null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    changed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "annotator"], name="assignment_once_per_item")]
        indexes = [
            models.Index(fields=["project", "annotator", "position"], name="assignment_queue_idx"),
            models.Index(fields=["project", "annotator", "state", "served_at"], name="assignment_state_idx"),
            models.Index(fields=["project", "annotator", "answered_at"], name="assignment_answered_idx"),
            models.Index(fields=["project", "changed_at"], name="assignment_changed_idx"),
            models.Index(fields=["served_at"], condition=Q(state="pending"), name="assignment_pending_idx"),
        ]

    def __str__(self):
        return f"{self.annotator} on {self.item}"

    def answer(self, *, label="", flagged=False, note=""):
        """Record the answer. Sending the same answer again changes nothing (idempotent)."""
        with transaction.atomic():
            me = Assignment.objects.select_for_update(of=("self",)).select_related("project").get(pk=self.pk)
            me.project.check_open()
            if label and label not in me.project.label_set:
                raise ValueError(f"{label!r} is not in this project's label set.")
            if me.state == self.State.ANSWERED:
                if (me.label, me.flagged) == (label, flagged):
                    return me
                raise LabelingError("You already answered this example; press u to undo your last answer first.")
            if me.state in (self.State.SKIPPED, self.State.EXPIRED):
                raise NotInQueue("This example is no longer in your queue.")
            item = Item.objects.select_for_update().get(pk=me.item_id)
            if item.state == Item.State.DECIDED:
                raise LabelingError("This example has already been adjudicated.")
            now = timezone.now()
            Assignment.objects.filter(pk=me.pk).update(
                state=self.State.ANSWERED, label=label, flagged=flagged, note=note, answered_at=now,
                seconds=me.seconds_since_shown(now), changed_at=now)
            item.refresh_consensus(me.project.overlap)
        return me

    def seconds_since_shown(self, now):
        return None if self.shown_at is None else max(0.0, (now - self.shown_at).total_seconds())

    def skip(self):
        """Pass on the item: its slot goes back to the pool, and it never comes back to this labeler."""
        with transaction.atomic():
            me = Assignment.objects.select_for_update(of=("self",)).select_related("project").get(pk=self.pk)
            me.project.check_open()
            if me.state != self.State.PENDING:
                raise LabelingError("Only the example in front of you can be skipped.")
            Assignment.objects.filter(pk=me.pk).update(state=self.State.SKIPPED, changed_at=timezone.now())
            me.release_slot()

    @classmethod
    def expire_stale(cls, ttl_seconds, batch=500):
        """Give back the slots of claims served longer than `ttl_seconds` ago; returns how many."""
        if ttl_seconds <= 0:
            return 0
        cutoff = timezone.now() - timedelta(seconds=ttl_seconds)
        stale = list(cls.objects.filter(state=cls.State.PENDING, served_at__lt=cutoff).values_list("pk", flat=True)[:batch])
        return sum(cls._expire(pk, cutoff) for pk in stale)

    @classmethod
    def _expire(cls, pk, cutoff):
        with transaction.atomic():
            # Re-read under the lock: the labeler may have answered in the meantime.
            me = cls.objects.select_for_update().filter(pk=pk, state=cls.State.PENDING, served_at__lt=cutoff).first()
            if me is None:
                return 0
            cls.objects.filter(pk=pk).update(state=cls.State.EXPIRED, changed_at=timezone.now())
            me.release_slot()
            return 1

    def release_slot(self):
        """The caller holds this assignment's lock and has just taken it out of the queue."""
        item = Item.objects.select_for_update().get(pk=self.item_id)
        Item.objects.filter(pk=item.pk).update(slots_taken=F("slots_taken") - 1, is_open=item.state != Item.State.DECIDED)

    def undo(self):
        with transaction.atomic():
            me = Assignment.objects.select_for_update().get(pk=self.pk)
            item = Item.objects.select_for_update(of=("self",)).select_related("project").get(pk=me.item_id)
            if item.state == Item.State.DECIDED:
                raise LabelingError("That example has already been adjudicated: your answer is final.")
            if me.state != self.State.ANSWERED:
                raise LabelingError("There is no answer to undo.")
            # Served again now: the newest pending claim is the labeler's current item.
            now = timezone.now()
            Assignment.objects.filter(pk=me.pk).update(
                state=self.State.PENDING, label="", flagged=False, note="", answered_at=None, seconds=None,
                served_at=now, shown_at=now, changed_at=now)
            item.refresh_consensus(item.project.overlap)


def _insert_items(project):
    rows = list(project.version.examples.order_by("row").values_list("pk", "label"))
    rng = np.random.default_rng(project.seed)
    positions = rng.permutation(len(rows))
    labels = set(project.label_set)
    eligible = np.asarray([i for i, (_, label) in enumerate(rows) if label in labels], dtype=np.int64)
    n_gold = min(len(eligible), round(project.gold_share * len(rows)))
    gold = np.zeros(len(rows), dtype=bool)
    if n_gold:
        gold[rng.choice(eligible, size=n_gold, replace=False)] = True
    columns = {
        "example_id": [pk for pk, _ in rows], "position": positions.tolist(), "is_gold": gold.tolist(),
        "gold_label": [label if g else "" for (_, label), g in zip(rows, gold)],
        "state": [Item.State.GOLD if g else Item.State.OPEN for g in gold],
    }
    columns["consensus_label"] = columns["gold_label"]
    if connection.vendor == "postgresql":
        _insert_items_unnest(project, columns)
    else:
        Item.objects.bulk_create([Item(project=project, **dict(zip(columns, values))) for values in zip(*columns.values())],
                                 batch_size=5000)
    return len(rows), n_gold


def _insert_items_unnest(project, columns):
    """One INSERT … SELECT FROM unnest(arrays): 100,000 items in about a second, where
    bulk_create's row-by-row parameters take several."""
    types = {"example_id": "bigint", "position": "integer", "is_gold": "boolean", "gold_label": "text",
             "state": "text", "consensus_label": "text"}
    names = ", ".join(columns)
    arrays = ", ".join(f"%s::{types[name]}[]" for name in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Item._meta.db_table} (project_id, {names}, suggested_label, slots_taken, is_open, "
            f"answer_count, disagreement, gold_misses) "
            f"SELECT %s, u.*, '', 0, true, 0, false, 0 FROM unnest({arrays}) AS u",
            [project.pk, *columns.values()])


class Decision(models.Model):
    """A reviewer's adjudication: final. The answers it overruled are kept here as they were."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="decisions")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    label = models.CharField(max_length=200)
    note = models.TextField(blank=True)
    previous_state = models.CharField(max_length=10)
    answers = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self):
        return f"{self.item}: {self.label} by {self.reviewer}"


class QCReport(models.Model):
    """One QC computation (labeling/qc.py): agreement statistics and threshold verdicts."""

    project = models.ForeignKey(LabelingProject, on_delete=models.CASCADE, related_name="qc_reports")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # The moment the answers were read: anything changed later makes this report stale.
    started_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    answers = models.PositiveIntegerField()
    passes = models.BooleanField()
    data = models.JSONField()

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["project", "started_at"], name="qc_project_idx")]

    def __str__(self):
        return f"QC of {self.project} at {self.started_at:%Y-%m-%d %H:%M}"

    @property
    def reasons(self):
        return self.data.get("reasons", [])
