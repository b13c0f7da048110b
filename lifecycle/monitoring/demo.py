"""Demo monitoring: once the demo's traffic (`manage.py demo_traffic`, lifecycle/tour/traffic.py)
has answered its first half, the demo engineer gives `support-router` the five default SLOs and
two retrain rules (drift in 3 scheduled windows in a row; 100 usable pieces of feedback). The
second half's inputs drift — the same tickets arriving through a new web form that puts a long
header before the message, with a reference number and words no training text has
(`drifted`): the model reads only its first 64 tokens, so it now sees little of the message and
misses more — and the simulated support agents give feedback on every answer, overriding the
model's misses. Then a job on the training queue
(behind the versions' reference jobs, so the references are ready) brings the rollups up to
date, the demo on-call user checks drift on both live versions, and every SLO is evaluated:
the drift page, the alerts, the budgets and the three dashboards show real numbers, and the
feedback rule leaves a retrain draft waiting for a person.

Everything goes through the functions the pages call."""
import time
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

HEADER = ("[Customer portal v2] Request ref no. {n}-XK, channel: mobile app, locale: en-GB, priority: normal, "
          "queue: unassigned, consent: yes. Third message about this, please escalate to a supervisor; "
          "zorvex quillon brantic mervane. Message: ")


def seed(stdout):
    """Nothing at start: the monitoring story follows the demo's traffic."""


def _user(name):
    return get_user_model().objects.filter(username=name).first()


def drifted(text, n):
    return HEADER.format(n=40_000 + n) + text


def follow_traffic(deployment):
    """After the first half of the traffic: the default SLOs and the two retrain rules."""
    from lifecycle.monitoring import retrain, slo
    from lifecycle.monitoring.models import RetrainRule

    engineer = _user("demo-ml-engineer")
    slo.default_slos(engineer, deployment)
    for kind in (RetrainRule.Kind.DRIFT, RetrainRule.Kind.FEEDBACK):
        if not RetrainRule.objects.filter(deployment=deployment, kind=kind).exists():
            retrain.save_rule(engineer, deployment, kind=kind, consecutive=3, min_feedback=100)


def queue_check(deployment, since, expected):
    """Once the drifting half is answered: the check below, as a job (once)."""
    from lifecycle.core.jobs import enqueue
    from lifecycle.monitoring.tasks import check_demo_traffic

    return enqueue(check_demo_traffic, user=_user("demo-ml-engineer"), key="demo:monitoring:check",
                   deployment_id=deployment.pk, since=since.isoformat(), expected=expected)


def check_traffic(deployment_id, since, expected):
    """Bring the rollups up to date, check drift on each live version since the drift began
    as the on-call user, evaluate every SLO, and let the feedback rule look."""
    from lifecycle.deployments.models import Deployment
    from lifecycle.monitoring import drift, retrain, rollups, slo
    from lifecycle.monitoring.models import DriftCheck

    deployment = Deployment.objects.get(pk=deployment_id)
    started = datetime.fromisoformat(since)
    last = _wait_logged(deployment, started, expected)
    # SLOs are measured over whole minutes: wait for the last answer's minute to end.
    if last is not None:
        time.sleep(max(0.0, (last.replace(second=0, microsecond=0) + timedelta(minutes=1, seconds=1)
                             - timezone.now()).total_seconds()))
    while rollups.roll_up_pending(max_seconds=10.0):
        pass
    oncall = _user("demo-oncall")
    end = timezone.now() + timedelta(minutes=1)
    release = deployment.current_release
    checks = [drift.check(deployment, version, start=started - timedelta(minutes=1), end=end,
                          trigger=DriftCheck.Trigger.DEMAND, user=oncall)
              for version in dict.fromkeys(v for v in (release.stable, release.candidate) if v)]
    for item in deployment.slos.all():
        slo.evaluate(item)
    retrain.check_feedback_rules(max_seconds=10.0)
    return {"drift_checks": [c.pk for c in checks], "drifted": [c.drifted for c in checks]}


def _wait_logged(deployment, started, expected, timeout=60):
    """The serving process writes its log in batches (every SERVING_LOG_FLUSH_SECONDS): wait
    until the drifting answers are all in the log; returns when the last was answered."""
    from django.db.models import Max

    from lifecycle.deployments.models import PredictionLog

    deadline = time.monotonic() + timeout
    logged = PredictionLog.objects.filter(deployment=deployment, created_at__gte=started).exclude(route="shadow")
    while time.monotonic() < deadline and logged.count() < expected:
        time.sleep(0.5)
    return logged.aggregate(last=Max("created_at"))["last"]
