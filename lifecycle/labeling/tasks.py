from django.urls import reverse

from lifecycle.core.jobs import Outcome, maintenance_step, task
from lifecycle.core.roles import LABELER, READ_ROLES

# Who may read these jobs (as labeling/views.py): QC results, frozen versions and model
# suggestions are statistics, which labelers do not see; the project itself they do.
STATS_ROLES = READ_ROLES
LIST_ROLES = (LABELER, *READ_ROLES)


@maintenance_step("expired_claims")
def expire_claims():
    """Examples left on someone's screen past LABELING_CLAIM_TTL go back to the pool (run with
    the job reaper by every worker's maintenance pass and `manage.py jobs_maintain`)."""
    from django.conf import settings

    from lifecycle.labeling.models import Assignment

    return Assignment.expire_stale(settings.LABELING_CLAIM_TTL)


def _qc_outcome(job):
    verdict = "passes" if job.result["passes"] else "does not pass"
    return Outcome(f"QC computed from {job.result['answers']} answers: it {verdict}.",
                   (("QC report", reverse("labeling:qc", args=[job.kwargs["project_id"]])),))


def _frozen_outcome(job):
    from lifecycle.datasets.models import DatasetVersion

    version = DatasetVersion.objects.select_related("dataset").get(pk=job.result["version"])
    return Outcome(f"Froze the labels into version {version.number} of {version.dataset.name}.",
                   ((f"Version {version.number}", version.get_absolute_url()),))


def _project_outcome(job):
    from lifecycle.labeling.models import LabelingProject

    project_id = job.result.get("project") or job.kwargs["project_id"]
    project = LabelingProject.objects.get(pk=project_id)
    text = (f"Suggested a label for {job.result['items']} examples of {project.name}." if "items" in job.result
            else f"Made the labeling project {project.name}.")
    return Outcome(text, ((project.name, project.get_absolute_url()),))


@task(queue="monitoring", roles=STATS_ROLES, outcome=_qc_outcome)
def compute_qc(job, *, project_id):
    """Agreement statistics and threshold verdicts of a project (labeling/qc.py)."""
    from lifecycle.labeling import qc
    from lifecycle.labeling.models import LabelingProject

    project = LabelingProject.objects.select_related("version").get(pk=project_id)
    job.set_progress(phase="computing")
    report = qc.compute(project, job=job.row)
    return {"report": report.pk, "passes": report.passes, "answers": report.answers, "alpha": report.data["alpha"]}


@task(queue="default", roles=STATS_ROLES, outcome=_frozen_outcome)
def freeze_project(job, *, project_id, qc_report_id):
    """Write the project's final labels into a child version of its dataset version."""
    from lifecycle.labeling import freezing

    version = freezing.freeze(project_id, qc_report_id)
    return {"version": version.pk, "number": version.number}


@task(queue="default", roles=LIST_ROLES, outcome=_project_outcome)
def seed_demo_project(job):
    """The demo's labeling project, once the demo dataset's first version is in (labeling/demo.py)."""
    from lifecycle.labeling import demo

    project = demo.build()
    return {"project": project.pk}


@task(queue="default", roles=LIST_ROLES, outcome=_project_outcome)
def seed_demo_round_two(job):
    """The demo's second labeling round, over the frozen version (labeling/demo.py)."""
    from lifecycle.labeling import demo

    project = demo.build_round_two()
    return {"project": project.pk}


@task(queue="training", roles=STATS_ROLES, outcome=_project_outcome)
def suggest_labels(job, *, project_id, run_id):
    """Model suggestions for every item of a project, from a trained run (labeling/suggestions.py)."""
    from lifecycle.labeling import suggestions
    from lifecycle.labeling.models import LabelingProject
    from lifecycle.runs.models import Run

    project = LabelingProject.objects.get(pk=project_id)
    run = Run.objects.get(pk=run_id)
    done = suggestions.suggest(project, run, lambda n, total: job.set_progress("predicting", n, total))
    return {"items": done, "run": run.pk}
