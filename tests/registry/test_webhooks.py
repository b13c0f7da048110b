"""Webhooks: engineers make them (the secret shown once) and disable them (audited); bad URLs
are refused with the reason and nothing saved; registry events reach a local receiver through
real burst workers, signed so that the `standardwebhooks` package verifies them; a failed
attempt is retried by the workers' maintenance pass after its backoff; an attempt is made once
however many jobs carry it; the URL is checked again at delivery (DNS rebinding)."""
import base64
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from lifecycle.core.jobs import enqueue, outcome_of
from lifecycle.core.models import AuditEvent, Job
from lifecycle.core.worker import MAINTENANCE_LOCK_KEY
from lifecycle.registry import webhooks
from lifecycle.registry.models import (
    WEBHOOK_EVENTS, PromotionRequest, Stage, Webhook, WebhookAttempt, WebhookDelivery, WebhookError,
)
from lifecycle.registry.tasks import deliver_webhook
from tests.conftest import make_user
from tests.lib.fakedns import FakeDNS
from tests.lib.receiver import Receiver
from tests.registry.factories import make_model, registered
from tests.workers import run_burst

PUBLIC = "93.184.216.34"
# What a burst worker needs to reach the test's receiver: plain http (DEBUG) and 127.0.0.1
# opened in the SSRF guard's allow-list, for that worker process only.
RECEIVER_ENV = {"DEBUG": "true", "OUTBOUND_ALLOW_HOSTS": "127.0.0.1"}


@pytest.fixture
def dns(monkeypatch):
    dns = FakeDNS(monkeypatch)
    dns.set("hooks.example.com", PUBLIC)
    dns.set("internal.example.com", "10.0.0.1")
    return dns


@pytest.fixture
def receiver_allowed(settings):
    """This test's own process may reach a receiver on 127.0.0.1 over http."""
    settings.DEBUG = True
    settings.OUTBOUND_ALLOW_HOSTS = ["127.0.0.1"]


def new_hook(user, url, events=WEBHOOK_EVENTS, name="deploy bot"):
    return Webhook.create(user, name=name, url=url, events=list(events))


def emit(event="stage.changed", obj=None, data=None):
    with transaction.atomic():
        return webhooks.emit(event, obj, data or {"model": "intent-router", "version": 1, "from": "candidate",
                                                  "to": "staging", "request": 1})


def log_entries(delivery):
    return [(a.number, a.status_code, a.error) for a in WebhookAttempt.objects.filter(delivery=delivery)]


# --- pages -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_engineer_makes_a_webhook_and_sees_its_secret_once(client, engineer, dns):
    client.force_login(engineer)
    response = client.post("/registry/webhooks/new", {
        "name": "deploy bot", "url": "https://hooks.example.com/in/lifecycle?token=t0ps3cret",
        "events": ["promotion.approved", "model_version.created"]})
    assert response.status_code == 201, response.content.decode()[:2000]
    hook = Webhook.objects.get()
    assert (hook.name, hook.url, hook.active, hook.created_by) == (
        "deploy bot", "https://hooks.example.com/in/lifecycle?token=t0ps3cret", True, engineer)
    assert hook.events == ["model_version.created", "promotion.approved"]  # in the events' own order
    assert hook.secret.startswith("whsec_") and len(base64.b64decode(hook.secret[6:])) == 32
    assert hook.secret in response.content.decode()
    assert response["Cache-Control"] == "no-store"
    event = AuditEvent.objects.get(action="webhook.created")
    assert (event.actor, event.object_id) == ("erin-engineer", str(hook.pk))
    assert event.payload == {"name": "deploy bot", "host": "hooks.example.com",
                             "events": ["model_version.created", "promotion.approved"]}
    # Never again: not on its page, not in the list, not in the audit trail (nor the URL's token).
    for url in (hook.get_absolute_url(), "/registry/webhooks/"):
        page = client.get(url)
        assert page.status_code == 200 and "deploy bot" in page.content.decode()
        assert hook.secret not in page.content.decode()
    assert not AuditEvent.objects.filter(payload__icontains=hook.secret[6:]).exists()
    assert "t0ps3cret" not in str(event.payload)


BAD_URLS = [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://127.0.0.1:6379/", "127.0.0.1 is a loopback address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://2130706433/", "2130706433 is an address written as a number"),
    ("http://0x7f000001/", "0x7f000001 is an address written as a number"),
    ("http://localhost./", "localhost names this machine"),
    ("http://internal.example.com/hook", "internal.example.com (it resolves to 10.0.0.1) is a private address"),
    ("ftp://hooks.example.com/", "ftp:// is not accepted"),
    ("file:///etc/passwd", "file:// is not accepted"),
    ("https://erin:hunter2@hooks.example.com/", "credentials"),
    ("http://[::ffff:127.0.0.1]/", "a loopback address (127.0.0.1, inside an IPv6 address)"),
    ("http://100.64.0.1/", "a shared (carrier-grade NAT) address"),
    ("http://0.0.0.0/", "the unspecified address"),
    ("http://[fd00::1]/", "fd00::1 is a private address"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "a cloud metadata address"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal is a cloud metadata service"),
    ("http://nowhere.example.com/", "nowhere.example.com does not resolve"),
    ("not a url", "spaces or control characters"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("url, reason", BAD_URLS, ids=[url for url, _ in BAD_URLS])
def test_a_bad_url_is_refused_with_the_reason_and_nothing_is_saved(client, engineer, dns, settings, url, reason):
    settings.DEBUG = True  # plain http allowed: what is refused is the address itself
    client.force_login(engineer)
    response = client.post("/registry/webhooks/new", {"name": "bot", "url": url, "events": ["stage.changed"]})
    assert response.status_code == 400
    assert reason in response.content.decode().replace("&#x27;", "'")
    assert not Webhook.objects.exists()
    assert not AuditEvent.objects.filter(action="webhook.created").exists()


@pytest.mark.django_db
def test_plain_http_is_refused_unless_debug(client, engineer, dns):
    client.force_login(engineer)
    response = client.post("/registry/webhooks/new", {"name": "bot", "url": "http://hooks.example.com/",
                                                      "events": ["stage.changed"]})
    assert response.status_code == 400
    assert "Use an https URL: plain http is accepted only while DEBUG is on" in response.content.decode()
    assert not Webhook.objects.exists()


BAD_FIELDS = [
    ({"events": []}, "This field is required"),
    ({"events": ["model_version.deleted"]}, "Select a valid choice"),
    ({"name": ""}, "This field is required"),
    ({"name": "x" * 101}, "at most 100 characters"),
    ({"url": ""}, "This field is required"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("change, message", BAD_FIELDS, ids=[str(change)[:40] for change, _ in BAD_FIELDS])
def test_a_bad_field_is_refused_and_nothing_is_saved(client, engineer, dns, change, message):
    client.force_login(engineer)
    data = {"name": "bot", "url": "https://hooks.example.com/", "events": ["stage.changed"], **change}
    response = client.post("/registry/webhooks/new", data)
    assert response.status_code == 400 and message in response.content.decode()
    assert not Webhook.objects.exists() and not AuditEvent.objects.filter(action="webhook.created").exists()


@pytest.mark.django_db
def test_the_model_method_refuses_what_the_form_would(engineer, dns):
    for kwargs, message in (({"events": ["nope"]}, "Unknown event"), ({"events": []}, "at least one event"),
                            ({"name": "  "}, "needs a name"), ({"url": "http://10.0.0.1/"}, "Use an https URL")):
        args = {"name": "bot", "url": "https://hooks.example.com/", "events": ["stage.changed"], **kwargs}
        with pytest.raises(WebhookError, match=message):
            Webhook.create(engineer, **args)
    assert not Webhook.objects.exists()


@pytest.mark.django_db
def test_only_engineers_manage_or_read_webhooks(client, engineer, approver, viewer, oncall, stranger, dns):
    hook = new_hook(engineer, "https://hooks.example.com/")
    for user in (approver, viewer, oncall, stranger):
        client.force_login(user)
        for method, url in (("get", "/registry/webhooks/"), ("get", "/registry/webhooks/new"),
                            ("post", "/registry/webhooks/new"), ("get", hook.get_absolute_url()),
                            ("post", f"/registry/webhooks/{hook.pk}/disable")):
            assert getattr(client, method)(url).status_code == 403, (user.username, method, url)
    hook.refresh_from_db()
    assert hook.active and Webhook.objects.count() == 1
    client.force_login(engineer)
    assert client.get("/registry/webhooks/999999/").status_code == 404
    assert client.post("/registry/webhooks/999999/disable").status_code == 404
    assert client.get(f"/registry/webhooks/{hook.pk}/disable").status_code == 405


@pytest.mark.django_db
def test_disabling_is_a_post_with_csrf_audited_and_fails_what_was_waiting(engineer, dns, redis):
    from django.test import Client

    hook = new_hook(engineer, "https://hooks.example.com/")
    [waiting] = emit()
    client = Client(enforce_csrf_checks=True)
    client.force_login(engineer)
    assert client.post(f"/registry/webhooks/{hook.pk}/disable").status_code == 403  # no CSRF token
    hook.refresh_from_db()
    assert hook.active
    page = client.get(hook.get_absolute_url())
    token = page.cookies["csrftoken"].value
    response = client.post(f"/registry/webhooks/{hook.pk}/disable", {"csrfmiddlewaretoken": token}, follow=True)
    assert response.status_code == 200 and "disabled: nothing more is sent to it" in response.content.decode()
    hook.refresh_from_db()
    assert (hook.active, hook.disabled_by) == (False, engineer)
    waiting.refresh_from_db()
    assert waiting.status == "failed" and "disabled before this was delivered" in waiting.last_error
    event = AuditEvent.objects.get(action="webhook.disabled")
    assert event.payload == {"name": "deploy bot", "undelivered": 1} and event.actor == engineer.username
    again = client.post(f"/registry/webhooks/{hook.pk}/disable", {"csrfmiddlewaretoken": token}, follow=True)
    assert "was already disabled" in again.content.decode()
    assert AuditEvent.objects.filter(action="webhook.disabled").count() == 1
    assert emit() == []  # a disabled webhook gets no new deliveries
    assert webhooks.deliver(waiting.pk, 1)["skipped"]  # and its waiting job sends nothing


@pytest.mark.django_db
def test_the_delivery_log_is_paged_on_the_server(client, engineer, dns, redis):
    hook = new_hook(engineer, "https://hooks.example.com/")
    made = [emit()[0] for _ in range(30)]
    client.force_login(engineer)
    first = client.get(hook.get_absolute_url())
    rows = first.context["page"].items
    assert [d.pk for d in rows] == [d.pk for d in reversed(made)][:25]
    older = client.get(hook.get_absolute_url(), {"before": first.context["page"].older})
    assert [d.pk for d in older.context["page"].items] == [d.pk for d in reversed(made)][25:]
    assert older.context["page"].older is None
    for bad in ({"before": "abc"}, {"before": "-1"}, {"after": "99999999999999999999"}):
        assert client.get(hook.get_absolute_url(), bad).status_code == 400


# --- emitting --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_emit_makes_one_delivery_per_active_subscribed_webhook_and_its_job(engineer, dns, redis):
    wanted = new_hook(engineer, "https://hooks.example.com/a", events=["stage.changed"], name="a")
    new_hook(engineer, "https://hooks.example.com/b", events=["promotion.requested"], name="b")
    gone = new_hook(engineer, "https://hooks.example.com/c", events=["stage.changed"], name="c")
    gone.disable(engineer)
    [delivery] = emit("stage.changed", None, {"model": "m", "version": 3})
    assert (delivery.webhook, delivery.event, delivery.status, delivery.attempts) == (wanted, "stage.changed", "pending", 0)
    assert delivery.event_id.startswith("evt_")
    import json
    body = json.loads(delivery.payload)
    assert body["type"] == "stage.changed" and body["data"] == {"model": "m", "version": 3} and body["timestamp"]
    job = Job.objects.get(task=deliver_webhook.task_name)
    assert (job.queue, job.kwargs, job.status) == ("default", {"delivery_id": delivery.pk, "attempt": 1}, "queued")
    with pytest.raises(ValueError, match="not a webhook event"):
        emit("model.deleted")


@pytest.mark.django_db
def test_nothing_is_delivered_for_a_change_that_rolls_back(engineer, dns, redis):
    new_hook(engineer, "https://hooks.example.com/")
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            webhooks.emit("stage.changed", None, {"model": "m"})
            raise RuntimeError("the change failed")
    assert not WebhookDelivery.objects.exists() and not Job.objects.filter(task=deliver_webhook.task_name).exists()


@pytest.mark.django_db
def test_an_attempt_is_claimed_once(engineer, dns, redis):
    new_hook(engineer, "https://hooks.example.com/")
    [delivery] = emit()
    first = WebhookDelivery.claim(delivery.pk, 1, lease=webhooks.ATTEMPT_LEASE)
    assert first is not None and first.number == 1
    assert WebhookDelivery.claim(delivery.pk, 1, lease=webhooks.ATTEMPT_LEASE) is None
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and WebhookAttempt.objects.filter(delivery=delivery).count() == 1


# --- delivering through real workers ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("store_with_output")
def test_registry_events_reach_the_receiver_signed(client, trained, tmp_path, redis, receiver_allowed):
    erin, ann = make_user("erin", "ml_engineer"), make_user("ann", "approver")
    with Receiver() as receiver:
        client.force_login(erin)
        response = client.post("/registry/webhooks/new", {"name": "everything", "url": receiver.url(),
                                                          "events": list(WEBHOOK_EVENTS)})
        assert response.status_code == 201, response.content.decode()[:2000]
        hook = Webhook.objects.get()
        receiver.secret = hook.secret
        version = registered(trained, erin, tmp_path)
        request = version.request_promotion(erin, Stage.STAGING, "good enough to try")
        request.approve(ann, "fine", seen_sha256=request.evidence_sha256)
        version.refresh_from_db()
        second = version.request_promotion(erin, Stage.PRODUCTION, "ship it")
        second.reject(ann, "not before the load test")
        log = run_burst(tmp_path, "default", env=RECEIVER_ENV)
    assert PromotionRequest.objects.get(pk=request.pk).status == "approved"
    deliveries = list(WebhookDelivery.objects.order_by("pk"))
    assert [d.event for d in deliveries] == ["model_version.created", "promotion.requested", "promotion.approved",
                                             "stage.changed", "promotion.requested", "promotion.rejected"]
    assert all(d.status == "delivered" and d.attempts == 1 and d.last_status_code == 200 for d in deliveries), log[-3000:]
    assert len(receiver.requests) == 6 and all(r["verified"] for r in receiver.requests)
    by_id = {r["headers"]["webhook-id"]: r for r in receiver.requests}
    for delivery in deliveries:
        assert by_id[delivery.event_id]["body"] == delivery.payload.encode()
        assert by_id[delivery.event_id]["path"] == "/hooks/lifecycle?source=registry"
        [attempt] = WebhookAttempt.objects.filter(delivery=delivery)
        assert (attempt.status_code, attempt.address, attempt.error) == (200, "127.0.0.1", "")
    import json
    changed = json.loads(deliveries[3].payload)["data"]
    assert changed == {"model": version.model.slug, "version": version.number, "from": "candidate", "to": "staging",
                       "request": request.pk}
    assert hook.secret not in log
    page = client.get(hook.get_absolute_url()).content.decode()
    assert page.count('status-succeeded">delivered<') == 6 and hook.secret not in page


@pytest.mark.django_db(transaction=True)
def test_a_failed_attempt_is_retried_by_the_maintenance_pass_after_its_backoff(tmp_path, redis, receiver_allowed):
    erin = make_user("erin", "ml_engineer")
    with Receiver(statuses=(503, 200)) as receiver:
        hook = new_hook(erin, receiver.url())
        receiver.secret = hook.secret
        [delivery] = emit("stage.changed", make_model(erin), None)
        run_burst(tmp_path, "default", env=RECEIVER_ENV)
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.last_error) == (
            "pending", 1, 503, "HTTP 503")
        wait = delivery.next_attempt_at - delivery.updated_at
        assert wait == webhooks.RETRY_DELAYS[0]
        # Not due yet: a worker's maintenance pass leaves it.
        redis.delete(MAINTENANCE_LOCK_KEY)
        run_burst(tmp_path, "default", env=RECEIVER_ENV)
        assert len(receiver.requests) == 1
        # Its time has come: the pass sends attempt 2 as a new job, and it lands.
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
        redis.delete(MAINTENANCE_LOCK_KEY)
        log = run_burst(tmp_path, "default", env=RECEIVER_ENV)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 2, 200), log[-3000:]
    assert log_entries(delivery) == [(1, 503, "HTTP 503"), (2, 200, "")]
    assert [r["verified"] for r in receiver.requests] == [True, True]
    assert len({r["headers"]["webhook-id"] for r in receiver.requests}) == 1  # one event, retried
    jobs = Job.objects.filter(task=deliver_webhook.task_name).order_by("pk")
    assert [(j.kwargs["attempt"], j.status) for j in jobs] == [(1, "succeeded"), (2, "succeeded")]
    assert outcome_of(jobs[1]).text == "Delivered stage.changed to deploy bot (attempt 2, HTTP 200)."


@pytest.mark.django_db(transaction=True)
def test_two_jobs_for_one_attempt_send_it_once(tmp_path, redis, receiver_allowed):
    erin = make_user("erin", "ml_engineer")
    with Receiver() as receiver:
        new_hook(erin, receiver.url())
        [delivery] = emit("stage.changed", make_model(erin), None)
        enqueue(deliver_webhook, delivery_id=delivery.pk, attempt=1)  # as a resend racing the first would
        run_burst(tmp_path, "default", env=RECEIVER_ENV)
    assert len(receiver.requests) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    results = [j.result for j in Job.objects.filter(task=deliver_webhook.task_name).order_by("pk")]
    assert sorted(bool(r.get("skipped")) for r in results) == [False, True]


# --- delivering, one attempt at a time (the job's function, in this process) ------------------


@pytest.mark.django_db
def test_every_attempt_fails_then_the_delivery_fails_for_good(engineer, redis, receiver_allowed, caplog):
    caplog.set_level("DEBUG")
    with Receiver(statuses=(500,)) as receiver:
        hook = new_hook(engineer, receiver.url())
        [delivery] = emit()
        for attempt in range(1, webhooks.MAX_ATTEMPTS + 1):
            assert webhooks.deliver(delivery.pk, attempt)["status"] == ("pending" if attempt < webhooks.MAX_ATTEMPTS else "failed")
            delivery.refresh_from_db()
            if attempt < webhooks.MAX_ATTEMPTS:
                assert delivery.next_attempt_at - delivery.updated_at == webhooks.RETRY_DELAYS[attempt - 1]
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 5, None)
    assert log_entries(delivery) == [(n, 500, "HTTP 500") for n in range(1, 6)]
    assert len(receiver.requests) == 5
    assert webhooks.dispatch_due() == 0 and webhooks.deliver(delivery.pk, 6)["skipped"]
    assert hook.secret not in caplog.text


@pytest.mark.django_db
def test_a_redirect_is_a_failed_attempt_not_followed(engineer, redis, receiver_allowed):
    with Receiver(statuses=(301,), location="http://169.254.169.254/latest/meta-data/") as receiver:
        new_hook(engineer, receiver.url())
        [delivery] = emit()
        webhooks.deliver(delivery.pk, 1)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_error) == ("pending", "HTTP 301 (redirects are not followed)")
    assert len(receiver.requests) == 1


@pytest.mark.django_db
def test_the_url_is_checked_again_at_delivery_dns_rebinding(engineer, dns, redis, settings):
    settings.DEBUG = True
    with Receiver() as receiver:
        # Public when saved; pointed at this machine (where something listens) by delivery time.
        dns.sequence("rebind.example.com", [PUBLIC], ["127.0.0.1"])
        new_hook(engineer, receiver.url("rebind.example.com"))
        [delivery] = emit()
        webhooks.deliver(delivery.pk, 1)
    assert receiver.requests == []
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.last_status_code is None
    assert delivery.last_error == ("Not sent: rebind.example.com (it resolves to 127.0.0.1) is a loopback address; "
                                   "only public addresses can be reached.")
    [attempt] = WebhookAttempt.objects.filter(delivery=delivery)
    assert attempt.address is None and attempt.error == delivery.last_error


@pytest.mark.django_db
def test_a_dead_attempt_is_retried_once_its_lease_runs_out(engineer, dns, redis):
    new_hook(engineer, "https://hooks.example.com/")
    [delivery] = emit()
    WebhookDelivery.claim(delivery.pk, 1, lease=webhooks.ATTEMPT_LEASE)  # and its worker dies here
    assert webhooks.dispatch_due() == 0  # within the lease
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert webhooks.dispatch_due() == 1 and webhooks.dispatch_due() == 0  # once, not per pass
    job = Job.objects.filter(task=deliver_webhook.task_name).latest("pk")
    assert job.kwargs == {"delivery_id": delivery.pk, "attempt": 2}
