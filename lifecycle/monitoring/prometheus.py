"""A Prometheus rules file generated from the SLOs, for teams who alert from Prometheus.

The shape is Sloth's (and Pyrra's): per SLO, recording rules for the error ratio over each
window its burn windows use and over its whole period, a few meta rules (objective, budget,
burn rate, budget left), and one multi-window, multi-burn-rate alert per severity, which fires
when the short AND the long window of any of its burn windows burn faster than the factor —
the same rule monitoring/slo.py applies to the rollups.

The expressions read the serving process's metrics (deployments/serving/metrics.py):
`lifecycle_serving_requests_total{deployment, route, status}` and the histogram
`lifecycle_serving_request_duration_seconds{deployment, route}`. Shadow answers are left out
(route!="shadow": nobody got them). Only latency and availability have such metrics: feedback
accuracy, override rate and estimated accuracy need the prediction log, the feedback and the
reference, which only Lifecycle has — those SLOs are listed in the file's header and skipped.
"""
import yaml
from django.conf import settings
from prometheus_client.utils import floatToGoString

from lifecycle.monitoring.models import SLO

REQUESTS = "lifecycle_serving_requests_total"
DURATION = "lifecycle_serving_request_duration_seconds"
# deployments/serving/metrics.py LATENCY_BUCKETS (a test keeps the two equal): read here, not
# imported, because importing that module creates the serving process's metrics.
SERVING_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# A server error as the serving process counts one: its own failure, or 503 when overloaded.
# Refusals of bad input (rejected) and rate limits are the client's and count as good.
BAD_STATUSES = "error|overloaded"
RECORD = "lifecycle_slo:sli_error:ratio_rate{}"
PROMETHEUS_KINDS = (SLO.Kind.LATENCY, SLO.Kind.AVAILABILITY)


def duration(minutes):
    """Minutes as a Prometheus duration in its largest whole unit (5m, 1h, 3d)."""
    if minutes % 1440 == 0:
        return f"{minutes // 1440}d"
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


def latency_edges():
    """The serving histogram's bucket edges (seconds), as metrics.latency_buckets() makes them."""
    return sorted(set(SERVING_LATENCY_BUCKETS) | {float(e) for e in settings.SERVING_LATENCY_SLO_SECONDS or ()})


def _quote(value):
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _selector(slo, **extra):
    labels = {"deployment": _quote(slo.deployment.name), **{k: _quote(v) for k, v in extra.items()}}
    inner = ",".join(f"{k}={v}" for k, v in labels.items())
    return "{" + inner + ',route!="shadow"}' if inner else '{route!="shadow"}'


def _error_ratio(slo, window):
    """The SLO's bad / all over `window` (a Prometheus duration), from the serving metrics."""
    if slo.kind == SLO.Kind.AVAILABILITY:
        bad = _selector(slo)[:-1] + f',status=~"{BAD_STATUSES}"}}'
        return (f"sum(rate({REQUESTS}{bad}[{window}]))\n/\n"
                f"sum(rate({REQUESTS}{_selector(slo)}[{window}]))")
    le = floatToGoString(slo.threshold_ms / 1000)
    return (f"1 - (\n  sum(rate({DURATION}_bucket{_selector(slo, le=le)}[{window}]))\n  /\n"
            f"  sum(rate({DURATION}_count{_selector(slo)}[{window}]))\n)")


def skip_reason(slo):
    """Why an SLO has no Prometheus rules, or "" when it has."""
    if not slo.enabled:
        return "disabled"
    if slo.kind not in PROMETHEUS_KINDS:
        return "an ML-quality SLI: no Prometheus metric (Lifecycle evaluates it from its own rows)"
    if slo.kind == SLO.Kind.LATENCY and slo.threshold_ms / 1000 not in latency_edges():
        return (f"{slo.threshold_ms:g} ms is not a bucket edge of {DURATION}: "
                "add it to SERVING_LATENCY_SLO_SECONDS")
    return ""


def _labels(slo):
    return {"slo_id": str(slo.pk), "slo": str(slo.name), "deployment": str(slo.deployment.name)}


def _windows(slo):
    return sorted({w["long_minutes"] for w in slo.burn_windows} | {w["short_minutes"] for w in slo.burn_windows})


def _ids(slo, window):
    return f'{{slo_id="{slo.pk}",window="{window}"}}'


def recording_rules(slo):
    """The error ratio per window, then over the period as the average of the shortest
    window's ratio (as Sloth does: no range query over 30 days of raw samples)."""
    rules = [{"record": RECORD.format(duration(m)), "expr": _error_ratio(slo, duration(m)),
              "labels": {**_labels(slo), "window": duration(m)}} for m in _windows(slo)]
    shortest, period = duration(_windows(slo)[0]), f"{slo.window_days}d"
    rules.append({"record": RECORD.format(period),
                  "expr": f"avg_over_time({RECORD.format(shortest)}{_ids(slo, shortest)}[{period}])",
                  "labels": {**_labels(slo), "window": period}})
    return rules


def meta_rules(slo):
    budget = _number(1 - slo.target)
    shortest, period = duration(_windows(slo)[0]), f"{slo.window_days}d"
    own = f'{{slo_id="{slo.pk}"}}'
    rules = [("lifecycle_slo:objective:ratio", f"vector({_number(slo.target)})"),
             ("lifecycle_slo:error_budget:ratio", f"vector({budget})"),
             ("lifecycle_slo:time_period:days", f"vector({slo.window_days})"),
             ("lifecycle_slo:current_burn_rate:ratio",
              f"max without (window) ({RECORD.format(shortest)}{_ids(slo, shortest)}) / {budget}"),
             ("lifecycle_slo:period_burn_rate:ratio",
              f"max without (window) ({RECORD.format(period)}{_ids(slo, period)}) / {budget}"),
             ("lifecycle_slo:period_error_budget_remaining:ratio",
              f"1 - lifecycle_slo:period_burn_rate:ratio{own}")]
    return [{"record": record, "expr": expr, "labels": _labels(slo)} for record, expr in rules]


def _number(value):
    return f"{value:.10g}"


def _condition(slo, window):
    threshold = f"({_number(window['factor'])} * {_number(1 - slo.target)})"
    short, long_ = duration(window["short_minutes"]), duration(window["long_minutes"])
    return (f"(\n  max({RECORD.format(short)}{_ids(slo, short)} > {threshold}) without (window)\n  and\n"
            f"  max({RECORD.format(long_)}{_ids(slo, long_)} > {threshold}) without (window)\n)")


def alert_rules(slo):
    rules = []
    for severity in ("page", "ticket"):
        windows = [w for w in slo.burn_windows if w["severity"] == severity]
        if not windows:
            continue
        rules.append({
            "alert": f"LifecycleSLOBurn{severity.title()}",
            "expr": "\nor\n".join(_condition(slo, w) for w in windows),
            "labels": {**_labels(slo), "severity": severity},
            "annotations": {"summary": f"{slo.deployment.name}: {slo.name} burns its error budget too fast",
                            "description": f"Target {_number(slo.target)} over {slo.window_days} days; burn windows "
                                           + ", ".join(f"{_number(w['factor'])}x over {duration(w['long_minutes'])} "
                                                       f"and {duration(w['short_minutes'])}" for w in windows),
                            "link": slo.get_absolute_url()}})
    return rules


def groups(slo):
    name = f"lifecycle-slo-{slo.deployment.name}-{slo.pk}"
    return [{"name": f"{name}-sli-recordings", "rules": recording_rules(slo)},
            {"name": f"{name}-meta-recordings", "rules": meta_rules(slo)},
            {"name": f"{name}-alerts", "rules": alert_rules(slo)}]


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks (|), as people write rules files."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def header(skipped):
    lines = ["# Prometheus rules generated by Lifecycle from its SLOs (Sloth's shape: recording rules",
             "# per window, meta rules, multi-window multi-burn-rate alerts). Regenerate it after",
             "# changing an SLO: it is a copy, not a link.",
             "# Feedback accuracy, override rate and estimated accuracy have no Prometheus metric",
             "# (they need the prediction log, the feedback and the reference): Lifecycle evaluates",
             "# them itself and they are not in this file."]
    lines += [f"# skipped: {slo.deployment.name} / {slo.name}: {reason}" for slo, reason in skipped]
    return "\n".join(lines) + "\n"


def rules_yaml(slos):
    """The rules file (text) for `slos`: the latency and availability ones become rules."""
    slos = list(slos)
    skipped = [(slo, skip_reason(slo)) for slo in slos if skip_reason(slo)]
    kept = [slo for slo in slos if not skip_reason(slo)]
    body = {"groups": [group for slo in kept for group in groups(slo)]}
    return header(skipped) + yaml.dump(body, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
