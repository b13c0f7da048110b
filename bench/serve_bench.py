"""Serving benchmark: a real `manage.py serve` process driven over loopback by a separate
load-generator process, beside the in-process floor (a bare transformers forward pass of the
same model), in one run.

    .venv/bin/python bench/serve_bench.py                      # PostgreSQL; 1, 5, 20, 50 clients
    .venv/bin/python bench/serve_bench.py --database sqlite    # the embedded default
    .venv/bin/python bench/serve_bench.py --quick              # a smoke run: short phases, never written
    .venv/bin/python bench/serve_bench.py --write              # also append the section to bench/RESULTS.md

What it does, in order, in a database of its own (PostgreSQL `bench_serving_<pid>`, dropped at
the end, or a SQLite file in a temporary folder) and a Redis database of its own
(BENCH_REDIS_URL, db 12 by default; it must be empty, it is flushed at the end):

1. setup, in a child process (it imports torch): a dataset version through the real ingest, two
   real LoRA fine-tunes of all-MiniLM-L6-v2 (seeds 0 and 1), both registered (signed), v1 moved
   to production and v2 to staging by an approver through promotion requests, a deployment
   serving v1, and a serving token (its key goes to a 0600 file, never to a command line);
2. the floor, in a child process: v1's output loaded the plain way (transformers + peft, the
   LoRA merged into the weights), tokenizer + forward + softmax for single inputs and for
   batches of 32, on the texts the load generator sends;
3. `manage.py serve` started on a free loopback port, prediction logging on; for each client
   count (closed loop: each client sends its next request when the last one is answered, one
   input per request, keep-alive connections) a warm-up, then a measured window;
4. a rollback under load: v2 released as a canary (`Deployment.start_release`), and once the
   serving process answers from it, `Release.rollback` while the clients keep sending; the time
   from the click until the last answer from the canary, the failed requests, and the
   time-to-rollback the serving process reported (Rollback.time_to_rollback_ms);
5. the serving process restarted with SERVING_LOG_PREDICTIONS=false, and the client counts again,
   for the cost of the prediction log (skipped, and said so, when the setting does not exist).

CPU is counted for the load generator (its own getrusage), the serving process tree and the
whole machine (/proc/stat) in each measured window, so that the figures can be read honestly on
a machine where the load generator competes with the server for the same cores.
"""
import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres"}
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
NAME = "bench-router"
SLUG = "serve-bench"
TRAIN_CONFIG = {"base_model": "all-MiniLM-L6-v2", "method": "lora", "batch_size": 16, "learning_rate": 2e-3,
                "max_length": 64}
TEXTS = 2000  # distinct request texts (synthetic support messages, a seed the training never saw)

# Goals from the deployments issue.
P99_GOAL_MS = 50.0
FLOOR_SHARE_GOAL = 0.70
LOGGING_COST_GOAL = 0.10
ROLLBACK_GOAL_S = 2.0


# --- Pure helpers (tests/bench/test_serve_bench.py) -------------------------------------------------


def percentile(values, q):
    """The q-th percentile (0-100) by linear interpolation between ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def build_request(host, port, path, token, payload):
    """One HTTP/1.1 keep-alive POST of a JSON body, as bytes."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode("latin-1") + payload


async def read_response(reader):
    """(status, headers, body) of one HTTP/1.1 response: Content-Length, chunked, or to the close."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.read()
    return status, headers, body


async def _read_chunked(reader):
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are sent to us
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def answer_route(status, body):
    """The route of a 200 answer with one output, or why it is not a good answer."""
    if status != 200:
        return None, f"http {status}"
    try:
        answer = json.loads(body)
        outputs, route = answer["outputs"], answer["route"]
    except (ValueError, KeyError, TypeError):
        return None, "malformed answer"
    if len(outputs) != 1 or "label" not in outputs[0]:
        return None, "malformed answer"
    return route, None


def summarize(records, start, end):
    """Figures for the answers completed in [start, end) (wall clock). A record is
    (sent, done, route, error): route for a good answer, error (a reason) otherwise."""
    inside = [r for r in records if start <= r[1] < end]
    good = [(r[1] - r[0]) * 1000.0 for r in inside if r[3] is None]
    seconds = end - start
    return {
        "requests": len(inside), "answers": len(good), "errors": dict(Counter(r[3] for r in inside if r[3])),
        "p50_ms": percentile(good, 50), "p95_ms": percentile(good, 95), "p99_ms": percentile(good, 99),
        "throughput": len(good) / seconds if seconds > 0 else None,
        "routes": dict(Counter(r[2] for r in inside if r[3] is None)),
    }


def rollback_summary(records, click, window=5.0):
    """What clients saw around a rollback clicked at `click` (wall clock): the canary's share of
    answers in the `window` seconds before, the time from the click to the last canary answer,
    and every failed request from the click until the canary was gone (plus a second)."""
    before = [r for r in records if click - window <= r[1] < click and r[3] is None]
    canary_before = sum(1 for r in before if r[2] == "canary")
    after = [r for r in records if r[1] >= click]
    last_canary = max((r[1] for r in after if r[3] is None and r[2] == "canary"), default=None)
    sent_after = [r for r in after if r[0] >= click and r[3] is None and r[2] == "canary"]
    to_stable = (last_canary - click) if last_canary is not None else 0.0
    failed_during = [r for r in after if r[3] and r[1] <= click + to_stable + 1.0]
    return {
        "canary_share_before": canary_before / len(before) if before else None,
        "answers_before": len(before),
        "to_stable_s": to_stable,
        "last_canary_sent_after_click_s": max((r[1] - click for r in sent_after), default=None),
        "canary_answers_after_click": sum(1 for r in after if r[3] is None and r[2] == "canary"),
        "failed_during": len(failed_during),
        "failed_total": sum(1 for r in records if r[3]),
        "requests_total": len(records),
        "errors": dict(Counter(r[3] for r in records if r[3])),
    }


def clients_text(n):
    return f"{n} client" if n == 1 else f"{n} clients"


def fmt(value, spec=".1f", unit=""):
    return "–" if value is None else f"{value:{spec}}{unit}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 5, 20, 50], help="concurrent clients, each level in turn")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measured window")
    parser.add_argument("--rollback-clients", type=int, default=20)
    parser.add_argument("--rollback-before", type=float, default=5.0, help="seconds of canary load before the click")
    parser.add_argument("--rollback-after", type=float, default=10.0, help="seconds of load after the click")
    parser.add_argument("--canary-share", type=float, default=50.0, help="percent of traffic on the canary before the rollback")
    parser.add_argument("--serving-workers", type=int, default=1, help="manage.py serve --workers")
    parser.add_argument("--train-rows", type=int, default=600, help="examples in the training dataset")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--floor-single", type=int, default=300, help="single-input passes in the floor")
    parser.add_argument("--floor-batches", type=int, default=30, help="batches of 32 in the floor")
    parser.add_argument("--no-logging-off", action="store_true", help="skip the second sweep without the prediction log")
    parser.add_argument("--quick", action="store_true", help="a smoke run: short phases, small training, never written")
    parser.add_argument("--write", action="store_true", help="append the section to bench/RESULTS.md (not with --quick)")
    parser.add_argument("--json", help="also write every number to this file")
    parser.add_argument("--side", choices=["setup", "floor", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.clients + [args.rollback_clients, args.serving_workers]):
        parser.error("client and worker counts are at least 1")
    if not 0 < args.canary_share < 100:
        parser.error("--canary-share is a percentage strictly between 0 and 100")
    if min(args.duration, args.rollback_before, args.rollback_after) <= 0 or args.warmup < 0:
        parser.error("durations are positive (the warm-up may be 0)")
    if args.quick:
        args.clients = [n for n in args.clients if n <= 20] or [1]
        args.duration, args.warmup = min(args.duration, 5.0), min(args.warmup, 1.0)
        args.rollback_before, args.rollback_after = min(args.rollback_before, 3.0), min(args.rollback_after, 4.0)
        args.train_rows, args.epochs = min(args.train_rows, 300), 1
        args.floor_single, args.floor_batches = min(args.floor_single, 50), min(args.floor_batches, 5)
    return args


# --- Environment: database, Redis, settings -----------------------------------------------------


def psql(sql, db="postgres"):
    subprocess.run(["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", db, "-qAtc", sql],
                   check=True, capture_output=True, text=True)


def check_redis_is_ours():
    """Serving notices and rate-limit buckets go here, and it is flushed at the end."""
    import redis

    connection = redis.Redis.from_url(REDIS_URL)
    if connection.dbsize():
        sys.exit(f"{REDIS_URL} is not empty; point BENCH_REDIS_URL at an unused Redis database.")
    return connection


def environment(database_url, work):
    """Settings for this process and every child (setup, floor, serving): all from the environment."""
    sys.path.insert(0, str(ROOT))
    from lifecycle.lib import signing_keys

    key = signing_keys.create(work / "signing-key.pem")
    public_key_file(work).write_bytes(signing_keys.public_pem(key))
    return {
        "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "SECRET_KEY": "bench-" + "x" * 50, "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver", "SECURE_SSL_REDIRECT": "false",
        "SIGNING_KEY_FILE": str(key), "ARTIFACT_DIR": str(work / "artifacts"), "LIFECYCLE_DATA_DIR": str(work),
        "MODEL_CACHE_DIR": str(work / "model-cache"), "SERVING_SPOOL_DIR": str(work / "serving-spool"),
        "DJANGO_SETTINGS_MODULE": "lifecycle.settings", "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING",
    }


def public_key_file(work):
    return Path(work) / "signing-public-key.pem"


def setup_django():
    import django

    sys.path.insert(0, str(ROOT))
    django.setup()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def code_state():
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout

    status = git("status", "--porcelain", "--", "lifecycle", "bench")
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "changed": [line[3:] for line in status.splitlines()]}


def machine(database):
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version" if database == "postgresql" else "SELECT sqlite_version()")
        db_version = cursor.fetchone()[0].split()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(ram), "python": platform.python_version(),
            "database": f"{'PostgreSQL' if database == 'postgresql' else 'SQLite'} {db_version}"}


# --- CPU accounting --------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds():
    """CPU seconds every core of the machine spent not idle, since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / TICK


def tree_cpu_seconds(pid):
    """User + system CPU seconds of `pid` and every live descendant (uvicorn's worker processes)."""
    parents, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICK
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu.get(current, 0.0)
        todo += [child for child, parent in parents.items() if parent == current]
    return total


# --- Side 1: setup (a child: it trains, so it imports torch) --------------------------------------


def setup_side(s):
    setup_django()
    from django.contrib.auth.models import Group, User

    def user(name, role):
        person = User.objects.create_user(name)
        person.groups.add(Group.objects.get_or_create(name=role)[0])
        return person

    engineer, approver = user("bench-engineer", "ml_engineer"), user("bench-approver", "approver")
    version = dataset_version(engineer, s)
    runs = [train(engineer, version, s, seed) for seed in (0, 1)]
    stable, candidate = register(engineer, approver, runs)
    from lifecycle.deployments.models import Deployment, ServingToken

    deployment = Deployment.create(engineer, name=NAME, model=stable.model, stable=stable, environment="bench",
                                   description="serve_bench.py")
    # Far above what the clients can send: the bench measures serving, not the rate limit.
    _token, key = ServingToken.issue(engineer, "serve bench", [deployment], rate_per_second=1_000_000, burst=1_000_000)
    token_file = Path(s["work"]) / "token"
    token_file.touch(mode=0o600)
    token_file.write_text(key)
    write_texts(Path(s["work"]) / "texts.json")
    return {"deployment": deployment.pk, "stable": stable.pk, "candidate": candidate.pk, "engineer": engineer.pk,
            "output_sha256": stable.output_sha256, "token_file": str(token_file),
            "accuracy": [run.test_metrics.get("accuracy") for run in runs]}


def dataset_version(engineer, s):
    from lifecycle.datasets import ingest, pipeline
    from lifecycle.datasets.models import Dataset
    from lifecycle.datasets.readers import ColumnMapping
    from lifecycle.datasets.synthetic import generate

    path = Path(s["work"]) / "train.jsonl"
    with open(path, "w") as out:
        for row in generate(s["train_rows"], seed=3, noise=0.0, pii_rate=0.0, dup_rate=0.0):
            out.write(json.dumps(row) + "\n")
    dataset = Dataset.create(engineer, slug=SLUG, name="Serve bench", task="classification", pii_policy="redact")
    options = ingest.Options.for_dataset(dataset, ColumnMapping({"text": "text", "label": "label",
                                                                 "group": "customer_id"}), "drop")
    return pipeline.upload(dataset, str(path), "jsonl", options, user=engineer)[-1]


def train(engineer, version, s, seed):
    """A real run, performed in this process (what the training worker's horse calls)."""
    import django_rq

    from lifecycle.core import jobs
    from lifecycle.runs import launch
    from lifecycle.runs.models import Run

    run = launch.start(engineer, {**TRAIN_CONFIG, "epochs": s["epochs"], "seed": seed, "dataset_version": version.pk},
                       name=f"serve bench seed {seed}")
    django_rq.get_queue("training").empty()
    jobs.perform(run.job_id)
    run = Run.objects.get(pk=run.pk)
    if run.status != "succeeded":
        raise RuntimeError(f"training run {run.pk} {run.status}: {run.job.error}")
    return run


def register(engineer, approver, runs):
    """v1 to production, v2 to staging, each by a promotion request the approver approves
    (one approval per stage here; failed gates let through with a written reason)."""
    from lifecycle.registry.models import ModelVersion, RegisteredModel, Stage

    model = RegisteredModel.create(engineer, name="Serve bench", slug=SLUG, description="serve_bench.py")
    model.update_settings(engineer, model.gate_settings, {**model.approvals_required, "production": 1, "staging": 1})
    stable, candidate = (ModelVersion.register(engineer, model, run) for run in runs)
    for version, stage in ((stable, Stage.PRODUCTION), (candidate, Stage.STAGING)):
        request = version.request_promotion(engineer, stage, "serve bench")
        request.refresh_from_db()
        overrides = {g["gate"]: "Benchmark model: speed is measured, not quality." for g in request.failed_gates}
        request.approve(approver, "serve bench", seen_sha256=request.evidence_sha256, overrides=overrides)
        version.refresh_from_db()
        if version.stage != stage:
            raise RuntimeError(f"{version} did not reach {stage}: {request.gate_results}")
    return stable, candidate


def write_texts(path):
    from lifecycle.datasets.synthetic import generate

    texts = [row["text"] for row in generate(TEXTS, seed=99, noise=0.0, pii_rate=0.0, dup_rate=0.0)]
    path.write_text(json.dumps(texts))


# --- Side 2: the floor (a child: transformers the plain way) --------------------------------------


def floor_side(s):
    setup_django()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lifecycle.runs import basemodels, outputs

    directory, manifest = outputs.materialize(s["output_sha256"])
    labels = manifest["labels"]
    max_length = manifest["config"]["max_length"]
    common = dict(trust_remote_code=False, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    base = AutoModelForSequenceClassification.from_pretrained(basemodels.get(manifest["base_model"]["name"]).path,
                                                              num_labels=len(labels), **common)
    peft_model = PeftModel.from_pretrained(base, directory, is_trainable=False).eval()
    texts = json.loads(Path(s["texts"]).read_text())
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
              "peft_batch32": time_batches(peft_model, tokenizer, texts, max_length, s["floor_batches"], torch)}
    merged = peft_model.merge_and_unload().eval()
    result["single"] = time_single(merged, tokenizer, texts, max_length, s["floor_single"], torch)
    result["batch32"] = time_batches(merged, tokenizer, texts, max_length, s["floor_batches"], torch)
    return result


def _forward(model, tokenizer, batch, max_length, torch):
    encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        return torch.softmax(model(**encoded).logits.float(), -1)


def time_single(model, tokenizer, texts, max_length, n, torch):
    for text in texts[:20]:
        _forward(model, tokenizer, [text], max_length, torch)
    samples = []
    for i in range(n):
        started = time.perf_counter()
        _forward(model, tokenizer, [texts[i % len(texts)]], max_length, torch)
        samples.append((time.perf_counter() - started) * 1000.0)
    return {"n": n, "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "inputs_per_s": n / (sum(samples) / 1000.0)}


def time_batches(model, tokenizer, texts, max_length, n, torch, size=32):
    batches = [[texts[(b * size + i) % len(texts)] for i in range(size)] for b in range(n + 2)]
    for batch in batches[:2]:
        _forward(model, tokenizer, batch, max_length, torch)
    samples = []
    for batch in batches[2:]:
        started = time.perf_counter()
        _forward(model, tokenizer, batch, max_length, torch)
        samples.append((time.perf_counter() - started) * 1000.0)
    return {"n": n, "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "inputs_per_s": n * size / (sum(samples) / 1000.0)}


# --- Side 3: the load generator (a child: no Django, no torch) ------------------------------------


def load_side(s):
    texts = json.loads(Path(s["texts"]).read_text())
    token = Path(s["token_file"]).read_text().strip()
    return asyncio.run(generate_load(s, texts, token))


async def generate_load(s, texts, token):
    host, port = "127.0.0.1", s["port"]
    path = f"/v1/deployments/{s['deployment_name']}/predict"
    requests = [build_request(host, port, path, token, json.dumps({"inputs": [text]}).encode()) for text in texts]
    records = []
    started = time.time()
    measure_from = started + s["warmup"]
    stop_at = measure_from + s["duration"]
    clients = [asyncio.create_task(client(k, s["clients"], host, port, requests, stop_at, records))
               for k in range(s["clients"])]
    await asyncio.sleep(max(0.0, measure_from - time.time()))
    cpu_start, wall_start = resource.getrusage(resource.RUSAGE_SELF), time.time()
    print(f"measuring {wall_start:.6f}", flush=True)  # the parent times the rollback click from here
    await asyncio.gather(*clients)
    cpu_end, wall_end = resource.getrusage(resource.RUSAGE_SELF), time.time()
    if s.get("events"):
        Path(s["events"]).write_text(json.dumps(records))
    cpu = (cpu_end.ru_utime + cpu_end.ru_stime) - (cpu_start.ru_utime + cpu_start.ru_stime)
    return {**summarize(records, measure_from, stop_at), "cpu_s": cpu, "cpu_wall_s": wall_end - wall_start,
            "measure_from": measure_from, "stop_at": stop_at, "answers_all": sum(1 for r in records if r[3] is None)}


async def client(k, stride, host, port, requests, stop_at, records):
    """One closed-loop client on one keep-alive connection; reconnects after a failure."""
    connection, i = None, k
    while time.time() < stop_at:
        if connection is None:
            try:
                connection = await asyncio.open_connection(host, port)
            except OSError:
                records.append((time.time(), time.time(), None, "connect failed"))
                await asyncio.sleep(0.05)
                continue
        reader, writer = connection
        sent = time.time()
        try:
            writer.write(requests[i % len(requests)])
            await writer.drain()
            status, headers, body = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            records.append((sent, time.time(), None, f"connection: {type(exc).__name__}"))
            writer.close()
            connection = None
            continue
        route, error = answer_route(status, body)
        records.append((sent, time.time(), route, error))
        if headers.get("connection", "").lower() == "close":
            writer.close()
            connection = None
        i += stride
    if connection is not None:
        connection[1].close()


# --- The parent: serving process, phases, report ----------------------------------------------------


def run_side(side, s, env):
    out = subprocess.run([sys.executable, __file__, "--side", side, "--settings", json.dumps(s)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"the '{side}' side failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Serving:
    """One `manage.py serve` process on a loopback port, its log in the work folder."""

    def __init__(self, env, work, workers, token, *, log_predictions):
        self.port, self.token = free_port(), token
        # As in production (docker/compose.yaml): the public half of the signing key only.
        self.env = {**env, "SERVING_HOST": "127.0.0.1", "SERVING_PORT": str(self.port), "SIGNING_KEY_FILE": "",
                    "SIGNING_PUBLIC_KEY_FILE": str(public_key_file(work))}
        if not log_predictions:
            self.env["SERVING_LOG_PREDICTIONS"] = "false"
        self.log = open(work / f"serving-{self.port}.log", "w+")
        self.probes = 0  # answers to wait_for_route's requests (they are logged too)
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(self.port), "--workers", str(workers)],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path, timeout=5):
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status

    def wait_ready(self, timeout=300):
        """Ready, and the deployment loaded and warmed (the Open Inference Protocol's model ready,
        which takes the serving token)."""
        import urllib.error

        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"the serving process exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if self.get("/v2/health/ready") == 200 and self.get(f"/v2/models/{NAME}/ready") == 200:
                    return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} from {exc.url}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.5)
        sys.exit(f"the serving process was not ready in {timeout} s (last: {last}):\n{self.tail()}")

    def wait_for_route(self, route, timeout=60):
        """Send single requests until one is answered from `route` (the candidate is loaded)."""
        import urllib.request

        body = json.dumps({"inputs": ["where is my parcel"]}).encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/v1/deployments/{NAME}/predict", data=body, method="POST",
                headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                self.probes += 1
                if json.loads(response.read())["route"] == route:
                    return
        sys.exit(f"no answer came from the {route} in {timeout} s:\n{self.tail()}")

    def tail(self, chars=3000):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()


def load(s, env, serving, clients, duration, warmup, events=None, on_measuring=None):
    """One load-generator child against `serving`, with the serving tree's and the machine's CPU."""
    settings = {**s, "port": serving.port, "clients": clients, "duration": duration, "warmup": warmup,
                "events": events, "deployment_name": NAME}
    child = subprocess.Popen([sys.executable, __file__, "--side", "load", "--settings", json.dumps(settings)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    if not line.startswith("measuring"):
        child.wait()
        sys.exit(f"the load generator failed:\n{line}{child.stderr.read()[-3000:]}")
    busy, serving_cpu = machine_busy_seconds(), tree_cpu_seconds(serving.process.pid)
    load_average = os.getloadavg()[0]  # other work on the machine shows here
    if on_measuring:
        on_measuring(float(line.split()[1]))
    out, err = child.communicate()
    if child.returncode:
        sys.exit(f"the load generator failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["serving_cpu_s"] = tree_cpu_seconds(serving.process.pid) - serving_cpu
    result["machine_busy_s"] = machine_busy_seconds() - busy
    result["clients"] = clients
    result["load_average"] = load_average
    return result


def sweep(s, env, serving, args, label):
    results = []
    for clients in args.clients:
        result = load(s, env, serving, clients, args.duration, args.warmup)
        result["logging"] = label
        results.append(result)
        print(f"  {clients_text(clients)}, logging {label}: {fmt(result['throughput'])} answers/s, "
              f"p50 {fmt(result['p50_ms'])} ms, p99 {fmt(result['p99_ms'])} ms, errors {result['errors'] or 0}",
              flush=True)
    return results


def logged_rows(deployment_id):
    from lifecycle.deployments.models import PredictionLog, Route

    return PredictionLog.objects.filter(deployment_id=deployment_id).exclude(route=Route.SHADOW).count()


def wait_applied(deployment, timeout=30):
    """Until every live serving process reports it routes by the deployment's generation."""
    from lifecycle.deployments.models import RouteAck, ServingProcess

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment.refresh_from_db()
        live = list(ServingProcess.objects.live().values_list("pk", flat=True))
        acked = RouteAck.objects.filter(deployment=deployment, process__in=live, generation__gte=deployment.generation)
        if live and acked.count() == len(live):
            return
        time.sleep(0.1)
    sys.exit(f"the serving processes did not apply generation {deployment.generation} in {timeout} s")


def rollback_phase(s, env, serving, args, ids):
    """A canary of v2, load from `rollback_clients` clients, the rollback clicked mid-load."""
    from django.contrib.auth import get_user_model

    from lifecycle.deployments.models import Deployment, Rollback
    from lifecycle.registry.models import ModelVersion

    engineer = get_user_model().objects.get(pk=ids["engineer"])
    deployment = Deployment.objects.get(pk=ids["deployment"])
    release = deployment.start_release(engineer, candidate=ModelVersion.objects.get(pk=ids["candidate"]),
                                       mode="canary", share=args.canary_share, reason="serve bench: canary to roll back")
    wait_applied(deployment)
    serving.wait_ready()
    serving.wait_for_route("canary")
    clicked = {}

    def click(measuring_from):
        time.sleep(max(0.0, measuring_from + args.rollback_before - time.time()))
        clicked["wall"] = time.time()
        clicked["rollback"] = release.rollback(engineer, "serve bench: rollback under load")

    events = Path(s["work"]) / "rollback-events.json"
    result = load(s, env, serving, args.rollback_clients, args.rollback_before + args.rollback_after,
                  max(args.warmup, 1.0), events=str(events), on_measuring=click)
    records = [tuple(r) for r in json.loads(events.read_text())]
    summary = rollback_summary(records, clicked["wall"])
    Rollback.complete_pending()
    rollback = Rollback.objects.get(pk=clicked["rollback"].pk)
    summary.update(server_ms=rollback.time_to_rollback_ms, processes=len(rollback.processes),
                   clients=args.rollback_clients, share=args.canary_share, load=result)
    print(f"  rollback under {args.rollback_clients} clients: last canary answer {summary['to_stable_s'] * 1000:.0f} ms "
          f"after the click, {summary['failed_total']} failed requests, stored time-to-rollback "
          f"{fmt(summary['server_ms'], '.0f')} ms", flush=True)
    return summary


def run(args, work, env):
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    s = {"work": str(work), "train_rows": args.train_rows, "epochs": args.epochs, "texts": str(work / "texts.json"),
         "floor_single": args.floor_single, "floor_batches": args.floor_batches}
    print("setup: dataset, two training runs, registry, deployment, token ...", flush=True)
    ids = run_side("setup", s, env)
    s.update(output_sha256=ids["output_sha256"], token_file=ids["token_file"])
    print("floor: a bare transformers forward pass ...", flush=True)
    floor = run_side("floor", s, env)
    results = {"args": vars(args), "machine": machine(args.database), "code": code_state(), "floor": floor,
               "accuracy": ids["accuracy"], "sweeps": [], "logging_off": None, "rollback": None}

    token = Path(ids["token_file"]).read_text().strip()
    serving = Serving(env, work, args.serving_workers, token, log_predictions=True)
    try:
        serving.wait_ready()
        print("serving, prediction logging on:", flush=True)
        results["sweeps"] += sweep(s, env, serving, args, "on")
        results["rollback"] = rollback_phase(s, env, serving, args, ids)
        time.sleep(max(2.0, 4 * settings.SERVING_LOG_FLUSH_SECONDS))  # the last batches reach the database
        answered = (sum(r["answers_all"] for r in results["sweeps"]) + results["rollback"]["load"]["answers_all"]
                    + serving.probes)
        results["logged"] = {"rows": logged_rows(ids["deployment"]), "answers": answered}
    finally:
        serving.stop()
    if args.no_logging_off:
        results["logging_off"] = "skipped (--no-logging-off)"
    elif not hasattr(settings, "SERVING_LOG_PREDICTIONS"):
        results["logging_off"] = "not measured: this checkout has no SERVING_LOG_PREDICTIONS setting"
        print(results["logging_off"], flush=True)
    else:
        before = logged_rows(ids["deployment"])
        serving = Serving(env, work, args.serving_workers, token, log_predictions=False)
        try:
            serving.wait_ready()
            print("serving, prediction logging off:", flush=True)
            results["sweeps"] += sweep(s, env, serving, args, "off")
        finally:
            serving.stop()
        results["logging_off"] = {"rows_written_while_off": logged_rows(ids["deployment"]) - before}
    return results


# --- Report ---------------------------------------------------------------------------------------------


def report(results):
    m, floor, args = results["machine"], results["floor"], results["args"]
    code = results["code"]
    changed = f" (uncommitted changes in {', '.join(code['changed'])})" if code["changed"] else ""
    floor32 = floor["batch32"]["inputs_per_s"]
    lines = [
        f"\n## Serving — {date.today().isoformat()}, commit {code['commit']}{changed}\n",
        (f"Machine: {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB, Python {m['python']}, torch {floor['torch']} "
         f"({floor['threads']} threads), {m['database']} on the same machine; load average "
         f"{os.getloadavg()[0]:.1f} at the end. The load generator, the serving process and the database share "
         "these cores."),
        (f"Command: `.venv/bin/python bench/serve_bench.py --database {args['database']}` (clients "
         f"{' '.join(map(str, args['clients']))}, {args['duration']:g} s measured after {args['warmup']:g} s of warm-up "
         f"per level, `manage.py serve --workers {args['serving_workers']}`). Model: all-MiniLM-L6-v2 + LoRA, "
         f"trained here on {args['train_rows']} synthetic support messages ({args['epochs']} "
         f"epoch{'' if args['epochs'] == 1 else 's'}, test accuracy "
         f"{', '.join(fmt(a, '.2f') for a in results['accuracy'])}). One input per request, closed-loop clients on "
         "keep-alive connections over loopback, from a separate process (asyncio)."),
        "",
        (f"In-process floor (tokenizer + forward + softmax, LoRA merged into the weights, no server; load average "
         f"{floor['load_average']:.1f} when it started):"),
        "",
        "| measure | p50 | p99 | inputs/s |",
        "| --- | --- | --- | --- |",
        f"| single input | {fmt(floor['single']['p50_ms'])} ms | {fmt(floor['single']['p99_ms'])} ms | "
        f"{fmt(floor['single']['inputs_per_s'], ',.0f')} |",
        f"| batch of 32 | {fmt(floor['batch32']['p50_ms'])} ms | {fmt(floor['batch32']['p99_ms'])} ms | "
        f"{fmt(floor32, ',.0f')} |",
        f"| batch of 32, LoRA not merged (peft) | {fmt(floor['peft_batch32']['p50_ms'])} ms | "
        f"{fmt(floor['peft_batch32']['p99_ms'])} ms | {fmt(floor['peft_batch32']['inputs_per_s'], ',.0f')} |",
        "",
        ("Through the serving process (latency as the load generator saw it; the deployment serves v1 alone, "
         "so every request takes one model's batch queue):"),
        "",
        ("| clients | prediction log | answers | p50 | p95 | p99 | answers/s | / batch-32 floor | errors | "
         "CPU: load generator / serving / whole machine (s, per s of wall) | load average |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["sweeps"]:
        wall = r["cpu_wall_s"]
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        lines.append(
            f"| {r['clients']} | {r['logging']} | {r['answers']:,} | {fmt(r['p50_ms'])} ms | {fmt(r['p95_ms'])} ms | "
            f"{fmt(r['p99_ms'])} ms | {fmt(r['throughput'], ',.0f')} | {fmt(r['throughput'] / floor32, '.0%')} | "
            f"{errors} | {r['cpu_s'] / wall:.2f} / {r['serving_cpu_s'] / wall:.2f} / {r['machine_busy_s'] / wall:.2f} | "
            f"{r['load_average']:.1f} |")
    lines += logging_lines(results) + rollback_lines(results) + goal_lines(results, floor32)
    return "\n".join(lines) + "\n"


def logging_lines(results):
    logged = results.get("logged") or {}
    lines = ["", (f"Prediction log: {logged.get('rows', 0):,} rows in the database for {logged.get('answers', 0):,} "
                  "answers given while it was on (one row per answered input).")]
    off = results["logging_off"]
    if not isinstance(off, dict):
        return lines + [f"Logging off: {off}."]
    lines.append(f"Logging off with SERVING_LOG_PREDICTIONS=false on the serving process "
                 f"({off['rows_written_while_off']} rows written meanwhile).")
    on = {r["clients"]: r for r in results["sweeps"] if r["logging"] == "on"}
    for r in results["sweeps"]:
        if r["logging"] == "off" and r["clients"] in on and r["throughput"]:
            cost = 1 - on[r["clients"]]["throughput"] / r["throughput"]
            lines.append(f"- {clients_text(r['clients'])}: {fmt(on[r['clients']]['throughput'], ',.0f')} answers/s with the "
                         f"log, {fmt(r['throughput'], ',.0f')} without: the log costs {cost:.1%} of throughput.")
    return lines


def rollback_lines(results):
    r = results["rollback"]
    return ["", (f"Rollback under load: {r['clients']} clients, v2 as a {r['share']:g} % canary "
                 f"({fmt(r['canary_share_before'], '.0%')} of the answers in the 5 s before the click came from it), "
                 "`Release.rollback` clicked mid-load in the benchmark's own process."), "",
            "| measure | value |", "| --- | --- |",
            f"| click → last answer from the canary (clients' view) | {r['to_stable_s'] * 1000:,.0f} ms |",
            f"| latest canary answer to a request sent after the click | "
            f"{fmt(r['last_canary_sent_after_click_s'] and r['last_canary_sent_after_click_s'] * 1000, ',.0f', ' ms')} |",
            f"| time-to-rollback stored with the rollback (the serving process's report) | {fmt(r['server_ms'], ',.0f', ' ms')} |",
            f"| failed requests until 100 % stable (+1 s) / in the whole phase | {r['failed_during']} / "
            f"{r['failed_total']} of {r['requests_total']:,} |"]


def goal_lines(results, floor32):
    lines = ["", "Goals (deployments issue):"]
    at20 = next((r for r in results["sweeps"] if r["clients"] == 20 and r["logging"] == "on"), None)
    if at20:
        ratio = at20["throughput"] / floor32
        lines.append(f"- 20 clients, p99 under {P99_GOAL_MS:g} ms: {fmt(at20['p99_ms'])} ms, "
                     f"{'met' if at20['p99_ms'] is not None and at20['p99_ms'] < P99_GOAL_MS else 'NOT met'}.")
        lines.append(f"- 20 clients, at least {FLOOR_SHARE_GOAL:.0%} of the batch-32 floor: {ratio:.0%}, "
                     f"{'met' if ratio >= FLOOR_SHARE_GOAL else 'NOT met'}.")
        off20 = next((r for r in results["sweeps"] if r["clients"] == 20 and r["logging"] == "off"), None)
        if off20 and off20["throughput"]:
            cost = 1 - at20["throughput"] / off20["throughput"]
            lines.append(f"- prediction logging under {LOGGING_COST_GOAL:.0%} of throughput (20 clients): {cost:.1%}, "
                         f"{'met' if cost < LOGGING_COST_GOAL else 'NOT met'}.")
    r = results["rollback"]
    met = r["to_stable_s"] < ROLLBACK_GOAL_S and r["failed_total"] == 0
    lines.append(f"- rollback under load to 100 % stable in under {ROLLBACK_GOAL_S:g} s with no failed request: "
                 f"{r['to_stable_s']:.2f} s, {r['failed_total']} failed, {'met' if met else 'NOT met'}.")
    return lines


def main(argv=None):
    args = parse_args(argv)
    if args.side:
        s = json.loads(args.settings)
        side = {"setup": setup_side, "floor": floor_side, "load": load_side}[args.side]
        print(json.dumps(side(s)))
        return
    redis = check_redis_is_ours()
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    db_name = f"bench_serving_{os.getpid()}"
    if args.database == "postgresql":
        psql(f"CREATE DATABASE {db_name}")
        url = f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{db_name}"
    else:
        url = f"sqlite:///{work / 'db.sqlite3'}"
    env = {**os.environ, **environment(url, work)}
    os.environ.update(env)
    try:
        setup_django()
        results = run(args, work, env)
    finally:
        from django.db import connections

        connections.close_all()
        if args.database == "postgresql":
            psql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        redis.flushdb()  # it was empty when we started
        shutil.rmtree(work, ignore_errors=True)
    section = report(results)
    print(section)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if args.write and not args.quick:
        with open(ROOT / "bench" / "RESULTS.md", "a") as out:
            out.write(section)
        print("appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
