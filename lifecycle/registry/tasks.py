from lifecycle.core.jobs import Outcome, maintenance_step, task
from lifecycle.core.roles import ML_ENGINEER, READ_ROLES

# Who may read these jobs: those who manage webhooks (their results name webhooks and deliveries).
WEBHOOK_ROLES = (ML_ENGINEER,)


def _delivery_outcome(job):
    from lifecycle.registry.models import WebhookDelivery

    delivery = WebhookDelivery.objects.select_related("webhook").get(pk=job.kwargs["delivery_id"])
    hook, attempt = delivery.webhook, job.kwargs["attempt"]
    if job.result.get("skipped"):
        text = f"Attempt {attempt} of {delivery.event} to {hook.name} was already taken by another job; nothing sent."
    elif job.result.get("status") == WebhookDelivery.Status.DELIVERED:
        text = f"Delivered {delivery.event} to {hook.name} (attempt {attempt}, HTTP {job.result['status_code']})."
    else:
        text = f"Attempt {attempt} of {delivery.event} to {hook.name} failed; the webhook's page has the log."
    return Outcome(text, ((hook.name, hook.get_absolute_url()),))


@task(queue="default", roles=WEBHOOK_ROLES, outcome=_delivery_outcome)
def deliver_webhook(job, *, delivery_id, attempt):
    """One attempt of one webhook delivery (registry/webhooks.py)."""
    from lifecycle.registry import webhooks

    return webhooks.deliver(delivery_id, attempt)


@maintenance_step("webhook_retries")
def dispatch_webhook_retries():
    """Jobs for the webhook deliveries whose next attempt is due (run by every worker's
    maintenance pass and `manage.py jobs_maintain`)."""
    from lifecycle.registry import webhooks

    return webhooks.dispatch_due()


# --- the demo (registry/demo.py) ----------------------------------------------------------------


def _demo_outcome(job):
    from lifecycle.registry.models import ModelVersion

    version = ModelVersion.objects.filter(pk=(job.result or {}).get("version")).select_related("model").first()
    if version is None:
        return Outcome("Queued the demo version's registration.", ())
    return Outcome(f"Registered {version} and asked for staging.", ((str(version), version.get_absolute_url()),))


@task(queue="default", roles=READ_ROLES, outcome=_demo_outcome)
def queue_demo_registration(job):
    """Queue the demo registration behind the demo run's training (registry/demo.py)."""
    from lifecycle.registry import demo

    return {"job": demo.queue_registration().pk}


@task(queue="training", roles=READ_ROLES, outcome=_demo_outcome)
def register_demo_version(job):
    """Register the trained demo run and request staging (registry/demo.py)."""
    from lifecycle.registry import demo

    return {"version": demo.register().pk}
