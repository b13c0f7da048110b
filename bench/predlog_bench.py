"""Rows per second of the prediction log writer on PostgreSQL: COPY (the buffer's path), the
idempotent COPY of a replay (temporary table, INSERT ... ON CONFLICT DO NOTHING), and Django's
bulk_create of the same rows for comparison.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/lifecycle_bench_predlog \\
        .venv/bin/python bench/predlog_bench.py --rows 50000

Runs against the database DATABASE_URL names (migrated first; it must be a scratch database:
the log table is emptied between runs). Prints one JSON line per method: rows, seconds, rows/s.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lifecycle.settings")
os.environ.setdefault("DEBUG", "true")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from lifecycle.deployments.models import PredictionLog
    from lifecycle.deployments.serving import predlog
    from tests.deployments.test_predlog import make_rows

    assert connection.vendor == "postgresql", "this compares COPY with bulk_create on PostgreSQL"
    call_command("migrate", verbosity=0)
    rows = make_rows(args.rows)
    names = [attname for attname, _, _, _ in predlog._fields()]

    def copy(batch):
        with transaction.atomic():
            predlog._copy(connection, batch, idempotent=False)

    def replay(batch):
        with transaction.atomic():
            predlog._copy(connection, batch, idempotent=True)

    def bulk_create(batch):
        objects = [PredictionLog(**dict(zip(names, predlog._column_values(r, json_as_text=False)))) for r in batch]
        with transaction.atomic():
            PredictionLog.objects.bulk_create(objects)

    for name, write in (("copy", copy), ("copy_idempotent", replay), ("bulk_create", bulk_create)):
        PredictionLog.objects.all().delete()
        started = time.perf_counter()
        for start in range(0, len(rows), args.batch):
            write(rows[start:start + args.batch])
        seconds = time.perf_counter() - started
        assert PredictionLog.objects.count() == len(rows)
        print(json.dumps({"method": name, "rows": len(rows), "batch": args.batch, "seconds": round(seconds, 3),
                          "rows_per_second": round(len(rows) / seconds)}))
    PredictionLog.objects.all().delete()


if __name__ == "__main__":
    main()
