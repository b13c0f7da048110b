"""The error-budget policy: a registry gate that blocks promotions of a model while an SLO of
one of its deployments has spent its error budget, a page-severity alert of the model is open,
or the model is in incident mode. An approver lets a promotion through anyway with the
registry's own written override (audited as promotion.gate_overridden).

The gate's numbers say *what* freezes (which SLOs, which alerts, which incident), not how far
a budget has fallen: the registry voids every approval when a gate's result changes, and a
budget re-evaluated every minute would void them every minute and make an override impossible
to land. The budget itself is on the SLO's page.
"""
from lifecycle.monitoring.models import SLO, Alert, Incident
from lifecycle.registry import gates

OPEN_ALERT = (Alert.Status.FIRING, Alert.Status.ACKNOWLEDGED)


def _slos(model):
    return list(SLO.objects.filter(deployment__model=model, enabled=True).select_related("deployment")
                .order_by("deployment__name", "name"))


def _exhausted(slo):
    """True or False from the last evaluation; None when the SLO was never evaluated."""
    remaining = (slo.state or {}).get("budget_remaining")
    return None if remaining is None else remaining <= 0


def _page_alerts(model):
    return list(Alert.objects.filter(model=model, severity=Alert.Severity.PAGE, status__in=OPEN_ALERT)
                .select_related("deployment").order_by("first_fired_at", "pk")[:20])


def open_incident_of(model):
    return Incident.objects.filter(model=model, lifted_at__isnull=True).select_related("opened_by").first()


def state(model):
    """What the policy reads for `model`, as plain data (the gate's numbers)."""
    incident = open_incident_of(model)
    return {
        "slos": [{"id": s.pk, "name": s.name, "deployment": s.deployment.name, "kind": s.kind, "target": s.target,
                  "window_days": s.window_days, "exhausted": _exhausted(s)} for s in _slos(model)],
        "page_alerts": [{"id": a.pk, "title": a.title, "kind": a.kind, "deployment": a.deployment.name,
                         "status": a.status, "first_fired_at": a.first_fired_at.isoformat()} for a in _page_alerts(model)],
        "incident": None if incident is None else {
            "id": incident.pk, "title": incident.title, "opened_at": incident.opened_at.isoformat(),
            "opened_by": getattr(incident.opened_by, "username", "")},
    }


def reasons(found):
    """Each reason the state freezes promotions, as a sentence."""
    out = [f"the SLO “{s['name']}” of {s['deployment']} ({s['target'] * 100:g} % over {s['window_days']} days) has "
           "spent its error budget" for s in found["slos"] if s["exhausted"]]
    out += [f"page alert #{a['id']} on {a['deployment']} is {a['status']}: {a['title']}" for a in found["page_alerts"]]
    if found["incident"]:
        incident = found["incident"]
        out.append(f"incident #{incident['id']} is open (opened by {incident['opened_by'] or 'the system'} at "
                   f"{incident['opened_at'][:16].replace('T', ' ')} UTC): {incident['title']}")
    return out


def frozen(model):
    """Why promotions of `model` are frozen now; empty when they are not."""
    return reasons(state(model))


class ErrorBudget(gates.Gate):
    """Error budgets left, no open page alert, no open incident, for the model's deployments."""

    name, title = "error_budget", "Error budget and incidents"

    def evaluate(self, version, target_stage):
        found = state(version.model)
        why = reasons(found)
        if why:
            return self.result(gates.FAIL, "Promotions are frozen: " + "; ".join(why) + ".", **found)
        if not found["slos"]:
            return self.result(gates.NOT_APPLICABLE, "No SLO watches a deployment of this model.", **found)
        return self.result(gates.PASS, _pass_message(found), **found)


def _pass_message(found):
    slos = found["slos"]
    unevaluated = sum(s["exhausted"] is None for s in slos)
    deployments = len({s["deployment"] for s in slos})
    text = (f"{len(slos) - unevaluated} of {len(slos)} SLO(s) on {deployments} deployment(s) have error budget left"
            + (f" ({unevaluated} not evaluated yet)" if unevaluated else "") + "; no open page alert; no open incident.")
    return text


gates.register(ErrorBudget())

# Incident mode and retrain triggers are the rest of the policy: importing them here (apps.py
# imports this module) registers their jobs and maintenance steps with the worker.
from lifecycle.monitoring import incidents, retrain  # noqa: E402

__all__ = ["ErrorBudget", "frozen", "state", "open_incident_of", "incidents", "retrain"]
