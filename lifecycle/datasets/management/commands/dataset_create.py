import json

from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder

from lifecycle.datasets.forms import DatasetForm
from lifecycle.datasets.models import Dataset
from lifecycle.datasets.views import dataset_data
from lifecycle.lib.commands import user_named


class Command(BaseCommand):
    help = ("Create a dataset and print it as JSON. The web form's rules check it and the same audit event "
            "records it; then add a version with manage.py dataset_import.")

    def add_arguments(self, parser):
        parser.add_argument("slug", help="the dataset's name in addresses: lowercase letters, digits and hyphens")
        # Checked by the form, not by argparse, so that a refusal reads the same as on the web page.
        parser.add_argument("--task", required=True, help=" or ".join(Dataset.Task.values))
        parser.add_argument("--pii-policy", required=True, help=", ".join(Dataset.PiiPolicy.values))
        parser.add_argument("--name", default="", help="default: the slug")
        parser.add_argument("--description", default="")
        parser.add_argument("--labels", default="",
                            help="the allowed labels, comma-separated; empty: the first version's labels become the set")
        parser.add_argument("--max-labels", help="the most distinct labels a version may hold (default 100)")
        parser.add_argument("--max-text-chars", help="the longest text a row may hold (default 20000)")
        parser.add_argument("--user", default="", help="the username recorded as the creator")

    def handle(self, *args, **options):
        user = user_named(options["user"])
        values = {"slug": options["slug"], "name": options["name"] or options["slug"],
                  "description": options["description"], "task": options["task"],
                  "pii_policy": options["pii_policy"], "labels": options["labels"]}
        values |= {name: options[name] for name in ("max_labels", "max_text_chars") if options[name] is not None}
        form = DatasetForm.from_values(values)
        if not form.is_valid():
            raise CommandError(f"dataset not created: {form.error_line()}")
        dataset = form.save_for(user)
        self.stdout.write(json.dumps(dataset_data(dataset), indent=2, cls=DjangoJSONEncoder))
