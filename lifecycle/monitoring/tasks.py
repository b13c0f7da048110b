"""The monitoring queue's jobs and the maintenance pass's monitoring steps. The work lives in
the modules imported here; importing them registers their tasks and steps where RQ and the
maintenance pass look them up (core/jobs.py autodiscovers each app's tasks module). The
demo's one job is here too (monitoring/demo.py)."""
from lifecycle.core.jobs import Outcome, task
from lifecycle.core.roles import READ_ROLES
from lifecycle.monitoring import (  # noqa: F401
    alerts, drift, incidents, reference, report, retrain, rollups, slo,
)


def _demo_outcome(job):
    from django.urls import reverse

    from lifecycle.deployments.demo import NAME

    result = job.result or {}
    drifted = sum(bool(d) for d in result.get("drifted", []))
    return Outcome(f"Checked the demo's traffic: {drifted} of {len(result.get('drifted', []))} live versions "
                   "drifted; every SLO evaluated.", (("Drift", reverse("monitoring:drift", args=[NAME])),))


# On the training queue: behind the reference jobs the demo's releases queued, so the
# references are ready when the drift checks run.
@task(queue="training", roles=READ_ROLES, outcome=_demo_outcome)
def check_demo_traffic(job, deployment_id, since, expected):
    from lifecycle.monitoring import demo

    return demo.check_traffic(deployment_id, since, expected)
