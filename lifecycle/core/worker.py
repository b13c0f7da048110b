"""The RQ worker class every Lifecycle worker runs: RQ's forking Worker plus job maintenance.

RQ on its own leaves a killed worker's job "started" for minutes. This worker runs the reaper
and the reconciler (core/jobs.py) every JOB_MAINTENANCE_SECONDS from its main process: when
idle, by waking from the blocking dequeue that often; when busy, from the loop that watches
the work horse. Start it with `manage.py lifecycle_worker default monitoring` (or
`manage.py rqworker ... --worker-class lifecycle.core.worker.LifecycleWorker`).

Each work horse runs under a memory limit (JOB_MEMORY_LIMIT_MB; the training queue's own,
unlimited by default): past it an allocation fails with MemoryError and the job fails,
instead of the machine swapping or the kernel's OOM killer taking the worker with it.
"""
import ctypes
import logging
import os
import resource
import signal
import time

from django.conf import settings
from django.db import connections
from rq import Worker
from rq.defaults import DEFAULT_JOB_MONITORING_INTERVAL

from lifecycle.core import jobs

log = logging.getLogger(__name__)

# Held for one maintenance interval by whichever worker runs maintenance, so a fleet of
# workers runs it about once per interval instead of once per worker.
MAINTENANCE_LOCK_KEY = "lifecycle:jobs:maintenance"


def maintenance_seconds():
    return max(1, settings.JOB_MAINTENANCE_SECONDS)


def memory_limit_mb(queue_name):
    """The memory (MB) one job on this queue may use; 0 for no limit."""
    if queue_name == "training":
        return settings.TRAINING_JOB_MEMORY_LIMIT_MB
    return settings.JOB_MEMORY_LIMIT_MB


def limit_memory(megabytes):
    """Cap this process's data segment: its heap and private writable mappings, which is
    what allocations draw on. Not the address space (RLIMIT_AS): libraries reserve large
    ranges they never touch. Processes it starts inherit the limit, each on its own."""
    if megabytes <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = megabytes * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid):
    """Have the kernel kill this process when its parent exits (Linux). A work horse whose
    worker was killed outright (SIGKILL, the OOM killer) would otherwise train on unwatched
    while the reaper marks its job interrupted and a resume starts it again beside it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: RQ's cold shutdown is all there is
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the worker died before the request took effect
        os._exit(1)


class LifecycleWorker(Worker):
    def __init__(self, *args, **kwargs):
        # The horse-watching loop wakes this often; it is also where a busy worker does maintenance.
        interval = kwargs.get("job_monitoring_interval", DEFAULT_JOB_MONITORING_INTERVAL)
        kwargs["job_monitoring_interval"] = min(interval, maintenance_seconds())
        super().__init__(*args, **kwargs)
        self.job_maintenance_at = None

    @property
    def dequeue_timeout(self):
        # An idle worker blocks in BLPOP for this long, then comes back round to maintenance.
        return min(super().dequeue_timeout, maintenance_seconds())

    @property
    def should_run_maintenance_tasks(self):
        return super().should_run_maintenance_tasks or self.job_maintenance_due()

    def run_maintenance_tasks(self):
        # RQ's own registry cleaning keeps its (slower) maintenance_interval.
        if super().should_run_maintenance_tasks:
            super().run_maintenance_tasks()
        if self.job_maintenance_due():
            self.run_job_maintenance()

    def maintain_heartbeats(self, job, execution):
        super().maintain_heartbeats(job, execution)
        if self.job_maintenance_due():
            self.run_job_maintenance()

    def job_maintenance_due(self):
        last = self.job_maintenance_at
        return last is None or time.monotonic() - last >= maintenance_seconds()

    def run_job_maintenance(self):
        self.job_maintenance_at = time.monotonic()
        if not self.connection.set(MAINTENANCE_LOCK_KEY, self.name, nx=True, ex=maintenance_seconds()):
            return
        try:
            counts = jobs.run_maintenance()
            if any(counts.values()):
                log.info("Worker %s: job maintenance %s", self.name, counts)
        except Exception:
            # Maintenance must never take the worker down; the next tick tries again.
            log.exception("Worker %s: job maintenance failed", self.name)
        finally:
            connections.close_all()  # a forked horse must not inherit an open connection

    def subscribe(self):
        """RQ's own, but the pubsub thread wakes every second instead of every 60: a worker
        leaving (burst done, a stop) closes the pubsub, which waits for the thread's read, and
        with 60 s one in a few burst workers hung that long after its last job."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(sleep_time=1, daemon=True,
                                                       exception_handler=self._pubsub_exception_handler)

    def fork_work_horse(self, job, queue):
        connections.close_all()  # each horse opens its own database connection
        super().fork_work_horse(job, queue)

    def main_work_horse(self, job, queue):
        die_with_parent(self.pid)
        # In the horse only: the worker itself must outlive whatever a job allocates.
        limit_memory(memory_limit_mb(queue.name))
        super().main_work_horse(job, queue)

    def perform_job(self, job, queue, execution):
        try:
            return super().perform_job(job, queue, execution)
        finally:
            # The horse leaves by os._exit(), which would drop the connection mid-session.
            connections.close_all()

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage):
        """The horse died (OOM killer, a signal): record it now, not a heartbeat window later."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        try:
            jobs.interrupt_rq_job(job.id, f"the work horse died (wait status {ret_val})")
        except Exception:
            log.exception("Worker %s: could not mark job %s interrupted", self.name, job.id)
        finally:
            connections.close_all()
