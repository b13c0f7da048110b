"""Demo deployment: a second, shorter fine-tune of MiniLM (another seed, two epochs) becomes version 2 of the demo
model; the demo approver approves version 1 to production and version 2 to staging; the demo
engineer deploys version 1 as `support-router` with version 2 as a 20 % canary, and asks for
version 2's promotion to production from the deployment (so the approver's inbox holds it while
the canary serves); then real traffic from the demo dataset's test split goes through the demo's
serving process over HTTP, with feedback on a third of it.

Everything goes through the methods a person's clicks call. The order comes from the queues:
a default-queue job (after the registry's) starts the second run, which queues the deployment
behind that run's training on the training queue; the deployment queues the traffic on the
default queue."""
import json
import time
import urllib.error
import urllib.request

from django.conf import settings
from django.contrib.auth import get_user_model
from django.dispatch import Signal

from lifecycle.core.jobs import enqueue
from lifecycle.core.models import Job

NAME = "support-router"
RUN_NAME = "Demo: LoRA on MiniLM, support intents (seed 1, 2 epochs)"
REQUESTS = 300
FEEDBACK_EVERY = 3  # feedback on every third answer: the verdict and the feedback page have data
CANARY_SHARE = 20.0

# Sent (with `deployment`) once the demo's traffic has been answered: monitoring's demo takes
# the story on from there without this app knowing it (monitoring/demo.py).
traffic_sent = Signal()


def seed(stdout):
    from lifecycle.deployments.models import Deployment

    if Deployment.objects.filter(name=NAME).exists() or Job.objects.filter(key="demo:deployment").exists():
        return
    from lifecycle.deployments.tasks import start_demo_candidate

    job = enqueue(start_demo_candidate, key="demo:deployment")
    stdout.write(f"Demo deployment: a second run, then {NAME} with a canary and live traffic (job {job.pk})")


def _user(name):
    return get_user_model().objects.filter(username=name).first()


def start_candidate_run():
    """The second demo run (another seed), then the deployment queued behind its training."""
    from lifecycle.datasets.demo import SLUG
    from lifecycle.datasets.models import DatasetVersion
    from lifecycle.deployments.tasks import deploy_demo
    from lifecycle.runs import demo as runs_demo
    from lifecycle.runs import launch
    from lifecycle.runs.models import Run

    run = Run.objects.filter(name=RUN_NAME).first()
    if run is None:
        versions = DatasetVersion.objects.filter(dataset__slug=SLUG).order_by("-number")
        version = next((v for v in versions if v.usable_for_training), None)
        if version is None:
            raise RuntimeError(f"the demo dataset {SLUG} has no version usable for training yet")
        run = launch.start(_user("demo-ml-engineer"), {**runs_demo.CONFIG, "seed": 1, "epochs": 2, "dataset_version": version.pk},
                           name=RUN_NAME)
    job = enqueue(deploy_demo, user=_user("demo-ml-engineer"), key="demo:deployment:deploy")
    return {"run": run.pk, "job": job.pk}


def _approve(request, approver):
    """As the demo approver on the request's page: every failed gate let through with a reason."""
    request.refresh_from_db()
    overrides = {g["gate"]: "Demo data: accepted for the walkthrough." for g in request.failed_gates}
    request.approve(approver, "Demo: reviewed the evidence.", seen_sha256=request.evidence_sha256, overrides=overrides)


def _to_stage(version, stage, engineer, approver):
    from lifecycle.registry.models import PromotionRequest

    version.refresh_from_db()
    if version.stage == stage:
        return version
    request = version.requests.filter(to_stage=stage, status__in=[PromotionRequest.Status.OPEN,
                                                                   PromotionRequest.Status.BLOCKED]).first()
    request = request or version.request_promotion(engineer, stage, f"Demo: to {stage}.")
    _approve(request, approver)
    version.refresh_from_db()
    return version


def deploy():
    """Version 2 registered; v1 to production and v2 to staging (the demo model needs one
    approval per stage); the deployment with its canary; the promotion asked for."""
    from lifecycle.deployments.models import Deployment
    from lifecycle.deployments.tasks import send_demo_traffic
    from lifecycle.registry import demo as registry_demo
    from lifecycle.registry.models import ModelVersion, RegisteredModel, Stage
    from lifecycle.runs.models import Run

    engineer, approver = _user("demo-ml-engineer"), _user("demo-approver")
    model = RegisteredModel.objects.get(slug=registry_demo.SLUG)
    approvals = {**model.approvals_required, "production": 1}
    model.update_settings(engineer, model.gate_settings, approvals)
    first = model.versions.get(number=1)
    run = Run.objects.get(name=RUN_NAME)
    second = ModelVersion.objects.filter(model=model, run=run).first() or ModelVersion.register(engineer, model, run)
    _to_stage(first, Stage.STAGING, engineer, approver)
    _to_stage(first, Stage.PRODUCTION, engineer, approver)
    _to_stage(second, Stage.STAGING, engineer, approver)
    deployment = Deployment.objects.filter(name=NAME).first() or Deployment.create(
        engineer, name=NAME, model=model, stable=first, environment="demo",
        description="Support tickets to the right team: version 1 stable, version 2 as a canary.")
    release = deployment.current_release
    if not release.candidate_id:
        release = deployment.start_release(engineer, candidate=second, mode="canary", share=CANARY_SHARE,
                                           reason="Demo: version 2 (another seed) on a fifth of the traffic.")
    job = enqueue(send_demo_traffic, user=engineer, key="demo:deployment:traffic")
    return {"deployment": deployment.pk, "release": release.pk, "job": job.pk}


def _post(url, token, body, timeout=30):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _wait_ready(base, token, timeout=300):
    """The serving process picks the deployment up within its refresh period, then loads and
    warms both versions; wait for its readiness answer rather than a fixed time."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{base}/v2/models/{NAME}/ready", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise RuntimeError(f"the demo's serving process at {base} did not get {NAME} ready in {timeout} s; "
                       f"see {settings.DATA_DIR / 'serving.log'}")


def send_traffic():
    """Real requests through the serving process's API with a token made for it (the key
    lives only in this job's memory), keyed by customer so each stays on one side, and
    feedback with the dataset's own labels; then the promotion of the canary is asked for."""
    from lifecycle.datasets.models import Example
    from lifecycle.deployments.models import Deployment, ServingToken

    deployment = Deployment.objects.get(name=NAME)
    engineer = _user("demo-ml-engineer")
    _token, key = ServingToken.issue(engineer, "demo traffic", [deployment], rate_per_second=200, burst=400)
    base = f"http://{settings.SERVING_HOST}:{settings.SERVING_PORT}"
    _wait_ready(base, key)
    version = deployment.current_release.stable.run.dataset_version
    examples = list(Example.objects.filter(version=version, split=Example.TEST).order_by("row")
                    .values_list("text", "label", "group")[:REQUESTS])
    if not examples:
        raise RuntimeError(f"the demo dataset version {version} has no test split to send")
    sent = feedback = 0
    for index in range(REQUESTS):
        text, label, group = examples[index % len(examples)]
        answer = _post(f"{base}/v1/deployments/{NAME}/predict", key, {"inputs": [text], "key": group or str(index)})
        sent += 1
        if index % FEEDBACK_EVERY == 0:
            _post(f"{base}/v1/feedback", key, {"request_id": answer["request_id"], "label": label,
                                               "note": "Demo: the dataset's label."})
            feedback += 1
    release = deployment.current_release
    if release.candidate_is_live and release.status == release.Status.ACTIVE:
        release.promote(engineer, "Demo: the canary served its share; asking for production.")
    traffic_sent.send(sender=send_traffic, deployment=deployment)
    return {"requests": sent, "feedback": feedback}
