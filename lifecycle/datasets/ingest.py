"""Reading and validating a file: the first step of the pipeline (pipeline.py).

The rows stream through in batches: each is validated here, analysed (rows.analyse: PII,
content key, MinHash signature and band keys; in helper processes for big files) and staged
in the scratch folder — the rows in rows.parquet, the numbers per row the later steps query
in facts.parquet (queries.FACTS_SCHEMA).
"""
import logging
import math
import multiprocessing
import os
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings

from lifecycle.datasets import dedup, pii, queries
from lifecycle.datasets import rows as rows_analysis
from lifecycle.datasets.models import SPLIT_ALIASES, Dataset
from lifecycle.datasets.readers import ColumnMapping, FileFormatError, Row, clean_cell, open_rows

log = logging.getLogger(__name__)

BATCH = 5_000
HELPERS = 2  # helper processes for big files: with the main process, both cores stay busy
MAX_REPORTED_ERRORS = 200
STAGE_SCHEMA = pa.schema([
    ("text", pa.string()), ("response", pa.string()), ("label", pa.string()), ("group", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")), ("metadata", pa.string()), ("row_sha256", pa.string()),
    ("content_key", pa.int64()), ("pii_kinds", pa.string()),
])
ANALYSIS_COLUMNS = ("metadata", "row_sha256", "content_key", "pii_kinds")  # from rows.analyse
ROW_COLUMNS = tuple(name for name in STAGE_SCHEMA.names if name not in ANALYSIS_COLUMNS)


class IngestRejected(Exception):
    """The file cannot become a version; the message says why, the report says where."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report or {}


@dataclass
class Options:
    task: str
    mapping: ColumnMapping
    on_error: str = "reject"
    label_set: list = field(default_factory=list)
    max_labels: int = 100
    max_text_chars: int = 20_000
    max_bytes: int | None = None
    seed: int = 0
    fractions: tuple = (0.8, 0.1, 0.1)
    by_time: bool = False

    @classmethod
    def for_dataset(cls, dataset, mapping, on_error, **extra):
        return cls(task=dataset.task, mapping=mapping, on_error=on_error, label_set=list(dataset.label_set),
                   max_labels=dataset.max_labels, max_text_chars=dataset.max_text_chars, **extra)


# --- validation of one row --------------------------------------------------------------------


class RowInvalid(ValueError):
    pass


def _parse_timestamp(value):
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(float(value), tz=dt_timezone.utc)
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise RowInvalid(f"timestamp {str(value)[:40]!r} is not an ISO 8601 date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt_timezone.utc)


def _looks_numeric(label):
    try:
        return math.isfinite(float(label))
    except ValueError:
        return False


class Validator:
    """Turns mapped values into a clean row, or says why not. Tracks label-level facts."""

    def __init__(self, options):
        self.options = options
        self.required = ("text", "label") if options.task == Dataset.Task.CLASSIFICATION else ("prompt", "response")
        self.fixed_labels = set(options.label_set)
        self.label_kinds = {}  # "number"/"text" -> (line, label) of the first one seen

    def clean(self, line, values):
        mapped = self.options.mapping.apply(values)
        text = self._text(mapped, "text" if self.options.task == Dataset.Task.CLASSIFICATION else "prompt")
        response = self._text(mapped, "response") if self.options.task == Dataset.Task.SFT else ""
        label = self._label(line, mapped)
        timestamp = _parse_timestamp(mapped.get("timestamp"))
        if timestamp is None and self.options.by_time:
            raise RowInvalid("timestamp is empty, and the split is by time")
        return {
            "text": text, "response": response, "label": label,
            "group": clean_cell(mapped.get("group")) or "",
            "timestamp": timestamp,
            "split": self._split(mapped),
            "metadata": mapped.get("metadata") or {},  # made canonical JSON text by the analysis
        }

    def _text(self, mapped, name):
        value = clean_cell(mapped.get(name))
        if value is None or not value.strip():
            raise RowInvalid(f"{name} is empty")
        if len(value) > self.options.max_text_chars:
            raise RowInvalid(f"{name} is {len(value):,} characters, over the limit of {self.options.max_text_chars:,}")
        return value

    def _label(self, line, mapped):
        label = clean_cell(mapped.get("label")) or ""
        label = label.strip()
        if self.options.task == Dataset.Task.CLASSIFICATION and not label:
            raise RowInvalid("label is empty")
        if len(label) > 200:
            raise RowInvalid("label is longer than 200 characters")
        if self.fixed_labels and label and label not in self.fixed_labels:
            raise RowInvalid(f"label {label!r} is not in the dataset's label set")
        if label:
            self.label_kinds.setdefault("number" if _looks_numeric(label) else "text", (line, label))
        return label

    def _split(self, mapped):
        if "split" not in mapped:
            return -1
        value = (clean_cell(mapped.get("split")) or "").strip().lower()
        if value not in SPLIT_ALIASES:
            raise RowInvalid(f"split {value!r} is not train, validation or test")
        return SPLIT_ALIASES[value]

    def file_problems(self, labels):
        problems = []
        if len(self.label_kinds) == 2:
            (n_line, n_label), (t_line, t_label) = self.label_kinds["number"], self.label_kinds["text"]
            problems.append(f"the label column mixes numbers ({n_label!r} on line {n_line}) and text "
                            f"({t_label!r} on line {t_line}); map the labels to one kind first")
        if len(labels) > self.options.max_labels:
            problems.append(f"{len(labels):,} distinct labels, more than the dataset's limit of {self.options.max_labels:,}")
        if self.options.task == Dataset.Task.CLASSIFICATION and 0 < len(labels) < 2:
            problems.append("only one label in the whole file: a classifier needs at least two")
        return problems


# --- staging: the streaming pass ----------------------------------------------------------------


class Stage:
    """The streaming pass's output, in the scratch folder (queries.Scratch): the rows in
    rows.parquet and the numbers per row the later steps query in facts.parquet. Keeps in
    memory only the labels, the PII report and the first bad rows."""

    def __init__(self, scratch, pool=None):
        self.scratch, self.pool = scratch, pool
        self.path = str(scratch.rows_path)
        self.pending = deque()
        # Batches handed to the helpers and not yet finished: enough to keep every helper busy.
        self.in_flight = HELPERS + 1 if pool else 0
        self.writer = pq.ParquetWriter(self.path, STAGE_SCHEMA)
        self.facts = pq.ParquetWriter(scratch.facts_path, queries.FACTS_SCHEMA)
        self.hasher = dedup.MinHasher()
        self.labels = {}
        self.rows = 0
        self.timings = Counter()
        self.pii = pii.PiiReport()
        self.errors, self.error_count, self.rows_read = [], 0, 0
        self.buffer = []

    def error(self, line, reason):
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"line": line, "reason": reason})

    def add(self, row):
        self.buffer.append(row)
        if len(self.buffer) >= BATCH:
            self.flush()

    def flush(self):
        """Hand the buffered rows to the analysis (here, or in a helper process), then finish
        the oldest batches while more than `in_flight` wait, so rows keep their order."""
        if self.buffer:
            rows, self.buffer = self.buffer, []
            if self.pool is None:
                with self.timer("analysis"):
                    work = rows_analysis.analyse(rows, self.hasher)
            else:
                work = self.pool.submit(rows_analysis.analyse, rows, self.hasher)
            self.pending.append((rows, work))
        while len(self.pending) > self.in_flight:
            self._finish_oldest()

    def _finish_oldest(self):
        rows, work = self.pending.popleft()
        with self.timer("waiting for helpers"):
            result = work.result() if self.pool is not None else work
        with self.timer("staging"):
            self.pii.add_rows(self.rows, len(rows), result["pii"])
            self.facts.write_table(self._facts(rows, result))
            self._write(rows, result)
        self.rows += len(rows)

    @contextmanager
    def timer(self, name):
        started = time.perf_counter()
        yield
        self.timings[name] += time.perf_counter() - started

    def _facts(self, rows, result):
        labels = [row["label"] for row in rows]
        for label in dict.fromkeys(labels):  # new labels in the order they first appear
            if label:
                self.labels.setdefault(label, len(self.labels))
        # Groups are kept as 63-bit hashes, not a dict of every group name (collisions are
        # astronomically unlikely and would only keep two groups together).
        return queries.facts_table(
            self.rows, key=result["content_key"], signatures=result["signatures"], band_keys=result["band_keys"],
            label=np.array([self.labels[label] if label else -1 for label in labels], np.int32),
            group_id=result["group_id"], time=result["time"], split=np.array([row["split"] for row in rows], np.int8))

    def _write(self, rows, result):
        columns = {name: [row[name] for row in rows] for name in ROW_COLUMNS}
        columns.update((name, result[name]) for name in ANALYSIS_COLUMNS)
        self.writer.write_table(pa.Table.from_pydict(columns, schema=STAGE_SCHEMA))

    def close(self):
        self.flush()
        while self.pending:
            self._finish_oldest()
        for writer in (self.writer, self.facts):
            writer.close()

    def column(self, name):
        """One of the facts, for every row in order, as a numpy array."""
        return pq.read_table(self.scratch.facts_path, columns=[name]).column(0).to_numpy()


def analysis_pool(path):
    """Helper processes for files big enough to repay their start-up (about a second): the
    per-row analysis (PII, hashes, MinHash) is most of the streaming pass's CPU, and the
    reading and validation stay here, so both cores work."""
    if os.path.getsize(path) < settings.DATASET_PARALLEL_MIN_BYTES or (os.cpu_count() or 1) < 2:
        return None
    log.info("ingest of %s: %d helper processes analyse the rows", os.path.basename(path), HELPERS)
    # spawn, not fork: the helpers must not inherit this process's database connections.
    return ProcessPoolExecutor(max_workers=HELPERS, mp_context=multiprocessing.get_context("spawn"),
                               initializer=rows_analysis.start_helper)


def stage_file(path, fmt, options, progress, scratch):
    """Stream the file once into `scratch`: validate, scan and stage every good row; collect
    bad ones. Returns the stage and the problems of the file as a whole."""
    pool = analysis_pool(path)
    try:
        with rows_analysis.fewer_collections():
            return _stage_file(path, fmt, options, progress, Stage(scratch, pool))
    except FileFormatError as exc:
        raise IngestRejected(str(exc)) from None
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _stage_file(path, fmt, options, progress, stage):
    validator = Validator(options)
    reader = open_rows(path, fmt, max_bytes=options.max_bytes, max_cell_chars=options.max_text_chars)
    _check_columns(reader.columns, options, validator)
    for item in reader:
        stage.rows_read += 1
        if not isinstance(item, Row):
            stage.error(item.line, item.reason)
        else:
            _stage_row(stage, validator, item)
        if stage.rows_read % BATCH == 0:
            progress("reading", reader.bytes_read, reader.total_bytes, rows=stage.rows_read)
    stage.close()
    return stage, validator.file_problems(stage.labels)


def _check_columns(columns, options, validator):
    missing = [name for name in validator.required if options.mapping.source_for(name) not in columns]
    if missing:
        wanted = ", ".join(f"{name} (from column {options.mapping.source_for(name)!r})" for name in missing)
        raise FileFormatError(f"missing required columns: {wanted}; the file has: {', '.join(columns) or 'no columns'}")


def _stage_row(stage, validator, item):
    try:
        stage.add(validator.clean(item.line, item.values))
    except (RowInvalid, ValueError) as exc:  # ValueError: clean_cell on undecodable bytes
        stage.error(item.line, str(exc))


# --- the stream's reports -----------------------------------------------------------------------------


def validation_report(stage, problems, options):
    return {
        "rows_read": stage.rows_read,
        "rows_kept": stage.rows,
        "rows_dropped": stage.error_count if options.on_error == "drop" else 0,
        "row_errors": stage.error_count,
        "errors": stage.errors,
        "file_problems": problems,
        "on_error": options.on_error,
    }


def check_validation(stage, problems, options):
    if problems:
        raise IngestRejected("; ".join(problems))
    if stage.error_count and options.on_error == "reject":
        first = stage.errors[0]
        raise IngestRejected(f"{stage.error_count:,} of {stage.rows_read:,} rows are invalid (first: line {first['line']}: "
                             f"{first['reason']}); fix them, or upload again choosing to drop bad rows")
    if stage.rows == 0:
        raise IngestRejected("no valid rows in the file")
