"""Demo deployment: a second, shorter fine-tune of MiniLM (another seed, two epochs) becomes version 2 of the demo
model; version 1 goes to production with the approvals of both demo approvers (the model asks
for two there) and version 2 to staging; the demo engineer deploys version 1 as
`support-router` with version 2 as a 20 % canary. The traffic comes from `manage.py
demo_traffic` (lifecycle/tour/traffic.py), which the demo starts beside its server; this module
holds what it calls over HTTP.

Everything goes through the methods a person's clicks call. The order comes from the queues:
a default-queue job (after the registry's, both queued by tour/signals.py) starts the second run, which queues the deployment
behind that run's training on the training queue."""
import json
import time
import urllib.error
import urllib.request

from django.conf import settings
from django.contrib.auth import get_user_model

from lifecycle.core.jobs import enqueue

NAME = "support-router"
RUN_NAME = "Demo: LoRA on MiniLM, support intents (seed 1, 2 epochs)"
CANARY_SHARE = 20.0
APPROVERS = ("demo-approver", "demo-approver-2")
PRODUCTION_APPROVALS = 2


def seed(stdout):
    """Nothing at start: the deployment's chapter follows the registry's (tour/signals.py)."""


def queue_start():
    from lifecycle.deployments.tasks import start_demo_candidate

    return enqueue(start_demo_candidate, key="demo:deployment")


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


def _approve(request, approvers):
    """As each demo approver on the request's page: every failed gate let through with a reason."""
    for approver in approvers:
        request.refresh_from_db()
        done = request.status in (request.Status.APPROVED, request.Status.REJECTED)
        if done or request.approvals.filter(approver=approver, void=False).exists():
            continue
        overrides = {g["gate"]: "Demo data: accepted for the walkthrough." for g in request.failed_gates}
        request.approve(approver, "Demo: reviewed the evidence.", seen_sha256=request.evidence_sha256, overrides=overrides)


def _to_stage(version, stage, engineer, approvers):
    from lifecycle.registry.models import PromotionRequest

    version.refresh_from_db()
    if version.stage == stage:
        return version
    request = version.requests.filter(to_stage=stage, status__in=[PromotionRequest.Status.OPEN,
                                                                   PromotionRequest.Status.BLOCKED]).first()
    request = request or version.request_promotion(engineer, stage, f"Demo: to {stage}.")
    _approve(request, approvers)
    version.refresh_from_db()
    return version


def deploy():
    """Version 2 registered; v1 to production (two approvals) and v2 to staging (one); the
    deployment with its canary."""
    from lifecycle.deployments.models import Deployment
    from lifecycle.registry import demo as registry_demo
    from lifecycle.registry.models import ModelVersion, RegisteredModel, Stage
    from lifecycle.runs.models import Run

    engineer, approvers = _user("demo-ml-engineer"), [_user(name) for name in APPROVERS]
    model = RegisteredModel.objects.get(slug=registry_demo.SLUG)
    if model.approvals_required.get("production") != PRODUCTION_APPROVALS:
        model.update_settings(engineer, model.gate_settings, {**model.approvals_required, "production": PRODUCTION_APPROVALS})
    first = model.versions.get(number=1)
    run = Run.objects.get(name=RUN_NAME)
    second = ModelVersion.objects.filter(model=model, run=run).first() or ModelVersion.register(engineer, model, run)
    _to_stage(first, Stage.STAGING, engineer, approvers[:1])
    _to_stage(first, Stage.PRODUCTION, engineer, approvers)
    _to_stage(second, Stage.STAGING, engineer, approvers[:1])
    deployment = Deployment.objects.filter(name=NAME).first() or Deployment.create(
        engineer, name=NAME, model=model, stable=first, environment="demo",
        description="Support tickets to the right team: version 1 stable, version 2 as a canary.")
    release = deployment.current_release
    if not release.candidate_id:
        release = deployment.start_release(engineer, candidate=second, mode="canary", share=CANARY_SHARE,
                                           reason="Demo: version 2 (another seed) on a fifth of the traffic.")
    return {"deployment": deployment.pk, "release": release.pk}


def post(url, token, body, timeout=30):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_ready(base, token, name=NAME, timeout=300):
    """The serving process picks the deployment up within its refresh period, then loads and
    warms both versions; wait for its readiness answer rather than a fixed time."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{base}/v2/models/{name}/ready", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise RuntimeError(f"the demo's serving process at {base} did not get {name} ready in {timeout} s; "
                       f"see {settings.DATA_DIR / 'serving.log'}")
