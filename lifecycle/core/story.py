"""The demo's story across the apps: seeding it, picking it up again after Ctrl-C, and
starting it over. Each app that takes part ships `demo.py` with `seed(stdout)` and, where a
step of its own can be cut off mid-way, `recover(stdout)`; core imports those modules by
name, in the apps' dependency order, never the apps themselves.

Picking up again, in queue order (one worker per queue takes jobs in the order they came):
the apps' own recoveries first (an interrupted training run continues from its checkpoint),
then every story job that failed or was cut off is tried again in the order it first ran,
then the jobs still queued in the database but lost with the private Redis (it keeps
nothing on disk) are sent again. A step that depends on an earlier one thus finds it ahead of
it in its queue, as on the first run, and nothing that exists is made twice."""
import logging
import shutil
from importlib import import_module
from pathlib import Path

from django.apps import apps
from django.conf import settings

from lifecycle.core import jobs
from lifecycle.core.models import Job

log = logging.getLogger(__name__)

KEY_PREFIX = "demo:"  # the story's own jobs carry keys starting with this
# What the demo writes into its data folder; --reset removes these and nothing else.
DEMO_FILES = ("lifecycle.sqlite3", "lifecycle.sqlite3-wal", "lifecycle.sqlite3-shm", "lifecycle.sqlite3-journal",
              "artifacts", "model-cache", "serving-spool", "static", "signing-key.pem", "demo-logins.txt",
              "redis.sock", "redis.log", "worker.log", "training-worker.log", "serving.log", "traffic.log")


def _app_modules():
    for config in apps.get_app_configs():
        if not config.name.startswith("lifecycle."):
            continue
        try:
            yield import_module(f"{config.name}.demo")
        except ModuleNotFoundError as exc:
            if exc.name != f"{config.name}.demo":
                raise
            continue


def seed(stdout):
    """Each app's part of the story that does not exist yet, in dependency order."""
    for module in _app_modules():
        module.seed(stdout)


def recover(stdout, *, fresh_redis):
    """Pick the story up where an earlier demo stopped. With `fresh_redis` (the demo has just
    started its own, empty Redis) no job can still be running or queued in RQ: running rows are
    marked interrupted and queued rows are sent again at once."""
    if fresh_redis:
        jobs.reap_interrupted(window_seconds=0.001)
    for module in _app_modules():
        if hasattr(module, "recover"):
            module.recover(stdout)
    failed = Job.objects.filter(key__startswith=KEY_PREFIX, status__in=[Job.Status.FAILED, Job.Status.INTERRUPTED])
    for job in failed.order_by("created_at", "pk"):
        again = jobs.retry(job)
        stdout.write(f"Demo: {job.key} stopped ({job.status}); tried again as job {again.pk}")
    if fresh_redis:
        resent = jobs.reconcile_queued(min_age_seconds=0)
        if resent:
            stdout.write(f"Demo: {resent} queued jobs sent to the new Redis again")


def reset(data_dir):
    """Remove the demo's own files from `data_dir`; returns what was removed."""
    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3" or not Path(database["NAME"]).is_relative_to(data_dir):
        raise ValueError("--reset starts over on the embedded SQLite database only; with DATABASE_URL set, "
                         "drop and recreate that database yourself.")
    removed = []
    for name in DEMO_FILES:
        path = Path(data_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed
