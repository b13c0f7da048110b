"""Where the demo's story stands, read from the rows its steps leave (a handful of small
queries, none over a whole table): one `Step` per chapter, in the story's order, each done,
under way (with how far) or still to come. The start page shows it (tour/home.py)."""
import dataclasses

from django.urls import reverse

from lifecycle.core.models import Job


@dataclasses.dataclass
class Step:
    title: str
    state: str  # "done", "now" or "later"
    detail: str = ""
    url: str = ""
    headline: str = ""  # a few words for "Now: …"; the title's when empty


def demo_objects():
    """The story's own rows, looked up once per page (the panel, its chapters and its links)."""
    from lifecycle.datasets import demo as datasets_demo
    from lifecycle.datasets.models import Dataset
    from lifecycle.deployments import demo as deployments_demo
    from lifecycle.deployments.models import Deployment
    from lifecycle.labeling import demo as labeling_demo
    from lifecycle.labeling.models import LabelingProject
    from lifecycle.registry import demo as registry_demo
    from lifecycle.registry.models import RegisteredModel
    from lifecycle.runs import demo as runs_demo
    from lifecycle.runs.models import Run

    return {
        "dataset": Dataset.objects.filter(slug=datasets_demo.SLUG).first(),
        "project": LabelingProject.objects.filter(name=labeling_demo.NAME).select_related("frozen_version").first(),
        "run": Run.objects.filter(name=runs_demo.NAME).select_related("job").first(),
        "model": RegisteredModel.objects.filter(slug=registry_demo.SLUG).first(),
        "deployment": Deployment.objects.filter(name=deployments_demo.NAME).first(),
    }


def _data(found):
    dataset = found["dataset"]
    version = dataset.versions.order_by("number").first() if dataset else None
    if version is None:
        return Step("Support tickets uploaded and checked", "now", "ingesting: PII, duplicates, splits",
                    dataset.get_absolute_url() if dataset else "")
    return Step("Support tickets uploaded and checked", "done",
                f"{version.row_count:,} rows, {version.get_pii_status_display()}", version.get_absolute_url())


def _labeling(found):
    project = found["project"]
    if project is None:
        return Step("Labeling review by three labelers, labels frozen", "later")
    if project.frozen_version_id is None:
        return Step("Labeling review by three labelers, labels frozen", "now",
                    f"{project.item_count:,} examples; freezing the labels", project.get_absolute_url())
    return Step("Labeling review by three labelers, labels frozen", "done",
                f"QC overridden by an approver, frozen as v{project.frozen_version.number}",
                project.frozen_version.get_absolute_url())


def _training(found):
    run = found["run"]
    if run is None:
        return Step("Fine-tuning MiniLM (LoRA)", "later")
    status = run.status
    if status == Job.Status.SUCCEEDED:
        accuracy = (run.test_metrics or {}).get("accuracy")
        detail = f"trained, test accuracy {accuracy:.2f}" if accuracy is not None else "trained"
        return Step("Fine-tuning MiniLM (LoRA)", "done", detail, run.get_absolute_url())
    if status == Job.Status.RUNNING:
        percent = _percent(run)
        detail = f"training — {percent}" if percent else f"training — {run.progress.get('phase', 'starting')}"
        return Step("Fine-tuning MiniLM (LoRA)", "now", detail, run.get_absolute_url())
    return Step("Fine-tuning MiniLM (LoRA)", "now", f"training {status}", run.get_absolute_url())


def _percent(run):
    """How far a running run is, "40 %", or "" before it knows its total steps."""
    step, total = run.progress.get("step", 0), run.progress.get("total_steps") or 0
    return f"{100 * step / total:.0f} %" if total else ""


def _registry(found):
    from lifecycle.registry.models import Stage

    model = found["model"]
    first = model.versions.filter(number=1).first() if model else None
    if first is None:
        return [Step("Registered, signed, gates evaluated", "later"), Step("Approved for production by two approvers", "later")]
    registered = Step("Registered, signed, gates evaluated", "done", f"v1 {first.signature_status}", first.get_absolute_url())
    if first.stage == Stage.PRODUCTION or found["deployment"]:
        return [registered, Step("Approved for production by two approvers", "done", "v1 in production", first.get_absolute_url())]
    return [registered, Step("Approved for production by two approvers", "now", f"v1 in {first.stage}",
                             reverse("registry:inbox"))]


def _deployment(found):
    from lifecycle.deployments.models import PredictionLog, Rollback

    deployment = found["deployment"]
    if deployment is None:
        return [_second_run(), Step("Canary receiving traffic", "later")]
    release = deployment.current_release
    url = deployment.get_absolute_url()
    deployed = Step("Deployed with a 20 % canary", "done", f"v{release.stable.number} stable", url)
    canary = PredictionLog.objects.filter(deployment=deployment, route="canary").count()
    rollback = Rollback.objects.filter(release__deployment=deployment).select_related("actor").order_by("-pk").first()
    if rollback is not None:
        who = rollback.actor.username if rollback.actor else "the verdict"
        return [deployed, Step("Canary receiving traffic", "done", f"rolled back by {who}", url)]
    if canary:
        return [deployed, Step("Canary receiving traffic", "done", f"{canary:,} answers from v{release.candidate.number}",
                               url, headline="canary receiving traffic")]
    return [deployed, Step("Canary receiving traffic", "now", "waiting for the serving process", url,
                           headline="canary out, waiting for its first answers")]


def _second_run():
    """Before the deployment: the canary's own fine-tune (another seed) trains first."""
    from lifecycle.deployments import demo as deployments_demo
    from lifecycle.runs.models import Run

    run = Run.objects.filter(name=deployments_demo.RUN_NAME).select_related("job").first()
    if run is None or run.status != Job.Status.RUNNING:
        return Step("Deployed with a 20 % canary", "later")
    percent = _percent(run)
    detail = f"the canary's run training — {percent}" if percent else "the canary's run is starting"
    return Step("Deployed with a 20 % canary", "now", detail, run.get_absolute_url(), headline=detail)


def _monitoring(found):
    from lifecycle.monitoring.models import Alert, RetrainDraft

    deployment = found["deployment"]
    if deployment is None:
        return [Step("Inputs drift: drift and SLO alerts", "later"), Step("A retrain draft waits for a person", "later")]
    firing = list(Alert.objects.filter(deployment=deployment, status=Alert.Status.FIRING)
                  .values_list("kind", flat=True).distinct())
    open_alerts = " and ".join(f"{kind.replace('_', ' ').replace('slo', 'SLO')} alert open" for kind in sorted(firing))
    alerts = (Step("Inputs drift: drift and SLO alerts", "done", open_alerts, reverse("monitoring:oncall"),
                   headline=open_alerts)
              if firing else Step("Inputs drift: drift and SLO alerts", "later", "", reverse("monitoring:alerts")))
    draft = RetrainDraft.objects.filter(deployment=deployment, status=RetrainDraft.Status.READY).first()
    retrain = (Step("A retrain draft waits for a person", "done", "ready to review", draft.get_absolute_url(),
                    headline="retrain draft waiting for a person")
               if draft else Step("A retrain draft waits for a person", "later"))
    return [alerts, retrain]


def steps(found):
    """The story's chapters in order, from `demo_objects()`."""
    return [_data(found), _labeling(found), _training(found), *_registry(found), *_deployment(found),
            *_monitoring(found)]


def now(story):
    """Where the story has got to, in a few words: "training — 40 %", "canary receiving
    traffic", "drift alert open": the furthest chapter under way or done."""
    reached = [step for step in story if step.state != "later"]
    if not reached:
        return "starting"
    step = reached[-1]
    return step.headline or (step.detail if step.state == "now" and step.detail else step.title.lower())
