"""The monitoring pages, one module per area: dashboards (executive, on-call, debug and the
overview), drift, alerts (alerts, silences, SLOs) and policy (incidents, retrain drafts)."""
