"""The web tier's Prometheus endpoint, `/metrics`: background jobs by queue and state, RQ queue
lengths and the workers listening on each queue.

Every number is read when Prometheus scrapes (a custom collector), never counted inside a
process: gunicorn runs several workers, and each would otherwise hold its own partial count.
The same scrape answers whichever worker takes it. The serving process has its own `/metrics`
(deployments/serving/metrics.py) with the request, latency and batching metrics.

Access: `Authorization: Bearer <METRICS_TOKEN>` when the setting is set; without it the endpoint
is open with DEBUG on (the demo) and answers 404 with DEBUG off, so a production site never
publishes its numbers by omission.
"""
import hmac

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db.models import Count
from django.http import Http404, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError

from lifecycle.core import queues
from lifecycle.core.models import Job


class WebMetric:
    """One group of samples read at scrape time: `fetch()` yields metric families."""

    def fetch(self):
        raise NotImplementedError


class JobStates(WebMetric):
    """`lifecycle_jobs{queue,status}`: rows of core Job per queue and state, in one query.

    Every known queue gets every state, zeros included: a series that vanishes at zero would
    make `rate()` and alerts on "queued > 0" blind exactly when the queue drains."""

    def fetch(self):
        counts = {(row["queue"], row["status"]): row["n"]
                  for row in Job.objects.order_by().values("queue", "status").annotate(n=Count("id"))}
        names = sorted(set(settings.RQ_QUEUE_NAMES) | {queue for queue, _ in counts})
        family = GaugeMetricFamily("lifecycle_jobs", "Background jobs by queue and state (core Job rows).",
                                   labels=["queue", "status"])
        for queue in names:
            for status in Job.Status.values:
                family.add_metric([queue, status], counts.get((queue, status), 0))
        yield family


class QueueState(WebMetric):
    """`lifecycle_queue_length{queue}` and `lifecycle_workers{queue}` from Redis, and
    `lifecycle_redis_up`. With Redis unreachable the first two are left out rather than
    reported as 0: an empty queue and an unknown one are different things."""

    def fetch(self):
        up = GaugeMetricFamily("lifecycle_redis_up", "1 when the RQ Redis answered this scrape, else 0.")
        try:
            lengths, workers = self._read()
        except queues.QueueUnavailable:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _per_queue("lifecycle_queue_length", "Jobs waiting in each RQ queue.", lengths)
        yield _per_queue("lifecycle_workers", "Live RQ workers listening on each queue.", workers)

    @staticmethod
    def _read():
        lengths, workers = {}, {}
        for name in settings.RQ_QUEUE_NAMES:
            queues.ping(name)
            try:
                lengths[name] = queues.get_queue(name).count
            except (RedisError, OSError) as exc:
                raise queues.QueueUnavailable(type(exc).__name__) from None
            workers[name] = len(queues.listening_workers(name))
        return lengths, workers


def _per_queue(name, documentation, values):
    family = GaugeMetricFamily(name, documentation, labels=["queue"])
    for queue, value in values.items():
        family.add_metric([queue], value)
    return family


class WebCollector:
    """Loops over the WebMetric subclasses; registered in a registry of its own per scrape."""

    def collect(self):
        for metric in WebMetric.__subclasses__():
            yield from metric().fetch()


def exposition():
    """The text Prometheus reads (its own registry: no process, platform or GC metrics of
    whichever gunicorn worker happens to answer)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WebCollector())
    return generate_latest(registry)


def authorized(request):
    """True when the request may read the metrics; raises Http404 when the endpoint is off."""
    token = settings.METRICS_TOKEN
    if not token:
        if settings.DEBUG:
            return True
        raise Http404("metrics are off: METRICS_TOKEN is not set")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # Constant time: how much of a guess matched must not show in how long the answer takes.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@login_not_required
@never_cache
@require_GET
def metrics_view(request):
    if not authorized(request):
        response = HttpResponse("a valid metrics token is required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
