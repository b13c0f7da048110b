"""The monitoring queue's jobs and the maintenance pass's monitoring steps. The work lives in
the modules imported here; importing them registers their tasks and steps where RQ and the
maintenance pass look them up (core/jobs.py autodiscovers each app's tasks module)."""
from lifecycle.monitoring import (  # noqa: F401
    alerts, drift, incidents, reference, report, retrain, rollups, slo,
)
