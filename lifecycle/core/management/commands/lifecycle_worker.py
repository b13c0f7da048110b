"""`manage.py lifecycle_worker QUEUE... [--burst]`: an RQ worker of the LifecycleWorker class.

The same as `manage.py rqworker QUEUE... --worker-class lifecycle.core.worker.LifecycleWorker`,
so a deployment cannot forget the class that reaps dead jobs.
"""
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from lifecycle.core.queues import QueueUnavailable, ping

WORKER_CLASS = "lifecycle.core.worker.LifecycleWorker"


class Command(BaseCommand):
    help = "Start an RQ worker (LifecycleWorker) on the given queues."

    def add_arguments(self, parser):
        parser.add_argument("queues", nargs="+", help="queue names, e.g. default monitoring")
        parser.add_argument("--burst", action="store_true", help="exit once the queues are empty")
        parser.add_argument("--name", default=None, help="worker name (default: RQ's)")

    def handle(self, *args, queues, burst=False, name=None, **options):
        unknown = sorted(set(queues) - set(settings.RQ_QUEUES))
        if unknown:
            raise CommandError(f"unknown queue(s) {', '.join(unknown)}; known: {', '.join(settings.RQ_QUEUES)}")
        try:
            ping(queues[0])
        except QueueUnavailable as exc:
            raise CommandError(str(exc)) from None
        call_command(
            "rqworker", *queues, worker_class=WORKER_CLASS, burst=burst, name=name,
            verbosity=options["verbosity"],
        )
