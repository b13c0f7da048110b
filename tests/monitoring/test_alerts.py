"""Alerts: one open alert per fingerprint (firing again counts), cleared when the condition
clears, acknowledged and resolved by people (audited), silences (made, matching, expiring,
lifted; a silenced alert is kept and shown but notifies nobody), the registry's signed webhooks
carrying alert.fired and alert.resolved to a receiver, the alerts page grouped by deployment,
filtered and paged on the server, and refusals: strangers, readers acting, bad input."""
import json
import re
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from lifecycle.core.models import AuditEvent
from lifecycle.deployments.models import Deployment
from lifecycle.monitoring import alerts
from lifecycle.monitoring.models import Alert, MonitoringError, Silence
from lifecycle.registry.models import Stage, Webhook, WebhookDelivery
from tests.deployments.factories import promote
from tests.lib.fakedns import FakeDNS
from tests.lib.receiver import Receiver
from tests.registry.factories import registered
from tests.workers import run_burst

EVIDENCE = {"statistic": 0.31, "threshold": 0.1, "window": {"start": "2026-01-01T10:00:00+00:00",
                                                            "end": "2026-01-01T11:00:00+00:00"},
            "link": "/monitoring/drift/7"}


@pytest.fixture
def deployment(trained, people, tmp_path, store_with_output):
    version = registered(trained, people["erin"], tmp_path, slug="intent-router", name="lora minilm v1")
    promote(version, Stage.PRODUCTION, people["erin"], people["ann"], people["abe"])
    return Deployment.create(people["erin"], name="support-router", model=version.model, stable=version)


@pytest.fixture
def second(deployment, people):
    return Deployment.create(people["erin"], name="billing-router", model=deployment.model,
                             stable=deployment.current_release.stable)


def fire(deployment, key="drift:v1", severity="ticket", kind="drift", title="text_length drifted", **kw):
    with transaction.atomic():
        return alerts.fire(deployment, kind=kind, severity=severity, key=key, title=title,
                           evidence={**EVIDENCE, **kw})


def hook(user, events=("alert.fired", "alert.resolved"), url="https://hooks.example.com/alerts"):
    return Webhook.create(user, name="pager bridge", url=url, events=list(events))


@pytest.fixture
def dns(monkeypatch):
    fake = FakeDNS(monkeypatch)
    fake.set("hooks.example.com", "93.184.216.34")
    return fake


@pytest.mark.django_db
def test_the_same_condition_is_one_open_alert_that_counts(deployment, people):
    first = fire(deployment, statistic=0.2)
    again = fire(deployment, statistic=0.4)
    assert again.pk == first.pk
    first.refresh_from_db()
    assert (first.fired_count, first.evidence["statistic"], first.status) == (2, 0.4, "firing")
    assert first.last_fired_at > first.first_fired_at and first.evidence["key"] == "drift:v1"
    assert first.fingerprint == alerts.fingerprint(deployment, "drift", "drift:v1", "ticket")
    assert fire(deployment, severity="page").pk != first.pk  # another severity: another condition
    assert fire(deployment, key="drift:v2").pk != first.pk
    assert AuditEvent.objects.filter(action="alert.fired").count() == 3  # opened three times; a re-fire is not news
    alerts.acknowledge(people["ona"], first)
    assert fire(deployment).pk == first.pk and Alert.objects.get(pk=first.pk).status == "acknowledged"
    # Once resolved, the condition firing again is a new alert.
    alerts.resolve(people["ona"], first, "rolled back to v1")
    reopened = fire(deployment)
    assert reopened.pk != first.pk and reopened.fired_count == 1 and reopened.status == "firing"
    assert alerts.open_alerts(deployment=deployment).count() == 3
    assert alerts.open_alerts(model=deployment.model, severity="page").count() == 1


@pytest.mark.django_db
def test_clear_resolves_only_the_cleared_condition(deployment):
    page, ticket = fire(deployment, key="slo:1", severity="page", kind="slo"), fire(deployment, key="slo:1", kind="slo")
    other = fire(deployment, key="slo:2", kind="slo")
    with transaction.atomic():
        assert alerts.clear(deployment, kind="slo", key="slo:1", severity="page") == 1
    assert Alert.objects.get(pk=ticket.pk).status == "firing"
    with transaction.atomic():
        assert alerts.clear(deployment, kind="slo", key="slo:1") == 1
        assert alerts.clear(deployment, kind="slo", key="slo:1") == 0
    for alert in (page, ticket):
        alert.refresh_from_db()
        assert (alert.status, alert.resolve_reason, alert.resolved_by) == ("resolved", "condition cleared", None)
    assert Alert.objects.get(pk=other.pk).status == "firing"
    event = AuditEvent.objects.filter(action="alert.resolved").first()
    assert event.actor == "" and event.payload["reason"] == "condition cleared"


@pytest.mark.django_db
def test_people_acknowledge_then_resolve_audited_and_wrong_steps_are_refused(deployment, people):
    alert = fire(deployment)
    alerts.acknowledge(people["ona"], alert)
    with pytest.raises(MonitoringError, match="acknowledged already"):
        alerts.acknowledge(people["erin"], alert)
    with pytest.raises(MonitoringError, match="Say why"):
        alerts.resolve(people["ona"], alert, "   ")
    assert Alert.objects.get(pk=alert.pk).status == "acknowledged"
    alerts.resolve(people["erin"], alert, "feature pipeline fixed")
    with pytest.raises(MonitoringError, match="resolved already"):
        alerts.resolve(people["erin"], alert, "again")
    alert.refresh_from_db()
    assert (alert.acknowledged_by, alert.resolved_by, alert.resolve_reason) == (
        people["ona"], people["erin"], "feature pipeline fixed")
    trail = [(e.action, e.actor) for e in AuditEvent.objects.filter(object_id=str(alert.pk),
                                                                     action__startswith="alert.").order_by("seq")]
    assert trail == [("alert.fired", ""), ("alert.acknowledged", "ona"), ("alert.resolved", "erin")]
    with pytest.raises(MonitoringError, match="Unknown alert kind"):
        fire(deployment, kind="vibes")


@pytest.mark.django_db
def test_silences_match_expire_and_lift_and_a_silenced_alert_notifies_nobody(deployment, second, people, dns, redis):
    hook(people["erin"])
    now = timezone.now()
    quiet = alerts.silence(people["ona"], deployment, "drift", now + timedelta(hours=1), "re-indexing the catalogue")
    assert AuditEvent.objects.get(action="silence.created").payload["reason"] == "re-indexing the catalogue"
    silenced = fire(deployment)
    loud = fire(deployment, kind="slo", key="slo:1", severity="page")  # another kind: not covered
    elsewhere = fire(second)  # another deployment: not covered
    assert alerts.is_silenced(silenced) and not alerts.is_silenced(loud) and not alerts.is_silenced(elsewhere)
    assert alerts.silenced_ids([silenced, loud, elsewhere]) == {silenced.pk}
    assert Alert.objects.filter(pk=silenced.pk, status="firing").exists()  # kept
    sent = set(WebhookDelivery.objects.values_list("payload", flat=True))
    assert {json.loads(p)["data"]["alert"] for p in sent} == {loud.pk, elsewhere.pk}
    assert not alerts.is_silenced(silenced, at=now + timedelta(hours=2))  # it expires at its end
    everything = alerts.silence(people["ona"], deployment, "", now + timedelta(hours=1), "maintenance window")
    assert alerts.is_silenced(loud)
    alerts.lift(people["erin"], everything)
    alerts.lift(people["erin"], quiet)
    assert not alerts.is_silenced(silenced) and not alerts.is_silenced(loud)
    with pytest.raises(MonitoringError, match="over already"):
        alerts.lift(people["erin"], quiet)
    assert AuditEvent.objects.filter(action="silence.lifted", actor="erin").count() == 2


@pytest.mark.django_db
def test_bad_silences_are_refused_and_nothing_is_written(deployment, people):
    now = timezone.now()
    cases = [("drift", now + timedelta(hours=1), "", "Say why the alerts are silenced"),
             ("drift", now - timedelta(minutes=1), "deploying", "The end time is in the past"),
             ("vibes", now + timedelta(hours=1), "deploying", "Unknown kind 'vibes'"),
             ("", now + timedelta(days=31), "deploying", "at most 30 days")]
    for kind, ends_at, reason, message in cases:
        with pytest.raises(MonitoringError, match=message):
            alerts.silence(people["ona"], deployment, kind, ends_at, reason)
    assert not Silence.objects.exists() and not AuditEvent.objects.filter(action__startswith="silence.").exists()


@pytest.mark.django_db
def test_the_webhook_form_offers_the_alert_events(client, people, dns):
    client.force_login(people["erin"])
    response = client.post("/registry/webhooks/new", {"name": "pager", "url": "https://hooks.example.com/in",
                                                      "events": ["alert.fired", "alert.resolved"]})
    assert response.status_code == 201, response.content.decode()[:2000]
    assert Webhook.objects.get().events == ["alert.fired", "alert.resolved"]


def test_alert_events_reach_a_receiver_signed(deployment, people, tmp_path, redis, settings, transactional_db):
    settings.DEBUG, settings.OUTBOUND_ALLOW_HOSTS = True, ["127.0.0.1"]
    with Receiver() as receiver:
        receiver.secret = hook(people["erin"], url=receiver.url()).secret
        alert = fire(deployment, severity="page")
        alerts.resolve(people["ona"], alert, "rolled back")
        run_burst(tmp_path, "default", env={"DEBUG": "true", "OUTBOUND_ALLOW_HOSTS": "127.0.0.1"})
    assert len(receiver.requests) == 2 and all(r["verified"] for r in receiver.requests)
    bodies = sorted((json.loads(r["body"]) for r in receiver.requests), key=lambda b: b["type"])
    assert [b["type"] for b in bodies] == ["alert.fired", "alert.resolved"]
    fired = bodies[0]["data"]
    assert (fired["alert"], fired["deployment"], fired["severity"], fired["url"]) == (
        alert.pk, "support-router", "page", f"/monitoring/alerts/{alert.pk}")
    assert fired["evidence"]["statistic"] == 0.31 and fired["evidence"]["window"] == EVIDENCE["window"]
    assert bodies[1]["data"]["status"] == "resolved" and bodies[1]["data"]["resolve_reason"] == "rolled back"


# --- pages ----------------------------------------------------------------------------------------


def section(text, name):
    return re.search(rf'<section class="alert-group" id="deployment-{name}">(.*?)</section>', text, re.S).group(1)


@pytest.mark.django_db
def test_the_alerts_page_groups_by_deployment_filters_and_pages(client, deployment, second, people, monkeypatch):
    from lifecycle.monitoring.views import alerts as views

    page_alert = fire(deployment, key="slo:1", kind="slo", severity="page", title="availability burning")
    fire(deployment, key="drift:v1", title="text_length drifted")
    fire(second, key="drift:v9", title="billing drifted")
    done = fire(second, key="drift:v8", title="old news")
    alerts.resolve(people["ona"], done, "fixed")
    alerts.silence(people["ona"], second, "", timezone.now() + timedelta(hours=1), "migrating")
    client.force_login(people["vic"])
    text = client.get("/monitoring/alerts/").content.decode()
    assert 'id="deployment-support-router"' in text and 'id="deployment-billing-router"' in text
    assert "availability burning" in text and "billing drifted" in text and "old news" not in text  # open by default
    assert "silenced" in section(text, "billing-router") and "silenced" not in section(text, "support-router")
    only_pages = client.get("/monitoring/alerts/?severity=page").content.decode()
    assert "availability burning" in only_pages and "text_length drifted" not in only_pages
    resolved = client.get("/monitoring/alerts/?status=resolved").content.decode()
    assert "old news" in resolved and "billing drifted" not in resolved
    assert "billing drifted" not in client.get("/monitoring/alerts/?deployment=support-router").content.decode()
    assert client.get("/monitoring/alerts/?status=sideways").status_code == 400
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    first_page = client.get("/monitoring/alerts/").content.decode()
    assert "billing drifted" in first_page and "text_length drifted" in first_page and "availability burning" not in first_page
    older = client.get(f"/monitoring/alerts/?before={Alert.objects.get(title='text_length drifted').pk}")
    assert "availability burning" in older.content.decode() and page_alert.get_absolute_url() in older.content.decode()


@pytest.mark.django_db
def test_oncall_acknowledges_resolves_and_silences_on_the_pages(client, deployment, people):
    alert = fire(deployment, severity="page")
    client.force_login(people["ona"])
    detail = client.get(alert.get_absolute_url()).content.decode()
    assert "0.31" in detail and "/monitoring/drift/7" in detail and 'id="acknowledge"' in detail
    assert client.post(f"/monitoring/alerts/{alert.pk}/acknowledge").status_code == 302
    assert Alert.objects.get(pk=alert.pk).acknowledged_by == people["ona"]
    refused = client.post(f"/monitoring/alerts/{alert.pk}/resolve", {"reason": ""})
    assert refused.status_code == 400 and "Say why the alert is resolved" in refused.content.decode()
    assert Alert.objects.get(pk=alert.pk).status == "acknowledged"
    url = f"/monitoring/deployments/{deployment.name}/silences"
    later = (timezone.now() + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    past = (timezone.now() - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    for data, message in [({"kind": "", "ends_at": later, "reason": ""}, "Say why the alerts are silenced"),
                          ({"kind": "", "ends_at": past, "reason": "x"}, "The end time is in the past"),
                          ({"kind": "vibes", "ends_at": later, "reason": "x"}, "Select a valid choice"),
                          ({"kind": "", "ends_at": "soon", "reason": "x"}, "Give the end as a date and time")]:
        response = client.post(url, data)
        assert response.status_code == 400 and message in response.content.decode(), data
    assert not Silence.objects.exists()
    assert client.post(url, {"kind": "", "ends_at": later, "reason": "rolling back"}).status_code == 302
    assert "silenced" in client.get(alert.get_absolute_url()).content.decode()
    made = Silence.objects.get()
    assert client.post(f"/monitoring/silences/{made.pk}/lift").status_code == 302
    assert Silence.objects.get().lifted_by == people["ona"]
    assert client.post(f"/monitoring/alerts/{alert.pk}/resolve", {"reason": "rolled back"}).status_code == 302
    assert Alert.objects.get(pk=alert.pk).resolve_reason == "rolled back"


@pytest.mark.django_db
def test_strangers_are_refused_and_readers_cannot_act(client, deployment, people):
    alert = fire(deployment)
    made = alerts.silence(people["ona"], deployment, "", timezone.now() + timedelta(hours=1), "testing")
    acts = [f"/monitoring/alerts/{alert.pk}/acknowledge", f"/monitoring/alerts/{alert.pk}/resolve",
            f"/monitoring/silences/{made.pk}/lift", f"/monitoring/deployments/{deployment.name}/silences"]
    for who in ("sam", "lee"):
        client.force_login(people[who])
        for url in ("/monitoring/alerts/", alert.get_absolute_url(), acts[3]):
            assert client.get(url).status_code == 403, (who, url)
        for url in acts:
            assert client.post(url, {"reason": "x", "kind": "", "ends_at": "2099-01-01T00:00"}).status_code == 403
    client.force_login(people["vic"])  # a viewer reads
    assert client.get(alert.get_absolute_url()).status_code == 200
    assert 'id="acknowledge"' not in client.get(alert.get_absolute_url()).content.decode()
    for url in acts:
        assert client.post(url, {"reason": "x", "kind": "", "ends_at": "2099-01-01T00:00"}).status_code == 403
    alert.refresh_from_db()
    made.refresh_from_db()
    assert alert.status == "firing" and made.lifted_at is None and Silence.objects.count() == 1
