"""Demo registry: once the demo run has trained, its output becomes version 1 of a registered
model, signed, and the demo engineer asks for it to go to staging, so the demo approver finds
a request in the inbox with its gates and evidence.

The order comes from the queues: a default-queue job queued after the job that starts the demo
run (both by tour/signals.py, behind the labels' freeze) queues the registration on the
training queue, behind the run's own training job (the demo's training worker takes them one
at a time)."""
from django.contrib.auth import get_user_model

from lifecycle.core.jobs import enqueue
from lifecycle.core.models import Job
from lifecycle.registry.models import ModelVersion, RegisteredModel, Stage

SLUG = "support-intent-router"
NAME = "Support intent router"
DESCRIPTION = ("Routes incoming customer-support messages to the team that handles their intent (billing, "
               "shipping, returns, ...). Suggestions for the support desk; a person confirms the route.")
REASON = "Demo: the first fine-tune of MiniLM on the support intents, for staging."


def seed(stdout):
    """Nothing at start: the registration follows the run (queued by tour/signals.py)."""


def queue_start():
    from lifecycle.registry.tasks import queue_demo_registration

    return enqueue(queue_demo_registration, key="demo:registry")


def _engineer():
    return get_user_model().objects.filter(username="demo-ml-engineer").first()


def queue_registration():
    """Queue the registration behind the demo run's training job (both on the training queue)."""
    from lifecycle.registry.tasks import register_demo_version

    return enqueue(register_demo_version, user=_engineer(), key="demo:registry:register")


def register():
    """Register the demo run's output and ask for staging, as the demo engineer would."""
    from lifecycle.runs.demo import NAME as RUN_NAME
    from lifecycle.runs.models import Run

    run = Run.objects.filter(name=RUN_NAME).select_related("job").first()
    if run is None or run.status != Job.Status.SUCCEEDED:
        raise RuntimeError(f"the demo run has not succeeded ({run.status if run else 'it does not exist'}); nothing to register")
    engineer = _engineer()
    model = RegisteredModel.objects.filter(slug=SLUG).first() or RegisteredModel.create(
        engineer, name=NAME, slug=SLUG, description=DESCRIPTION)
    version = ModelVersion.objects.filter(model=model, run=run).first() or ModelVersion.register(engineer, model, run)
    if not version.requests.exists():
        version.request_promotion(engineer, Stage.STAGING, REASON)
    return version
