"""Run the job reaper and reconciler: once, or in a loop every --interval seconds.

LifecycleWorker already does this from every worker; run this as its own process where
workers may all be busy for long stretches, or where you want maintenance without workers.
"""
import logging
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError, connections

from lifecycle.core.jobs import run_maintenance

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Mark jobs with a stale heartbeat interrupted and resend queued jobs that RQ lost."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="run one pass and exit")
        parser.add_argument(
            "--interval", type=float, default=None,
            help="seconds between passes (default: JOB_MAINTENANCE_SECONDS)",
        )

    def handle(self, *args, once=False, interval=None, **options):
        if once:
            self.stdout.write(self.describe(run_maintenance()))
            return
        try:
            self.loop(interval or settings.JOB_MAINTENANCE_SECONDS)
        except KeyboardInterrupt:
            pass

    def loop(self, interval):
        while True:
            try:
                counts = run_maintenance()
                if any(counts.values()):  # a quiet pass every few seconds is not news
                    self.stdout.write(self.describe(counts))
            except DatabaseError:
                # A database blip must not end the process that would clean up after it.
                log.exception("job maintenance failed; retrying in %s s", interval)
            connections.close_all()  # don't hold an idle connection between passes
            time.sleep(interval)

    @staticmethod
    def describe(counts):
        return ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in counts.items())
