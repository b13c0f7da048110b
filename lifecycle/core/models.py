import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import OperationalError, connection, models, transaction
from django.urls import reverse
from django.utils import timezone

from lifecycle.core import queues

GENESIS_HASH = "0" * 64


def waited_for_lock(exc):
    """SQLite gave up waiting for its write lock: the database is busy, not lost."""
    return isinstance(exc, OperationalError) and "locked" in str(exc)


# Any constant works; it only has to be the same in every process that writes the chain.
AUDIT_CHAIN_LOCK_KEY = 7_420_011


def canonical_json(value):
    """The one serialization hashes are computed over: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, cls=DjangoJSONEncoder, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _describe(obj):
    if obj is None:
        return "", ""
    return obj._meta.label_lower, str(obj.pk)


class AuditEventQuerySet(models.QuerySet):
    def filtered(self, *, object_type="", object_id="", actor="", action="", since=None, until=None):
        qs = self
        if object_type:
            qs = qs.filter(object_type=object_type)
        if object_id:
            qs = qs.filter(object_id=object_id)
        if actor:
            qs = qs.filter(actor=actor)
        if action:
            qs = qs.filter(action=action)
        if since:
            qs = qs.filter(created_at__gte=since)
        if until:
            qs = qs.filter(created_at__lt=until)
        return qs


class AuditEvent(models.Model):
    """One link of the append-only, hash-chained audit trail.

    `hash` is sha256 over the canonical JSON of the event's fields, which include the
    previous event's hash, so altering or removing any row breaks every later link.
    On PostgreSQL and SQLite a trigger refuses UPDATE and DELETE (migration 0002).
    """

    seq = models.PositiveBigIntegerField(unique=True)
    created_at = models.DateTimeField(db_index=True)
    # No foreign key: deleting a user must never rewrite (or block on) the trail.
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=150, blank=True, db_index=True)
    action = models.CharField(max_length=100, db_index=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=100, blank=True)
    payload = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [models.Index(fields=["object_type", "object_id", "seq"], name="audit_object_idx")]

    def __str__(self):
        return f"#{self.seq} {self.action} {self.object_type}:{self.object_id} by {self.actor or 'system'}"

    @classmethod
    def record(cls, actor, action, obj=None, payload=None, *, object_type=None, object_id=None):
        """Append one event. Must run inside the transaction of the change it records.

        `actor` is a user or None for the system. The chain head is read under a lock held
        until the surrounding transaction ends, so concurrent writers never fork it.
        """
        if not connection.in_atomic_block:
            raise RuntimeError("AuditEvent.record() must be called inside transaction.atomic()")
        default_type, default_id = _describe(obj)
        event = cls(
            actor_id=getattr(actor, "pk", None),
            actor=getattr(actor, "username", "") or "",
            action=action,
            object_type=object_type if object_type is not None else default_type,
            object_id=str(object_id) if object_id is not None else default_id,
            # A JSON round trip makes the stored payload equal to what was hashed.
            payload=json.loads(canonical_json(payload or {})),
        )
        cls._lock_chain()
        head = cls.objects.order_by("-seq").values("seq", "hash").first()
        event.seq = head["seq"] + 1 if head else 1
        event.prev_hash = head["hash"] if head else GENESIS_HASH
        event.created_at = timezone.now()
        event.hash = event.compute_hash()
        event.save(force_insert=True)
        return event

    @staticmethod
    def _lock_chain():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_CHAIN_LOCK_KEY])
        # SQLite: transactions are IMMEDIATE (settings), so the write lock is already held.

    def canonical_fields(self):
        return {
            "seq": self.seq,
            "created_at": self.created_at.astimezone(dt_timezone.utc).isoformat(),
            "actor_id": self.actor_id,
            "actor": self.actor,
            "action": self.action,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "payload": self.payload,
            "prev_hash": self.prev_hash,
        }

    def compute_hash(self):
        return hashlib.sha256(canonical_json(self.canonical_fields()).encode()).hexdigest()

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise RuntimeError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise RuntimeError("audit events are append-only")

    @classmethod
    def verify_chain(cls, batch_size=2000):
        """Walk the chain in order; return None when intact, else (seq, reason) of the first bad link."""
        expected_prev, expected_seq = GENESIS_HASH, 1
        for event in cls.objects.order_by("seq").iterator(chunk_size=batch_size):
            if event.seq != expected_seq:
                return expected_seq, f"event #{expected_seq} is missing (next is #{event.seq})"
            if event.prev_hash != expected_prev:
                return event.seq, "prev_hash does not match the previous event's hash"
            if event.compute_hash() != event.hash:
                return event.seq, "contents do not match the stored hash"
            expected_prev, expected_seq = event.hash, event.seq + 1
        return None


def _new_token():
    return "lc_" + secrets.token_urlsafe(32)


class ApiTokenQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class ApiToken(models.Model):
    """A bearer token for the JSON API and the CLI. Only its sha256 is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash_key(key):
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name):
        """Create a token; the plain key is returned once and never stored."""
        key = _new_token()
        with transaction.atomic():
            token = cls.objects.create(user=user, name=name, prefix=key[:10], key_hash=cls.hash_key(key))
            AuditEvent.record(user, "api_token.issued", token, {"name": name})
        return token, key

    @classmethod
    def authenticate(cls, key):
        token = cls.objects.active().select_related("user").filter(key_hash=cls.hash_key(key)).first()
        if token is None or not token.user.is_active:
            return None
        token.touch()
        return token.user

    def touch(self):
        """Record the use, at most once a minute (the token page shows minutes). A read must
        not fail for it: on SQLite a long write may hold the lock past its timeout."""
        now = timezone.now()
        if self.last_used_at and now - self.last_used_at < timedelta(minutes=1):
            return
        try:
            with transaction.atomic():
                ApiToken.objects.filter(pk=self.pk).update(last_used_at=now)
        except OperationalError as exc:
            if not waited_for_lock(exc):  # only SQLite's lock timeout is forgiven
                raise

    def revoke(self, user):
        with transaction.atomic():
            updated = ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
            if updated:
                AuditEvent.record(user, "api_token.revoked", self, {"name": self.name})
        return bool(updated)


class JobQuerySet(models.QuerySet):
    def visible_to(self, user):
        """The jobs `user` may read: those they started, and those whose task works on an
        object their roles may see (each task names those roles). Superusers read all."""
        from lifecycle.core.jobs import tasks_readable_by
        from lifecycle.core.roles import user_roles

        if not user.is_authenticated:
            return self.none()
        if user.is_superuser:
            return self
        return self.filter(models.Q(created_by=user) | models.Q(task__in=tasks_readable_by(user_roles(user))))


def _ordinal(n):
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _duration(seconds):
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class Wait:
    """What a queued job waits for: its place on its queue, the jobs running ahead of it (with
    their ETA when their progress gives one), and whether any worker listens on that queue.
    `workers` is None when Redis cannot say."""

    queue: str
    position: int
    ahead: list = field(default_factory=list)  # running Job rows that hold the queue's workers
    workers: int | None = None
    redis_error: str = ""

    def sentence(self):
        if self.redis_error:
            return "The job queue is unavailable (Redis cannot be reached): no job starts until it is back."
        if self.workers == 0:
            return (f"No worker is listening on queue {self.queue}: nothing on it runs until one starts "
                    f"(manage.py lifecycle_worker {self.queue}).")
        place = "next in line" if self.position <= 1 else f"{_ordinal(self.position)} in line"
        text = f"Waiting on queue {self.queue}, {place}"
        if self.ahead:
            text += ", behind " + "; ".join(_describe_running(job) for job in self.ahead)
        return text + "."

    def as_dict(self):
        return {
            "queue": self.queue, "position": self.position, "workers": self.workers,
            "redis_unavailable": bool(self.redis_error), "sentence": self.sentence(),
            "ahead": [{"id": job.pk, "task": job.task_label, "eta_seconds": job.eta_seconds()} for job in self.ahead],
        }


def _uuids(values):
    # RQ job ids that are not ours (not UUIDs) name no Job row; skip them rather than fail.
    parsed = []
    for value in values:
        try:
            parsed.append(uuid.UUID(str(value)))
        except ValueError:
            pass
    return parsed


def _describe_running(job):
    eta = job.eta_seconds()
    left = f"about {_duration(eta)} left" if eta is not None else "no estimate yet"
    return f"job {job.pk} ({job.task_label}, running, {left})"


class Job(models.Model):
    """The truth about one background job. RQ only carries it; this row says what happened.

    States: queued → running → succeeded | failed | cancelled | interrupted. Every
    transition is a conditional UPDATE on the current state, so a terminal state is final
    and a late or duplicate callback changes nothing. The runtime lives in core/jobs.py.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        INTERRUPTED = "interrupted"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.INTERRUPTED)

    task = models.CharField(max_length=200)
    queue = models.CharField(max_length=30)
    kwargs = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    # Idempotency: at most one job per key (e.g. "ingest:upload:42"), enforced by the database.
    key = models.CharField(max_length=200, unique=True, null=True, blank=True)
    rq_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    progress = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    result = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    error = models.TextField(blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="job_status_heartbeat_idx"),
            models.Index(fields=["status", "created_at"], name="job_status_created_idx"),
        ]

    def __str__(self):
        return f"job {self.pk} {self.task} ({self.status})"

    @property
    def is_terminal(self):
        return self.status in self.TERMINAL

    def get_absolute_url(self):
        return reverse("job_detail", args=[self.pk])

    @property
    def task_label(self):
        """The task's function name, which is what a person recognises ("ingest_upload")."""
        return self.task.rpartition(".")[2]

    # --- What a page tells someone watching the job

    def eta_seconds(self):
        """Seconds left by the pace so far (progress done/total since it started); None when
        the job is not running or its progress gives no pace."""
        done, total = self.progress.get("done"), self.progress.get("total")
        if self.status != self.Status.RUNNING or not self.started_at:
            return None
        if not isinstance(done, (int, float)) or not isinstance(total, (int, float)) or not 0 < done <= total:
            return None
        elapsed = (timezone.now() - self.started_at).total_seconds()
        return elapsed * (total - done) / done

    def queue_position(self):
        """1 for the next job its queue's workers take. Jobs are sent to RQ in the order their
        rows were made, so the row id is the queue order; only a job the reconciler resent
        sits further back in RQ than its id says, and it is rare enough not to ask RQ each time."""
        return Job.objects.filter(queue=self.queue, status=self.Status.QUEUED, pk__lte=self.pk).count()

    def wait_reason(self):
        """A Wait for a queued job (None otherwise). Asks Redis which workers listen on the
        queue and what they run now: a worker listening on several queues may be busy with
        a job of another queue, and that is the job this one waits behind."""
        if self.status != self.Status.QUEUED:
            return None
        wait = Wait(self.queue, self.queue_position())
        running = Job.objects.filter(status=self.Status.RUNNING)
        try:
            workers = queues.listening_workers(self.queue)
            busy_with = queues.current_rq_job_ids(workers)
        except queues.QueueUnavailable as exc:
            wait.redis_error = exc.detail or "unavailable"
            wait.ahead = list(running.filter(queue=self.queue).order_by("started_at")[:3])
            return wait
        wait.workers = len(workers)
        ahead = running.filter(models.Q(queue=self.queue) | models.Q(rq_id__in=_uuids(busy_with)))
        wait.ahead = list(ahead.order_by("started_at")[:3])
        return wait

    def as_dict(self):
        return {
            "id": self.pk,
            "task": self.task,
            "queue": self.queue,
            "status": self.status,
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "heartbeat_at": self.heartbeat_at,
            "cancel_requested_at": self.cancel_requested_at,
        }

    # --- Transitions: one conditional UPDATE on the current state plus one audit event, in
    # one transaction. The UPDATE's row count decides, so two racing callers (a worker and
    # the reaper, RQ running a job twice) cannot both win, and a terminal state is final.

    @classmethod
    def create_queued(cls, task, queue, kwargs, *, user=None, key=None):
        """Insert a queued row and its audit event; the caller sends it to RQ after commit."""
        created_by = user if getattr(user, "pk", None) else None
        with transaction.atomic():
            job = cls.objects.create(task=task, queue=queue, kwargs=kwargs, key=key, created_by=created_by)
            AuditEvent.record(created_by, "job.queued", job, {"task": task, "queue": queue, "key": key or ""})
        return job

    def _transition(self, sources, target, actor=None, payload=None, *, only_if=None, **changes):
        with transaction.atomic():
            rows = Job.objects.filter(pk=self.pk, status__in=sources, **(only_if or {}))
            if rows.update(status=target, **changes) != 1:
                return False
            AuditEvent.record(actor, f"job.{target}", self, {"task": self.task, **(payload or {})})
        self.status = target
        for field, value in changes.items():
            setattr(self, field, value)
        return True

    def claim(self, worker):
        """queued → running. False means someone else ran (or cancelled) it: do nothing."""
        now = timezone.now()
        return self._transition(
            [self.Status.QUEUED], self.Status.RUNNING, payload={"worker": worker},
            worker=worker[:200], started_at=now, heartbeat_at=now,
        )

    def mark_succeeded(self, result=None):
        return self._transition(
            [self.Status.RUNNING], self.Status.SUCCEEDED, result=result, finished_at=timezone.now()
        )

    def mark_failed(self, error):
        return self._transition(
            [self.Status.RUNNING], self.Status.FAILED, payload={"error": error[:500]},
            error=error, finished_at=timezone.now(),
        )

    def mark_cancelled(self):
        """running → cancelled, only when someone asked: a task cannot cancel itself silently."""
        return self._transition(
            [self.Status.RUNNING], self.Status.CANCELLED,
            only_if={"cancel_requested_at__isnull": False}, finished_at=timezone.now(),
        )

    def mark_interrupted(self, reason, *, stale_before=None):
        """running → interrupted. With stale_before, only if no heartbeat came since then."""
        only_if = {"heartbeat_at__lt": stale_before} if stale_before else None
        return self._transition(
            [self.Status.RUNNING], self.Status.INTERRUPTED, payload={"reason": reason},
            only_if=only_if, error=reason, finished_at=timezone.now(),
        )

    def request_cancel(self, user):
        """Cancel a queued job at once; ask a running one to stop (its task notices within
        a heartbeat). Returns False when there was nothing to do (finished, or already asked)."""
        now = timezone.now()
        if self._transition([self.Status.QUEUED], self.Status.CANCELLED, user, cancel_requested_at=now, finished_at=now):
            return True
        with transaction.atomic():
            rows = Job.objects.filter(pk=self.pk, status=self.Status.RUNNING, cancel_requested_at__isnull=True)
            asked = rows.update(cancel_requested_at=now) == 1
            if asked:
                AuditEvent.record(user, "job.cancel_requested", self, {"task": self.task})
        self.refresh_from_db(fields=["status", "cancel_requested_at", "finished_at"])
        return asked

    # --- Updates a running job makes about itself (not audited: they change no state).

    def heartbeat(self):
        """Refresh heartbeat_at and re-read cancel_requested_at; False once the row left running."""
        if Job.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(heartbeat_at=timezone.now()) != 1:
            return False
        self.cancel_requested_at = Job.objects.values_list("cancel_requested_at", flat=True).get(pk=self.pk)
        return True

    def set_progress(self, phase="", done=None, total=None, **extra):
        self.progress = {"phase": phase, "done": done, "total": total, **extra}
        Job.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(progress=self.progress)
