"""Monitoring at size: 10,000,000 prediction-log rows in PostgreSQL, and what reads them.

    .venv/bin/python bench/monitoring_bench.py                 # 10M rows; keeps the database for a rerun
    .venv/bin/python bench/monitoring_bench.py --rows 1000000  # a smaller run
    .venv/bin/python bench/monitoring_bench.py --write         # also add the section to bench/RESULTS.md

Everything runs in a database of its own (PostgreSQL `bench_monitoring_<rows>`, kept between
runs so the 10M rows are generated once; `--fresh` drops it first; `--only drift,dashboards`
reruns some phases) and a Redis database of its own
(BENCH_REDIS_URL, db 9 by default). Each measured phase runs in a child process of its own, so
its peak memory (ru_maxrss) is its own:

1. setup: the session's trained MiniLM LoRA output (LIFECYCLE_TEST_TRAINED_DIR, or trained here
   once by tests/registry/trained.py) registered as v1 (production) and v2 (staging) through real
   promotion requests, a deployment serving v1 with v2 as a 20 % canary, and each version's
   reference: 200,000 reference rows with the shapes the log has (the reference statistics and
   sample as monitoring/reference.py stores them), calibration fitted by monitoring/estimate.py;
2. generate: the log written with COPY (CSV), 30 days of answers, 80 % stable and 20 % canary,
   0.5 % errors, texts and embedding summaries drawn from pools (a text keeps its embedding), the
   last 10 % drifted (longer texts, unknown words, shifted embeddings); a PredictionBatch per 1,000
   rows as the serving process writes them. The log's indexes are built after the load;
3. rollup: `rollups.roll_up_pending` over every batch — the first 200,000 rows timed on their own
   (the steady rate), then the rest;
4. drift: `drift.check` over the newest 1,000,000 predictions' window, from the rollups (median
   of 5, and the first, cold call);
5. dashboards: overview, executive, on-call and debug pages rendered through Django's test client
   as their roles (server time; the first request of the process is "cold", then median of 5);
6. report: the full Evidently report for the same 1M window through `report.build_report` (it
   reads the raw log and the reference sample, runs Evidently, stores HTML and JSON), and bare
   Evidently `Report([DataDriftPreset()])` on the same two frames already in memory (built by
   the report's own `frames()`, outside the timing), each in its own process.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date, datetime, timedelta, timezone as dt_timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DB_PREFIX = "bench_monitoring"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
NAME = "bench-router"
DAYS = 30
DRIFT_SHARE = 0.10
REFERENCE_ROWS = 200_000
WINDOW_ROWS = 1_000_000
CHUNK = 200_000
BATCH_ROWS = 1000
POOL = 5000
LABELS = None  # the trained model's labels, read at setup
PHASES = ("setup", "generate", "rollup", "drift", "dashboards", "report", "evidently_bare")


def db_name(rows):
    return f"{DB_PREFIX}_{rows}"


def env(rows):
    data = ROOT / "bench" / "out" / "monitoring" / str(rows)
    data.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db_name(rows)}", "REDIS_URL": REDIS_URL, "DEBUG": "true",
            "DJANGO_SETTINGS_MODULE": "lifecycle.settings", "LIFECYCLE_DATA_DIR": str(data),
            "ARTIFACT_DIR": str(data / "artifacts"), "MODEL_CACHE_DIR": str(data / "model-cache"),
            "MONITORING_REPORT_MAX_ROWS": str(WINDOW_ROWS), "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}


def django_setup(rows):
    for key, value in env(rows).items():
        os.environ.setdefault(key, value)
    import django

    django.setup()


def peak_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def emit(**data):
    print("RESULT " + json.dumps({**data, "peak_mb": peak_mb()}), flush=True)


# --- 1. setup -------------------------------------------------------------------------------------------


def phase_setup(args):
    import shutil

    from django.contrib.auth.models import Group
    from django.core.management import call_command

    from lifecycle.deployments.models import Deployment
    from tests.conftest import make_user
    from tests.deployments.factories import make_deployment

    call_command("migrate", verbosity=0)
    if Deployment.objects.filter(name=NAME).exists():
        return emit(phase="setup", skipped="exists")
    trained = trained_output()
    from django.conf import settings
    shutil.copytree(trained["artifacts"], settings.ARTIFACT_DIR, dirs_exist_ok=True)
    for name in ("labeler", "ml_engineer", "approver", "oncall", "viewer"):
        Group.objects.get_or_create(name=name)
    people = {"erin": make_user("erin", "ml_engineer"), "ann": make_user("ann", "approver"),
              "abe": make_user("abe", "approver"), "ona": make_user("ona", "oncall"), "vic": make_user("vic", "viewer")}
    tmp = ROOT / "bench" / "out" / "monitoring" / str(args.rows) / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    deployment = make_deployment(trained, people, tmp, name=NAME, mode="canary", share=20.0)
    release = deployment.current_release
    import django_rq

    django_rq.get_queue("training").empty()  # the releases' reference jobs: replaced by the references below
    for version in (release.stable, release.candidate):
        synthetic_reference(version, seed=version.pk)
    emit(phase="setup", deployment=deployment.pk)


def trained_output():
    reuse = os.environ.get("LIFECYCLE_TEST_TRAINED_DIR")
    out = Path(reuse) if reuse else ROOT / "bench" / "out" / "monitoring" / "trained"
    if not (out / "trained.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        child = {**os.environ, "DATABASE_URL": f"sqlite:///{out / 'db.sqlite3'}", "DEBUG": "true",
                 "LIFECYCLE_DATA_DIR": str(out), "ARTIFACT_DIR": str(out / "artifacts"),
                 "MODEL_CACHE_DIR": str(out / "model-cache"), "DJANGO_SETTINGS_MODULE": "lifecycle.settings"}
        for cmd in (["migrate", "-v0"], ["shell", "-c", f"from tests.registry.trained import train; train({str(out)!r})"]):
            subprocess.run([sys.executable, "manage.py", *cmd], cwd=ROOT, env=child, check=True)
    return {**json.loads((out / "trained.json").read_text()), "artifacts": out / "artifacts"}


def pools(rng, vocabulary, labels, *, drifted):
    """POOL texts with their token counts, embeddings (as JSON text) and a label each."""
    import numpy as np

    words = np.array(sorted(vocabulary) or ["ticket"])
    odd = np.array([f"zq{i}x" for i in range(500)])
    texts, embeddings = [], []
    for _ in range(POOL):
        n = int(rng.integers(4, 16) * (2 if drifted else 1))
        pick = rng.choice(odd if drifted and rng.random() < 0.4 else words, size=n)
        texts.append(" ".join(pick))
        vector = rng.normal(0.6 if drifted else 0.0, 1.0, 16)
        embeddings.append(json.dumps([round(float(x), 4) for x in vector]))
    tokens = np.array([len(t.split()) + 2 for t in texts])
    return {"text": np.array(texts, dtype=object), "embedding": np.array(embeddings, dtype=object),
            "tokens": tokens, "label": rng.integers(0, len(labels), POOL)}


def synthetic_reference(version, seed):
    """A ready Reference for `version` with REFERENCE_ROWS rows of the log's undrifted shapes,
    stored the way monitoring/reference.py stores one (statistics + Parquet sample)."""
    import io

    import numpy as np
    import pandas as pd
    from django.utils import timezone

    from lifecycle.core import artifacts
    from lifecycle.monitoring import estimate, features, reference
    from lifecycle.monitoring.models import Reference

    rng = np.random.default_rng(seed)
    vocabulary = reference.vocabulary(version)
    labels = list(version.labels)
    pool = pools(rng, vocabulary, labels, drifted=False)
    pick = rng.integers(0, POOL, REFERENCE_ROWS)
    confidence = np.clip(rng.beta(8, 2, REFERENCE_ROWS), 0.01, 0.999)
    correct = rng.random(REFERENCE_ROWS) < confidence * 0.95
    frame = pd.DataFrame({
        "example_id": np.arange(REFERENCE_ROWS), "split": "validation", "text": pool["text"][pick],
        "label": [labels[i] for i in pool["label"][pick]], "confidence": confidence, "correct": correct,
        "text_length": [len(t) for t in pool["text"][pick]], "token_count": pool["tokens"][pick]})
    frame["predicted"] = np.where(correct, frame["label"], labels[0])
    frame["oov_rate"] = np.array([features.oov_rate(t, vocabulary) for t in pool["text"]])[pick]
    emb = np.array([json.loads(e) for e in pool["embedding"]])[pick]
    for i in range(16):
        frame[f"embedding_{i}"] = emb[:, i]
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    sample = artifacts.get_store().put_bytes(buffer.getvalue()).sha256
    stats = {name: {"counts": features.histogram(frame[name], edges), "n": REFERENCE_ROWS,
                    "mean": float(frame[name].mean()), "std": float(frame[name].std()),
                    "min": float(frame[name].min()), "max": float(frame[name].max())}
             for name, edges in features.FEATURES.items()}
    ref, _ = Reference.objects.update_or_create(version=version, defaults=dict(
        status=Reference.Status.READY, splits=["validation", "test"], rows=REFERENCE_ROWS,
        features=stats, labels=frame["predicted"].value_counts().to_dict(),
        true_labels=frame["label"].value_counts().to_dict(),
        confidence=features.histogram(confidence, features.CONFIDENCE_EDGES), accuracy=float(correct.mean()),
        sample_sha256=sample, computed_at=timezone.now()))
    estimate.calibration_for(ref)
    return ref


# --- 2. generate ---------------------------------------------------------------------------------------


def phase_generate(args):
    import numpy as np
    from django.db import connection

    from lifecycle.deployments.models import Deployment, PredictionBatch, PredictionLog
    from lifecycle.monitoring import reference

    if PredictionLog.objects.exists():
        return emit(phase="generate", skipped="exists", rows=PredictionLog.objects.count())
    deployment = Deployment.objects.get(name=NAME)
    release = deployment.current_release
    labels = list(release.stable.labels)
    rng = np.random.default_rng(0)
    vocabulary = reference.vocabulary(release.stable)
    normal, drifted = pools(rng, vocabulary, labels, drifted=False), pools(rng, vocabulary, labels, drifted=True)
    end = datetime.now(dt_timezone.utc).replace(second=0, microsecond=0)
    # 30 days at 10M rows (about 230 answers a minute); a smaller run keeps the same rate.
    start = end - timedelta(days=DAYS) * (args.rows / 10_000_000)
    indexes = drop_log_indexes(connection)
    started = time.perf_counter()
    table = PredictionLog._meta.db_table
    columns = ("request_id", "position", "deployment_id", "release_id", "version_id", "route", "input_text", "output",
               "label", "confidence", "latency_ms", "status", "error", "text_length", "token_count", "embedding",
               "process", "created_at", "batch_id")
    with connection.cursor() as wrapper:
        cursor = wrapper.cursor
        for first in range(0, args.rows, CHUNK):
            n = min(CHUNK, args.rows - first)
            frame = chunk_frame(rng, first, n, args.rows, start, end, normal, drifted, labels, release)
            text = frame.to_csv(index=False, header=False, columns=list(columns), na_rep="\\N")
            # \N is NULL, so an empty label or error stays the empty string it is.
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')") as copy:
                copy.write(text)
            print(f"generate: {first + n:,} rows, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        loaded = time.perf_counter() - started
        batches = (args.rows + BATCH_ROWS - 1) // BATCH_ROWS
        cursor.execute(f"INSERT INTO {PredictionBatch._meta.db_table} (id, process, rows, created_at) "
                       f"SELECT g, 'bench', {BATCH_ROWS}, now() FROM generate_series(1, {batches}) g")
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{PredictionBatch._meta.db_table}', 'id'), {batches})")
        index_started = time.perf_counter()
        for sql in indexes:
            cursor.execute(sql)
        cursor.execute(f"ANALYZE {table}")
    emit(phase="generate", rows=args.rows, copy_seconds=round(loaded, 1),
         index_seconds=round(time.perf_counter() - index_started, 1), rows_per_second=round(args.rows / loaded))


def drop_log_indexes(connection):
    """The log's secondary indexes' definitions, dropped for the load (rebuilt after it)."""
    from lifecycle.deployments.models import PredictionLog

    table = PredictionLog._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SELECT i.indexname, i.indexdef, c.conname FROM pg_indexes i LEFT JOIN pg_constraint c "
                       "ON c.conname = i.indexname WHERE i.tablename = %s AND i.indexname NOT LIKE '%%_pkey'", [table])
        found = cursor.fetchall()
        restore = []
        for name, definition, constraint in found:
            if constraint:
                cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
                restore.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" UNIQUE USING INDEX "{name}"')
                restore.insert(0, definition.replace("CREATE INDEX", "CREATE UNIQUE INDEX", 1)
                               if "UNIQUE" not in definition else definition)
            else:
                cursor.execute(f'DROP INDEX "{name}"')
                restore.append(definition)
    return restore


def chunk_frame(rng, first, n, total, start, end, normal, drifted, labels, release):
    import numpy as np
    import pandas as pd

    span = (end - start).total_seconds()
    index = np.arange(first, first + n)
    seconds = np.sort(rng.uniform(index[0], index[-1] + 1, n)) / total * span
    created = pd.to_datetime(start) + pd.to_timedelta(seconds, unit="s")
    is_drift = index >= total * (1 - DRIFT_SHARE)
    pick = rng.integers(0, POOL, n)
    text = np.where(is_drift, drifted["text"][pick], normal["text"][pick])
    canary = rng.random(n) < 0.2
    error = rng.random(n) < 0.005
    label_ix = np.where(is_drift, drifted["label"][pick], normal["label"][pick])
    label = np.array(labels, dtype=object)[label_ix]
    confidence = np.clip(rng.beta(8, 2, n) - np.where(is_drift, 0.15, 0.0), 0.01, 0.999)
    return pd.DataFrame({
        "request_id": np.char.add("%016x" % (1 << 60), np.char.mod("%016x", index)),
        "position": 0, "deployment_id": release.deployment_id, "release_id": release.pk,
        "version_id": np.where(canary, release.candidate_id, release.stable_id),
        "route": np.where(canary, "canary", "stable"), "input_text": text,
        "output": np.where(error, "{}", np.char.add(np.char.add('{"label": "', label.astype(str)), '"}')),
        "label": np.where(error, "", label), "confidence": np.where(error, np.nan, confidence.round(4)),
        "latency_ms": rng.lognormal(np.log(12), 0.4, n).round(2), "status": np.where(error, "error", "ok"),
        "error": np.where(error, "model error", ""), "text_length": [len(t) for t in text],
        "token_count": np.where(is_drift, drifted["tokens"][pick], normal["tokens"][pick]),
        "embedding": np.where(error, "[]", np.where(is_drift, drifted["embedding"][pick], normal["embedding"][pick])),
        "process": "bench", "created_at": created.strftime("%Y-%m-%d %H:%M:%S.%f+00"),
        "batch_id": index // BATCH_ROWS + 1,
    })


# --- 3. rollup -------------------------------------------------------------------------------------------


def phase_rollup(args):
    from lifecycle.deployments.models import PredictionBatch
    from lifecycle.monitoring import rollups

    pending = PredictionBatch.objects.filter(rolled_up_at__isnull=True)
    if not pending.exists():
        return emit(phase="rollup", skipped="done")
    steady_batches = 200_000 // BATCH_ROWS
    started = time.perf_counter()
    done = 0
    for pk in pending.order_by("pk").values_list("pk", flat=True)[:steady_batches]:
        done += rollups.roll_up_batch(pk)
    steady = time.perf_counter() - started
    rest_started = time.perf_counter()
    while rollups.roll_up_pending(max_seconds=60.0):
        print(f"rollup: {PredictionBatch.objects.filter(rolled_up_at__isnull=True).count():,} batches left",
              file=sys.stderr, flush=True)
    rest = time.perf_counter() - rest_started
    emit(phase="rollup", steady_rows=done * BATCH_ROWS, steady_seconds=round(steady, 1),
         steady_rows_per_second=round(done * BATCH_ROWS / steady), total_seconds=round(steady + rest, 1),
         rows_per_second=round(args.rows / (steady + rest)))


# --- 4. drift --------------------------------------------------------------------------------------------


def window_bounds(rows):
    """The newest WINDOW_ROWS answers' time window (by the log's own created_at index); a
    tenth of the log in a smaller run."""
    from lifecycle.deployments.models import PredictionLog

    size = min(WINDOW_ROWS, rows // 10)
    newest = PredictionLog.objects.order_by("-created_at").values_list("created_at", flat=True)[:1][0]
    oldest = PredictionLog.objects.order_by("-created_at").values_list("created_at", flat=True)[size - 1:size][0]
    return oldest.replace(second=0, microsecond=0), newest + timedelta(minutes=1)


def phase_drift(args):
    from lifecycle.deployments.models import Deployment
    from lifecycle.monitoring import drift

    deployment = Deployment.objects.get(name=NAME)
    version = deployment.current_release.stable
    start, end = window_bounds(args.rows)
    times, checks = [], []
    for _ in range(6):
        started = time.perf_counter()
        checks.append(drift.check(deployment, version, start=start, end=end, route=""))
        times.append(time.perf_counter() - started)
    check = checks[-1]
    emit(phase="drift", window_requests=check.requests, drifted=check.drifted, drifted_features=check.drifted_features,
         cold_seconds=round(times[0], 3), median_seconds=round(statistics.median(times[1:]), 3),
         skipped=check.skipped)


# --- 5. dashboards ------------------------------------------------------------------------------------------


def phase_dashboards(args):
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from lifecycle.deployments.models import Deployment

    deployment = Deployment.objects.get(name=NAME)
    users = get_user_model().objects
    pages = [("overview", reverse("monitoring:overview"), "ona"), ("executive", reverse("monitoring:executive"), "vic"),
             ("oncall", reverse("monitoring:oncall"), "ona"),
             ("debug", reverse("monitoring:debug_version", args=[deployment.current_release.stable_id]), "erin")]
    results = {}
    for name, url, who in pages:
        client = Client()
        client.force_login(users.get(username=who))
        times = []
        for _ in range(6):
            started = time.perf_counter()
            response = client.get(url, HTTP_HOST="localhost")
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, (name, response.status_code)
        results[name] = {"cold_ms": round(times[0] * 1000, 1), "median_ms": round(statistics.median(times[1:]) * 1000, 1)}
    emit(phase="dashboards", pages=results)


# --- 6. the report, and bare Evidently ---------------------------------------------------------------------


def phase_report(args):
    import django_rq
    from django.contrib.auth import get_user_model

    from lifecycle.core import jobs
    from lifecycle.deployments.models import Deployment
    from lifecycle.monitoring import report

    deployment = Deployment.objects.get(name=NAME)
    version = deployment.current_release.stable
    start, end = window_bounds(args.rows)
    row = report.start_report(get_user_model().objects.get(username="ona"), deployment, version, start, end)
    django_rq.get_queue("monitoring").empty()  # run here, in this process, not by a worker
    started = time.perf_counter()
    jobs.perform(row.job_id)
    seconds = time.perf_counter() - started
    row.refresh_from_db()
    assert row.job.status == "succeeded", row.job.error
    emit(phase="report", seconds=round(seconds, 1), rows=row.rows, reference_rows=row.reference_rows,
         evidently_seconds=round(row.seconds, 1))


def phase_evidently_bare(args):
    from evidently import Report
    from evidently.presets import DataDriftPreset

    from lifecycle.deployments.models import Deployment
    from lifecycle.monitoring import report

    deployment = Deployment.objects.get(name=NAME)
    version = deployment.current_release.stable
    start, end = window_bounds(args.rows)
    current, reference_frame = report.frames(deployment, version, start, end)
    # The same frames with the same column types the report gives Evidently (the input as text).
    ours = report.datasets(current, reference_frame)
    started = time.perf_counter()
    Report([DataDriftPreset()]).run(*ours)
    emit(phase="evidently_bare", seconds=round(time.perf_counter() - started, 1), rows=len(current),
         reference_rows=len(reference_frame), columns=len(current.columns))


# --- the driver -------------------------------------------------------------------------------------------------


def run_phase(name, args):
    command = [sys.executable, __file__, "--phase", name, "--rows", str(args.rows)]
    result = subprocess.run(command, cwd=ROOT, env=env(args.rows), capture_output=True, text=True)
    sys.stderr.write(result.stderr[-3000:])
    lines = [line[7:] for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"phase {name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    found = json.loads(lines[-1])
    print(json.dumps(found), flush=True)
    return found


def ensure_database(rows, fresh):
    import psycopg

    name = db_name(rows)
    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and fresh:
            conn.execute(f"DROP DATABASE {name}")
            exists = None
        if not exists:
            conn.execute(f"CREATE DATABASE {name}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--phase", choices=PHASES)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--only", help="comma-separated phases to run (the others must have run before)")
    args = parser.parse_args()
    if args.phase:
        django_setup(args.rows)
        return globals()[f"phase_{args.phase}"](args)
    ensure_database(args.rows, args.fresh)
    wanted = args.only.split(",") if args.only else PHASES
    saved = ROOT / "bench" / "out" / "monitoring" / str(args.rows) / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    for name in PHASES:
        if name in wanted:
            found = run_phase(name, args)
            if not found.get("skipped"):
                results[name] = found
            saved.write_text(json.dumps(results, indent=1))
    if args.write:
        write_results(results, args)


def write_results(results, args):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    d, r, e, b = results["drift"], results["report"], results["evidently_bare"], results["rollup"]
    lines = [f"## Monitoring at 10M prediction-log rows — {date.today()}, commit {commit}", "",
             f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python "
             f"{platform.python_version()}, PostgreSQL on the same machine; load average {load[0]:.1f} at the end. "
             f"Command: `.venv/bin/python bench/monitoring_bench.py --rows {args.rows}`.", "",
             "| what | goal | measured | peak memory |", "| --- | --- | --- | --- |"]
    for name, page in results["dashboards"]["pages"].items():
        lines.append(f"| {name} dashboard, server time (cold / median of 5 warm) | < 500 ms | "
                     f"{page['cold_ms']} / {page['median_ms']} ms | {results['dashboards']['peak_mb']} MB (process) |")
    lines.append(f"| drift check over the newest {d['window_requests']:,} answers, from rollups (cold / median of 5) "
                 f"| < 1 s | {d['cold_seconds']} / {d['median_seconds']} s | {d['peak_mb']} MB |")
    lines.append(f"| rollup maintenance (steady, first 200k rows / all) | ≥ 2,000 rows/s | "
                 f"{b.get('steady_rows_per_second', '-')} / {b.get('rows_per_second', '-')} rows/s | {b['peak_mb']} MB |")
    ratio = r["seconds"] / e["seconds"] if e["seconds"] else float("nan")
    lines.append(f"| full Evidently report, {r['rows']:,} rows vs {r['reference_rows']:,} (ours, reading the log) | "
                 f"≤ 2× bare | {r['seconds']} s ({ratio:.2f}× bare; Evidently's run inside it "
                 f"{r.get('evidently_seconds', '-')} s) | {r['peak_mb']} MB |")
    lines.append(f"| bare Evidently DataDriftPreset on the same frames and column types ({e['columns']} columns) | — | "
                 f"{e['seconds']} s | "
                 f"{e['peak_mb']} MB |")
    lines += ["", f"Log generation: {results['generate'].get('copy_seconds', '-')} s COPY, "
              f"{results['generate'].get('index_seconds', '-')} s index build.", ""]
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text()
    marker = "\n## "
    head, _, rest = text.partition(marker)
    path.write_text(head + "\n".join(lines) + marker + rest)


if __name__ == "__main__":
    main()
