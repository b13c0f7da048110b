"""What the deployment pages read from the prediction log (rows written by bulk_create): the
last hour per minute and route, the shadow against live on the same inputs, and the JSON API
the page polls (a rollback's status, the charts) and scripts roll back with."""
import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from lifecycle.core.models import ApiToken
from lifecycle.deployments import traffic, views
from lifecycle.deployments.models import Deployment, PredictionLog, Rollback, ServingProcess
from tests.deployments.factories import make_deployment
from tests.deployments.page_helpers import as_user, log_row, page_text, write

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("store_with_output")]

NAME = "support-router"


@pytest.fixture
def canary(trained, people, tmp_path):
    return make_deployment(trained, people, tmp_path, mode="canary", share=10)


def a_minute_of_traffic(deployment, minute):
    """100 stable requests (latencies 1..100 ms) and 10 canary inputs in 5 requests, the first
    request's two inputs failed."""
    rows = [log_row(deployment, latency_ms=float(ms), created_at=minute + timedelta(seconds=ms % 50)) for ms in range(1, 101)]
    requests = [uuid.uuid4() for _ in range(5)]
    rows += [log_row(deployment, route="canary", request_id=requests[i // 2], position=i % 2, latency_ms=20.0 + i,
                     status="error" if i < 2 else "ok", created_at=minute + timedelta(seconds=10)) for i in range(10)]
    return rows


def test_percentile_disc_is_the_nearest_rank():
    values = list(range(1, 101))
    assert [traffic.percentile_disc(values, p) for p in (0.5, 0.95, 0.99, 1.0)] == [50, 95, 99, 100]
    assert traffic.percentile_disc([7], 0.99) == 7 and traffic.percentile_disc([], 0.5) is None


def test_the_last_hour_is_counted_per_minute_and_route_in_the_database(canary, people):
    now = timezone.now()
    minute = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    other = Deployment.create(people["erin"], name="other", model=canary.model, stable=canary.current_release.stable)
    write(a_minute_of_traffic(canary, minute) + [log_row(canary, created_at=now - timedelta(hours=2)), log_row(other)])
    window = traffic.per_minute(canary.pk, now=now)
    assert not window.sampled and set(window.routes) == {"stable", "canary"}
    [stable], [candidate] = window.routes["stable"], window.routes["canary"]
    assert stable == {"minute": minute, "requests": 100, "inputs": 100, "errors": 0, "p50": 50.0, "p95": 95.0, "p99": 99.0}
    # A request counts once: its latency is its slowest input's, and it failed if one input did.
    assert candidate == {"minute": minute, "requests": 5, "inputs": 10, "errors": 1, "p50": 25.0, "p95": 29.0, "p99": 29.0}
    assert window.totals()["canary"]["error_rate"] == 0.2


def test_the_bounded_sample_gives_the_same_percentiles_and_says_when_it_is_a_sample(canary, monkeypatch):
    """The SQLite path (percentiles from the newest requests) run on this database."""
    now = timezone.now()
    minute = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    write(a_minute_of_traffic(canary, minute))
    since, until = now - timedelta(hours=1), now + timedelta(minutes=1)
    window = PredictionLog.objects.filter(deployment_id=canary.pk, created_at__gte=since, created_at__lt=until)
    found, sampled = traffic._percentiles_sampled(window)
    assert not sampled and found == traffic._percentiles_postgres(window)[0]
    assert found[(minute, "stable")] == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert found[(minute, "canary")] == {"p50": 25.0, "p95": 29.0, "p99": 29.0}
    monkeypatch.setattr(traffic, "SQLITE_SAMPLE", 50)
    found, sampled = traffic._percentiles_sampled(window)
    assert sampled is True and set(found) <= {(minute, "stable"), (minute, "canary")}


def test_the_page_and_the_metrics_api_chart_the_last_hour(client, canary, people):
    now = timezone.now()
    minute = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    write(a_minute_of_traffic(canary, minute))
    as_user(client, people["ona"])
    page = client.get(f"/deployments/{NAME}/")
    assert [chart_id for chart_id, _ in page.context["charts"]] == ["deployment-rate", "deployment-latency", "deployment-errors"]
    text = page_text(page)
    assert "20.00 %" in text and 'data-chart="deployment-latency"' in text and "vendor/plotly.min.js" in text
    data = client.get(f"/api/v1/deployments/{NAME}/metrics").json()
    latency = {trace["name"]: trace for trace in data["charts"]["deployment-latency"]["data"]}
    at = latency["stable p50"]["x"].index(minute.isoformat())
    assert latency["stable p50"]["y"][at] == 50.0 and latency["canary p99"]["y"][at] == 29.0
    assert latency["stable p50"]["y"][at - 1] is None  # an idle minute is a gap, not a line across it
    rate = {trace["name"]: trace for trace in data["charts"]["deployment-rate"]["data"]}
    assert rate["stable"]["y"][at] == round(100 / 60, 3) and rate["canary"]["y"][at] == round(5 / 60, 3)
    errors = {trace["name"]: trace for trace in data["charts"]["deployment-errors"]["data"]}
    assert errors["canary"]["y"][at] == 20.0 and errors["stable"]["y"][at] == 0.0
    assert data["totals"]["stable"]["inputs"] == 100
    assert client.get(f"/api/v1/deployments/{NAME}/metrics?minutes=0").status_code == 400


def test_no_traffic_is_said_on_the_charts(client, canary, people):
    as_user(client, people["vic"])
    figure = dict(client.get(f"/deployments/{NAME}/").context["charts"])["deployment-rate"]
    assert figure["layout"]["annotations"][0]["text"] == "no requests in the last hour"


# --- shadow against live -----------------------------------------------------------------------


@pytest.fixture
def shadowed(trained, people, tmp_path):
    """10 inputs answered by both sides (3 flips), one the shadow failed, one without a shadow."""
    deployment = make_deployment(trained, people, tmp_path, mode="shadow")
    shadow_labels = ["order_status"] * 7 + ["refund_request"] * 2 + ["cancel_order"]
    rows = []
    for i, label in enumerate(shadow_labels + ["error", None]):
        request_id = uuid.uuid4()
        rows.append(log_row(deployment, request_id=request_id, text=f"message {i}", latency_ms=10.0 + i))
        if label == "error":
            rows.append(log_row(deployment, route="shadow", request_id=request_id, status="error"))
        elif label:
            rows.append(log_row(deployment, route="shadow", request_id=request_id, label=label, text=f"message {i}",
                                latency_ms=30.0 + i, confidence=0.6))
    write(rows)
    return deployment


def test_the_shadow_page_compares_the_same_inputs(client, shadowed, people, monkeypatch):
    monkeypatch.setattr(views, "EXAMPLES_PER_PAGE", 2)
    as_user(client, people["ann"])
    response = client.get(f"/deployments/{NAME}/releases/2/shadow")
    summary = response.context["summary"]
    assert (summary.pairs, summary.agreed) == (10, 7)
    assert summary.flips == [("order_status", "refund_request", 2), ("order_status", "cancel_order", 1)]
    assert summary.latency == {"live": {"p50": 14.0, "p95": 19.0}, "shadow": {"p50": 34.0, "p95": 39.0}}
    assert summary.latency_difference() == {"p50": 20.0, "p95": 20.0}
    text = page_text(response)
    assert "70.0 %" in text and "20.0 ms" in text and "?live=order_status&shadow=refund_request#examples" in text
    examples = response.context["examples"]
    assert len(examples.items) == 2 and examples.older is not None
    rest = client.get(f"/deployments/{NAME}/releases/2/shadow?before={examples.older}").context["examples"]
    assert len(rest.items) == 1
    one = client.get(f"/deployments/{NAME}/releases/2/shadow?live=order_status&shadow=cancel_order")
    [row] = one.context["examples"].items
    assert row.input_text == "message 9" and row.live_label == "order_status" and row.live_latency_ms == 19.0
    bad = client.get(f"/deployments/{NAME}/releases/2/shadow?live=order_status")
    assert bad.status_code == 400 and "A flip names both labels" in page_text(bad)


# --- the JSON API --------------------------------------------------------------------------------


def bearer(user):
    _, key = ApiToken.issue(user, "cli")
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def post_json(client, url, data, **headers):
    return client.post(url, json.dumps(data) if not isinstance(data, str) else data, content_type="application/json",
                       **headers)


def test_the_status_api_says_what_serves(client, canary, people):
    data = client.get(f"/api/v1/deployments/{NAME}", **bearer(people["vic"])).json()
    release = data["release"]
    assert (release["number"], release["stable_share"], release["share"], release["mode"]) == (2, 90.0, 10.0, "canary")
    assert release["candidate"]["number"] == canary.current_release.candidate.number
    assert data["serving"] == {"live_processes": 0, "applied": 0, "notices_ok": True} and data["latest_rollback"] is None
    listed = client.get("/api/v1/deployments", **bearer(people["vic"])).json()
    assert [d["name"] for d in listed["deployments"]] == [NAME]


@pytest.mark.parametrize("body, status, detail", [
    ({"reason": " "}, 400, "Say why you roll back"),
    ({"reason": "x", "force": True}, 400, "unknown field(s): force"),
    ({}, 400, "missing field(s): reason"),
    ({"reason": 5}, 400, "reason must be text"),
    ({"reason": "x", "release": "2"}, 400, "release must be a release's number"),
    ({"reason": "x", "release": 1}, 400, "no longer the current release"),
    ({"reason": "x", "release": 9}, 404, "has no release 9"),
    ("not json", 400, ""),
])
def test_a_bad_rollback_call_is_refused_and_nothing_changes(client, canary, people, body, status, detail):
    response = post_json(client, f"/api/v1/deployments/{NAME}/rollback", body, **bearer(people["ona"]))
    assert response.status_code == status and detail in response.json()["detail"]
    assert not Rollback.objects.exists() and Deployment.objects.get(pk=canary.pk).routes()["candidate"] is not None


def test_a_rollback_through_the_api_is_polled_until_every_live_process_applied_it(client, canary, people):
    ServingProcess.beat("a", host="h", pid=1, port=1, started_at=timezone.now(), loaded=[], notices_ok=True)
    ServingProcess.beat("b", host="h", pid=2, port=1, started_at=timezone.now(), loaded=[], notices_ok=True)
    assert post_json(client, f"/api/v1/deployments/{NAME}/rollback", {"reason": "x"},
                     **bearer(people["vic"])).status_code == 403
    response = post_json(client, f"/api/v1/deployments/{NAME}/rollback", {"reason": "errors up", "release": 2},
                         **bearer(people["ona"]))
    created = response.json()
    assert response.status_code == 201 and created["completed"] is False and created["actor"] == people["ona"].username
    url = created["api_url"]
    as_user(client, people["vic"])
    assert client.get(url).json()["completed"] is False
    ServingProcess.applied("a", canary.pk, created["generation"], timezone.now())
    assert client.get(url).json()["completed"] is False
    ServingProcess.applied("b", canary.pk, created["generation"], timezone.now())
    done = client.get(url).json()
    rollback = Rollback.objects.get()
    assert done["completed"] is True and done["time_to_rollback_ms"] == rollback.time_to_rollback_ms
    assert {p["process"] for p in done["processes"]} == {"a", "b"}
    status = client.get(f"/api/v1/deployments/{NAME}").json()
    assert status["release"]["stable_share"] == 100.0 and status["latest_rollback"]["id"] == rollback.pk


def test_a_process_that_stopped_reporting_is_not_waited_for(client, canary, people):
    ServingProcess.beat("gone", host="h", pid=1, port=1, started_at=timezone.now(), loaded=[], notices_ok=True)
    rollback = canary.current_release.rollback(people["ona"], "stop")
    as_user(client, people["ona"])
    url = f"/api/v1/deployments/{NAME}/rollbacks/{rollback.pk}"
    assert client.get(url).json()["completed"] is False
    ServingProcess.objects.filter(pk="gone").update(last_seen_at=timezone.now() - timedelta(minutes=1))
    assert client.get(url).json()["completed"] is True
    assert client.get(f"/api/v1/deployments/other/rollbacks/{rollback.pk}").status_code == 404
