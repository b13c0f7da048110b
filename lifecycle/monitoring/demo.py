"""Demo monitoring: once the demo deployment's first traffic is answered (deployments/demo.py
sends `traffic_sent`), the demo engineer gives `support-router` the five default SLOs and two
retrain rules (drift in 3 scheduled windows in a row; 100 usable pieces of feedback), and a
job on the training queue (behind the versions' reference jobs, so the references are ready)
sends a second wave of traffic whose inputs drift — the same tickets written long, with a
reference number, a signature and words no training text has — with the dataset's labels as
feedback (the model's misses become overrides). Then the rollups are brought up to date, the
demo on-call user checks drift on both live versions, and every SLO is evaluated: the drift
page, the alerts, the budgets and the three dashboards show real numbers, and the feedback rule
leaves a retrain draft waiting for a person.

Everything goes through the functions the pages call; the traffic goes over HTTP through the
demo's serving process."""
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

DRIFT_REQUESTS = 300
FEEDBACK_EVERY = 3
SUFFIX = ("Sent from my phone, ref no. {n}-XK. Third message about this, please escalate to a "
          "supervisor; zorvex quillon brantic mervane.")


def seed(stdout):
    """Nothing at start: the monitoring story follows the deployment's traffic (signals.py)."""


def _user(name):
    return get_user_model().objects.filter(username=name).first()


def follow_traffic(deployment):
    """After the first traffic: SLOs and retrain rules, then the drifting wave queued."""
    from lifecycle.core.jobs import enqueue
    from lifecycle.monitoring import retrain, slo
    from lifecycle.monitoring.models import RetrainRule
    from lifecycle.monitoring.tasks import send_demo_drift

    engineer = _user("demo-ml-engineer")
    slo.default_slos(engineer, deployment)
    for kind in (RetrainRule.Kind.DRIFT, RetrainRule.Kind.FEEDBACK):
        if not RetrainRule.objects.filter(deployment=deployment, kind=kind).exists():
            retrain.save_rule(engineer, deployment, kind=kind, consecutive=3, min_feedback=100)
    return enqueue(send_demo_drift, user=engineer, key="demo:monitoring:drift", deployment_id=deployment.pk)


def drifted(text, n):
    return f"{text} {SUFFIX.format(n=40_000 + n)}"


def send_drifting_traffic(deployment_id):
    from django.conf import settings

    from lifecycle.datasets.models import Example
    from lifecycle.deployments import demo as deployments_demo
    from lifecycle.deployments.models import Deployment, ServingToken

    deployment = Deployment.objects.get(pk=deployment_id)
    engineer = _user("demo-ml-engineer")
    _token, key = ServingToken.issue(engineer, "demo drifting traffic", [deployment], rate_per_second=200, burst=400)
    base = f"http://{settings.SERVING_HOST}:{settings.SERVING_PORT}"
    deployments_demo._wait_ready(base, key)
    version = deployment.current_release.stable.run.dataset_version
    examples = list(Example.objects.filter(version=version, split=Example.VALIDATION).order_by("row")
                    .values_list("text", "label", "group")[:DRIFT_REQUESTS])
    started = timezone.now()
    for index in range(DRIFT_REQUESTS):
        text, label, group = examples[index % len(examples)]
        answer = deployments_demo._post(f"{base}/v1/deployments/{deployment.name}/predict", key,
                                        {"inputs": [drifted(text, index)], "key": group or str(index)})
        if index % FEEDBACK_EVERY == 0:
            deployments_demo._post(f"{base}/v1/feedback", key, {
                "request_id": answer["request_id"], "label": label, "note": "Demo: the dataset's label."})
    return check_after(deployment, started)


def check_after(deployment, started):
    """Bring the rollups up to date, check drift on each live version as the on-call user,
    evaluate every SLO, and let the feedback rule look."""
    from lifecycle.monitoring import drift, retrain, rollups, slo
    from lifecycle.monitoring.models import DriftCheck

    _wait_logged(deployment, started)
    while rollups.roll_up_pending(max_seconds=10.0):
        pass
    oncall = _user("demo-oncall")
    end = timezone.now() + timedelta(minutes=1)
    checks = [drift.check(deployment, version, start=started - timedelta(minutes=1), end=end,
                          trigger=DriftCheck.Trigger.DEMAND, user=oncall)
              for version in dict.fromkeys(v for v in (deployment.current_release.stable,
                                                        deployment.current_release.candidate) if v)]
    for item in deployment.slos.all():
        slo.evaluate(item)
    retrain.check_feedback_rules(max_seconds=10.0)
    return {"drift_checks": [c.pk for c in checks], "drifted": [c.drifted for c in checks]}


def _wait_logged(deployment, started, timeout=60):
    """The serving process writes its log in batches (every SERVING_LOG_FLUSH_SECONDS): wait
    until the wave's answers are all in the log."""
    import time

    from lifecycle.deployments.models import PredictionLog

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logged = PredictionLog.objects.filter(deployment=deployment, created_at__gte=started).exclude(route="shadow")
        if logged.count() >= DRIFT_REQUESTS:
            return
        time.sleep(0.5)
