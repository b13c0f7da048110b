"""Demo training: a LoRA fine-tune of the bundled MiniLM on the demo support-intents dataset,
run by the demo's worker so a new user watches a real loss curve fill in.

The run trains on the version the demo's labels were frozen into: its starter is a default-queue
job queued behind the freeze job (tour/signals.py), and the demo's worker takes them in order."""
from django.contrib.auth import get_user_model

from lifecycle.core.jobs import enqueue
from lifecycle.core.models import Job
from lifecycle.runs.models import Run

NAME = "Demo: LoRA on MiniLM, support intents"
CONFIG = {"base_model": "all-MiniLM-L6-v2", "method": "lora", "epochs": 3, "batch_size": 16, "max_length": 64,
          "learning_rate": 2e-3, "eval_every": 50, "checkpoint_every": 100, "seed": 0}


def seed(stdout):
    """Nothing at start: the run follows the labels' freeze (queued by tour/signals.py)."""


def queue_start():
    from lifecycle.runs.tasks import start_demo_run

    return enqueue(start_demo_run, key="demo:run")


def recover(stdout):
    """A demo run cut off mid-way (Ctrl-C) continues from its last checkpoint, or from step 0
    before its first one: the same run, never a second one for the same step. Core's story
    (core/story.py) calls this before it tries the story's other jobs again, so the steps
    queued behind a run find it ahead of them."""
    engineer = get_user_model().objects.filter(username="demo-ml-engineer").first()
    stopped = Run.objects.filter(name__startswith="Demo:", job__status__in=[Job.Status.INTERRUPTED, Job.Status.FAILED])
    for run in stopped.order_by("pk"):
        checkpoint = run.resume(engineer, or_from_start=True)
        stdout.write(f"Demo run {run.pk} continues from step {checkpoint.step if checkpoint else 0}")
