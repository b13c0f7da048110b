"""Background jobs: PostgreSQL holds the truth about a job, RQ only carries its id to a worker.

A task is a plain function that takes its `job` context first and primary keys as keywords:

    @task(queue="default")
    def rebuild_index(job, *, dataset_id):
        for i, row in enumerate(rows):
            job.set_progress(phase="indexing", done=i, total=len(rows))
            job.check_cancelled()
        return {"rows": len(rows)}

and is enqueued inside the transaction that made the rows it needs:

    job = enqueue(rebuild_index, user=request.user, dataset_id=dataset.pk)

See docs/jobs.md for the states, the heartbeat, the reaper and the reconciler.
"""
import copy
import functools
import importlib
import json
import logging
import math
import os
import resource
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ObjectDoesNotExist
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.utils import timezone
from django.utils.module_loading import autodiscover_modules
from redis.exceptions import RedisError
from rq.job import Job as RQJob
from rq.job import JobStatus

from lifecycle.core import queues
from lifecycle.core.models import Job, waited_for_lock
from lifecycle.core.queues import QueueUnavailable  # noqa: F401 (callers catch it from here)

log = logging.getLogger(__name__)

# The only function RQ is ever asked to call: nothing read from Redis names other code.
PERFORM = "lifecycle.core.jobs.perform"
PROGRESS_INTERVAL = 0.2  # seconds between two progress writes of a running job, at least
# RQ states from which the RQ job will never reach perform() again.
RQ_DEAD = {JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value}


class JobCancelled(Exception):
    """Raised by a task (usually via job.check_cancelled()) to stop after a cancel request."""


class UnknownTask(LookupError):
    pass


# --- The task registry


@dataclass(frozen=True)
class TaskSpec:
    name: str
    func: Callable
    queue: str
    # Who may read this task's jobs besides their creator (and superusers): the roles that
    # may see the object the job works on. Results can hold what a page keeps from a role.
    roles: tuple = ()
    # outcome(job) -> Outcome: what a finished job made, in words and links. The app that owns
    # the task supplies it at @task time because only that app knows its models and URLs:
    # core keeps the function and never imports the app, and a result stays plain JSON of
    # ids (a URL written into a result would go stale when the URLs change).
    outcome: Callable | None = None
    # Exceptions that mean "this input is refused" (a bad file, say), not a bug: the job fails
    # with the message alone, logged in one line without a traceback.
    refusals: tuple = ()


@dataclass(frozen=True)
class Outcome:
    """A finished job in a sentence, with links to what it made: ((label, url), ...)."""

    text: str
    links: tuple = ()

    def as_dict(self):
        return {"text": self.text, "links": [{"label": label, "url": url} for label, url in self.links]}


_registry: dict[str, TaskSpec] = {}


def task(queue="default", roles=(), outcome=None, refusals=()):
    """Register a function as a task named by its dotted path, run on `queue`, its jobs
    readable by `roles` (and by whoever started them); `outcome(job)` says what a succeeded
    job made, `refusals` which exceptions are expected refusals (see TaskSpec)."""

    def register(func):
        name = f"{func.__module__}.{func.__qualname__}"
        _registry[name] = TaskSpec(name, func, queue, tuple(roles), outcome, tuple(refusals))
        func.task_name = name
        return func

    return register


def tasks_readable_by(roles):
    """Names of the registered tasks whose jobs any of `roles` may read."""
    _import_app_tasks()
    return sorted(name for name, spec in _registry.items() if set(spec.roles) & set(roles))


@functools.cache
def _import_app_tasks():
    # A task registers when its module is imported; a page listing jobs must know them all.
    autodiscover_modules("tasks")


def get_task(name):
    """The registered task `name`, importing its module on first use.

    Task names come from Job rows, which only enqueue() writes, and importing a module only
    registers what it decorates: an undecorated function can never run.
    """
    if name not in _registry:
        try:
            importlib.import_module(name.rpartition(".")[0])
        except ModuleNotFoundError:
            pass
    try:
        return _registry[name]
    except KeyError:
        raise UnknownTask(f"no task is registered as {name!r}") from None


def _resolve(task_ref):
    if callable(task_ref):
        if not hasattr(task_ref, "task_name"):
            raise UnknownTask(f"{task_ref!r} is not a task; decorate it with @task(queue=...)")
        task_ref = task_ref.task_name
    spec = get_task(task_ref)
    if spec.queue not in settings.RQ_QUEUES:
        raise ImproperlyConfigured(f"task {spec.name} runs on queue {spec.queue!r}, which RQ_QUEUES lacks")
    return spec


# --- What a page shows of a job


def outcome_of(job):
    """The Outcome of a finished job (None while it is not): for a success, its task's own
    words and links; otherwise what went wrong."""
    if not job.is_terminal:
        return None
    if job.status == Job.Status.SUCCEEDED:
        return _success_outcome(job)
    if job.status == Job.Status.CANCELLED:
        return Outcome("Cancelled before it finished; nothing it would have made was kept.")
    if job.status == Job.Status.INTERRUPTED:
        return Outcome(f"Interrupted: {job.error}")
    return Outcome(f"Failed: {job.error}")


def _success_outcome(job):
    try:
        describe = get_task(job.task).outcome
    except UnknownTask:
        describe = None
    if describe is None:
        return Outcome("Finished.")
    try:
        return describe(job)
    except ObjectDoesNotExist:
        # What the job made was deleted since; its result (raw, on the job page) remains.
        return Outcome("Finished; what it made no longer exists.")
    except (KeyError, TypeError):
        # A result written by an older version of the task, in another shape: the page must
        # still open, and the raw result stays on it.
        log.warning("job %s: its result does not fit %s's outcome", job.pk, job.task, exc_info=True)
        return Outcome("Finished.")


def job_status(job):
    """What a page or API client watching `job` needs: its row, its ETA while running, what
    it waits for while queued, and its outcome with links once finished."""
    wait = job.wait_reason()
    outcome = outcome_of(job)
    return {
        **job.as_dict(),
        "terminal": job.is_terminal,
        "url": job.get_absolute_url(),
        "eta_seconds": job.eta_seconds(),
        "wait": wait.as_dict() if wait else None,
        "outcome": outcome.as_dict() if outcome else None,
    }


# --- Enqueue


def enqueue(task_ref, *, user=None, key=None, **kwargs):
    """Create a queued Job row and send it to RQ once the surrounding transaction commits.

    Raises QueueUnavailable, before writing anything, when Redis does not answer. With `key`,
    a second enqueue returns the first Job instead of making another.
    """
    spec = _resolve(task_ref)
    _check_kwargs(kwargs)
    queues.ping(spec.queue)
    if key is not None:
        existing = Job.objects.filter(key=key).first()
        if existing:
            return existing
    try:
        job = Job.create_queued(spec.name, spec.queue, kwargs, user=user, key=key)
    except IntegrityError:
        if key is None:
            raise
        return Job.objects.get(key=key)  # lost a race with another enqueue of the same key
    transaction.on_commit(lambda: send(job))
    return job


def retry(job, *, user=None):
    """A new attempt of a job that failed or was interrupted: the same task and arguments,
    queued now. Its key moves to the new row (the old one keeps `key~id`), so whatever
    enqueues by that key finds the new attempt instead of the failure."""
    if job.status not in (Job.Status.FAILED, Job.Status.INTERRUPTED):
        raise ValueError(f"job {job.pk} is {job.status}; only a failed or interrupted job is tried again")
    with transaction.atomic():
        if job.key:
            Job.objects.filter(pk=job.pk).update(key=f"{job.key}~{job.pk}")
        return enqueue(job.task, user=user or job.created_by, key=job.key, **job.kwargs)


def _check_kwargs(kwargs):
    try:
        json.dumps(kwargs)
    except TypeError as exc:
        raise TypeError(f"job arguments must be plain JSON (pass primary keys, not objects): {exc}") from None


def send(job):
    """Hand a committed row to RQ. If Redis fails now, the row stays queued and the
    reconciler sends it later; the caller's request has already succeeded."""
    try:
        queue = queues.get_queue(job.queue, commit_mode="auto")
        queue.enqueue_call(
            PERFORM, args=(job.pk,), job_id=str(job.rq_id), description=f"{job.task} (job {job.pk})"
        )
    except (RedisError, OSError):
        log.exception("job %s stays queued: sending it to RQ failed; the reconciler will resend it", job.pk)


# --- Running a job (inside the RQ work horse)


def perform(job_id):
    """RQ's entry point. Claims the row, runs its task, and records how it ended."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        log.warning("job %s does not exist; nothing to run", job_id)
        return
    if not job.claim(worker_name()):
        # Already claimed or finished: RQ ran it twice, or a resend raced the original.
        log.info("job %s is no longer queued; not running it again", job_id)
        return
    _run(job)


def worker_name():
    rq_worker = os.environ.get("RQ_WORKER_ID", "")
    return f"{rq_worker}@{socket.gethostname()}:{os.getpid()}".lstrip("@")


def _run(job):
    context = JobContext(job)
    try:
        with Heartbeat(job, context):
            result = _as_json(get_task(job.task).func(context, **job.kwargs))
    except JobCancelled as exc:
        finished = job.mark_cancelled() or job.mark_failed(f"JobCancelled without a cancel request: {exc}")
    except MemoryError as exc:
        log.exception("job %s (%s) ran out of memory", job.pk, job.task)
        finished = job.mark_failed(out_of_memory_message(exc))
    except Exception as exc:
        finished = job.mark_failed(_failure(job, exc))
    else:
        finished = job.mark_succeeded(result)
    if not finished:
        job.refresh_from_db(fields=["status"])
        log.warning("job %s ended, but its row was already %s; outcome discarded", job.pk, job.status)


def _failure(job, exc):
    """The failed job's error, logged: a refusal its task expects in one line, anything else
    (a bug) with its traceback. Called while `exc` is being handled."""
    try:
        refusals = get_task(job.task).refusals
    except UnknownTask:
        refusals = ()
    if isinstance(exc, refusals):
        # One line in the log: a message built from the user's file may hold line breaks.
        log.info("job %s (%s) refused: %s", job.pk, job.task, "\\n".join(str(exc).splitlines()))
        return str(exc)
    log.exception("job %s (%s) failed", job.pk, job.task)
    return f"{type(exc).__name__}: {exc}"


def memory_limit_in_force():
    """This process's memory limit in MB, or None when it has none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    return None if soft == resource.RLIM_INFINITY else soft // (1024 * 1024)


def out_of_memory_message(exc):
    """What a job that failed with MemoryError records: the limit it ran into, if any."""
    limit = memory_limit_in_force()
    detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if limit is None:
        return detail
    return f"the job ran out of its memory limit ({limit:,} MB): {detail}"


def _as_json(result):
    # Fail the job now rather than let a non-JSON result break the success UPDATE.
    return json.loads(json.dumps(result, cls=DjangoJSONEncoder))


class JobContext:
    """What a running task sees of its job: the row, progress reports and cancellation."""

    def __init__(self, job):
        self.row = job
        self.id = job.pk
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._progress = None
        self.wake = threading.Event()  # tells the heartbeat there is progress to write

    def set_progress(self, phase="", done=None, total=None, **extra):
        """Hand the progress to the heartbeat thread, which writes it on its own connection:
        a task inside a transaction (or in the middle of a COPY) would otherwise hide it from
        the page until it commits, or fail writing it."""
        progress = {"phase": phase, "done": done, "total": total, **extra}
        with self._lock:
            self._progress = self.row.progress = progress
        self.wake.set()

    def take_progress(self):
        """The progress set since the last call (None if none)."""
        self.wake.clear()
        with self._lock:
            progress, self._progress = self._progress, None
        return progress

    def cancel_requested(self):
        """True once a cancel was requested (or the row was reaped); costs no query."""
        return self._stop.is_set()

    def check_cancelled(self):
        if self._stop.is_set():
            raise JobCancelled(f"job {self.id} was cancelled")

    def request_stop(self):
        self._stop.set()


def alive_key(job_id):
    return f"lifecycle:jobs:alive:{job_id}"


def alive_seconds():
    """How long a liveness key outlasts its last refresh: the heartbeat window, plus the
    longest a write may wait for the database's lock before it fails (SQLite's busy timeout;
    nothing on PostgreSQL), so that a beat stuck behind a long write is still covered."""
    lock_wait = settings.DATABASES["default"].get("OPTIONS", {}).get("timeout", 0)
    return math.ceil(settings.JOB_HEARTBEAT_WINDOW_SECONDS + lock_wait)


class Heartbeat(threading.Thread):
    """Writes heartbeat_at every JOB_HEARTBEAT_SECONDS on its own database connection and
    tells the task when a cancel was requested or the row left `running` (reaped).

    SQLite has one writer: while another process writes for long, a beat waits for the lock
    and may fail with "database is locked", and heartbeat_at goes stale although this job
    is alive. So every write of this thread that succeeded, or only waited out the lock,
    also refreshes a liveness key in Redis (which no database lock holds up); the reaper
    spares a job whose key is fresh. Any other failure (the database is gone) refreshes
    nothing, and the job is reaped as before.
    """

    def __init__(self, job, context):
        super().__init__(name=f"job-{job.pk}-heartbeat", daemon=True)
        self.row = copy.copy(job)  # its own instance: the task thread keeps using `job`
        self.context = context
        self.done = threading.Event()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.done.set()
        self.context.wake.set()
        self.join(timeout=5)

    def run(self):
        try:
            self.refresh_alive()  # the claim has just beaten; its first write may wait already
            next_beat = time.monotonic() + settings.JOB_HEARTBEAT_SECONDS
            while not self.done.is_set():
                self.context.wake.wait(max(0.0, next_beat - time.monotonic()))
                self.write_progress()
                if time.monotonic() >= next_beat:
                    self.beat()
                    next_beat = time.monotonic() + settings.JOB_HEARTBEAT_SECONDS
                self.done.wait(PROGRESS_INTERVAL)  # a few progress writes a second at most
            self.write_progress()  # the last word before the job's outcome is written
        finally:
            connections.close_all()  # connections are per thread: this closes only ours

    def write_progress(self):
        progress = self.context.take_progress()
        if progress is not None:
            self.write(lambda: self.row.set_progress(**progress), "writing progress")

    def beat(self):
        alive = self.write(self.row.heartbeat, "heartbeat")
        if alive is False or self.row.cancel_requested_at:
            self.context.request_stop()

    def write(self, update, what):
        """Run one of this thread's writes; None if it failed. One missed beat is survivable
        (the window allows three): reconnect and try again next time."""
        try:
            result = update()
        except DatabaseError as exc:
            log.exception("job %s: %s failed", self.row.pk, what)
            connections.close_all()
            if waited_for_lock(exc):
                self.refresh_alive()
            return None
        self.refresh_alive()
        return result

    def refresh_alive(self):
        try:
            queues.get_connection(self.row.queue).set(alive_key(self.row.pk), 1, ex=alive_seconds())
        except (RedisError, OSError) as exc:
            log.warning("job %s: liveness key not refreshed, Redis is unavailable (%s)", self.row.pk, exc)


# --- Maintenance: the reaper and the reconciler


def reap_interrupted(window_seconds=None):
    """Mark running jobs whose heartbeat is older than the window as interrupted, unless their
    liveness key says the beats only waited for the database's lock; returns how many."""
    window = window_seconds or settings.JOB_HEARTBEAT_WINDOW_SECONDS
    cutoff = timezone.now() - timedelta(seconds=window)
    reason = f"no heartbeat for {window} s: the worker died or lost the database"
    stale = Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__lt=cutoff)
    # stale_before re-checks the heartbeat inside the UPDATE, so a beat that lands now wins.
    return sum(job.mark_interrupted(reason, stale_before=cutoff) for job in stale if not still_alive(job))


def still_alive(job):
    """Whether the job's heartbeat refreshed its liveness key lately (see Heartbeat). When
    Redis cannot say, the database heartbeat decides alone."""
    try:
        return bool(queues.get_connection(job.queue).exists(alive_key(job.pk)))
    except (RedisError, OSError) as exc:
        log.warning("reaper: Redis is unavailable (%s); judging job %s by its database heartbeat", exc, job.pk)
        return False


def interrupt_rq_job(rq_id, reason):
    """The worker saw its work horse die: mark that job interrupted without waiting for the reaper."""
    job = Job.objects.filter(rq_id=rq_id).first()
    return bool(job and job.mark_interrupted(reason))


def reconcile_queued(min_age_seconds=None):
    """Resend rows queued in the database that RQ will never run: the send was lost (a crash
    or Redis outage between commit and send) or the RQ job died before perform() claimed the
    row. Resending is safe: the claim lets only one run happen. Returns how many."""
    min_age = settings.JOB_HEARTBEAT_WINDOW_SECONDS if min_age_seconds is None else min_age_seconds
    cutoff = timezone.now() - timedelta(seconds=min_age)
    queued = list(Job.objects.filter(status=Job.Status.QUEUED, created_at__lte=cutoff).order_by("created_at"))
    redis_for = {name: queues.get_connection(name) for name in {job.queue for job in queued}}
    resent = 0
    for job in queued:
        resent += _resend_if_lost(job, redis_for[job.queue])
    return resent


def _resend_if_lost(job, redis):
    rq_id = str(job.rq_id)
    status = redis.hget(RQJob.key_for(rq_id), "status")
    if status is not None and status.decode() not in RQ_DEAD:
        return 0
    if status is not None:
        RQJob.fetch(rq_id, connection=redis).delete()  # so the resent job starts clean
    log.warning("job %s is queued but RQ does not hold it (%s); resending", job.pk, status or "missing")
    send(job)
    return 1


# Housekeeping that other apps add to the maintenance pass (name → function returning a count),
# registered with @maintenance_step from their AppConfig.ready(): core never imports them.
_maintenance_steps: dict[str, Callable[[], int]] = {}


def maintenance_step(name):
    def register(func):
        _maintenance_steps[name] = func
        return func

    return register


def run_maintenance():
    """One pass of the reaper, the reconciler and the apps' steps. Safe to run from many
    processes at once."""
    try:
        interrupted = reap_interrupted()
    except DatabaseError:
        # SQLite busy past its timeout, say: the reconciler and the other steps still run.
        log.exception("reaper failed")
        interrupted = 0
    try:
        resent = reconcile_queued()
    except (RedisError, OSError) as exc:
        log.warning("reconciler skipped: Redis is unavailable (%s)", exc)
        resent = 0
    counts = {"interrupted": interrupted, "resent": resent}
    for name, step in _maintenance_steps.items():
        try:
            counts[name] = step()
        except DatabaseError:
            # One app's housekeeping must not stop the reaper's next pass.
            log.exception("maintenance step %s failed", name)
            counts[name] = 0
    return counts
