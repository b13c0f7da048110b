"""Each view module keeps its own routes (its `urlpatterns`); the section is their sum.
The section's pages live under monitoring/; a deployment's under monitoring/deployments/<name>/."""
from lifecycle.monitoring.views import alerts, dashboards, drift, policy

app_name = "monitoring"

urlpatterns = [*dashboards.urlpatterns, *drift.urlpatterns, *alerts.urlpatterns, *policy.urlpatterns]
