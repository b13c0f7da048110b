"""Diff benchmark: server time of the version diff page on a redaction (an upload and its
redacted child), on SQLite and on PostgreSQL.

    .venv/bin/python bench/bench_diff.py                        # 3,000 rows on both, 1,000,000 on PostgreSQL
    .venv/bin/python bench/bench_diff.py --large 100000         # a shorter large run
    .venv/bin/python bench/bench_diff.py --before 7e56953       # also time that commit's diff.compare

Each (database, size) runs in its own process against a fresh database (SQLite: a new file;
PostgreSQL: `lifecycle_bench_diff`, dropped and made afresh) and a temporary artifact folder.
The page is fetched through Django's test client as a logged-in engineer: the first request
(cold), then the median of 5; then the second page of edits. `--before` loads diff.py as it
was at that commit (git show) and times its compare() on the same two versions. Results are
appended to bench/RESULTS.md with the machine, date and commit.
"""
import argparse
import importlib.util
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/lifecycle_bench_diff")


def setup_django(database_url, work):
    sys.path.insert(0, str(ROOT))
    from lifecycle.lib import signing_keys  # settings refuse to start without the registry's key

    os.environ["SIGNING_KEY_FILE"] = str(signing_keys.create(work / "signing-key.pem"))
    os.environ.update(DATABASE_URL=database_url, SECRET_KEY="bench-" + "x" * 50, DEBUG="false",
                      ALLOWED_HOSTS="testserver", SECURE_SSL_REDIRECT="false", ARTIFACT_DIR=str(work / "artifacts"),
                      LIFECYCLE_DATA_DIR=str(work), DJANGO_SETTINGS_MODULE="lifecycle.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)  # DEBUG is off: pages need the manifest


def make_versions(work, rows):
    """An upload of `rows` generated messages (5 % with PII) and its redacted child."""
    from lifecycle.datasets import ingest, pipeline
    from lifecycle.datasets.models import Dataset
    from lifecycle.datasets.readers import ColumnMapping
    from lifecycle.datasets.synthetic import write_jsonl

    path = work / "data.jsonl"
    write_jsonl(path, rows, seed=11, pii_rate=0.05, dup_rate=0.03)
    dataset = Dataset.create(None, slug="support-intents", name="Support intents", pii_policy="redact")
    options = ingest.Options.for_dataset(dataset, ColumnMapping({"group": "customer_id"}), "drop")
    started = time.perf_counter()
    old, new = pipeline.upload(dataset, str(path), "jsonl", options)
    return old, new, time.perf_counter() - started


def timed_get(client, url, params):
    started = time.perf_counter()
    response = client.get(url, params)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.status_code
    return elapsed, response


def time_page(old, new):
    from django.contrib.auth.models import Group, User
    from django.test import Client

    from lifecycle.datasets import diff

    user = User.objects.filter(username="bench-engineer").first() or User.objects.create_user("bench-engineer")
    user.groups.add(Group.objects.get_or_create(name="ml_engineer")[0])
    client = Client()
    client.force_login(user)
    url, params = f"/datasets/{old.dataset.slug}/diff", {"a": old.number, "b": new.number}
    cold, _ = timed_get(client, url, params)
    result = diff.compare(old, new)  # what the page showed (the test client keeps no context here)
    warm = sorted(timed_get(client, url, params)[0] for _ in range(5))[2]
    second = sorted(timed_get(client, url, params | {"edited": 2})[0] for _ in range(5))[2]
    return {"cold_ms": cold, "median_ms": warm, "page_2_ms": second, "match_by": result["match_by"],
            "counts": [result["edited_count"], result["added_count"], result["removed_count"]]}


def time_before(commit, old, new):
    """That commit's diff.compare on the same versions (median of 3; one run past 20 s)."""
    source = subprocess.run(["git", "show", f"{commit}:lifecycle/datasets/diff.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("diff_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{commit}:diff.py", "exec"), module.__dict__)
    samples = []
    for _ in range(3):
        started = time.perf_counter()
        module.compare(old, new)
        samples.append((time.perf_counter() - started) * 1000)
        if samples[-1] > 20_000:
            break
    return sorted(samples)[len(samples) // 2]


def run_one(vendor, rows, before):
    work = Path(tempfile.mkdtemp(prefix="lifecycle-bench-diff-"))
    setup_django(f"sqlite:///{work / 'bench.sqlite3'}" if vendor == "sqlite" else PG_URL, work)
    old, new, ingest_s = make_versions(work, rows)
    result = {"vendor": vendor, "rows": old.row_count, "ingest_s": ingest_s, **time_page(old, new)}
    if before:
        result["before_ms"] = time_before(before, old, new)
    print(json.dumps(result))


def reset_postgres():
    for sql in ("DROP DATABASE IF EXISTS lifecycle_bench_diff", "CREATE DATABASE lifecycle_bench_diff"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = os.getloadavg()[0]
    return (f"{os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"Python {platform.python_version()}, load average {load:.1f} at the start")


def commit():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def report(results, before):
    lines = [f"\n## Version diff — {date.today().isoformat()}, commit {commit()}\n",
             f"Machine: {machine()}. PostgreSQL 15 and SQLite {sqlite3.sqlite_version} on the same machine.",
             "Command: `.venv/bin/python bench/bench_diff.py`. An upload of generated messages (5 % with PII) and its "
             "redacted child; the diff page v1 → v2 through Django's test client (server time).\n",
             "| database | rows | edits / added / removed | matched by | first request | median of 5 | page 2 of edits |"
             + (f" {before}'s compare() |" if before else ""),
             "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if before else "")]
    for r in results:
        line = (f"| {r['vendor']} | {r['rows']:,} | {' / '.join(f'{c:,}' for c in r['counts'])} | {r['match_by']} | "
                f"{r['cold_ms']:,.0f} ms | {r['median_ms']:,.0f} ms | {r['page_2_ms']:,.0f} ms |")
        if before:
            line += f" {r['before_ms']:,.0f} ms |" if "before_ms" in r else " |"
        lines.append(line)
    small = {r["vendor"]: r for r in results if r["rows"] == results[0]["rows"]}
    if {"sqlite", "postgresql"} <= set(small):
        ratio = small["sqlite"]["median_ms"] / small["postgresql"]["median_ms"]
        lines.append(f"\nSQLite / PostgreSQL at {results[0]['rows']:,} rows: {ratio:.2f}×.")
    with open(ROOT / "bench" / "RESULTS.md", "a") as out:
        out.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=3_000)
    parser.add_argument("--large", type=int, default=1_000_000, help="PostgreSQL only; 0 to skip")
    parser.add_argument("--before", help="a commit whose diff.compare to time as well (small size only)")
    parser.add_argument("--run", nargs=3, metavar=("VENDOR", "ROWS", "BEFORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return run_one(args.run[0], int(args.run[1]), args.run[2] if args.run[2] != "-" else None)
    cases = [("sqlite", args.small, args.before), ("postgresql", args.small, args.before)]
    if args.large:
        cases.append(("postgresql", args.large, None))
    results = []
    for vendor, rows, before in cases:
        if vendor == "postgresql":
            reset_postgres()
        out = subprocess.run([sys.executable, __file__, "--run", vendor, str(rows), before or "-"], capture_output=True,
                             text=True)
        if out.returncode:
            sys.exit(f"the {vendor} run at {rows:,} rows failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    report(results, args.before)


if __name__ == "__main__":
    main()
