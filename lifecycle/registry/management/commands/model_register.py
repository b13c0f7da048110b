from django.core.management.base import BaseCommand, CommandError

from lifecycle.lib.commands import user_named
from lifecycle.registry.models import ModelVersion, RegisteredModel, RegistryError, check_registrable
from lifecycle.registry.signing import SigningError
from lifecycle.runs.models import Run
from lifecycle.runs.outputs import OutputError


class Command(BaseCommand):
    help = ("Register a succeeded run's output as the next version of a registered model, signed, and print "
            "the version as SLUG:NUMBER. Exits non-zero with the reason when the registry refuses.")

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=int, metavar="RUN_ID", help="the run whose output becomes the version")
        parser.add_argument("--model", required=True, metavar="SLUG", help="the registered model's slug")
        parser.add_argument("--create-model", metavar="NAME", default="",
                            help="create the model (named NAME, with the slug SLUG) when there is none yet")
        parser.add_argument("--user", default="", help="the username recorded as the registrar (default: system)")

    def handle(self, *args, **options):
        user = user_named(options["user"])
        run = Run.objects.select_related("job").filter(pk=options["run_id"]).first()
        if run is None:
            raise CommandError(f"no run {options['run_id']}")
        try:
            # Checked before a model is created, so a refused run leaves no empty model behind.
            check_registrable(None, run)
            model = self.model(options["model"], options["create_model"], user)
            version = ModelVersion.register(user, model, run)
        except (RegistryError, OutputError, SigningError) as exc:
            raise CommandError(f"not registered: {exc}") from None
        self.stdout.write(f"{model.slug}:{version.number}")

    @staticmethod
    def model(slug, create_name, user):
        model = RegisteredModel.objects.filter(slug=slug).first()
        if model is not None:
            if create_name and create_name != model.name:
                raise RegistryError(f"a model with the slug {slug!r} exists already, named {model.name!r}")
            return model
        if not create_name:
            raise RegistryError(f"no registered model {slug!r}; add --create-model NAME to create it")
        return RegisteredModel.create(user, name=create_name, slug=slug)
