from lifecycle.core.jobs import Outcome, task
# Those who see run pages read run jobs too: their results carry test metrics.
from lifecycle.core.roles import READ_ROLES


def _run_outcome(job):
    from lifecycle.runs.models import Run

    # A training job names its run in its arguments; the demo's start job in its result.
    run_id = job.kwargs["run_id"] if "run_id" in job.kwargs else job.result["run"]
    run = Run.objects.get(pk=run_id)
    verb = "Trained" if job.task_label == "train_run" else "Started"
    return Outcome(f"{verb} run {run.pk} ({run.name}).", ((f"Run {run.pk}", run.get_absolute_url()),))


@task(queue="training", roles=READ_ROLES, outcome=_run_outcome)
def train_run(job, *, run_id, resume=False):
    """Train (or, with resume, continue) a run; see runs/training.py."""
    from lifecycle.runs import worker

    return worker.train(job, run_id=run_id, resume=resume)


@task(queue="default", roles=READ_ROLES, outcome=_run_outcome)
def start_demo_run(job):
    """Start the demo's run on the newest usable version of the demo dataset (runs/demo.py)."""
    from django.contrib.auth import get_user_model

    from lifecycle.datasets.demo import SLUG
    from lifecycle.datasets.models import DatasetVersion
    from lifecycle.runs import demo, launch
    from lifecycle.runs.models import Run

    versions = DatasetVersion.objects.filter(dataset__slug=SLUG).select_related("dataset").order_by("-number")
    version = next((v for v in versions if v.usable_for_training), None)
    if version is None:
        raise RuntimeError(f"the demo dataset {SLUG} has no version usable for training yet")
    engineer = get_user_model().objects.filter(username="demo-ml-engineer").first()
    run = Run.objects.filter(name=demo.NAME).first()  # a second try after Ctrl-C finds it
    run = run or launch.start(engineer, {**demo.CONFIG, "dataset_version": version.pk}, name=demo.NAME)
    return {"run": run.pk}
