"""Simulated traffic for the demo deployment (`manage.py demo_traffic`, started by the demo):
support tickets from the demo dataset's test split sent over HTTP through the serving process,
keyed by customer so each stays on one side of the canary, with feedback from simulated
support agents (the dataset's label: where the model missed, an override).

Halfway through the inputs drift (monitoring/demo.py `drifted`) and the agents answer every
ticket; at the half the demo engineer gives the deployment its SLOs and retrain rules and asks
for the canary's promotion, and at the end monitoring's check is queued. With `keep_going`, one
drifting ticket every few seconds follows, so the dashboards stay live.

Restartable: what the log already holds for the deployment counts as sent, so a second start
continues the story instead of sending it again."""
import logging
import time
import urllib.error

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from lifecycle.deployments import demo as deployments_demo
from lifecycle.monitoring import demo as monitoring_demo

log = logging.getLogger(__name__)

REQUESTS = 600  # the story's; half plain, half drifting
RATE = 4.0  # requests per second during the story
FEEDBACK_EVERY = 3  # in the plain half; every answer in the drifting half
TRICKLE_SECONDS = 3.0  # with keep_going, one drifting request this often
WAIT_SECONDS = 2.0


def _engineer():
    return get_user_model().objects.filter(username="demo-ml-engineer").first()


def wait_for_canary(name, *, timeout=None):
    """The demo deployment once its canary is released (the story's training comes first)."""
    from lifecycle.deployments.models import Deployment

    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        deployment = Deployment.objects.filter(name=name).first()
        if deployment is not None and deployment.current_release.candidate_id:
            return deployment
        time.sleep(WAIT_SECONDS)
    raise TimeoutError(f"{name} has no canary after {timeout} s")


def already_sent(deployment):
    from lifecycle.deployments.models import PredictionLog

    return PredictionLog.objects.filter(deployment=deployment).exclude(route="shadow").count()


def _examples(deployment, split_name, n):
    from lifecycle.datasets.models import Example

    split = {"test": Example.TEST, "validation": Example.VALIDATION}[split_name]
    version = deployment.current_release.stable.run.dataset_version
    rows = list(Example.objects.filter(version=version, split=split).order_by("row")
                .values_list("text", "label", "group")[:n])
    if not rows:
        raise RuntimeError(f"the demo dataset version {version} has no {split_name} split to send")
    return rows


class Sender:
    """One token, the serving process's address, and the pace."""

    def __init__(self, deployment, rate):
        from lifecycle.deployments.models import ServingToken

        self.deployment, self.interval = deployment, 1.0 / rate
        _token, self.key = ServingToken.issue(_engineer(), "demo traffic", [deployment], rate_per_second=200, burst=400)
        self.base = f"http://{settings.SERVING_HOST}:{settings.SERVING_PORT}"
        deployments_demo.wait_ready(self.base, self.key, name=deployment.name)
        self.next_at = time.monotonic()

    def send(self, text, group, label=None):
        """One ticket (and its feedback); a refusal or a lost connection is logged and the
        traffic goes on, as a client's would."""
        time.sleep(max(0.0, self.next_at - time.monotonic()))
        self.next_at = max(self.next_at + self.interval, time.monotonic())
        try:
            answer = deployments_demo.post(f"{self.base}/v1/deployments/{self.deployment.name}/predict", self.key,
                                           {"inputs": [text], "key": group})
            if label is not None:
                deployments_demo.post(f"{self.base}/v1/feedback", self.key, {
                    "request_id": answer["request_id"], "label": label, "note": "Demo: the support agent's route."})
        except (urllib.error.URLError, OSError) as exc:
            log.warning("demo traffic: a request to %s failed (%s); going on", self.base, exc)
            self.next_at += 1.0
            return None
        return answer


def halfway(deployment):
    """The first half is answered: SLOs and retrain rules, and the canary's promotion asked for."""
    monitoring_demo.follow_traffic(deployment)
    release = deployment.current_release
    if release.candidate_is_live and release.status == release.Status.ACTIVE:
        release.promote(_engineer(), "Demo: the canary served its share; asking for production.")


def run(stdout, *, name=deployments_demo.NAME, requests=REQUESTS, rate=RATE, keep_going=False):
    deployment = wait_for_canary(name)
    sent = already_sent(deployment)
    half = requests // 2
    stdout.write(f"Demo traffic: {sent} of {requests} requests already answered"
                 + (f"; sending the rest to {name}" if sent < requests else "; the story's traffic is done"))
    if sent < requests:
        sender = Sender(deployment, rate)
        _story(sender, sent, requests, half)
    if keep_going:
        _trickle(Sender(deployment, 1.0 / TRICKLE_SECONDS), requests)


def _story(sender, sent, requests, half):
    deployment = sender.deployment
    plain = _examples(deployment, "test", half)
    drifting = _examples(deployment, "validation", requests - half)
    if sent >= half:
        halfway(deployment)  # again: each part of it is done once
    since = timezone.now()
    for index in range(sent, requests):
        if index == half:
            halfway(deployment)
            since = timezone.now()
        if index < half:
            text, label, group = plain[index % len(plain)]
            sender.send(text, group or str(index), label if index % FEEDBACK_EVERY == 0 else None)
        else:
            text, label, group = drifting[(index - half) % len(drifting)]
            sender.send(monitoring_demo.drifted(text, index), group or str(index), label)
    expected = requests - max(sent, half)
    monitoring_demo.queue_check(deployment, since, expected)


def _trickle(sender, start):
    drifting = _examples(sender.deployment, "validation", 500)
    index = start
    while True:
        text, _label, group = drifting[index % len(drifting)]
        sender.send(monitoring_demo.drifted(text, index), group or str(index))
        index += 1
