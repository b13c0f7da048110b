import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from lifecycle.core.jobs import perform
from lifecycle.core.models import Job
from lifecycle.datasets import uploads
from lifecycle.datasets.models import Dataset
from lifecycle.datasets.readers import FileFormatError
from lifecycle.datasets.tasks import ingest_upload
from lifecycle.lib.commands import user_named


class Command(BaseCommand):
    help = ("Import a CSV, JSONL or Parquet file as a new version of a dataset and print the version's report "
            "as JSON. The ingest runs in this process, through the same job row and code as an upload.")

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument("--dataset", required=True, help="the dataset's slug")
        parser.add_argument("--format", choices=("csv", "jsonl", "parquet"), help="default: from the name and contents")
        parser.add_argument("--map", default="", help="column mapping, e.g. text=body,label=intent")
        parser.add_argument("--on-error", choices=("reject", "drop"), default="reject")
        parser.add_argument("--split-by-time", action="store_true",
                            help="train before validation before test by the timestamp column")
        parser.add_argument("--user", default="", help="the username recorded as the uploader")

    def handle(self, *args, **options):
        path = Path(options["file"])
        if not path.is_file():
            raise CommandError(f"{path} is not a file")
        dataset = Dataset.objects.filter(slug=options["dataset"]).first()
        if dataset is None:
            raise CommandError(f"no dataset {options['dataset']!r}; create it first with manage.py dataset_create "
                               f"{options['dataset']} --task {'|'.join(Dataset.Task.values)} "
                               f"--pii-policy {'|'.join(Dataset.PiiPolicy.values)}")
        user = user_named(options["user"])
        try:
            mapping = uploads.parse_mapping_arg(options["map"])
            upload = uploads.receive(dataset, str(path), path.name, user=user, on_error=options["on_error"],
                                     fmt=options["format"])
        except (FileFormatError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        job = self.run_ingest(upload, mapping or uploads.suggested_mapping(upload), user, options["split_by_time"])
        upload.refresh_from_db()
        self.stdout.write(json.dumps(self.report(upload, job), indent=2, cls=DjangoJSONEncoder))
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(self.failure(upload, job))

    @staticmethod
    def run_ingest(upload, mapping, user, split_by_time):
        # The job row is created but never sent to RQ: this process claims and runs it, so the
        # record (state, progress, audit) is the same as for an upload through a worker.
        with transaction.atomic():
            job = Job.create_queued(ingest_upload.task_name, "default", {"upload_id": upload.pk}, user=user,
                                    key=f"ingest:upload:{upload.pk}")
            upload.__class__.objects.filter(pk=upload.pk).update(mapping=mapping, split_by_time=split_by_time, job=job)
        perform(job.pk)
        job.refresh_from_db()
        return job

    @staticmethod
    def failure(upload, job):
        """One line: why the file was refused (the user's to fix), or how the import failed."""
        refused = upload.report.get("refused")
        text = f"import refused: {refused}" if refused else f"import failed: {job.error or job.status}"
        return "\\n".join(text.splitlines())  # a reason quoting the file may hold line breaks

    @staticmethod
    def report(upload, job):
        version = upload.version
        result = {"upload": upload.pk, "status": job.status, "error": job.error, "report": upload.report}
        if version is not None:
            result.update(version=version.number, manifest=version.manifest, pii=version.pii_report,
                          dedup=version.dedup_report, leakage=version.leakage_report)
        return result
