"""Uploads that would exhaust the web request or the worker: very wide files, a huge cell
compressed into a tiny Parquet file, and text that is not characters (lone surrogates)."""
import json
import subprocess
import sys
import textwrap
import time

import pytest

from lifecycle.datasets.readers import FileFormatError, Row, RowError, duplicate_names, open_rows
from tests.conftest import make_user


def read(path, fmt, **options):
    with open_rows(path, fmt, **options) as reader:
        return reader.columns, list(reader)


def test_duplicate_names_are_found_in_one_pass():
    names = [f"c{i}" for i in range(200_000)] + ["c7", "c9", "c7"]
    started = time.monotonic()
    assert duplicate_names(names) == ["c7", "c9"]
    # The quadratic list.count() version takes minutes here; one pass takes milliseconds.
    assert time.monotonic() - started < 5


def test_a_million_column_csv_is_refused_by_its_header(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(1_000_000)) + "\n" + ",".join("x" * 1_000_000) + "\n")
    with pytest.raises(FileFormatError, match="1,000,000 columns, more than the limit of 1,000"):
        read(path, "csv", max_columns=1000)


def test_a_wide_jsonl_file_is_refused_and_a_wide_later_row_is_a_row_error(tmp_path):
    wide = tmp_path / "wide.jsonl"
    wide.write_text(json.dumps({f"k{i}": i for i in range(5000)}) + "\n")
    with pytest.raises(FileFormatError, match="more than the limit of 100"):
        read(wide, "jsonl", max_columns=100)

    later = tmp_path / "later.jsonl"
    lines = [json.dumps({"text": f"row {i}", "label": "a"}) for i in range(1001)]
    lines.append(json.dumps({f"k{i}": i for i in range(500)}))
    later.write_text("\n".join(lines) + "\n")
    columns, items = read(later, "jsonl", max_columns=100)
    assert columns == ["text", "label"]
    assert [type(item) for item in items] == [Row] * 1001 + [RowError]  # past the sampled rows


def test_a_wide_csv_upload_answers_at_once_with_the_limit(client, db, settings, tmp_path):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from lifecycle.datasets.models import Dataset, Upload

    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    engineer = make_user("erin", "ml_engineer")
    client.force_login(engineer)
    dataset = Dataset.create(engineer, slug="wide", name="Wide")
    content = (",".join(f"c{i}" for i in range(1_000_000)) + "\n").encode()
    started = time.monotonic()
    response = client.post(f"/datasets/{dataset.slug}/upload", {"file": SimpleUploadedFile("wide.csv", content),
                                                                 "on_error": "reject"})
    elapsed = time.monotonic() - started
    assert response.status_code == 400
    assert "more than the limit of 1,000" in response.content.decode()
    assert not Upload.objects.exists()
    assert not any(p.is_file() for p in settings.ARTIFACT_DIR.rglob("*")) if settings.ARTIFACT_DIR.exists() else True
    assert elapsed < 30  # it hung for minutes before; not a speed goal, only "it answers"


def test_a_lone_surrogate_is_a_row_error_with_its_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n{"text": "bad \\ud800 here", "label": "a"}\n'
                    '{"text": "emoji \\ud83d\\ude00 ok", "label": "b"}\n')
    _, items = read(path, "jsonl")
    assert [type(item) for item in items] == [Row, RowError, Row]
    assert items[1].line == 2 and "lone surrogate" in items[1].reason
    assert items[2].values["text"] == "emoji \U0001F600 ok"


BUILD_AND_READ = textwrap.dedent("""
    import resource, sys
    import pyarrow as pa, pyarrow.parquet as pq
    path = sys.argv[1]
    cell = "a" * (1024 ** 3)
    table = pa.table({"text": pa.array([cell], pa.large_string()), "label": ["x"]})
    del cell
    pq.write_table(table, path, compression="zstd")
""")

READ = textwrap.dedent("""
    import resource, sys
    from lifecycle.datasets.readers import open_rows, FileFormatError, RowError
    try:
        with open_rows(sys.argv[1], "parquet") as reader:
            items = list(reader)
        outcome = "row-error" if items and all(isinstance(i, RowError) for i in items) else "read"
        message = items[0].reason if items else ""
    except FileFormatError as exc:
        outcome, message = "refused", str(exc)
    # VmHWM belongs to this program's own memory map: ru_maxrss would carry over the peak of
    # the (large) test process this one was forked from.
    with open("/proc/self/status") as status:
        peak_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    print(outcome, round(peak_mb), message, sep="|")
""")


@pytest.mark.slow
def test_a_one_gib_cell_in_a_tiny_parquet_file_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "bomb.parquet"
    subprocess.run([sys.executable, "-c", BUILD_AND_READ, str(path)], check=True, timeout=300)
    assert path.stat().st_size < 1024 * 1024  # a 1 GiB cell, compressed to almost nothing
    result = subprocess.run([sys.executable, "-c", READ, str(path)], capture_output=True, text=True, timeout=300,
                            check=True)
    outcome, peak_mb, message = result.stdout.strip().splitlines()[-1].split("|", 2)
    assert outcome in ("refused", "row-error"), result.stdout
    assert "limit" in message
    assert int(peak_mb) < 500, f"peak RSS {peak_mb} MB"
