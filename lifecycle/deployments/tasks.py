"""The deployments' housekeeping, run by every worker's maintenance pass (and
`manage.py jobs_maintain`): verdicts on live candidates, rollbacks waiting on a serving
process that stopped reporting, promotions the registry decided, and the log's retention."""
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from lifecycle.core.jobs import maintenance_step, task
from lifecycle.core.roles import READ_ROLES
from lifecycle.deployments import feedback_export  # noqa: F401  (its task registers where tasks are looked up)

PURGE_BATCH = 10_000


@maintenance_step("release_verdicts")
def evaluate_verdicts():
    """Evaluate every live candidate not yet failed; a failure rolls it back (also after a
    pass: a candidate that gets worse while waiting for its promotion still leaves)."""
    from lifecycle.deployments import verdicts
    from lifecycle.deployments.models import Release

    decided = 0
    live = Release.objects.filter(status__in=[Release.Status.ACTIVE, Release.Status.PROMOTING], candidate__isnull=False,
                                  verdict__in=[Release.Verdict.PENDING, Release.Verdict.PASSED]).select_related("deployment")
    for release in live:
        result = verdicts.evaluate(release)
        if result.verdict != Release.Verdict.PENDING:
            decided += result.verdict != release.verdict
            release.record_verdict(result)
        elif release.verdict == Release.Verdict.PASSED:  # the pass and its reason stand; the numbers move on
            Release.objects.filter(pk=release.pk).update(verdict_numbers=result.numbers, verdict_at=timezone.now())
        else:
            Release.objects.filter(pk=release.pk).update(verdict_numbers=result.numbers, verdict_reason=result.reason,
                                                          verdict_at=timezone.now())
    return decided


@maintenance_step("rollbacks")
def complete_rollbacks():
    from lifecycle.deployments.models import Release, Rollback

    done = Rollback.complete_pending()
    # A promotion decided while this process was down (the registry's receiver missed it).
    for release in Release.objects.filter(status=Release.Status.PROMOTING):
        done += bool(release.complete_promotion())
    return done


@maintenance_step("prediction_retention")
def purge_predictions():
    """Delete prediction log entries past PREDICTION_RETENTION_DAYS, a batch per pass so a
    large backlog never holds a long lock."""
    from lifecycle.deployments.models import PredictionLog

    days = settings.PREDICTION_RETENTION_DAYS
    if days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=days)
    ids = list(PredictionLog.objects.filter(created_at__lt=cutoff).order_by("created_at")
               .values_list("pk", flat=True)[:PURGE_BATCH])
    if not ids:
        return 0
    deleted, _ = PredictionLog.objects.filter(pk__in=ids).delete()
    return deleted


# --- the demo (deployments/demo.py) ---------------------------------------------------------------


def _demo_outcome(job):
    from lifecycle.core.jobs import Outcome
    from lifecycle.deployments.demo import NAME
    from lifecycle.deployments.models import Deployment

    deployment = Deployment.objects.filter(name=NAME).first()
    result = job.result or {}
    if "requests" in result:
        text = f"Sent {result['requests']} requests and {result['feedback']} feedback answers to {NAME}."
    elif deployment is None:
        text = "Started the demo's second run; the deployment follows its training."
    else:
        text = f"Deployed {NAME} with a canary."
    return Outcome(text, ((NAME, deployment.get_absolute_url()),) if deployment else ())


@task(queue="default", roles=READ_ROLES, outcome=_demo_outcome)
def start_demo_candidate(job):
    from lifecycle.deployments import demo

    return demo.start_candidate_run()


@task(queue="training", roles=READ_ROLES, outcome=_demo_outcome)
def deploy_demo(job):
    from lifecycle.deployments import demo

    return demo.deploy()
