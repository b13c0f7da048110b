"""The generated Prometheus rules file parses as YAML and has Sloth's shape: per latency and
availability SLO, an error-ratio recording rule per window its burn windows use (and its
period), meta rules, and one multi-window alert per severity whose conditions pair each burn
window's short and long ratio against factor x budget; ML-quality SLOs are skipped and said so.
The metric names and buckets are the serving process's own."""
import re

import pytest
import yaml

from lifecycle.deployments.models import Deployment
from lifecycle.monitoring import prometheus
from lifecycle.monitoring.models import SLO, default_burn_windows

CONDITION = re.compile(r'max\(lifecycle_slo:sli_error:ratio_rate(\w+)\{slo_id="(\d+)",window="(\w+)"\} > '
                       r'\(([\d.]+) \* ([\d.e-]+)\)\) without \(window\)')


def slo(pk, kind, target, threshold_ms=None, name=None, windows=None, deployment="support-router"):
    return SLO(pk=pk, deployment=Deployment(name=deployment), name=name or str(kind), kind=kind, target=target,
               threshold_ms=threshold_ms, window_days=30, burn_windows=windows or default_burn_windows())


@pytest.fixture
def parsed():
    slos = [slo(1, SLO.Kind.LATENCY, 0.99, 500.0, "Latency under 500 ms"), slo(2, SLO.Kind.AVAILABILITY, 0.999),
            slo(3, SLO.Kind.FEEDBACK_ACCURACY, 0.9), slo(4, SLO.Kind.LATENCY, 0.99, 300.0, "Latency under 300 ms"),
            slo(5, SLO.Kind.AVAILABILITY, 0.99, windows=[{"severity": "page", "long_minutes": 120, "short_minutes": 10,
                                                          "factor": 10.0}], deployment="billing-router")]
    text = prometheus.rules_yaml(slos)
    return text, yaml.safe_load(text)


def rules_of(doc, pk, part):
    [group] = [g for g in doc["groups"] if g["name"].endswith(f"-{pk}-{part}")]
    return group["rules"]


def test_only_slos_with_serving_metrics_become_rules_and_the_others_are_named(parsed):
    text, doc = parsed
    names = [g["name"] for g in doc["groups"]]
    assert names == [f"lifecycle-slo-{d}-{pk}-{part}" for d, pk in (("support-router", 1), ("support-router", 2),
                                                                     ("billing-router", 5))
                     for part in ("sli-recordings", "meta-recordings", "alerts")]
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("no Prometheus metric" in line for line in header)
    assert "# skipped: support-router / feedback_accuracy: an ML-quality SLI" in text
    assert ("# skipped: support-router / Latency under 300 ms: 300 ms is not a bucket edge of "
            "lifecycle_serving_request_duration_seconds") in text


def test_recording_rules_per_window_read_the_serving_metrics(parsed):
    _, doc = parsed
    windows = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    for pk in (1, 2):
        rules = rules_of(doc, pk, "sli-recordings")
        assert [r["record"] for r in rules] == [f"lifecycle_slo:sli_error:ratio_rate{w}" for w in windows + ["30d"]]
        for rule, window in zip(rules, windows):
            assert rule["labels"] == {"slo_id": str(pk), "slo": rule["labels"]["slo"], "deployment": "support-router",
                                      "window": window}
            assert rule["expr"].count(f"[{window}]") == 2 and 'route!="shadow"' in rule["expr"]
        assert rules[-1]["expr"] == 'avg_over_time(lifecycle_slo:sli_error:ratio_rate5m{slo_id="%d",window="5m"}[30d])' % pk
    latency = rules_of(doc, 1, "sli-recordings")[0]["expr"]
    assert latency == ('1 - (\n  sum(rate(lifecycle_serving_request_duration_seconds_bucket{deployment="support-router",'
                       'le="0.5",route!="shadow"}[5m]))\n  /\n  sum(rate(lifecycle_serving_request_duration_seconds_count'
                       '{deployment="support-router",route!="shadow"}[5m]))\n)')
    availability = rules_of(doc, 2, "sli-recordings")[0]["expr"]
    assert availability == ('sum(rate(lifecycle_serving_requests_total{deployment="support-router",route!="shadow",'
                            'status=~"error|overloaded"}[5m]))\n/\nsum(rate(lifecycle_serving_requests_total'
                            '{deployment="support-router",route!="shadow"}[5m]))')
    meta = {r["record"]: r["expr"] for r in rules_of(doc, 2, "meta-recordings")}
    assert meta["lifecycle_slo:objective:ratio"] == "vector(0.999)"
    assert meta["lifecycle_slo:error_budget:ratio"] == "vector(0.001)"
    assert meta["lifecycle_slo:period_error_budget_remaining:ratio"] == (
        '1 - lifecycle_slo:period_burn_rate:ratio{slo_id="2"}')


def test_alerts_pair_each_burn_windows_short_and_long_ratio_against_its_factor(parsed):
    _, doc = parsed
    for pk, budget in ((1, 0.01), (2, 0.001)):
        page, ticket = rules_of(doc, pk, "alerts")
        assert (page["alert"], page["labels"]["severity"], ticket["labels"]["severity"]) == (
            "LifecycleSLOBurnPage", "page", "ticket")
        for rule, windows in ((page, default_burn_windows()[:2]), (ticket, default_burn_windows()[2:])):
            branches = rule["expr"].split("\nor\n")
            assert len(branches) == len(windows)
            for branch, window in zip(branches, windows):
                assert branch.count("(") == branch.count(")") and "\n  and\n" in branch
                found = CONDITION.findall(branch)
                want = {(prometheus.duration(window[side]), float(window["factor"]), budget)
                        for side in ("short_minutes", "long_minutes")}
                assert {(name, float(f), float(b)) for name, pk_, w, f, b in found
                        if pk_ == str(pk) and name == w} == want
        assert page["annotations"]["link"] == f"/monitoring/slos/{pk}"
    [only] = rules_of(doc, 5, "alerts")
    assert CONDITION.findall(only["expr"]) == [("10m", "5", "10m", "10", "0.01"), ("2h", "5", "2h", "10", "0.01")]


def test_the_names_and_buckets_are_the_serving_processs():
    from lifecycle.deployments.serving import metrics

    assert metrics.REQUESTS._name + "_total" == prometheus.REQUESTS
    assert metrics.REQUESTS._labelnames == ("deployment", "route", "status")
    assert metrics.DURATION._name == prometheus.DURATION and metrics.DURATION._labelnames == ("deployment", "route")
    assert tuple(metrics.LATENCY_BUCKETS) == prometheus.SERVING_LATENCY_BUCKETS
    assert prometheus.latency_edges() == list(metrics.latency_buckets())
    assert prometheus.duration(5) == "5m" and prometheus.duration(60) == "1h" and prometheus.duration(4320) == "3d"
