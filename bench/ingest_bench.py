"""Ingest benchmark: the whole dataset path on generated JSONL, phase by phase, with peak memory.

    .venv/bin/python bench/ingest_bench.py                 # 100k and 1M rows
    .venv/bin/python bench/ingest_bench.py --rows 20000    # a quick run
    .venv/bin/python bench/ingest_bench.py --rows 200000 --databases sqlite postgresql   # side by side

Each size runs in its own process (so peak RSS is that size's alone) against a PostgreSQL
database `lifecycle_bench` (dropped and made afresh), or a new SQLite file (`--databases
sqlite`, the embedded default), and a temporary artifact folder. After
the ingest it times the example browser's server side on the new version: pages and filters
through Django's test client, as a logged-in engineer. Results are appended to
bench/RESULTS.md with the machine and date.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/lifecycle_bench")


def generate(path, rows):
    sys.path.insert(0, str(ROOT))
    from lifecycle.datasets.synthetic import generate as synthetic

    with open(path, "w") as out:
        for record in synthetic(rows, seed=11, pii_rate=0.05, dup_rate=0.03):
            out.write(json.dumps(record) + "\n")


def peak_rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class HelperWatch:
    """The largest peak RSS (VmHWM) among this process's children while they live — the helper
    processes that analyse rows while they stream — read every half second. (getrusage's
    RUSAGE_CHILDREN is no use: a child made by fork before its exec counts this process's
    pages as its own.)"""

    def __init__(self):
        self.peak_mb = 0.0
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        while True:
            for child in self._children():
                try:
                    status = Path(f"/proc/{child}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
            time.sleep(0.5)

    @staticmethod
    def _children():
        found = set()
        for task in Path("/proc/self/task").iterdir():
            try:
                found.update(int(pid) for pid in (task / "children").read_text().split())
            except OSError:
                pass
        return found


def cpu_seconds():
    """(this process, its finished children, the whole machine busy) in CPU seconds: the rest of
    the machine is PostgreSQL, mostly (the helper processes count once the pool has shut down)."""
    own, children = os.times()[:2], os.times()[2:4]
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    return sum(own), sum(children), busy / os.sysconf("SC_CLK_TCK")


def setup_django(artifacts, database_url=DB_URL):
    sys.path.insert(0, str(ROOT))
    from lifecycle.lib import signing_keys  # settings refuse to start without the registry's key

    os.environ["SIGNING_KEY_FILE"] = str(signing_keys.create(artifacts.parent / "signing-key.pem"))
    os.environ.update(DATABASE_URL=database_url, SECRET_KEY="bench-" + "x" * 50, DEBUG="false", ALLOWED_HOSTS="testserver",
                      SECURE_SSL_REDIRECT="false", ARTIFACT_DIR=str(artifacts), LIFECYCLE_DATA_DIR=str(artifacts.parent),
                      DJANGO_SETTINGS_MODULE="lifecycle.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)  # DEBUG is off: pages need the manifest


def run_one(path, rows, database="postgresql"):
    """One size, in this process: the ingest phases, then the example browser."""
    work = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))
    setup_django(work / "artifacts", f"sqlite:///{work / 'bench.sqlite3'}" if database == "sqlite" else DB_URL)
    from lifecycle.datasets import ingest
    from lifecycle.datasets.models import Dataset
    from lifecycle.datasets.readers import ColumnMapping

    dataset = Dataset.create(None, slug=f"bench-{rows}", name="bench", pii_policy=Dataset.PiiPolicy.ALLOW)
    options = ingest.Options.for_dataset(dataset, ColumnMapping({"group": "customer_id"}), "drop")
    times, started = {}, time.perf_counter()
    helpers = HelperWatch()

    peaks, cpu, last_cpu = {}, {}, [cpu_seconds()]

    def lap(name, since):
        times[name] = time.perf_counter() - since
        peaks[name] = peak_rss_mb()
        now = cpu_seconds()
        own, helpers, machine_busy = (b - a for a, b in zip(last_cpu[0], now))
        cpu[name] = {"main": own, "helpers": helpers, "rest": machine_busy - own - helpers}
        last_cpu[0] = now
        return time.perf_counter()

    # The ingest's own path (ingest_staged, as ingest_file runs it), timed phase by phase as
    # its progress reports move on: each step lets go of what the next does not need.
    names = {"deduplicating": "near-duplicate pairs + keep-first", "splitting": "split", "checking leakage": "leakage",
             "writing": "write (Parquet, artifact, examples COPY, manifest)"}
    current, t = ["read+validate+PII+hash+minhash+stage"], time.perf_counter()

    def progress(phase, *args, **kwargs):
        nonlocal t
        if phase in names and names[phase] != current[0]:
            t = lap(current[0], t)
            current[0] = names[phase]

    stage, problems = ingest.stage_file(str(path), "jsonl", options, progress)
    [version] = ingest.ingest_staged(dataset, stage, problems, options, progress=progress)
    lap(current[0], t)
    total = time.perf_counter() - started
    dedup_report, leak = version.dedup_report, version.leakage_report
    result = {"database": database, "rows": rows, "kept": version.row_count, "total_s": total, "rows_per_s": rows / total,
              "phases": {name: {"s": s, "rows_per_s": rows / s} for name, s in times.items()},
              "inside_stage": {name: {"s": s, "rows_per_s": rows / s} for name, s in stage.timings.items()},
              "peak_rss_mb": peak_rss_mb(), "helper_peak_rss_mb": helpers.peak_mb, "peak_after_phase_mb": peaks, "cpu": cpu, "dedup": {k: dedup_report[k] for k in ("exact_duplicate_rows", "near_duplicate_pairs", "removable_rows")},
              "pii_rows": version.pii_report["rows_with_pii"], "has_leakage": leak["has_leakage"]}
    result["browse_ms"] = time_browser(version)
    print(json.dumps(result))


def time_browser(version):
    """Server time of the example browser: first, middle and last pages, and each filter."""
    from django.contrib.auth.models import Group, User
    from django.test import Client

    user = User.objects.create_user("bench-engineer")
    user.groups.add(Group.objects.get_or_create(name="ml_engineer")[0])
    client = Client()
    client.force_login(user)
    url = version.get_absolute_url()
    label = version.label_set[3]
    cases = {
        "first page": {}, "page at row 500k-ish": {"after": version.row_count // 2},
        "last page": {"after": version.row_count - 20}, "split=test": {"split": "2"},
        "split=test, deep": {"split": "2", "after": version.row_count * 9 // 10},
        "label": {"label": label}, "split+label": {"split": "1", "label": label}, "PII only": {"pii": "yes"},
        "search 'refund'": {"q": "refund"}, "search rare word 'fence'": {"q": "fence"},
        "search + split + label": {"q": "order", "split": "0", "label": label},
    }
    timings = {}
    for name, params in cases.items():
        client.get(url, params)  # warm the cache once, then take the median of 5
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            response = client.get(url, params)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (name, response.status_code)
        timings[name] = sorted(samples)[2]
    return timings


def reset_database():
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", "DROP DATABASE IF EXISTS lifecycle_bench"], check=True)
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", "CREATE DATABASE lifecycle_bench"], check=True)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python {platform.python_version()}"


def report(results):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [f"\n## Dataset ingest — {date.today().isoformat()}, commit {commit}\n",
             f"Machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the end. PostgreSQL 15 on the same machine.",
             "Command: `.venv/bin/python bench/ingest_bench.py`. Generated JSONL (lifecycle.datasets.synthetic): "
             "customer-support messages, 5 % with PII, 3 % exact or near duplicates, customer ids as groups.\n",
             "| database | rows | end to end | rows/s | peak RSS | largest helper's peak RSS | duplicates removable | PII rows |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        helper = f"{r['helper_peak_rss_mb']:,.0f} MB" if r.get("helper_peak_rss_mb") else "none"
        lines.append(f"| {r.get('database', 'postgresql')} | {r['rows']:,} | {r['total_s']:.1f} s | {r['rows_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} MB | {helper} | "
                     f"{r['dedup']['removable_rows']:,} | {r['pii_rows']:,} |")
    for r in results:
        lines += [f"\nPhases at {r['rows']:,} rows on {r.get('database', 'postgresql')} (CPU seconds: this process, its helper processes, the rest of the "
                  "machine, which is PostgreSQL):\n",
                  "| phase | seconds | rows/s | peak RSS so far | CPU main / helpers / PostgreSQL |", "| --- | --- | --- | --- | --- |"]
        phases = list(r["phases"].items())
        inside = [(f"  streaming pass, of which {k}", v) for k, v in r["inside_stage"].items()]
        for name, p in phases[:1] + inside + phases[1:]:
            peak, cpu = r["peak_after_phase_mb"].get(name), r["cpu"].get(name)
            used = f"{cpu['main']:.1f} / {cpu['helpers']:.1f} / {cpu['rest']:.1f}" if cpu else ""
            lines.append(f"| {name} | {p['s']:.2f} | {p['rows_per_s']:,.0f} | {f'{peak:,.0f} MB' if peak else ''} | {used} |")
    for rows in sorted({r["rows"] for r in results}):
        by = {r.get("database", "postgresql"): r for r in results if r["rows"] == rows}
        if {"sqlite", "postgresql"} <= set(by):
            lines.append(f"\nAt {rows:,} rows SQLite takes {by['sqlite']['total_s'] / by['postgresql']['total_s']:.2f}× "
                         "PostgreSQL's time end to end.")
    last = results[-1]
    lines += [f"\nExample browser, server time (median of 5, ms) on the {last['rows']:,}-row version:\n",
              "| page / filter | ms |", "| --- | --- |"] + [f"| {k} | {v:.1f} |" for k, v in last["browse_ms"].items()]
    with open(ROOT / "bench" / "RESULTS.md", "a") as out:
        out.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--databases", nargs="+", choices=["postgresql", "sqlite"], default=["postgresql"])
    parser.add_argument("--run", nargs=3, metavar=("FILE", "ROWS", "DATABASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return run_one(Path(args.run[0]), int(args.run[1]), args.run[2])
    results = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "data.jsonl"
            generate(path, rows)
            for database in args.databases:
                if database == "postgresql":
                    reset_database()
                out = subprocess.run([sys.executable, __file__, "--run", str(path), str(rows), database],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"the {rows:,}-row run on {database} failed:\n{out.stderr[-3000:]}")
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"{rows:,} rows on {database}: {results[-1]['rows_per_s']:,.0f} rows/s, "
                      f"peak {results[-1]['peak_rss_mb']:,.0f} MB", flush=True)
    report(results)


if __name__ == "__main__":
    main()
