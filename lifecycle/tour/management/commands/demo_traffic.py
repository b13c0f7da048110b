"""`manage.py demo_traffic`: the demo deployment's simulated traffic (lifecycle/tour/traffic.py)."""
import signal

from django.core.management.base import BaseCommand

from lifecycle.tour import traffic


class Command(BaseCommand):
    help = ("Send the demo's traffic to its deployment through the serving process: half plain, half drifting, "
            "with feedback. Waits for the canary; continues from what the prediction log already holds.")

    def add_arguments(self, parser):
        parser.add_argument("--requests", type=int, default=traffic.REQUESTS)
        parser.add_argument("--rate", type=float, default=traffic.RATE, help="requests per second")
        parser.add_argument("--keep-going", action="store_true",
                            help="after the story, one drifting request every few seconds until stopped")

    def handle(self, *args, requests, rate, keep_going, **options):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even if the shell ignored it
        traffic.run(self.stdout, requests=requests, rate=rate, keep_going=keep_going)
