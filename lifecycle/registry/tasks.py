from lifecycle.core.jobs import Outcome, maintenance_step, task
from lifecycle.core.roles import ML_ENGINEER

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
