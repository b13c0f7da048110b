"""Labeling benchmark: a project of N examples × 3 annotators, its QC job, the labeler endpoints
and the table pages, timed against the targets of the labeling issue.

    .venv/bin/python bench/labeling_bench.py                       # 100,000 examples × 3 annotators, 8 labels
    .venv/bin/python bench/labeling_bench.py --examples 5000 --no-write   # a quick run, nothing appended

What it does, in order, in a PostgreSQL database of its own (`bench_labeling_<pid>`, dropped at
the end) and a Redis database of its own (BENCH_REDIS_URL, db 13 by default; it must be empty,
it is flushed at the end):

1. the real ingest (lifecycle.datasets.pipeline.upload) of synthetic support messages whose
   intents are the first `--labels` ones, so the version's label set is the project's;
2. `LabelingProject.create` (overlap 3, gold share 0.05, seed 0);
3. the answers, generated straight into labeling_assignment with COPY, and the Item columns the
   answers imply (consensus by the rules of Item.refresh_consensus, checked against it on a
   sample), then the invariants and VACUUM ANALYZE;
4. QC: qc.compute in a child process (wall, phases, peak RSS), and the QC *job* through a real
   burst worker; the same three statistics the plain library way (scikit-learn, statsmodels,
   krippendorff), numbers compared;
5. the endpoints through Django's test Client (DEBUG off): next, answer, the table page for each
   filter, first and deep pages, the project and QC pages; EXPLAIN ANALYZE of the pull.

Results are printed as a Markdown section and appended to bench/RESULTS.md (not with --no-write).
"""
import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres"}
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")

# Targets from the issue.
QC_TARGET_S = 30.0
ENDPOINT_TARGET_MS = 150.0
TABLE_TARGET_MS = 200.0

# Each annotator's chance of giving the true label (cycled if there are more annotators).
ACCURACIES = (0.9, 0.85, 0.75, 0.8, 0.95, 0.7)
HARD_SHARE = 0.1  # items whose wording is ambiguous: every annotator is less accurate on them
HARD_FACTOR = 0.7
FLAG_SHARE = 0.005
SKIP_SHARE = 0.002
TAIL_SHARE = 0.01  # the last 1 % of the queue is not finished: some annotators have not reached it
DECIDED_SHARE = 0.4  # of ties and flagged items, the share a reviewer has already adjudicated
SUGGESTION_ACCURACY = 0.8  # a pre-labeling model's suggestions, so "low confidence" has rows to show
TABLE_SHOWS = ["", "disagreements", "flagged", "ties", "gold_failures", "low_confidence", "decided"]
DEEP_PAGE = 500


# --- Database, Django, machine -------------------------------------------------------------------


def psql(sql, db="postgres"):
    subprocess.run(["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", db, "-qAtc", sql],
                   check=True, capture_output=True, text=True)


def check_redis_is_ours():
    """The worker drains a whole queue: a Redis database someone else uses could hand it their jobs."""
    import redis

    connection = redis.Redis.from_url(REDIS_URL)
    if connection.dbsize():
        sys.exit(f"{REDIS_URL} is not empty; point BENCH_REDIS_URL at an unused Redis database.")
    return connection


def _signing_key(work):
    """The registry's signing key (settings refuse to start without one when DEBUG is off)."""
    sys.path.insert(0, str(ROOT))
    from lifecycle.lib import signing_keys

    return signing_keys.create(Path(work) / "signing-key.pem")


def environment(db_name, work):
    """Settings for this process, the QC child and the worker: all read from the environment."""
    return {
        "DATABASE_URL": f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{db_name}", "REDIS_URL": REDIS_URL,
        "SECRET_KEY": "bench-" + "x" * 50, "DEBUG": "false", "ALLOWED_HOSTS": "testserver",
        "SIGNING_KEY_FILE": str(_signing_key(work)),
        "SECURE_SSL_REDIRECT": "false", "ARTIFACT_DIR": str(work / "artifacts"), "LIFECYCLE_DATA_DIR": str(work),
        "DJANGO_SETTINGS_MODULE": "lifecycle.settings", "PYTHONUNBUFFERED": "1",
    }


def setup_django(migrate=True):
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)  # DEBUG is off: pages need the manifest


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0].split()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(ram), "python": platform.python_version(),
            "postgres": pg}


def code_state():
    """The commit, and any uncommitted changes to the code being measured (read-only git)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout

    status = git("status", "--porcelain", "--", "lifecycle", "templates", "static")
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "changed": [line[3:] for line in status.splitlines()]}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def vm_mb(field):
    """VmHWM (peak) or VmRSS (now) of this process. Unlike ru_maxrss, which Linux carries over
    from the parent through fork and exec, VmHWM starts afresh in a new program."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return math.nan


def stats_ms(samples):
    a = np.asarray(samples, dtype=float)
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": float(a.max())}


# --- 1. Dataset version and users ----------------------------------------------------------------


def make_users(n_labelers):
    from django.contrib.auth.models import Group, User

    def user(name, role):
        u = User.objects.create_user(name)
        u.groups.add(Group.objects.get_or_create(name=role)[0])
        return u

    engineer = user("bench-engineer", "ml_engineer")
    labelers = [user(f"labeler-{k}", "labeler") for k in range(n_labelers)]
    return engineer, labelers, user("labeler-spare", "labeler")


def write_rows(path, n, n_labels):
    """Synthetic support messages (the demo's generator) whose intent is among the first n_labels,
    so the version's label set is exactly the project's and every example has a true label."""
    from lifecycle.datasets.synthetic import INTENTS, generate

    keep = set(list(INTENTS)[:n_labels])
    written = 0
    with open(path, "w") as out:
        for record in generate(int(n * 12 / n_labels * 1.2) + 1000, seed=11, pii_rate=0.05, dup_rate=0.02):
            if record["label"] in keep:
                out.write(json.dumps(record) + "\n")
                written += 1
                if written == n:
                    break
    if written < n:
        raise RuntimeError(f"the generator gave only {written} rows of those labels")


def ingest(engineer, n, n_labels, work):
    from lifecycle.datasets import ingest as ingest_module, pipeline
    from lifecycle.datasets.models import Dataset
    from lifecycle.datasets.readers import ColumnMapping

    path = work / "rows.jsonl"
    write_rows(path, n, n_labels)
    dataset = Dataset.create(engineer, slug="labeling-bench", name="Labeling bench", pii_policy=Dataset.PiiPolicy.ALLOW)
    options = ingest_module.Options.for_dataset(dataset, ColumnMapping({"group": "customer_id"}), "drop")
    started = time.perf_counter()
    version = pipeline.upload(dataset, str(path), "jsonl", options, user=engineer)[-1]
    seconds = time.perf_counter() - started
    assert version.row_count == n, (version.row_count, n)
    return version, seconds


# --- 3. Answers, straight into the database ------------------------------------------------------


def load_items(project):
    """The project's items in queue order, with the version's label as the truth."""
    from lifecycle.labeling.models import Item

    rows = list(Item.objects.filter(project=project).order_by("position")
                .values_list("pk", "position", "is_gold", "example__label"))
    index = {label: i for i, label in enumerate(project.label_set)}
    pk, position, gold, label = zip(*rows)
    return {"pk": np.asarray(pk, dtype=np.int64), "position": np.asarray(position, dtype=np.int64),
            "gold": np.asarray(gold, dtype=bool), "truth": np.asarray([index[x] for x in label], dtype=np.int64)}


def plan_slots(items, n_annotators, overlap, rng):
    """Which annotator holds a slot on which item, as an (items × annotators) mask.

    Claims move forward through the queue, so an annotator who stopped at position s holds no
    item after s: annotator 0 has finished, the others stopped within the last TAIL_SHARE of the
    queue, which leaves about 1 % of the items short of answers (and work in the queue). Of the
    annotators who reached an item, the first `overlap` to get there took it (random order);
    gold items are taken by every annotator who reached them.
    """
    n = len(items["pk"])
    tail = round(TAIL_SHARE * n)
    stops = np.array([n - round(tail * k / max(1, n_annotators - 1)) for k in range(n_annotators)])
    reached = items["position"][:, None] < stops[None, :]
    priority = rng.random((n, n_annotators))
    priority[~reached] = np.inf
    rank = np.argsort(np.argsort(priority, axis=1), axis=1)
    return reached & ((rank < overlap) | items["gold"][:, None]), stops


def answer_labels(items, slots, n_labels, rng):
    """Each answer: the true label with the annotator's accuracy (lower on hard items), else another."""
    n, n_annotators = slots.shape
    accuracy = np.array([ACCURACIES[k % len(ACCURACIES)] for k in range(n_annotators)])
    hard = rng.random(n) < HARD_SHARE
    p_right = accuracy[None, :] * np.where(hard, HARD_FACTOR, 1.0)[:, None]
    right = rng.random((n, n_annotators)) < p_right
    other = (items["truth"][:, None] + rng.integers(1, n_labels, (n, n_annotators))) % n_labels
    return np.where(right, items["truth"][:, None], other), accuracy


def answer_times(slot_item, slot_annotator, n_annotators, rng, now):
    """served_at, answered_at and seconds for each slot: every annotator works through their items
    in queue order, ~7 s per answer (lognormal), short pauses, and now and then a break of minutes
    to hours; everyone's last answer is within the last few hours."""
    k = len(slot_item)
    seconds = np.clip(rng.lognormal(math.log(7.0), 0.6, k), 1.0, 300.0)
    pause = 0.5 + rng.exponential(1.5, k)
    breaks = rng.random(k) < 1 / 150
    pause[breaks] += rng.uniform(600, 16 * 3600, int(breaks.sum()))
    served = np.empty(k)
    for a in range(n_annotators):
        mine = np.flatnonzero(slot_annotator == a)  # already in queue order
        span = np.cumsum(seconds[mine] + pause[mine])
        end = now.timestamp() - rng.uniform(3600, 4 * 3600)
        served[mine] = end - span[-1] + span - seconds[mine]
    return served, seconds


def consensus(items, slot_item, label, flagged, answered, overlap, n_labels):
    """Item columns by the rules of Item.refresh_consensus / Item._consensus, vectorised."""
    n = len(items["pk"])
    ans_item, ans_label, ans_flag = slot_item[answered], label[answered], flagged[answered]
    labeled = ans_label >= 0
    answer_count = np.bincount(ans_item, minlength=n)
    counts = np.bincount(ans_item[labeled] * n_labels + ans_label[labeled], minlength=n * n_labels).reshape(n, n_labels)
    any_flag = np.bincount(ans_item[ans_flag], minlength=n) > 0
    disagreement = (counts > 0).sum(axis=1) > 1
    ordered = np.sort(counts, axis=1)
    tie = (ordered[:, -2] > 0) & (ordered[:, -1] == ordered[:, -2])
    top = counts.argmax(axis=1)
    state = np.full(n, "agreed", dtype=object)
    state[tie] = "tie"
    state[answer_count < overlap] = "open"
    state[any_flag] = "flagged"
    consensus_label = np.where(state == "agreed", top, -1)
    # Gold items: state gold, the known answer as consensus, misses counted.
    gold = items["gold"]
    misses = counts.sum(axis=1) - counts[np.arange(n), items["truth"]]
    state[gold] = "gold"
    consensus_label[gold] = items["truth"][gold]
    return {"answer_count": answer_count, "disagreement": disagreement, "state": state,
            "consensus": consensus_label, "gold_misses": np.where(gold, misses, 0)}


def generate_answers(project, labelers, engineer, rng):
    """Answers for every slot, COPYed into labeling_assignment; the items updated to match."""
    from django.db import connection, transaction

    items = load_items(project)
    n, n_annotators, n_labels, overlap = len(items["pk"]), len(labelers), len(project.label_set), project.overlap
    slots, stops = plan_slots(items, n_annotators, overlap, rng)
    labels, accuracy = answer_labels(items, slots, n_labels, rng)
    slot_item, slot_annotator = np.nonzero(slots)  # row-major: each annotator's slots in queue order
    k = len(slot_item)
    label = labels[slot_item, slot_annotator]
    skipped = rng.random(k) < SKIP_SHARE
    flagged = ~skipped & (rng.random(k) < FLAG_SHARE)
    label[flagged & (rng.random(k) < 0.5)] = -1  # half the flags come without a label
    label[skipped] = -1
    answered = ~skipped
    now = datetime.now(UTC)
    served, seconds = answer_times(slot_item, slot_annotator, n_annotators, rng, now)
    columns = consensus(items, slot_item, label, flagged, answered, overlap, n_labels)
    slots_taken = np.bincount(slot_item[answered], minlength=n)  # a skip gives its slot back
    is_open = items["gold"] | (slots_taken < overlap)
    suggestion, confidence = suggestions(items, n_labels, rng)
    decided = choose_decisions(columns, items, rng)

    with transaction.atomic():
        copy_assignments(project, items, labelers, slot_item, slot_annotator, label, flagged, skipped,
                         served, seconds)
        update_items(items, columns, slots_taken, is_open, suggestion, confidence, project.label_set)
        write_decisions(project, items, decided, columns, labelers, engineer, slot_item, slot_annotator, label,
                        flagged, answered)
    with connection.cursor() as cursor:
        # VACUUM as well as ANALYZE: the item UPDATE left a dead copy of every row; in a live project
        # autovacuum keeps up with that, and here it would otherwise start in the middle of a timing.
        cursor.execute("VACUUM (ANALYZE) labeling_item")
        cursor.execute("VACUUM (ANALYZE) labeling_assignment")
        cursor.execute("ANALYZE")
    truth = dict(zip(items["pk"].tolist(), items["truth"].tolist()))
    return {"slots": k, "answered": int(answered.sum()), "skipped": int(skipped.sum()),
            "flagged": int(flagged.sum()), "stops": stops.tolist(), "accuracy": accuracy.tolist(),
            "decided": len(decided)}, truth


def suggestions(items, n_labels, rng):
    n = len(items["pk"])
    right = rng.random(n) < SUGGESTION_ACCURACY
    label = np.where(right, items["truth"], (items["truth"] + rng.integers(1, n_labels, n)) % n_labels)
    confidence = np.where(right, rng.beta(8, 2, n), rng.beta(3, 3, n))
    return label, confidence


def choose_decisions(columns, items, rng):
    """A share of the ties and flagged items already adjudicated by a reviewer (to the truth)."""
    waiting = np.flatnonzero(np.isin(columns["state"], ["tie", "flagged"]))
    decided = waiting[rng.random(len(waiting)) < DECIDED_SHARE]
    columns["previous_state"] = columns["state"][decided].copy()
    columns["state"][decided] = "decided"
    columns["consensus"][decided] = items["truth"][decided]
    return decided


def copy_assignments(project, items, labelers, slot_item, slot_annotator, label, flagged, skipped, served, seconds):
    from django.db import connection

    label_set, annotator_ids = project.label_set, [u.pk for u in labelers]
    columns = "project_id, item_id, annotator_id, position, state, label, flagged, note, served_at, answered_at, seconds, changed_at"
    with connection.cursor() as cursor, cursor.cursor.copy(f"COPY labeling_assignment ({columns}) FROM STDIN") as copy:
        for i, a, lab, flag, skip, t, s in zip(slot_item.tolist(), slot_annotator.tolist(), label.tolist(),
                                               flagged.tolist(), skipped.tolist(), served.tolist(), seconds.tolist()):
            served_at = datetime.fromtimestamp(t, UTC)
            done = datetime.fromtimestamp(t + s, UTC)
            copy.write_row((project.pk, int(items["pk"][i]), annotator_ids[a], int(items["position"][i]),
                            "skipped" if skip else "answered", "" if lab < 0 else label_set[lab], flag,
                            "unclear wording" if flag else "", served_at, None if skip else done,
                            None if skip else s, done))


def update_items(items, columns, slots_taken, is_open, suggestion, confidence, label_set):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE bench_item (id bigint, slots_taken int, is_open bool, answer_count int, "
                       "state text, consensus_label text, disagreement bool, gold_misses int, suggested_label text, "
                       "suggested_confidence float8) ON COMMIT DROP")
        with cursor.cursor.copy("COPY bench_item FROM STDIN") as copy:
            for row in zip(items["pk"].tolist(), slots_taken.tolist(), is_open.tolist(), columns["answer_count"].tolist(),
                           columns["state"].tolist(), columns["consensus"].tolist(), columns["disagreement"].tolist(),
                           columns["gold_misses"].tolist(), suggestion.tolist(), confidence.tolist()):
                copy.write_row(row[:5] + ("" if row[5] < 0 else label_set[row[5]],) + row[6:8]
                               + (label_set[row[8]], round(row[9], 4)))
        cursor.execute("UPDATE labeling_item i SET slots_taken = b.slots_taken, is_open = b.is_open, "
                       "answer_count = b.answer_count, state = b.state, consensus_label = b.consensus_label, "
                       "disagreement = b.disagreement, gold_misses = b.gold_misses, "
                       "suggested_label = b.suggested_label, suggested_confidence = b.suggested_confidence "
                       "FROM bench_item b WHERE i.id = b.id")


def write_decisions(project, items, decided, columns, labelers, engineer, slot_item, slot_annotator, label,
                    flagged, answered):
    from lifecycle.labeling.models import Decision

    by_item = {}
    for i, a, lab, flag in zip(slot_item[answered].tolist(), slot_annotator[answered].tolist(),
                               label[answered].tolist(), flagged[answered].tolist()):
        by_item.setdefault(i, []).append({"annotator": labelers[a].username,
                                          "label": "" if lab < 0 else project.label_set[lab], "flagged": flag,
                                          "note": "unclear wording" if flag else ""})
    Decision.objects.bulk_create([
        Decision(item_id=int(items["pk"][i]), reviewer=engineer, label=project.label_set[items["truth"][i]],
                 note="bench", previous_state=previous, answers=by_item.get(int(i), []))
        for i, previous in zip(decided.tolist(), columns["previous_state"].tolist())], batch_size=5000)


def verify(project, expected, n_annotators, rng):
    """The invariants the queue and QC rely on, and the generated consensus against the model's own."""
    from django.db import connection, transaction
    from django.db.models import Count

    from lifecycle.labeling.models import Assignment, Item

    states = dict(Assignment.objects.filter(project=project).values_list("state").annotate(n=Count("pk")).order_by())
    assert states.get("answered", 0) == expected["answered"], states
    assert states.get("skipped", 0) == expected["skipped"], states
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT count(*) FILTER (WHERE NOT i.is_gold AND coalesce(a.n, 0) > %s),
                   count(*) FILTER (WHERE i.is_gold AND coalesce(a.n, 0) > %s),
                   count(*) FILTER (WHERE coalesce(a.n, 0) <> i.slots_taken),
                   count(*) FILTER (WHERE i.is_open <> (i.is_gold OR i.slots_taken < %s)),
                   count(*) FILTER (WHERE i.slots_taken < %s AND NOT i.is_gold)
            FROM labeling_item i LEFT JOIN (SELECT item_id, count(*) n FROM labeling_assignment
                                            WHERE state <> 'skipped' GROUP BY item_id) a ON a.item_id = i.id
            WHERE i.project_id = %s""", [project.overlap, n_annotators, project.overlap, project.overlap, project.pk])
        over, gold_over, slot_mismatch, open_mismatch, short = cursor.fetchone()
    assert (over, gold_over, slot_mismatch, open_mismatch) == (0, 0, 0, 0), (over, gold_over, slot_mismatch, open_mismatch)
    # The generated consensus against Item.refresh_consensus itself, on a sample of every state.
    sample = []
    for state in Item.State.values:
        ids = list(Item.objects.filter(project=project, state=state).values_list("pk", flat=True)[:5000])
        sample += rng.choice(ids, size=min(60, len(ids)), replace=False).tolist() if ids else []
    fields = ("answer_count", "disagreement", "gold_misses", "state", "consensus_label")
    with transaction.atomic():
        for item in Item.objects.filter(pk__in=sample):
            stored = {f: getattr(item, f) for f in fields}
            item.refresh_consensus(project.overlap)
            recomputed = {f: getattr(item, f) for f in fields}
            assert stored == recomputed, (item.pk, stored, recomputed)
        transaction.set_rollback(True)  # refresh_consensus writes; nothing here should change
    return {"items_short_of_answers": short, "consensus_checked": len(sample)}


# --- 4. QC -----------------------------------------------------------------------------------------


def qc_child(project_id, repeats):
    """Run in a fresh process (so its peak RSS is QC's alone): qc.compute, then its phases."""
    setup_django(migrate=False)
    from lifecycle.labeling import qc
    from lifecycle.labeling.models import LabelingProject

    project = LabelingProject.objects.select_related("version").get(pk=project_id)
    baseline = vm_mb("VmHWM")
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        report = qc.compute(project)
        walls.append(time.perf_counter() - started)
    peak, rusage_peak = vm_mb("VmHWM"), peak_rss_mb()
    phases, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        phases[name] = time.perf_counter() - t
        t = time.perf_counter()

    answers = qc.load_answers(project)
    lap("load_answers (rows → arrays)")
    gold = qc._gold(project)
    lap("gold items")
    data = qc.statistics(project, answers, gold)
    lap("statistics (agreement.py)")
    qc.freeze_reasons(project, data, project.progress())
    lap("progress + reasons")
    print(json.dumps({"walls": walls, "baseline_rss_mb": baseline, "peak_rss_mb": peak, "rusage_peak_mb": rusage_peak,
                      "phases": phases,
                      "answers": report.answers, "alpha": report.data["alpha"], "passes": report.passes,
                      "reasons": report.reasons}))


def time_qc_in_process(project, repeats=3):
    out = subprocess.run([sys.executable, __file__, "--qc-child", str(project.pk), str(repeats)],
                         check=False, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"the QC child failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_qc_job(project, work):
    """The QC job end to end: schedule_qc enqueues it, a real burst worker runs it."""
    from lifecycle.core.models import Job

    enqueued = time.perf_counter()
    job = project.schedule_qc()
    assert job is not None, "a QC job was already queued"
    log = work / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.run([sys.executable, "manage.py", "lifecycle_worker", "monitoring", "--burst"],
                                check=False, cwd=ROOT, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT, timeout=900)
    wall = time.perf_counter() - enqueued
    job = Job.objects.get(pk=job.pk)
    if worker.returncode or job.status != Job.Status.SUCCEEDED:
        sys.exit(f"the QC job ended {job.status} (worker exit {worker.returncode}): {job.error}\n{log.read_text()[-3000:]}")
    return {"job_s": (job.finished_at - job.started_at).total_seconds(),
            "queued_s": (job.started_at - job.created_at).total_seconds(), "worker_wall_s": wall,
            "result": job.result}


def plain_vs_ours(project, repeats=3):
    """Kappa for each pair, Fleiss' kappa and Krippendorff's alpha: ours (agreement.py, from the
    arrays qc.load_answers makes) against scikit-learn, statsmodels and krippendorff (from a
    pandas pivot of the same answers), each timed as the median of `repeats`."""
    import krippendorff
    import pandas as pd
    from django.contrib.auth.models import User
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    from lifecycle.labeling import agreement, qc

    answers = qc.load_answers(project)
    gold = qc._gold(project)
    n_labels, overlap = len(project.label_set), project.overlap
    gold_ids = np.fromiter(gold, dtype=np.int64, count=len(gold))

    def ours_prepare():
        labeled = answers["answered"] & (answers["label"] >= 0)
        ids, raters = np.unique(answers["annotator"], return_inverse=True)
        _, items = np.unique(answers["item"], return_inverse=True)
        return labeled, ids, raters[labeled], items[labeled], answers["label"][labeled], items

    labeled, ids, rt, it, lb, items = ours_prepare()

    def ours_fleiss():
        return agreement.fleiss_kappa(*qc._non_gold(answers, labeled, items, gold), n_labels, overlap)[0]

    ours = {
        "prepare (np.unique)": ours_prepare,
        "Cohen's kappa, each pair": lambda: {(int(ids[i]), int(ids[j])): k
                                             for i, j, _, k in agreement.pairwise_kappa(it, rt, lb, len(ids), n_labels)},
        "Fleiss' kappa": ours_fleiss,
        "Krippendorff's alpha": lambda: agreement.krippendorff_alpha(it, lb, n_labels),
    }

    frame = pd.DataFrame({"item": answers["item"][labeled], "annotator": answers["annotator"][labeled],
                          "label": answers["label"][labeled]})

    def plain_prepare():
        return frame.pivot(index="item", columns="annotator", values="label")  # items × raters, NaN = no answer

    table = plain_prepare()

    def plain_pairs():
        result = {}
        for x in range(len(table.columns)):
            for y in range(x + 1, len(table.columns)):
                a, b = table.iloc[:, x].to_numpy(), table.iloc[:, y].to_numpy()
                both = ~np.isnan(a) & ~np.isnan(b)
                if both.any():
                    result[(int(table.columns[x]), int(table.columns[y]))] = cohen_kappa_score(
                        a[both].astype(int), b[both].astype(int), labels=list(range(n_labels)))
        return result

    def plain_fleiss():
        values = table.to_numpy()
        complete = (~np.isnan(values)).sum(axis=1) == overlap
        keep = complete & ~np.isin(table.index.to_numpy(), gold_ids)
        rows = np.sort(values[keep], axis=1)[:, :overlap]  # NaN sorts last: each row's `overlap` labels
        counts, _ = aggregate_raters(rows.astype(int), n_cat=n_labels)
        return fleiss_kappa(counts, method="fleiss")

    plain = {
        "prepare (pandas pivot)": plain_prepare,
        "Cohen's kappa, each pair": plain_pairs,
        "Fleiss' kappa": plain_fleiss,
        "Krippendorff's alpha": lambda: krippendorff.alpha(reliability_data=table.to_numpy().T,
                                                           level_of_measurement="nominal",
                                                           value_domain=list(range(n_labels))),
    }

    def run(functions):
        times, values = {}, {}
        for name, fn in functions.items():
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                values[name] = fn()
                samples.append(time.perf_counter() - started)
            times[name] = float(np.median(samples))
        return times, values

    ours_t, ours_v = run(ours)
    plain_t, plain_v = run(plain)
    names = dict(User.objects.filter(pk__in=ids.tolist()).values_list("pk", "username"))
    pair_rows = [{"pair": f"{names[a]} / {names[b]}", "ours": ours_v["Cohen's kappa, each pair"][(a, b)],
                  "plain": plain_v["Cohen's kappa, each pair"].get((a, b), math.nan)}
                 for a, b in sorted(ours_v["Cohen's kappa, each pair"])]
    values = pair_rows + [{"pair": name, "ours": ours_v[name], "plain": plain_v[name]}
                          for name in ("Fleiss' kappa", "Krippendorff's alpha")]
    for row in values:
        row["equal"] = bool(np.isclose(row["ours"], row["plain"], rtol=0, atol=1e-9))
    return {"ours": ours_t, "plain": plain_t, "values": values}


# --- 5. Endpoints ----------------------------------------------------------------------------------


def logged_in(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


def queries_of(request):
    """How many SQL queries one request makes (a separate, untimed request)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        request()
    return len(ctx.captured_queries)


def explain_pull(project, users):
    """EXPLAIN ANALYZE of each query the pull (_open_item) makes, for each kind of labeler."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    plans = {}
    for name, user in users.items():
        with transaction.atomic():
            with CaptureQueriesContext(connection) as ctx:
                project._open_item(user)
            rows = []
            for query in (q for q in ctx.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")):
                with connection.cursor() as cursor:
                    cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + query["sql"])
                    plan = [line for line, in cursor.fetchall()]
                execution = next(float(line.split(":")[1].split()[0]) for line in plan if line.startswith("Execution Time"))
                rows.append({"sql": query["sql"], "ms": execution, "plan": plan})
            transaction.set_rollback(True)  # FOR UPDATE and nothing else: leave no trace
        plans[name] = rows
    return plans


def time_endpoints(project, labelers, spare, truth, rng, n_requests):
    """next and answer for a new labeler, one with work left, and one whose queue is empty."""
    from django.urls import reverse

    from lifecycle.labeling.models import Assignment, Item

    next_url = reverse("labeling:next", args=[project.pk])
    answer_url = reverse("labeling:answer", args=[project.pk])
    label_set = project.label_set

    def label_for(item_id):
        t = truth[item_id]
        return label_set[t if rng.random() < 0.85 else (t + rng.integers(1, len(label_set))) % len(label_set)]

    def timed(call, allowed=(200,)):
        started = time.perf_counter()
        response = call()
        ms = (time.perf_counter() - started) * 1000
        assert response.status_code in allowed, (response.status_code, response.content[:300])
        return ms, response

    def skip_decided(user, item_id):
        """The queue can serve an item a reviewer adjudicated while it still had open slots; its
        answer is refused (409), so the labeler skips it. Counted, reported, not timed."""
        served_decided[user.username] += 1
        Assignment.objects.get(project=project, annotator=user, item_id=item_id).skip()

    def answer_pending(user):
        pending = project.pending_for(user)
        if pending.item.state == Item.State.DECIDED:
            skip_decided(user, pending.item_id)
        else:
            pending.answer(label=label_for(pending.item_id))

    def claiming_gets(user, client):
        """GET next with nothing pending: each one claims a new slot. Answered in between, untimed."""
        samples = []
        for _ in range(n_requests):
            ms, response = timed(lambda: client.get(next_url))
            if response.json()["item"] is None:
                break
            samples.append(ms)
            answer_pending(user)
        return samples

    def pending_gets(client):
        client.get(next_url)  # claims one; the rest find it pending
        return [timed(lambda: client.get(next_url))[0] for _ in range(n_requests)]

    def posts(user, client, name):
        """POST answer: saves, re-derives the item's consensus, schedules QC, claims and returns the next."""
        item = client.get(next_url).json()["item"]
        samples = []
        while item is not None and len(samples) < n_requests:
            ms, response = timed(lambda item=item: client.post(answer_url, {"item": item, "label": label_for(item)}),
                                 allowed=(200, 409))
            if response.status_code == 409:
                skip_decided(user, item)
                item = client.get(next_url).json()["item"]
                continue
            samples.append(ms)
            item = response.json()["item"]
        if item is not None:
            queries[name] = queries_of(lambda: client.post(answer_url, {"item": item, "label": label_for(item)}))
        cases[name] = samples

    behind = labelers[-1]  # stopped earliest: the most work left in front of them
    done = labelers[0]  # answered everything they can: every pull finds nothing
    cases, queries, served_decided = {}, {}, Counter()
    c = logged_in(spare)
    cases["GET next, new labeler, claims a slot"] = claiming_gets(spare, c)
    queries["GET next, new labeler, claims a slot"] = queries_of(lambda: c.get(next_url))
    answer_pending(spare)
    cases["GET next, new labeler, item already pending"] = pending_gets(c)
    queries["GET next, new labeler, item already pending"] = queries_of(lambda: c.get(next_url))
    posts(spare, c, "POST answer (save + next), new labeler")
    c = logged_in(behind)
    cases[f"GET next, {behind.username} (work left), claims a slot"] = claiming_gets(behind, c)
    queries[f"GET next, {behind.username} (work left), claims a slot"] = queries_of(lambda: c.get(next_url))
    posts(behind, c, f"POST answer (save + next), {behind.username} (work left)")
    c = logged_in(done)
    cases[f"GET next, {done.username} (queue empty)"] = [timed(lambda: c.get(next_url))[0] for _ in range(n_requests)]
    queries[f"GET next, {done.username} (queue empty)"] = queries_of(lambda: c.get(next_url))
    timings = {name: {**stats_ms(s), "queries": queries.get(name)} for name, s in cases.items() if s}
    return timings, dict(served_decided)


def time_pages(project, engineer, labelers, n_requests):
    """The table page for each filter (first and a deep page), the project page and the QC page."""
    from django.urls import reverse

    from lifecycle.labeling.models import Item
    from lifecycle.labeling.views import PAGE_SIZE

    client = logged_in(engineer)
    table_url = reverse("labeling:table", args=[project.pk])

    def sample(url, params, client=client):
        assert client.get(url, params).status_code == 200  # warm once
        samples = []
        for _ in range(n_requests):
            started = time.perf_counter()
            response = client.get(url, params)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, params, response.status_code)
        return {**stats_ms(samples), "queries": queries_of(lambda: client.get(url, params))}

    who = labelers[0]
    filters = [({"show": show} if show else {}, show or "all", {"show": show}) for show in TABLE_SHOWS]
    filters.append(({"annotator": who.username}, f"annotator={who.username}", {"annotator": who}))
    tables = []
    for params, name, filtered in filters:
        rows = Item.objects.table_ids(project, **filtered).count()
        pages = max(1, math.ceil(rows / PAGE_SIZE))
        for page in sorted({1, min(DEEP_PAGE, pages)}):
            tables.append({"filter": name, "rows": rows, "page": page, **sample(table_url, {**params, "page": page})})
    others = {"project page": sample(reverse("labeling:detail", args=[project.pk]), {}),
              "QC page": sample(reverse("labeling:qc", args=[project.pk]), {}),
              # The start page counts what waits for a labeler (LabelingProject.waiting_for).
              "start page, engineer": sample(reverse("home"), {}),
              f"start page, {labelers[-1].username} (work left)": sample(reverse("home"), {}, logged_in(labelers[-1])),
              f"start page, {labelers[0].username} (queue empty)": sample(reverse("home"), {}, logged_in(labelers[0]))}
    return tables, others


# --- The run ---------------------------------------------------------------------------------------


def run(args, work):
    from lifecycle.labeling.models import Item, LabelingProject

    rng = np.random.default_rng(args.seed)
    results = {"args": vars(args), "machine": machine(), "load_before": os.getloadavg(), "code_before": code_state()}
    engineer, labelers, spare = make_users(args.annotators)

    version, results["ingest_s"] = ingest(engineer, args.examples, args.labels, work)
    print(f"ingest: {results['ingest_s']:.1f} s", flush=True)

    started = time.perf_counter()
    project = LabelingProject.create(engineer, version, name="Bench project", label_set=list(version.label_set),
                                     overlap=3, gold_share=0.05, seed=0)
    results["create_s"] = time.perf_counter() - started
    results["project"] = {"items": project.item_count, "gold": project.gold_count, "labels": len(project.label_set)}
    print(f"project: {project.item_count:,} items, {project.gold_count:,} gold, {results['create_s']:.1f} s", flush=True)

    started = time.perf_counter()
    expected, truth = generate_answers(project, labelers, engineer, rng)
    results["generate_s"] = time.perf_counter() - started
    results["generated"] = expected
    results["verified"] = verify(project, expected, args.annotators, rng)
    results["states"] = project.state_counts()
    print(f"answers: {expected['answered']:,} answered, {expected['skipped']:,} skipped, generated in "
          f"{results['generate_s']:.1f} s; states {results['states']}", flush=True)

    results["qc"] = time_qc_in_process(project)
    print(f"qc.compute: {results['qc']['walls']}, peak {results['qc']['peak_rss_mb']:.0f} MB", flush=True)
    results["qc_job"] = time_qc_job(project, work)
    print(f"QC job: {results['qc_job']['job_s']:.2f} s", flush=True)
    results["plain"] = plain_vs_ours(project)
    print("plain vs ours:", json.dumps(results["plain"], default=str), flush=True)

    results["explain"] = explain_pull(project, {"new labeler": spare, f"{labelers[-1].username} (work left)": labelers[-1],
                                                f"{labelers[0].username} (queue empty)": labelers[0]})
    results["endpoints"], results["served_decided"] = time_endpoints(project, labelers, spare, truth, rng, args.requests)
    print("endpoints:", json.dumps(results["endpoints"]), flush=True)
    results["tables"], results["pages"] = time_pages(project, engineer, labelers, args.page_requests)
    print("pages:", json.dumps(results["pages"]), flush=True)
    results["items_open"] = Item.objects.filter(project=project, is_open=True).count()
    results["load_after"] = os.getloadavg()
    results["code_after"] = code_state()
    return results


# --- Report ----------------------------------------------------------------------------------------


def met(ok):
    return "yes" if ok else "**no**"


def report(r):
    m, a, qc, job, plain = r["machine"], r["args"], r["qc"], r["qc_job"], r["plain"]
    g, p = r["generated"], r["project"]
    qc_wall = float(np.median(qc["walls"]))
    before, after = r["code_before"], r["code_after"]
    code = f"Code: commit {before['commit']}" + (
        f", with uncommitted changes to {', '.join(before['changed'])}" if before["changed"] else ", no uncommitted changes")
    if after != before:
        code += f"; **changed during the run**, at the end: {', '.join(after['changed']) or 'none'}"
    lines = [
        (f"\n## Labeling at {a['examples']:,} examples × {a['annotators']} annotators — {date.today().isoformat()}, "
         f"{m['cores']} cores ({m['cpu']})\n"),
        (f"Machine: {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB, Python {m['python']}, PostgreSQL {m['postgres']} "
         "on the same machine, Redis local. Load average (1/5/15 min) at the start "
         f"{'/'.join(f'{x:.1f}' for x in r['load_before'])}, at the end {'/'.join(f'{x:.1f}' for x in r['load_after'])}."),
        (f"Command: `.venv/bin/python bench/labeling_bench.py --examples {a['examples']} --annotators {a['annotators']} "
         f"--labels {a['labels']}`. A database of its own, made and dropped by the script. {code}.\n"),
        (f"Data: {p['items']:,} synthetic support messages (real ingest: {r['ingest_s']:.1f} s), {p['labels']} labels; "
         f"project overlap 3, gold share 0.05 ({p['gold']:,} gold), seed 0: `LabelingProject.create` {r['create_s']:.1f} s. "
         f"Answers generated into the database ({r['generate_s']:.1f} s, COPY): {g['answered']:,} answers, {g['skipped']:,} "
         f"skips, {g['flagged']:,} flags, {g['decided']:,} ties/flags already adjudicated; annotator accuracies "
         f"{', '.join(f'{x:g}' for x in g['accuracy'])} (×{HARD_FACTOR} on the {HARD_SHARE:.0%} hard items); annotators "
         f"stopped at queue positions {', '.join(f'{s:,}' for s in g['stops'])}, leaving "
         f"{r['verified']['items_short_of_answers']:,} items short of answers. Checked: answer counts, no item over its "
         f"overlap, slots and open flags, and the stored consensus equals `Item.refresh_consensus` on "
         f"{r['verified']['consensus_checked']} sampled items. Item states: "
         + ", ".join(f"{k} {v:,}" for k, v in r["states"].items()) + "."),
        "\n### QC\n",
        "| measure | figure | target | met |", "| --- | --- | --- | --- |",
        (f"| `qc.compute` in a process of its own, median of {len(qc['walls'])} | {qc_wall:.2f} s "
         f"({', '.join(f'{w:.2f}' for w in qc['walls'])}) | < {QC_TARGET_S:.0f} s | {met(qc_wall < QC_TARGET_S)} |"),
        (f"| its peak RSS, VmHWM (before the first run: {qc['baseline_rss_mb']:.0f} MB; getrusage's ru_maxrss says "
         f"{qc['rusage_peak_mb']:.0f} MB, the parent's size inherited through fork + exec) | {qc['peak_rss_mb']:.0f} MB | | |"),
        (f"| QC job (`schedule_qc` + `lifecycle_worker monitoring --burst`), started → finished | {job['job_s']:.2f} s | "
         f"< {QC_TARGET_S:.0f} s | {met(job['job_s'] < QC_TARGET_S)} |"),
        f"| the same, enqueue → worker exit (worker start-up included) | {job['worker_wall_s']:.1f} s | | |",
        "\nPhases of `qc.compute` (one more run): " + "; ".join(f"{k} {v:.2f} s" for k, v in qc["phases"].items())
        + f". Result: {qc['answers']:,} answers, alpha {qc['alpha']}, passes: {qc['passes']}.",
        "\n### Agreement statistics: ours (lifecycle/labeling/agreement.py) vs the plain library way\n",
        ("Same answers, median of 3. Plain: pandas pivot to items × raters, scikit-learn `cohen_kappa_score` for each pair, "
         "statsmodels `aggregate_raters` + `fleiss_kappa`, `krippendorff.alpha` (nominal).\n"),
        "| step | ours | plain | plain / ours |", "| --- | --- | --- | --- |",
    ]
    ours_total, plain_total = sum(plain["ours"].values()), sum(plain["plain"].values())
    for (on, ot), (pn, pt) in zip(plain["ours"].items(), plain["plain"].items()):
        name = on if on == pn else f"{on} / {pn}"
        lines.append(f"| {name} | {ot * 1000:.1f} ms | {pt * 1000:.1f} ms | {pt / ot:.1f}× |")
    lines.append(f"| **total** | {ours_total * 1000:.1f} ms | {plain_total * 1000:.1f} ms | **{plain_total / ours_total:.1f}×** |")
    lines += ["\n| statistic | ours | plain | equal (1e-9) |", "| --- | --- | --- | --- |"]
    lines += [f"| {v['pair']} | {v['ours']:.6f} | {v['plain']:.6f} | {met(v['equal'])} |" for v in plain["values"]]
    lines += ["\n### Labeler endpoints (test Client, in process, DEBUG off; server time)\n",
              "| request | n | p50 ms | p95 ms | max ms | SQL queries | target | met (p95) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in r["endpoints"].items():
        lines.append(f"| {name} | {s['n']} | {s['p50']:.1f} | {s['p95']:.1f} | {s['max']:.1f} | {s['queries'] or ''} | "
                     f"< {ENDPOINT_TARGET_MS:.0f} ms | {met(s['p95'] < ENDPOINT_TARGET_MS)} |")
    if r["served_decided"]:
        lines.append("\nServed although already adjudicated (answer refused with 409, skipped by the bench, not timed): "
                     + ", ".join(f"{who} {n}" for who, n in r["served_decided"].items()) + ".")
    lines += ["\nThe pull's SQL alone (`LabelingProject._open_item`, EXPLAIN ANALYZE, before the requests above):\n",
              "| labeler | query | ms |", "| --- | --- | --- |"]
    for who, queries in r["explain"].items():
        for q in queries:
            kind = ("last position (MAX)" if "MAX(" in q["sql"].upper() else
                    "open item not yet mine (NOT IN)" if "NOT (" in q["sql"].upper() else "first open item after it")
            lines.append(f"| {who} | {kind} | {q['ms']:.2f} |")
    slow = max((q for qs in r["explain"].values() for q in qs), key=lambda q: q["ms"])
    lines += ["\nSlowest of them:\n", "```", slow["sql"], *slow["plan"], "```"]
    lines += ["\n### Table mode and pages (engineer; 50 rows a page)\n",
              "| page | matching rows | page no. | p50 ms | p95 ms | SQL queries | met (p95 < 200 ms) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for t in r["tables"]:
        lines.append(f"| table, {t['filter']} | {t['rows']:,} | {t['page']} | {t['p50']:.1f} | {t['p95']:.1f} | "
                     f"{t['queries']} | {met(t['p95'] < TABLE_TARGET_MS)} |")
    for name, s in r["pages"].items():
        lines.append(f"| {name} | | | {s['p50']:.1f} | {s['p95']:.1f} | {s['queries']} | |")
    misses = [f"QC ({qc_wall:.1f} s)"] * (qc_wall >= QC_TARGET_S) + [f"QC job ({job['job_s']:.1f} s)"] * (job["job_s"] >= QC_TARGET_S)
    misses += [f"{k} (p95 {s['p95']:.0f} ms)" for k, s in r["endpoints"].items() if s["p95"] >= ENDPOINT_TARGET_MS]
    misses += [f"table {t['filter']} page {t['page']} (p95 {t['p95']:.0f} ms)" for t in r["tables"] if t["p95"] >= TABLE_TARGET_MS]
    lines.append("\nTargets (QC < 30 s, next/answer < 150 ms, table pages < 200 ms): "
                 + ("all met." if not misses else "not met: " + "; ".join(misses) + "."))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--annotators", type=int, default=3)
    parser.add_argument("--labels", type=int, default=8, help="2 to 12 (the synthetic generator's intents)")
    parser.add_argument("--requests", type=int, default=200, help="requests per endpoint case")
    parser.add_argument("--page-requests", type=int, default=20, help="requests per page case")
    parser.add_argument("--seed", type=int, default=0, help="of the generated answers")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not append it to RESULTS.md")
    parser.add_argument("--qc-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.qc_child:
        return qc_child(int(args.qc_child[0]), int(args.qc_child[1]))
    if not 2 <= args.labels <= 12:
        parser.error("--labels must be between 2 and 12")
    if args.annotators < 3:
        parser.error("--annotators must be at least the overlap, 3")

    redis = check_redis_is_ours()
    db_name = f"bench_labeling_{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="labeling-bench-"))
    psql(f"CREATE DATABASE {db_name}")
    os.environ.update(environment(db_name, work))
    try:
        setup_django()
        results = run(args, work)
    finally:
        from django.db import connections

        connections.close_all()
        psql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        redis.flushdb()  # it was empty when we started: only our queue and job keys are there
        shutil.rmtree(work, ignore_errors=True)
    section = report(results)
    print(section)
    if not args.no_write:
        with open(ROOT / "bench" / "RESULTS.md", "a") as out:
            out.write(section)
        print("appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
