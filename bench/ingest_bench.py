"""Ingest benchmark: the whole dataset path on generated JSONL, as a multiple of a floor measured
in the same run, phase by phase, with peak memory.

    .venv/bin/python bench/ingest_bench.py                 # 200k and 1M rows on PostgreSQL
    .venv/bin/python bench/ingest_bench.py --rows 200000   # the headline size alone (about 1 min)
    .venv/bin/python bench/ingest_bench.py --rows 20000    # a quick run
    .venv/bin/python bench/ingest_bench.py --rows 5000000 --data-dir /tmp/bench-data   # files kept for the next run
    .venv/bin/python bench/ingest_bench.py --rows 200000 --databases sqlite postgresql   # side by side

The headline is ingest seconds / floor seconds: this machine's speed moves by 2× from day to
day, a ratio to work done in the same minutes much less. The floor is the least any ingest of
the file must do: parse the same JSONL (Arrow's JSON reader) and COPY it into one PostgreSQL
table under the same full-text index the ingest maintains (migration 0003: GIN on
to_tsvector('simple', text)), nothing else: no validation, PII, hashes, duplicates or splits.
It runs just before and just after each size's ingests, in a scratch table dropped afterwards,
and the mean of the two is the divisor (both are printed, so a machine that changed speed
mid-run shows).

Each ingest runs in its own process (so peak RSS is that size's alone) against a PostgreSQL
database `lifecycle_bench` (dropped and made afresh), or a new SQLite file (`--databases
sqlite`, the embedded default), and a temporary artifact folder. After the ingest it times the
example browser's server side on the new version: pages and filters through Django's test
client, as a logged-in engineer. The tables are printed, with machine, date, commit and load
average, ready to paste into bench/RESULTS.md's *Dataset ingest* section.
"""
import argparse
import io
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
FLOOR_TABLE = "bench_ingest_floor"
FLOOR_COLUMNS = ("text", "label", "customer_id", "created_at", "channel")  # what generate() writes


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
    # DEBUG is off: pages need the manifest. In a process of its own: it imports Plotly (for
    # its JavaScript), which a worker running an ingest never loads, and peak RSS is this one's.
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "collectstatic", "--noinput", "-v0"], check=True)


def run_one(path, rows, database="postgresql"):
    """One size, in this process: the ingest phases, then the example browser."""
    work = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))
    setup_django(work / "artifacts", f"sqlite:///{work / 'bench.sqlite3'}" if database == "sqlite" else DB_URL)
    from lifecycle.datasets import ingest, pipeline
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

    # The ingest's own path (pipeline.upload), timed phase by phase as its progress reports move on.
    names = {"deduplicating": "near-duplicate pairs + keep-first", "splitting": "split", "checking leakage": "leakage",
             "writing": "write (Parquet, artifact, examples COPY, manifest)"}
    current, t = ["read+validate+PII+hash+minhash+stage"], time.perf_counter()

    def progress(phase, *args, **kwargs):
        nonlocal t
        if phase in names and names[phase] != current[0]:
            t = lap(current[0], t)
            current[0] = names[phase]

    [version] = pipeline.upload(dataset, str(path), "jsonl", options, progress=progress)
    lap(current[0], t)
    total = time.perf_counter() - started
    dedup_report, leak = version.dedup_report, version.leakage_report
    result = {"database": database, "rows": rows, "kept": version.row_count, "total_s": total, "rows_per_s": rows / total,
              "phases": {name: {"s": s, "rows_per_s": rows / s} for name, s in times.items()},
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


def run_floor(path):
    """The floor, in this process: the JSONL parsed and COPYed into a scratch table under the
    ingest's full-text index, committed; the table is dropped after the clock stops."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(DB_URL) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {FLOOR_TABLE}")
        conn.execute(f"CREATE TABLE {FLOOR_TABLE} (text text, label text, customer_id text, "
                     "created_at timestamptz, channel text)")
        conn.execute(f"CREATE INDEX ON {FLOOR_TABLE} USING gin (to_tsvector('simple', text))")
        rows = copy_jsonl(conn, path)
    seconds = time.perf_counter() - started  # the connection's block committed
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        conn.execute(f"DROP TABLE {FLOOR_TABLE}")
    print(json.dumps({"floor_s": seconds, "rows": rows, "peak_rss_mb": peak_rss_mb(), "postgresql": server}))


def copy_jsonl(conn, path):
    """Arrow's JSON reader (C++, threaded) into Arrow's CSV writer into COPY: the cheapest way
    from this file to these rows (the ingest's own COPY data are made the same way)."""
    import pyarrow as pa
    from pyarrow import csv as pa_csv
    from pyarrow import json as pa_json

    schema = pa.schema([(name, pa.string()) for name in FLOOR_COLUMNS])
    reader = pa_json.open_json(path, parse_options=pa_json.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="ignore"))
    rows, options = 0, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid")
    with conn.cursor().copy(f"COPY {FLOOR_TABLE} ({', '.join(FLOOR_COLUMNS)}) FROM STDIN (FORMAT csv)") as copy:
        for batch in reader:
            buffer = io.BytesIO()
            pa_csv.write_csv(batch, buffer, options)
            copy.write(buffer.getvalue())
            rows += batch.num_rows
    return rows


def reset_database():
    quiet = {**os.environ, "PGOPTIONS": "-c client_min_messages=warning"}  # no "does not exist, skipping"
    for sql in ("DROP DATABASE IF EXISTS lifecycle_bench", "CREATE DATABASE lifecycle_bench"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True, env=quiet)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python {platform.python_version()}"


def commit():
    """The short commit, and a warning where lifecycle/ differs from it (a rerun on work in progress)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "lifecycle")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in lifecycle/" if dirty else "")


def child(what, *args):
    """One measurement in its own process; its last line of output is its JSON result."""
    out = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_size(rows, databases, data_dir=None):
    """The floor, each database's ingest, the floor again, all on one generated file (kept in
    `data_dir` and used again from there, if given: 5M rows take minutes to generate)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(data_dir or tmp) / f"data-{rows}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            generate(path, rows)
        reset_database()
        floors = [child(f"the {rows:,}-row floor", "--floor", path)]
        for database in databases:
            if database == "postgresql":
                reset_database()
            results.append(child(f"the {rows:,}-row run on {database}", "--run", path, rows, database))
        floors.append(child(f"the {rows:,}-row floor", "--floor", path))
    if any(f["rows"] != rows for f in floors):
        sys.exit(f"the floor copied {[f['rows'] for f in floors]} rows of {rows:,}")
    for r in results:
        r["floor_s"] = [f["floor_s"] for f in floors]
        r["floor_peak_rss_mb"] = max(f["peak_rss_mb"] for f in floors)
        r["postgresql"] = floors[0]["postgresql"]
        print(f"{rows:,} rows on {r['database']}: {r['total_s']:.1f} s = {ratio(r):.2f}× the floor "
              f"({' / '.join(f'{s:.1f}' for s in r['floor_s'])} s), peak {r['peak_rss_mb']:,.0f} MB", flush=True)
    return results


def ratio(r):
    return r["total_s"] / (sum(r["floor_s"]) / len(r["floor_s"]))


def report(results, load_before):
    """The tables, printed ready to paste into bench/RESULTS.md (Dataset ingest)."""
    first = results[0]
    lines = [f"Machine: {machine()}; PostgreSQL {first['postgresql']} on the same machine. "
             f"Date {date.today().isoformat()}, commit {commit()}. Load average (1 min) "
             f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after.",
             f"Command: `{command(results)}`.\n",
             "| database | rows | ingest | floor, before / after | **ingest / floor** | peak RSS (main) | largest helper's peak RSS "
             "| floor's peak RSS | duplicates removable | PII rows |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        helper = f"{r['helper_peak_rss_mb']:,.0f} MB" if r.get("helper_peak_rss_mb") else "none"
        lines.append(f"| {r['database']} | {r['rows']:,} | {r['total_s']:.1f} s | "
                     f"{' / '.join(f'{s:.1f}' for s in r['floor_s'])} s | **{ratio(r):.2f}×** | "
                     f"{r['peak_rss_mb']:,.0f} MB | {helper} | {r['floor_peak_rss_mb']:,.0f} MB | "
                     f"{r['dedup']['removable_rows']:,} | {r['pii_rows']:,} |")
    for r in results:
        lines += phase_lines(r)
    last = results[-1]
    lines += [f"\nExample browser, server time (median of 5, ms) on the {last['rows']:,}-row version ({last['database']}):\n",
              "| page / filter | ms |", "| --- | --- |"] + [f"| {k} | {v:.1f} |" for k, v in last["browse_ms"].items()]
    print("\n".join(lines))


def command(results):
    rows = " ".join(str(n) for n in sorted({r["rows"] for r in results}))
    databases = sorted({r["database"] for r in results})
    flag = "" if databases == ["postgresql"] else " --databases " + " ".join(databases)
    return f".venv/bin/python bench/ingest_bench.py --rows {rows}{flag}"


def phase_lines(r):
    lines = [f"\nPhases at {r['rows']:,} rows on {r['database']} (CPU seconds: this process, its helper processes, "
             "the rest of the machine, which is PostgreSQL):\n",
             "| phase | seconds | rows/s | peak RSS so far | CPU main / helpers / PostgreSQL |", "| --- | --- | --- | --- | --- |"]
    phases = list(r["phases"].items())
    inside = [(f"  streaming pass, of which {k}", v) for k, v in r.get("inside_stage", {}).items()]
    for name, p in phases[:1] + inside + phases[1:]:
        peak, cpu = r["peak_after_phase_mb"].get(name), r["cpu"].get(name)
        used = f"{cpu['main']:.1f} / {cpu['helpers']:.1f} / {cpu['rest']:.1f}" if cpu else ""
        lines.append(f"| {name} | {p['s']:.2f} | {p['rows_per_s']:,.0f} | {f'{peak:,.0f} MB' if peak else ''} | {used} |")
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--databases", nargs="+", choices=["postgresql", "sqlite"], default=["postgresql"])
    parser.add_argument("--data-dir", help="keep the generated files here and use them again")
    parser.add_argument("--run", nargs=3, metavar=("FILE", "ROWS", "DATABASE"), help=argparse.SUPPRESS)
    parser.add_argument("--floor", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return run_one(Path(args.run[0]), int(args.run[1]), args.run[2])
    if args.floor:
        return run_floor(args.floor)
    load_before = os.getloadavg()[0]
    results = [r for rows in args.rows for r in measure_size(rows, args.databases, args.data_dir)]
    print()
    report(results, load_before)


if __name__ == "__main__":
    main()
