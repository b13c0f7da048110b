"""The serving process's Prometheus metrics (names and labels are fixed: the Grafana dashboard
in docker/grafana/ and the alerts read them as they are).

With `manage.py serve --workers N` every worker writes its samples to PROMETHEUS_MULTIPROC_DIR
and `/metrics` in any worker sums them (prometheus_client's multiprocess mode); gauges say how
they combine (`livesum`: the sum over the workers that are alive). Import this module only
after that variable is set: prometheus_client picks its storage when a metric is created.
"""
import os

from django.conf import settings
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LOAD_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300)
# Latency SLO targets (seconds) that must be bucket edges, so an SLO's good-request ratio is a
# plain bucket read. SERVING_LATENCY_SLO_SECONDS is the monitoring side's list.


def latency_buckets():
    edges = settings.SERVING_LATENCY_SLO_SECONDS or ()
    return tuple(sorted(set(LATENCY_BUCKETS) | {float(edge) for edge in edges}))


# Status values: ok, error, rejected (a 4xx), overloaded (503), rate_limited (429).
REQUESTS = Counter("lifecycle_serving_requests_total", "Requests answered, by deployment, route and status",
                   ["deployment", "route", "status"])
DURATION = Histogram("lifecycle_serving_request_duration_seconds", "Time from a request's arrival to its answer",
                     ["deployment", "route"], buckets=latency_buckets())
BATCH_SIZE = Histogram("lifecycle_serving_batch_size", "Inputs per forward pass", ["version"], buckets=BATCH_BUCKETS)
QUEUE_DEPTH = Gauge("lifecycle_serving_queue_depth", "Inputs waiting for a forward pass", ["version"],
                    multiprocess_mode="livesum")
MODEL_LOAD = Histogram("lifecycle_serving_model_load_seconds", "Verify, load and warm one version", ["version"],
                       buckets=LOAD_BUCKETS)
LOADED_MODELS = Gauge("lifecycle_serving_loaded_models", "Versions loaded", multiprocess_mode="livesum")
LOADED_BYTES = Gauge("lifecycle_serving_loaded_model_bytes", "Summed size of the loaded versions (artifact plus base model)",
                     multiprocess_mode="livesum")
# The prediction log's own metrics live beside its buffer, which counts as it writes.
from lifecycle.deployments.serving.predlog import BUFFERED as LOG_BUFFERED  # noqa: E402,F401
from lifecycle.deployments.serving.predlog import DROPPED as LOG_DROPPED  # noqa: E402,F401
from lifecycle.deployments.serving.predlog import SPOOLED as LOG_SPOOLED  # noqa: E402,F401
from lifecycle.deployments.serving.predlog import WRITTEN as LOG_WRITTEN  # noqa: E402,F401
# Requests let through without a rate-limit check because Redis did not answer.
RATE_LIMIT_UNCHECKED = Counter("lifecycle_serving_rate_limit_unchecked_total", "Requests allowed unchecked while Redis was down")


def exposition():
    """(body, content type) for a scrape: every worker's samples in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_exited(pid):
    """Forget a worker's live gauges (its queue depth, loaded models) once it has stopped."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


__all__ = ["BATCH_SIZE", "DURATION", "LOADED_BYTES", "LOADED_MODELS", "LOG_BUFFERED", "LOG_DROPPED", "LOG_SPOOLED",
           "LOG_WRITTEN", "MODEL_LOAD", "QUEUE_DEPTH", "RATE_LIMIT_UNCHECKED", "REQUESTS", "exposition",
           "latency_buckets", "process_exited"]
