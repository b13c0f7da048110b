"""`manage.py serve [--host H] [--port N] [--workers N]`: the serving process.

Several workers share one port; their metrics are summed through PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode): set it to an empty folder of your own, or one is made
for this run and removed at exit.
"""
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Command(BaseCommand):
    help = "Serve released model versions over HTTP (our /v1 API and the Open Inference Protocol)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="address to listen on (default SERVING_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port (default SERVING_PORT)")
        parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
        parser.add_argument("--access-log", action="store_true", help="log every request (off: the metrics count them)")

    def handle(self, *args, host=None, port=None, workers=1, access_log=False, **options):
        if workers < 1:
            raise CommandError("--workers is at least 1.")
        port = port if port is not None else settings.SERVING_PORT
        if not 0 < port < 65536:
            raise CommandError(f"--port {port} is not a port number.")
        made = self._metrics_dir() if workers > 1 or os.environ.get(MULTIPROC_ENV) else None
        from lifecycle.deployments.serving import server

        try:
            server.run(host or settings.SERVING_HOST, port, workers=workers, access_log=access_log)
        finally:
            if made:
                shutil.rmtree(made, ignore_errors=True)

    def _metrics_dir(self):
        """An empty folder for the workers' metric files. One we made is returned (to remove at
        exit); one given is emptied of an earlier run's files (stale samples would add up)."""
        given = os.environ.get(MULTIPROC_ENV)
        if given:
            folder = Path(given)
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob("*.db"):
                stale.unlink()
            return None
        made = tempfile.mkdtemp(prefix="lifecycle-serving-metrics-")
        os.environ[MULTIPROC_ENV] = made
        return made
