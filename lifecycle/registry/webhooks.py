"""Webhooks for registry events: Standard Webhooks signing, delivered by a job on the
`default` queue. `emit` is called inside the transaction of the change it reports.

The wire format (https://www.standardwebhooks.com): a POST whose JSON body is
`{"type": event, "timestamp": ISO time, "data": {...}}`, with the headers `webhook-id` (the
event id, the same on every attempt), `webhook-timestamp` (Unix seconds of the attempt) and
`webhook-signature` (`v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed
with the base64-decoded part of the `whsec_` secret). Signing is done here by hand, in a
dozen lines of the standard library, rather than with the `standardwebhooks` package: the
scheme is that small, and the tests verify our signatures with that package, an
implementation we did not write, which they could not do if it also signed them.

How a delivery moves (each step a conditional UPDATE on the delivery row, models.py):

    emit         one WebhookDelivery per active subscribed webhook, and a job for attempt 1,
                 sent to RQ when the change commits (core/jobs.enqueue)
    deliver      the job: claim the attempt (nothing happens if another job did), check the
                 URL again (DNS rebinding), POST to the checked address, log the attempt;
                 on failure schedule the next attempt after RETRY_DELAYS, or fail for good
    dispatch_due every worker's maintenance pass: a new job for each delivery whose next
                 attempt is due. A retry is a new job, not an RQ retry: RQ retries need a
                 scheduler process and would re-run a Job row that is already finished.
                 The same pass resends a job that was lost (Redis down when the change
                 committed, a worker killed mid-attempt) once its lease runs out.
"""
import base64
import hashlib
import hmac
import http.client
import json
import logging
import secrets
import time
import uuid
from datetime import timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from lifecycle.core.queues import QueueUnavailable
from lifecycle.lib import outbound
from lifecycle.registry import models as registry_models
from lifecycle.registry.models import Webhook, WebhookDelivery

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
TIMEOUT_SECONDS = 10  # per connect, send and read of one attempt
# Waits between attempts: five attempts over about 1 h 13 min, then the delivery fails.
RETRY_DELAYS = (timedelta(seconds=30), timedelta(minutes=2), timedelta(minutes=10), timedelta(hours=1))
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
# A claimed attempt finishes within a few TIMEOUT_SECONDS; past this its worker is taken for dead.
ATTEMPT_LEASE = timedelta(minutes=5)
# A job sent but not yet claimed may sit behind a long job on the queue; past this it is resent
# (a duplicate only loses the claim).
DISPATCH_LEASE = timedelta(minutes=10)
DISPATCH_BATCH = 200  # deliveries one maintenance pass sends at most
USER_AGENT = "Lifecycle-Webhooks/1"


# --- signing ---------------------------------------------------------------------------------


def new_secret():
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret, msg_id, timestamp, body):
    """The webhook-signature header value for `body` (str) sent as `msg_id` at `timestamp`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers_for(delivery, secret, timestamp):
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, delivery.event_id, timestamp, delivery.payload),
    }


def body_for(event, when, data):
    """The JSON text every attempt of this event sends (ASCII: the bytes equal the text)."""
    return json.dumps({"type": event, "timestamp": when.isoformat(), "data": data}, cls=DjangoJSONEncoder,
                      sort_keys=True, separators=(",", ":"))


# --- events of higher apps ----------------------------------------------------------------


def register_events(*names):
    """Let a higher app (monitoring: "alert.fired", "alert.resolved") send its own events
    through these signed webhooks without the registry importing it: the names join the
    events a webhook may subscribe to (the model's check and the form's choices). Idempotent."""
    from lifecycle.registry.webhook_forms import WebhookForm

    added = tuple(name for name in names if name not in registry_models.WEBHOOK_EVENTS)
    if added:
        registry_models.WEBHOOK_EVENTS += added
        WebhookForm.base_fields["events"].choices = [(e, e) for e in registry_models.WEBHOOK_EVENTS]
    return registry_models.WEBHOOK_EVENTS


# --- emitting --------------------------------------------------------------------------------


def emit(event, obj, data):
    """Queue a delivery of `event` to every active webhook subscribed to it, once the
    transaction commits; returns the deliveries made. `obj` is the object the event is about
    (`data` already names it for the receiver)."""
    if event not in registry_models.WEBHOOK_EVENTS:
        raise ValueError(f"{event!r} is not a webhook event")
    hooks = Webhook.objects.subscribed_to(event)
    if not hooks:
        return []
    now = timezone.now()
    event_id = f"evt_{uuid.uuid4().hex}"
    body = body_for(event, now, data)
    deliveries = [WebhookDelivery.objects.create(webhook=hook, event=event, event_id=event_id, payload=body,
                                                 next_attempt_at=now + DISPATCH_LEASE) for hook in hooks]
    for delivery in deliveries:
        _send_first_attempt(delivery, now)
    return deliveries


def _send_first_attempt(delivery, now):
    try:
        _enqueue(delivery.pk, 1)
    except QueueUnavailable:
        # The registry change must not fail because a notification cannot be queued: the
        # delivery is due now, and the next maintenance pass with Redis back sends it.
        log.warning("webhook delivery %s waits for the job queue (Redis unavailable)", delivery.pk)
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=now)


def _enqueue(delivery_id, attempt):
    from lifecycle.core.jobs import enqueue
    from lifecycle.registry.tasks import deliver_webhook

    return enqueue(deliver_webhook, delivery_id=delivery_id, attempt=attempt)


# --- delivering (the job) --------------------------------------------------------------------


def deliver(delivery_id, attempt):
    """Make attempt number `attempt` of a delivery, unless another job already took it.
    Returns what happened, as plain JSON for the job's result."""
    claimed = WebhookDelivery.claim(delivery_id, attempt, lease=ATTEMPT_LEASE)
    if claimed is None:
        return {"delivery": delivery_id, "attempt": attempt, "skipped": True}
    delivery = WebhookDelivery.objects.select_related("webhook").get(pk=delivery_id)
    retry_in = RETRY_DELAYS[attempt - 1] if attempt < MAX_ATTEMPTS else None
    if not delivery.webhook.active:
        delivery.settle(claimed, error="The webhook was disabled before this was delivered.")
    else:
        delivery.settle(claimed, retry_in=retry_in, **_attempt(delivery))
    return {"delivery": delivery_id, "attempt": attempt, "status": delivery.status,
            "status_code": delivery.last_status_code}


def _attempt(delivery):
    """One POST: {"status_code", "error", "address"} for WebhookDelivery.settle."""
    hook = delivery.webhook
    try:
        target = outbound.check_url(hook.url)  # again: the name may point elsewhere since it was saved
    except outbound.Refused as exc:
        return {"error": f"Not sent: {exc}"}
    headers = headers_for(delivery, hook.secret, int(time.time()))
    try:
        response = outbound.post(target, delivery.payload.encode(), headers, timeout=TIMEOUT_SECONDS)
    except (OSError, http.client.HTTPException) as exc:
        return {"error": _network_error(exc)}
    code = response.status
    error = "" if 200 <= code < 300 else f"HTTP {code}" + (" (redirects are not followed)" if 300 <= code < 400 else "")
    return {"status_code": code, "error": error, "address": response.address}


def _network_error(exc):
    if isinstance(exc, TimeoutError):
        return f"No answer within {TIMEOUT_SECONDS} s."
    return f"{type(exc).__name__}: {exc}"


# --- dispatching retries (a maintenance step, registry/tasks.py) ------------------------------


def dispatch_due():
    """Send a job for every pending delivery whose next attempt is due; returns how many."""
    due = (WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=timezone.now())
           .order_by("next_attempt_at")[:DISPATCH_BATCH])
    sent = 0
    for delivery in due:
        if delivery.attempts >= MAX_ATTEMPTS:
            delivery.give_up("The last attempt ended without a result (its worker stopped).")
            continue
        try:
            with transaction.atomic():
                if delivery.dispatch(lease=DISPATCH_LEASE):
                    _enqueue(delivery.pk, delivery.attempts + 1)
                    sent += 1
        except QueueUnavailable:
            log.warning("webhook retries wait: the job queue is unavailable (Redis)")
            break
    return sent
