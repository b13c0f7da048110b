"""Rollups: the prediction log counted once, per minute, so no page or check scans the raw log.

Each `PredictionBatch` the serving process commits is rolled up exactly once: the claim (its
`rolled_up_at` set where it was empty, decided by the count of rows the UPDATE changed) and the
counts it adds are one transaction, so a batch processed twice, or by two workers at once,
adds nothing the second time. Counts land in the `Rollup` row of their own minute (by the
answer's `created_at`), so a batch that arrives late adds to the old minute's row. After
MONITORING_MINUTE_ROLLUP_DAYS, `coarsen` merges minute rows into hour rows; `window` and
`series` read both resolutions.

The aggregation is numpy over the batch's columns: one bincount per histogram over
(bucket, bin) pairs, never a Python loop per row and bin. Only the OOV rate (a word split per
text) and the sample's request hash are per row.
"""
import json
import logging
import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from lifecycle.core.jobs import maintenance_step
from lifecycle.deployments.models import PredictionBatch, PredictionLog, Route
from lifecycle.deployments.serving.features import EMBEDDING_SIZE
from lifecycle.monitoring import features as F
from lifecycle.monitoring import reference
from lifecycle.monitoring.models import Resolution, Rollup

log = logging.getLogger(__name__)

KEY_FIELDS = ("deployment_id", "release_id", "version_id", "route")
LOG_COLUMNS = ("deployment_id", "release_id", "version_id", "route", "created_at", "status", "latency_ms", "label",
               "confidence", "text_length", "token_count", "input_text", "embedding", "request_id", "position")
EMBEDDING_NAMES = tuple(f"embedding_{i}" for i in range(EMBEDDING_SIZE))
EMBEDDING_EDGES = F.FEATURES[EMBEDDING_NAMES[0]]
assert all(F.FEATURES[name] == EMBEDDING_EDGES for name in EMBEDDING_NAMES), "one bincount bins every dimension"
ANSWERED = (Route.STABLE, Route.CANARY)  # the answers people got; a shadow's are only logged
PICK = 50  # pending batches read per query by roll_up_pending
COARSEN_KEYS = 200  # (key, hour) groups looked up per query by coarsen

# The Window field each `parts` name fills, and the Rollup columns it reads.
PARTS = {"counts": ("requests", "errors"), "latency": ("latency_sum_ms", "latency"), "labels": ("labels",),
         "confidence": ("confidence",), "features": ("features",), "sample": ("sample",)}
ALL_PARTS = tuple(PARTS)
WINDOW_SAMPLE = 500  # embedding summaries a window returns by default: what the MMD test reads


# --- rolling up the log ---------------------------------------------------------------------------


@maintenance_step("monitoring_rollups")
def roll_up_pending(max_seconds=2.0):
    """Roll up pending batches, oldest first, until none is left or `max_seconds` passed
    (the maintenance pass stays short); returns how many this call rolled up."""
    deadline = time.monotonic() + max_seconds
    done = 0
    while True:  # one batch at least per call, however small the budget: the backlog always moves
        ids = list(PredictionBatch.objects.filter(rolled_up_at=None).order_by("id").values_list("id", flat=True)[:PICK])
        for batch_id in ids:
            done += _roll_up_logged(batch_id)
            if time.monotonic() >= deadline:
                return done
        if len(ids) < PICK:
            return done


def _roll_up_logged(batch_id):
    try:
        return roll_up_batch(batch_id)
    except Exception:  # noqa: BLE001 - one bad batch must not hold back the others; it stays pending
        log.exception("rolling up prediction batch %s failed; it is tried again on the next pass", batch_id)
        return False


def roll_up_batch(batch_id):
    """Add one batch's counts to its rollups; False when it was rolled up already (or is
    being rolled up by another worker right now). One transaction: the claim and the counts
    commit together or not at all."""
    with transaction.atomic():
        # skip_locked: a second worker on the same batch returns at once instead of waiting for
        # the first to commit; the UPDATE's row count is still what decides the claim.
        pending = PredictionBatch.objects.select_for_update(skip_locked=True).filter(pk=batch_id, rolled_up_at=None)
        if not list(pending.values_list("pk", flat=True)):
            return False
        if PredictionBatch.objects.filter(pk=batch_id, rolled_up_at=None).update(rolled_up_at=timezone.now()) != 1:
            return False
        rows = list(PredictionLog.objects.filter(batch_id=batch_id).order_by().values_list(*LOG_COLUMNS))
        add_to_rollups(aggregate(rows))
    return True


def aggregate(rows):
    """{(deployment, release, version, route, minute start): counts} for log rows given as
    tuples in LOG_COLUMNS order. `counts` holds the Rollup fields (requests, errors, ...)."""
    if not rows:
        return {}
    cols = dict(zip(LOG_COLUMNS, zip(*rows)))
    minutes = [int(t.timestamp()) // 60 for t in cols["created_at"]]
    index = {}
    group = np.fromiter((index.setdefault(key, len(index)) for key in zip(*(cols[k] for k in KEY_FIELDS), minutes)),
                        dtype=np.int64, count=len(rows))
    size = len(index)
    ok = np.fromiter((s == PredictionLog.Status.OK for s in cols["status"]), dtype=bool, count=len(rows))
    latency = np.asarray(cols["latency_ms"], dtype=np.float64)
    parts = {
        "requests": np.bincount(group, minlength=size), "errors": np.bincount(group[~ok], minlength=size),
        "latency_sum_ms": np.bincount(group, weights=latency, minlength=size),
        "latency": grouped_histogram(group, latency, F.LATENCY_EDGES_MS, size),
        "labels": _labels(group, ok, cols["label"], size), "confidence": _confidence(group, ok, cols["confidence"], size),
        "features": _features(group, ok, cols, size), "sample": _sample(group, ok, cols, size),
    }
    out = {}
    for (deployment_id, release_id, version_id, route, minute), g in index.items():
        start = datetime.fromtimestamp(minute * 60, tz=dt_timezone.utc)
        out[(deployment_id, release_id, version_id, route, start)] = _counts_of(parts, g)
    return out


def _counts_of(parts, g):
    return {
        "requests": int(parts["requests"][g]), "errors": int(parts["errors"][g]),
        "latency_sum_ms": float(parts["latency_sum_ms"][g]), "latency": parts["latency"][g].tolist(),
        "labels": parts["labels"][g], "confidence": parts["confidence"][g].tolist(),
        "features": {name: counts[g].tolist() for name, counts in parts["features"].items() if counts[g].any()},
        "sample": parts["sample"][g],
    }


def grouped_histogram(group, values, edges, size):
    """(size, len(edges) + 1) counts: each group's histogram over the fixed bins, one bincount."""
    bins = len(edges) + 1
    return np.bincount(group * bins + F.bin_index(values, edges), minlength=size * bins).reshape(size, bins)


def _labels(group, ok, labels, size):
    out = [{} for _ in range(size)]
    for (g, label), count in Counter(zip(group[ok].tolist(), (labels[i] for i in np.flatnonzero(ok)))).items():
        if label:
            out[g][label] = count
    return out


def _confidence(group, ok, confidence, size):
    known = ok & np.fromiter((c is not None for c in confidence), dtype=bool, count=len(confidence))
    values = np.asarray([confidence[i] for i in np.flatnonzero(known)], dtype=np.float64)
    return grouped_histogram(group[known], values, F.CONFIDENCE_EDGES, size)


def _features(group, ok, cols, size):
    """Histograms of every drift feature of the answered inputs (errors have no answer's features)."""
    answered = np.flatnonzero(ok)
    g = group[answered]
    out = {}
    for name in ("text_length", "token_count"):
        values = np.asarray(cols[name], dtype=np.float64)[answered]
        out[name] = grouped_histogram(g, values, F.FEATURES[name], size)
    out["oov_rate"] = grouped_histogram(g, _oov_rates(cols, answered), F.FEATURES["oov_rate"], size)
    embedded, matrix = _embeddings(cols["embedding"], answered)
    dims = len(EMBEDDING_NAMES)
    bins = len(EMBEDDING_EDGES) + 1
    # One bincount over (group, dimension, bin) for all dimensions at once.
    index = (group[embedded][:, None] * dims + np.arange(dims)) * bins + F.bin_index(matrix, EMBEDDING_EDGES)
    counts = np.bincount(index.ravel(), minlength=size * dims * bins).reshape(size, dims, bins)
    out.update({name: counts[:, i, :] for i, name in enumerate(EMBEDDING_NAMES)})
    return out


def _oov_rates(cols, rows):
    """Per row, the OOV rate against its own version's training vocabulary."""
    texts, versions = cols["input_text"], cols["version_id"]
    vocabularies = {v: reference.vocabulary(v) for v in {versions[i] for i in rows}}
    return np.fromiter((F.oov_rate(texts[i], vocabularies[versions[i]]) for i in rows), dtype=np.float64,
                       count=len(rows))


def _embeddings(embeddings, rows):
    """The rows (of `rows`) whose logged embedding summary is whole, and those summaries as a matrix."""
    whole = np.asarray([i for i in rows if embeddings[i] and len(embeddings[i]) == EMBEDDING_SIZE], dtype=np.int64)
    matrix = np.asarray([embeddings[i] for i in whole], dtype=np.float64).reshape(len(whole), EMBEDDING_SIZE)
    return whole, matrix


def _sample(group, ok, cols, size):
    """Per group, the SAMPLE_SIZE embedded rows of smallest request hash, as [hash, *embedding]."""
    whole, _ = _embeddings(cols["embedding"], np.flatnonzero(ok))
    out = [[] for _ in range(size)]
    if not len(whole):
        return out
    hashes = np.fromiter((F.request_hash(cols["request_id"][i], cols["position"][i]) for i in whole), dtype=np.int64,
                         count=len(whole))
    g = group[whole]
    order = np.lexsort((hashes, g))  # by group, then hash
    first = np.searchsorted(g[order], np.arange(size))
    rank = np.arange(len(order)) - first[g[order]]
    for i in order[rank < F.SAMPLE_SIZE]:
        out[g[i]].append([int(hashes[i]), *cols["embedding"][whole[i]]])
    return out


def add_to_rollups(aggregates):
    """Add `aggregate()`'s counts into their minute rows, inside the caller's transaction."""
    if not aggregates:
        return
    keys = sorted(aggregates, key=lambda k: (k[4], k[:4]))
    # Missing rows first (ON CONFLICT DO NOTHING waits for a concurrent insert of the same key,
    # then skips it), in one sorted order so two batches never wait on each other's inserts.
    Rollup.objects.bulk_create([Rollup(**_key_fields(key), resolution=Resolution.MINUTE) for key in keys],
                               ignore_conflicts=True)
    match = Q()
    for key in keys:
        match |= Q(**_key_fields(key))
    rows = Rollup.objects.select_for_update().filter(match, resolution=Resolution.MINUTE).order_by("pk")
    now = timezone.now()
    changed = []
    for row in rows:
        add_counts(row, aggregates[(*(getattr(row, k) for k in KEY_FIELDS), row.start)])
        row.updated_at = now
        changed.append(row)
    Rollup.objects.bulk_update(changed, [*COUNT_FIELDS, "updated_at"], batch_size=200)


def _key_fields(key):
    return {**dict(zip(KEY_FIELDS, key[:4])), "start": key[4]}


COUNT_FIELDS = ("requests", "errors", "latency_sum_ms", "latency", "labels", "confidence", "features", "sample")


def counts_of_row(row):
    return {name: getattr(row, name) for name in COUNT_FIELDS}


def add_counts(row, counts):
    """Add `counts` (the COUNT_FIELDS of a bucket) into `row`, in memory."""
    row.requests += counts["requests"]
    row.errors += counts["errors"]
    row.latency_sum_ms += counts["latency_sum_ms"]
    for name in ("latency", "labels", "confidence"):
        setattr(row, name, F.add_counts(getattr(row, name), counts[name]))
    merged = dict(row.features)
    for name, values in counts["features"].items():
        merged[name] = F.add_counts(merged.get(name), values)
    row.features = merged
    row.sample = F.merge_sample(row.sample, counts["sample"])


# --- coarsening ---------------------------------------------------------------------------------


@maintenance_step("monitoring_coarsen")
def coarsen(now=None, max_seconds=2.0):
    """Merge minute rows older than MONITORING_MINUTE_ROLLUP_DAYS into hour rows, one
    transaction per (key, hour), oldest hour first; returns how many minute rows were merged.
    Only whole hours before the cutoff move, so an hour row is never half of its hour because
    of where the cutoff fell; a late minute row merges into its hour row on a later pass."""
    cutoff = _hour_floor((now or timezone.now()) - timedelta(days=settings.MONITORING_MINUTE_ROLLUP_DAYS))
    deadline = time.monotonic() + max_seconds
    merged = 0
    while time.monotonic() < deadline:
        old = Rollup.objects.filter(resolution=Resolution.MINUTE, start__lt=cutoff)
        first = old.order_by("start").values_list("start", flat=True).first()
        if first is None:
            break
        hour = _hour_floor(first)
        groups = old.filter(start__gte=hour, start__lt=hour + timedelta(hours=1)).values_list(*KEY_FIELDS).distinct()
        for key in groups[:COARSEN_KEYS]:
            merged += _coarsen_hour(dict(zip(KEY_FIELDS, key)), hour)
            if time.monotonic() >= deadline:
                break
    return merged


def _hour_floor(moment):
    return moment.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)


def _coarsen_hour(key, hour):
    with transaction.atomic():
        minutes = list(Rollup.objects.select_for_update()
                       .filter(**key, resolution=Resolution.MINUTE, start__gte=hour, start__lt=hour + timedelta(hours=1))
                       .order_by("pk"))
        if not minutes:  # another worker merged them first
            return 0
        Rollup.objects.bulk_create([Rollup(**key, resolution=Resolution.HOUR, start=hour)], ignore_conflicts=True)
        target = Rollup.objects.select_for_update().get(**key, resolution=Resolution.HOUR, start=hour)
        for row in minutes:
            add_counts(target, counts_of_row(row))
        target.save()
        # By primary key: a minute row a late batch added meanwhile stays for the next pass.
        Rollup.objects.filter(pk__in=[row.pk for row in minutes]).delete()
    return len(minutes)


# --- reading windows ----------------------------------------------------------------------------


@dataclass
class Window:
    """The sums of the rollup rows of a span: what drift checks, SLOs and charts read.
    Histograms are counts over features.py's bins; `sample` holds embedding summaries."""

    requests: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    latency: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)
    confidence: list = field(default_factory=list)
    features: dict = field(default_factory=dict)
    sample: list = field(default_factory=list)
    buckets: int = 0
    start: datetime | None = None
    end: datetime | None = None


def window(deployment, *, start, end, version=None, route=None, routes=None, parts=ALL_PARTS, sample_size=WINDOW_SAMPLE):
    """The sums of `deployment`'s rollups (minute and hour rows) whose bucket starts in
    [start, end); stable and canary answers unless `route` or `routes` say otherwise (a
    shadow's only when asked). Reads only the columns `parts` needs."""
    selected = _selected(deployment, start, end, version, route, routes, parts)
    postgresql = connection.vendor == "postgresql"
    in_database = "sample" in parts and postgresql
    total = _Sum([p for p in parts if not (in_database and p == "sample")], sample_size, features_text=postgresql)
    for row in _values(selected, total.parts, extra=(), features_text=postgresql):
        total.add(row)
    out = total.window(start, end)
    if in_database:
        out.sample = _sample_in_database(selected, sample_size)
    return out


def series(deployment, *, start, end, step_minutes, version=None, route=None, routes=None, parts=("counts", "latency")):
    """[(bucket start, Window)] for every step_minutes bucket from `start` up to `end`, empty
    ones included (a chart shows the gap as zero traffic); one query, merged here. An hour row
    counts in the bucket its start falls in."""
    step = timedelta(minutes=step_minutes)
    count = max(0, -(-(end - start) // step))
    sums = [_Sum(parts, WINDOW_SAMPLE) for _ in range(count)]
    for row in _values(_selected(deployment, start, end, version, route, routes, parts), sums[0].parts if sums else [],
                       extra=("start",)):
        sums[(row[-1] - start) // step].add(row[:-1])
    return [(start + i * step, s.window(start + i * step, min(end, start + (i + 1) * step))) for i, s in enumerate(sums)]


def _selected(deployment, start, end, version, route, routes, parts):
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    rows = Rollup.objects.filter(deployment_id=_pk(deployment), start__gte=start, start__lt=end,
                                 route__in=list(routes or ([route] if route else ANSWERED)))
    if version is not None:
        rows = rows.filter(version_id=_pk(version))
    return rows.order_by()


def _values(rows, parts, extra, features_text=False):
    columns = [c for part in PARTS if part in parts for c in PARTS[part]] or ["pk"]  # pk: only count the rows
    if features_text and "features" in columns:
        rows = rows.annotate(features_text=Cast("features", output_field=TextField()))
        columns[columns.index("features")] = "features_text"
    return rows.values_list(*columns, *extra).iterator(chunk_size=2000)


def _sample_in_database(rows, size):
    """The window's bottom-`size` embedding summaries, chosen by PostgreSQL: decoding every
    bucket's sample in Python to keep 500 of them took longer than all the histograms."""
    subquery, params = rows.values("pk").query.sql_with_params()
    table = Rollup._meta.db_table
    sql = (f'SELECT s.item FROM "{table}" r CROSS JOIN LATERAL jsonb_array_elements(r.sample) AS s(item) '
           f'WHERE r.id IN ({subquery}) ORDER BY (s.item->>0)::bigint LIMIT %s')
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, size])
        items = [json.loads(item) if isinstance(item, str) else item for (item,) in cursor.fetchall()]
    return [item[1:] for item in F.merge_sample(items, [], k=size)]


def _pk(obj):
    return getattr(obj, "pk", obj)


class _Sum:
    """Sums rows read as tuples of the `parts` columns in PARTS order. Histograms are kept as
    lists of rows and summed once by numpy at the end (far faster than adding row by row)."""

    def __init__(self, parts, sample_size, features_text=False):
        self.parts = [p for p in PARTS if p in parts]  # in PARTS order, as _values reads them
        self.sample_size = sample_size
        self.features_text = features_text  # features read as PostgreSQL's text of the JSON (see _summed_text)
        self.buckets = self.requests = self.errors = 0
        self.latency_sum_ms = 0.0
        self.latency, self.confidence, self.sample = [], [], []
        self.labels = Counter()
        self.features = {name: [] for name in F.FEATURES}

    def add(self, row):
        self.buckets += 1
        values = iter(row)
        for part in self.parts:
            getattr(self, f"_add_{part}")(values)

    def _add_counts(self, values):
        self.requests += next(values)
        self.errors += next(values)

    def _add_latency(self, values):
        self.latency_sum_ms += next(values)
        self._append(self.latency, next(values))

    def _add_labels(self, values):
        self.labels.update(next(values))

    def _add_confidence(self, values):
        self._append(self.confidence, next(values))

    def _add_features(self, values):
        value = next(values)
        pairs = FEATURE_PAIR.findall(value) if self.features_text else value.items()
        for name, counts in pairs:
            if name in self.features:
                self._append(self.features[name], counts)

    def _add_sample(self, values):
        self.sample.extend(next(values))

    @staticmethod
    def _append(rows, counts):
        if counts:
            rows.append(counts)

    def window(self, start, end):
        out = Window(buckets=self.buckets, start=start, end=end)
        if "counts" in self.parts:
            out.requests, out.errors = self.requests, self.errors
        if "latency" in self.parts:
            out.latency_sum_ms, out.latency = self.latency_sum_ms, _summed(self.latency, F.LATENCY_EDGES_MS)
        if "labels" in self.parts:
            out.labels = dict(self.labels)
        if "confidence" in self.parts:
            out.confidence = _summed(self.confidence, F.CONFIDENCE_EDGES)
        if "features" in self.parts:
            add = _summed_text if self.features_text else _summed
            out.features = {name: add(rows, F.FEATURES[name]) for name, rows in self.features.items()}
        if "sample" in self.parts:
            out.sample = [item[1:] for item in F.merge_sample(self.sample, [], k=self.sample_size)]
        return out


def _summed(rows, edges):
    if not rows:
        return [0] * (len(edges) + 1)
    return np.asarray(rows, dtype=np.int64).sum(axis=0).tolist()


# PostgreSQL writes a jsonb object of int lists as {"name": [1, 2, 3], ...}. A window of a few
# thousand rows holds millions of counts: json.loads and numpy's conversion of the lists took
# about 5 times as long as this regex and one np.fromstring per feature (docs/monitoring.md).
FEATURE_PAIR = re.compile(r'"(\w+)": \[([^\]]*)\]')


def _summed_text(rows, edges):
    """_summed for rows given as the text between a list's brackets ("1, 2, 3")."""
    bins = len(edges) + 1
    if not rows:
        return [0] * bins
    if all(row.count(",") == bins - 1 for row in rows):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)  # older numpy only warns on text it cannot read
                values = np.fromstring(", ".join(rows), dtype=np.int64, sep=",")
        except (ValueError, DeprecationWarning):
            values = None
        if values is not None and values.size == len(rows) * bins:
            return values.reshape(len(rows), bins).sum(axis=0).tolist()
    return _summed([json.loads(f"[{row}]") for row in rows], edges)  # not the shape written: the slow, sure way
