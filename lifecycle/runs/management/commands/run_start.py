import json
import time

from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder

from lifecycle.core.models import Job
from lifecycle.core.queues import QueueUnavailable
from lifecycle.lib.commands import user_named
from lifecycle.runs import launch
from lifecycle.runs.config import ConfigError
from lifecycle.runs.models import Run

POLL_SECONDS = 1


class Command(BaseCommand):
    help = ("Start a training run from a JSON file of run settings (the same keys as the JSON API, plus an "
            "optional \"name\") and print its id. With --wait, wait for it to end and print one JSON line.")

    def add_arguments(self, parser):
        parser.add_argument("--config", required=True, metavar="FILE.json", help="the run settings, a JSON object")
        parser.add_argument("--wait", action="store_true", help="wait until the run ends; exit non-zero unless it succeeded")
        parser.add_argument("--user", default="", help="the username recorded as the run's starter (default: system)")
        parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                            help="with --wait: give up (exit non-zero) after this long; the run goes on")

    def handle(self, *args, **options):
        data = self.read_config(options["config"])
        user = user_named(options["user"])
        name = data.pop("name", "") or ""
        if not isinstance(name, str):
            raise CommandError("\"name\" must be text")
        try:
            run = launch.start(user, data, name=name.strip())
        except ConfigError as exc:
            raise CommandError("the run cannot start:\n" + self.describe(exc.errors)) from None
        except QueueUnavailable as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(str(run.pk))
        if options["wait"]:
            self.wait(run.pk, options["timeout"])

    @staticmethod
    def read_config(path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CommandError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CommandError(f"{path} must hold a JSON object of run settings, not {type(data).__name__}")
        return data

    @staticmethod
    def describe(errors):
        return "\n".join(f"  {field}: {message}" if field else f"  {message}"
                         for field, messages in errors.items() for message in messages)

    def wait(self, run_id, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Re-read the run each time: a resume gives it a new job.
            run = Run.objects.select_related("job").get(pk=run_id)
            if run.job_id and run.job.is_terminal:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise CommandError(f"gave up waiting after {timeout:g} s: run {run_id} is still {run.status}")
            time.sleep(POLL_SECONDS)
        result = {"run": run.pk, "status": run.status, "test_metrics": run.test_metrics, "error": run.job.error}
        self.stdout.write(json.dumps(result, cls=DjangoJSONEncoder))
        if run.status != Job.Status.SUCCEEDED:
            raise CommandError(f"run {run.pk} {run.status}" + (f": {run.job.error}" if run.job.error else ""))
