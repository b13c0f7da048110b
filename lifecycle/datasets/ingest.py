"""The ingest pipeline: a file in, an immutable dataset version (or a clear refusal) out.

    read → validate → PII scan → dedup keys → (stage to Parquet) → near-duplicates → splits
         → leakage → PII policy → version (and a redacted child under the "redact" policy)

It streams: rows pass through in batches and are staged in a temporary Parquet file (their
MinHash signatures, LSH band keys and the few numbers per row the later steps need — label
id, group id, time, content key — in temporary files too). Each later step reads back only
the columns it needs, and hands to the next only what that one needs: see docs/datasets.md
for what is held per row at each step.
"""
import itertools
import logging
import math
import mmap
import os
import multiprocessing
import tempfile
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from django.conf import settings

from lifecycle.datasets import dedup, pii, splits
from lifecycle.datasets import rows as rows_analysis
from lifecycle.datasets.models import SPLIT_ALIASES, SPLIT_NAMES, Dataset, DatasetVersion
from lifecycle.datasets.operations import redact_version
from lifecycle.datasets.readers import ColumnMapping, FileFormatError, Row, clean_cell, open_rows
from lifecycle.datasets.versions import TextIndexWriter, VersionWriter

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
    """Everything the later phases need, with only small arrays per row in memory."""

    def __init__(self, pool=None):
        self.pool = pool
        self.pending = deque()
        # Batches handed to the helpers and not yet finished: enough to keep every helper busy.
        self.in_flight = HELPERS + 1 if pool else 0
        fd, self.path = tempfile.mkstemp(prefix="lifecycle-stage-", suffix=".parquet")
        os.close(fd)
        self.writer = pq.ParquetWriter(self.path, STAGE_SCHEMA)
        # 16-bit MinHash signatures, row after row, on disk: near-duplicate candidates are
        # confirmed from here instead of hashing their texts a second time.
        fd, self.signatures_path = tempfile.mkstemp(prefix="lifecycle-signatures-")
        self.signatures = os.fdopen(fd, "wb")
        self.labels = {}
        # 29 bytes a row, on disk until a later step reads the columns it needs.
        self.facts = SpilledColumns(label=np.int32, group=np.int64, time=np.float64, key=np.int64, split=np.int8)
        self.timings = Counter()
        # Four partners per LSH bucket: on templated text 16 quadruples the candidates for
        # under 1 % more duplicates found (measured in bench/RESULTS.md).
        self.near = dedup.NearDuplicateIndex(max_partners=4, spill=True)  # 64 bytes a row, on disk
        self.pii = pii.PiiReport()
        self.errors, self.error_count, self.rows_read = [], 0, 0
        self.buffer = []

    def cleanup(self):
        if self.writer is not None:
            self.writer.close()
        self.signatures.close()
        self.near.close()
        self.facts.close()
        for path in (self.path, self.signatures_path):
            if os.path.exists(path):
                os.unlink(path)

    @property
    def rows(self):
        return self.facts.rows

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
                    work = rows_analysis.analyse(rows, self.near.hasher)
            else:
                work = self.pool.submit(rows_analysis.analyse, rows, self.near.hasher)
            self.pending.append((rows, work))
        while len(self.pending) > self.in_flight:
            self._finish_oldest()

    def drain(self):
        while self.pending:
            self._finish_oldest()

    def _finish_oldest(self):
        rows, work = self.pending.popleft()
        with self.timer("waiting for helpers"):
            result = work.result() if self.pool is not None else work
        self._complete(rows, result)

    def _complete(self, rows, result):
        self.signatures.write(result["signatures"].tobytes())
        start = self.rows
        with self.timer("bookkeeping"):
            self.pii.add_rows(start, len(rows), result["pii"])
            self._remember(rows, result)
            self.near.add_band_keys(result["band_keys"], start)
        with self.timer("staging"):
            self._write(rows, result)

    @contextmanager
    def timer(self, name):
        started = time.perf_counter()
        yield
        self.timings[name] += time.perf_counter() - started

    def _remember(self, rows, result):
        labels = [row["label"] for row in rows]
        for label in dict.fromkeys(labels):  # new labels in the order they first appear
            if label:
                self.labels.setdefault(label, len(self.labels))
        known = self.labels
        # Groups are kept as 63-bit hashes, not a dict of every group name (collisions are
        # astronomically unlikely and would only keep two groups together).
        self.facts.append(label=[known[label] if label else -1 for label in labels], group=result["group_id"],
                          time=result["time"], key=result["content_key"], split=[row["split"] for row in rows])

    def _write(self, rows, result):
        columns = {name: [row[name] for row in rows] for name in ROW_COLUMNS}
        columns.update((name, result[name]) for name in ANALYSIS_COLUMNS)
        self.writer.write_table(pa.Table.from_pydict(columns, schema=STAGE_SCHEMA))

    def close(self):
        self.flush()
        self.drain()
        self.writer.close()
        self.writer = None
        self.signatures.close()


class SpilledColumns:
    """Fixed-width numbers per row, appended batch by batch to one unnamed temporary file per
    column, and read back whole by the step that needs a column, which lets it go when done:
    held by no step that does not use them, and by none while the rows stream. Also what one
    step leaves for a later one (a context manager then)."""

    def __init__(self, **dtypes):
        self.dtypes = {name: np.dtype(kind) for name, kind in dtypes.items()}
        self.files = {name: tempfile.TemporaryFile(prefix=f"lifecycle-{name}-") for name in dtypes}
        self.rows = 0

    def append(self, **columns):
        if set(columns) != set(self.files):
            raise ValueError(f"expected the columns {sorted(self.files)}, got {sorted(columns)}")
        arrays = {name: np.asarray(values, dtype=self.dtypes[name]) for name, values in columns.items()}
        lengths = {len(values) for values in arrays.values()}
        if len(lengths) > 1:
            raise ValueError("columns of different lengths")
        for name, values in arrays.items():  # all checked first: the files stay row-aligned
            self.files[name].write(values.tobytes())
        self.rows += lengths.pop()

    def read(self, name):
        spilled = self.files[name]
        spilled.flush()
        spilled.seek(0)
        return np.fromfile(spilled, dtype=self.dtypes[name], count=self.rows)

    def close(self):
        for spilled in self.files.values():
            spilled.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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


def stage_file(path, fmt, options, progress):
    """Stream the file once: validate, scan and stage every good row; collect bad ones."""
    pool = analysis_pool(path)
    try:
        with rows_analysis.fewer_collections():
            return _stage_file(path, fmt, options, progress, pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _stage_file(path, fmt, options, progress, pool):
    stage, validator = Stage(pool), Validator(options)
    try:
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
        problems = validator.file_problems(stage.labels)
    except FileFormatError as exc:
        stage.cleanup()
        raise IngestRejected(str(exc)) from None
    except BaseException:
        stage.cleanup()
        raise
    return stage, problems


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


# --- the later phases -----------------------------------------------------------------------------


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


@dataclass
class Duplicates:
    """What the duplicate search hands on: each row's first row with its exact key, each
    row's duplicate set (dedup.cluster_ids), the rows that must share a split (split_units),
    and the report. The confirmed near-duplicate pairs stay in their PairStore, on disk."""
    first: np.ndarray
    clusters: np.ndarray
    units: np.ndarray
    report: dict


class PairStore:
    """Confirmed near-duplicate pairs on an unnamed temporary file, packed (dedup.pack_pairs)
    and in order of their larger row, then their smaller: the order keep-first walks in. Read
    a part (a range of larger rows) at a time, so no step holds them all (4M pairs at 3M rows
    of templated text). Keeps the lowest pairs by (smaller, larger) row for the report. A
    context manager."""

    REPORTED = 50

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="lifecycle-near-")
        self._parts = []  # pairs in each part, in file order
        self.count = 0
        self.lowest = np.zeros(0, np.uint64)

    def add_part(self, packed):
        """The pairs whose larger row is in the next range of rows, in any order."""
        ordered = packed[np.argsort(dedup.by_larger_row(packed))]
        self._file.write(ordered.tobytes())
        self._parts.append(len(ordered))
        self.count += len(ordered)
        lowest = np.partition(packed, self.REPORTED)[:self.REPORTED] if len(packed) > self.REPORTED else packed
        self.lowest = np.sort(np.concatenate([self.lowest, lowest]))[:self.REPORTED]

    def parts(self):
        """Each part's pairs, in order."""
        self._file.flush()
        self._file.seek(0)
        for size in self._parts:
            yield np.fromfile(self._file, dtype=np.uint64, count=size)

    def chunks(self):
        """The pairs a chunk at a time, in order (for splits.leakage_report)."""
        for part in self.parts():
            yield from (part[start:start + dedup.PAIR_CHUNK] for start in range(0, max(len(part), 1), dedup.PAIR_CHUNK))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def find_duplicates(stage, near, progress):
    """Exact duplicates from the content keys, near duplicates from LSH candidates confirmed by
    their MinHash-estimated Jaccard (into `near`, a PairStore), then one representative per
    duplicate set (keep-first)."""
    progress("deduplicating", 0, 1)
    first = dedup.first_rows(stage.facts.read("key"))
    confirmed_pairs(stage, first, near)
    exact = dedup.exact_duplicate_summary(first)
    reps = dedup.keep_first_in_order(stage.rows, _pairs_in_order(first, near))
    # The units need no order: the exact pairs at once (duplicates only), the near ones as stored.
    units = split_units(stage.rows, itertools.chain([dedup.pack_pairs(dedup.pairs_to_first(first))], near.parts()), reps)
    report = _dedup_report(exact, near, reps)
    clusters = dedup.cluster_ids(reps)
    del reps
    rows_analysis.give_back_memory()  # the splits and the write start from what is live
    return Duplicates(first, clusters, units, report)


def _pairs_in_order(first, near):
    """Every duplicate pair, a range of rows at a time, by larger row then smaller (packed):
    each row with its exact key's first row, and the near pairs of that range."""
    parts = near.parts()
    for start in range(0, len(first), dedup.ROWS_PER_PART):
        part = next(parts, np.zeros(0, np.uint64))  # the store has a part for every range
        heads = first[start:start + dedup.ROWS_PER_PART]
        rows = np.flatnonzero(dedup.names_another_row(heads, start))
        exact = dedup.pack_rows(heads[rows], rows + start)
        both = np.concatenate([exact, part])
        yield both[np.argsort(dedup.by_larger_row(both))]


# Estimated Jaccard from 64 MinHash values has a standard deviation of about 0.05 near 0.8:
# far above or below the threshold the estimate decides; in between the shingles do.
SURELY_NEAR, SURELY_NOT = 0.9, 0.7
# Distinct pairs of texts checked on their shingles in one go (about 50 bytes each while
# they are): the same few MB at a million rows as at ten.
VERIFY_SLICE = 1 << 16
# Rows of spilled signatures gathered at a time (8 MB of the file) before their pages are let go.
SIGNATURE_BLOCK = 65_536


def confirmed_pairs(stage, first, near):
    """The LSH candidates whose shingle Jaccard reaches the threshold; `first` is each row's
    first row with the same exact key (dedup.first_rows).

    Candidates come one range of rows at a time (band keys dropped as they are used), and
    each range's are sorted out on their MinHash estimate, read from the spilled signatures
    of those rows only. Sure pairs and uncertain ones go to temporary files, and only the
    distinct pairs of texts the uncertain ones stand for (see `_kept_texts`) are checked on
    their exact shingle sets, which at ~20 µs a pair in Python would otherwise dominate the
    ingest of templated text with millions of candidates. The pairs kept go to `near` (a
    PairStore) part by part.
    """
    spans = []  # per part: (sure pairs, uncertain pairs) written
    with (open(stage.signatures_path, "rb") as signatures,
          tempfile.TemporaryFile(prefix="lifecycle-sure-") as sure,
          tempfile.TemporaryFile(prefix="lifecycle-uncertain-") as uncertain,
          tempfile.TemporaryFile(prefix="lifecycle-distinct-") as distinct,
          _range_files(len(first), "lifecycle-on-first-") as on_first):
        for _, packed in stage.near.candidate_parts(forget=True):
            estimate = _estimates(signatures, packed, stage.near.hasher.num_perm, stage.rows)
            surely = packed[estimate >= SURELY_NEAR]
            sure.write(surely.tobytes())
            doubtful = packed[(estimate >= SURELY_NOT) & (estimate < SURELY_NEAR)]
            uncertain.write(doubtful.tobytes())
            spans.append((len(surely), len(doubtful)))
            # The pairs of texts to check, on disk by range of their larger row (bounded, as
            # the candidate parts are), made distinct one range at a time below.
            dedup.spill_by_row(_on_first_rows(doubtful, first), on_first, dedup.ROWS_PER_PART)
            del packed, estimate, doubtful
            rows_analysis.give_back_memory()
        for part in on_first:
            part.seek(0)
            distinct.write(dedup.sorted_unique(np.fromfile(part, dtype=np.uint64), in_place=True).tobytes())
            part.close()

        def slices():
            distinct.flush()
            distinct.seek(0)
            return dedup.uint64_blocks(distinct, VERIFY_SLICE)

        kept = _kept_texts(stage, slices, len(first))
        kept.sort()  # by range of the larger row so far: _in_sorted needs them sorted
        sure.seek(0)
        uncertain.seek(0)
        for sure_count, doubtful_count in spans:  # part by part, the sure ones and those that passed
            doubtful = np.fromfile(uncertain, dtype=np.uint64, count=doubtful_count)
            near.add_part(np.concatenate([np.fromfile(sure, dtype=np.uint64, count=sure_count),
                                          *_pairs_kept([doubtful], kept, first)]))
    rows_analysis.give_back_memory()


@contextmanager
def _range_files(rows, prefix):
    """One unnamed temporary file per range of dedup.ROWS_PER_PART rows, all closed on the way out."""
    files = [tempfile.TemporaryFile(prefix=prefix) for _ in range(max(1, -(-rows // dedup.ROWS_PER_PART)))]
    try:
        yield files
    finally:
        for part in files:
            part.close()


def _estimates(signatures, packed, perms, total_rows, chunk=1 << 15):
    """Estimated Jaccard of each packed pair: the share of equal values in their 16-bit
    signatures. A chunk of pairs at a time, each gathering just its rows' signatures: what it
    holds is a chunk's (~10 MB), however far back a part's pairs reach (at a million rows a
    part's pairs spanned ~300k rows: 40 MB of signatures at once)."""
    estimate = np.zeros(len(packed), dtype=np.float32)
    for start in range(0, len(packed), chunk):
        low, high = dedup.packed_rows(packed[start:start + chunk])
        rows = dedup.sorted_unique(np.concatenate([low, high]), in_place=True)
        found = _signatures_for_rows(signatures, rows, perms, total_rows)
        equal = found[np.searchsorted(rows, low)] == found[np.searchsorted(rows, high)]
        estimate[start:start + chunk] = equal.mean(axis=1)
    return estimate


def _kept_texts(stage, slices, total_rows):
    """Of the distinct pairs of first rows (rows with the same exact key have the same
    shingles, so each pair of distinct texts is checked once: a third fewer checks on the
    benchmark's data), those that reach the threshold, in the order given. `slices()` yields
    them packed, a slice at a time, each time it is called (twice: from a file, in the
    ingest); sorted slices keep runs of pairs with the same first row together, and the
    checks' own arrays stay a slice's size."""
    needed = np.zeros(total_rows, dtype=bool)
    for some in slices():
        for rows in dedup.packed_rows(some):
            needed[rows] = True
    if not needed.any():
        return np.zeros(0, np.uint64)
    with SpilledTexts(stage.path, np.flatnonzero(needed).astype(dedup.row_kind(total_rows))) as texts_of:
        del needed
        rows_analysis.give_back_memory()
        kept = [np.zeros(0, np.uint64)]
        for some in slices():
            kept.append(dedup.pack_pairs(dedup.verify_pairs(dedup.unpack_pairs(some), texts_of, dedup.NEAR_THRESHOLD)))
            rows_analysis.give_back_memory()
    return np.concatenate(kept)  # in order: the slices are, and verify_pairs keeps the order given


def _pairs_kept(chunks, kept, first):
    """The pairs, chunk by chunk, whose texts' pair is in `kept`."""
    for packed in chunks:
        yield packed[_in_sorted(kept, _on_first_rows(packed, first))]


def _in_sorted(sorted_values, values):
    """np.isin for a sorted array to look in, by binary search."""
    if not len(sorted_values):
        return np.zeros(len(values), dtype=bool)
    where = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[where] == values


def _on_first_rows(packed, first):
    """Packed pairs with each row replaced by the first row of its text."""
    low, high = dedup.packed_rows(packed)
    return dedup.pack_rows(first[low], first[high])


class SpilledTexts:
    """The texts (prompt and response) of some staged rows (sorted), copied in one pass over
    the staged file into an unnamed temporary file and read back with one pread per text:
    the memory held is what one call returns, however many texts the checks will need.

    Not a memory map: its pages count as this process's memory once touched, and a touch
    maps the ~64 KB around it (the kernel's fault-around), so a call for 10k scattered texts
    held ~all of a 140 MB file at a million rows (measured). pread costs ~1 µs a text.
    Call it with sorted rows from those given; use it as a context manager."""

    def __init__(self, path, rows):
        self.rows = rows
        self._file = tempfile.TemporaryFile(prefix="lifecycle-texts-")
        offsets, end, start = [np.zeros(1, np.int64)], 0, 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=["text", "response"]):
            lo, hi = np.searchsorted(rows, [start, start + batch.num_rows])
            if hi > lo:
                data, ends = _utf8(_joined(batch, pa.array(rows[lo:hi] - start)))
                self._file.write(data)
                offsets.append(ends + end)
                end += len(data)
            start += batch.num_rows
        self._file.flush()
        self._offsets = np.concatenate(offsets)
        if end < 2**32:
            self._offsets = self._offsets.astype(np.uint32)  # half the bytes a text

    def __call__(self, wanted):
        where = np.searchsorted(self.rows, np.asarray(wanted).astype(self.rows.dtype))  # same type: no copy of rows
        starts, ends = self._offsets[where].tolist(), self._offsets[where + 1].tolist()
        fd, read = self._file.fileno(), os.pread
        return [read(fd, end - begin, begin).decode() for begin, end in zip(starts, ends)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def _joined(batch, wanted):
    """The wanted rows' text, with "\n" and the response where there is one."""
    text, response = batch.column(0).take(wanted), batch.column(1).take(wanted)
    with_response = pc.fill_null(pc.not_equal(response, ""), False)
    joined = pc.if_else(with_response, pc.binary_join_element_wise(text, response, "\n"), text)
    return pc.fill_null(joined, "").cast(pa.large_string())


def _utf8(strings):
    """A large_string array's UTF-8 bytes and the end offset of each string in them."""
    offsets = np.frombuffer(strings.buffers()[1], np.int64)[strings.offset:strings.offset + len(strings) + 1]
    data = strings.buffers()[2]
    body = b"" if data is None else memoryview(data)[offsets[0]:offsets[-1]]
    return body, offsets[1:] - offsets[0]


def _signatures_for_rows(spilled, rows, perms, total_rows):
    """The spilled signatures of the given rows (sorted), gathered through a memory map one
    block of rows at a time, each block's pages let go before the next: only the pages that
    hold wanted rows are touched, and never more than a block's at once."""
    found = np.zeros((len(rows), perms), dtype=np.uint16)
    if not len(rows):
        return found
    block = SIGNATURE_BLOCK
    with mmap.mmap(spilled.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        signatures = np.frombuffer(mapped, dtype=np.uint16, count=total_rows * perms).reshape(total_rows, perms)
        try:
            for start in range(0, total_rows, block):
                lo, hi = np.searchsorted(rows, [start, start + block])
                if hi > lo:
                    found[lo:hi] = signatures[rows[lo:hi]]
                    begin = start * perms * 2 // mmap.PAGESIZE * mmap.PAGESIZE  # madvise starts on a page
                    mapped.madvise(mmap.MADV_DONTNEED, begin, (start + block) * perms * 2 - begin)
        finally:
            del signatures  # the map cannot close while a view of it lives
    return found


def split_units(n, chunks, reps):
    """Rows that must share a split: whole duplicate components, so no near-duplicate pair
    crosses splits — except where a component is huge (templated text chains into one), which
    would starve the small splits; those rows fall back to their keep-first duplicate set, and
    the leakage report counts whatever pairs still cross."""
    components = dedup.components_of_chunks(n, chunks)
    huge = _in_huge_component(components, cap=max(50, n // 100))
    # Each unit is named by one of its rows (its component's smallest, or its kept row), so
    # the split links rows to their unit without sorting (see splits._same_id_pairs).
    return np.where(huge, reps, components)


def _in_huge_component(components, cap, chunk=1 << 16):
    """Whether each row's component has more than `cap` rows; counted from the rows that are
    not their component's first (duplicates: a few in a hundred), not a count for every row."""
    linked = [np.zeros(0, components.dtype)]
    for start in range(0, len(components), chunk):
        roots = components[start:start + chunk]
        linked.append(roots[dedup.names_another_row(roots, start)])
    roots, others = np.unique(np.concatenate(linked), return_counts=True)
    huge = np.zeros(len(components), dtype=bool)
    huge[roots[others + 1 > cap]] = True
    return huge[components]


def _dedup_report(exact, near, reps):
    return {
        "exact_duplicate_rows": exact["rows"],
        "exact_groups": exact["groups"],
        "near_duplicate_pairs": int(near.count),
        "removable_rows": int((reps != np.arange(len(reps))).sum()),
        "pairs": dedup.unpack_pairs(near.lowest).tolist(),
        "examples": exact["examples"],
    }


def group_rows(stage):
    """Each row's first row in its group (its own where it has none; int32), or None when no
    row has one: all the splits and the leakage report need of the groups (4 bytes a row, not
    the group ids' 8), made once for both."""
    groups = stage.facts.read("group")
    if not (groups >= 0).any():
        return None
    return dedup.first_rows(groups, ignore_negative=True)


def choose_splits(stage, units, groups, options, progress):
    progress("splitting", 0, 1)
    given = stage.facts.read("split")
    if (given >= 0).all():
        return given, "given"
    del given
    how = "by time" if options.by_time else f"seeded (seed {options.seed})"
    assigned = splits.assign_splits(
        stage.facts.read("label"), groups=groups,
        timestamps=stage.facts.read("time") if options.by_time else None,
        units=units, fractions=options.fractions, seed=options.seed, by_time=options.by_time,
    )
    return assigned, how


def leakage(stage, assigned, first, near, groups):
    """The leakage report. Each row's first row with its exact key stands for the key: equal
    for exact duplicates, different otherwise."""
    times = stage.facts.read("time")
    return splits.leakage_report(assigned, exact_keys=first, near_pairs=near, groups=groups,
                                 timestamps=times if len(times) and not np.isnan(times).any() else None)


def find_splits(stage, options, progress):
    """Duplicates, splits and leakage. Returns what the write needs: each row's split and
    duplicate set, and the dedup and leakage reports; the rest is let go on the way."""
    with PairStore() as near:
        return _find_splits(stage, near, options, progress)


def _find_splits(stage, near, options, progress):
    duplicates = find_duplicates(stage, near, progress)
    units, report = duplicates.units, duplicates.report
    # What the leakage report and the write need waits on disk while the split runs.
    with SpilledColumns(first=duplicates.first.dtype, clusters=duplicates.clusters.dtype) as parked:
        parked.append(first=duplicates.first, clusters=duplicates.clusters)
        del duplicates
        # The heap handed back after each step (see rows.give_back_memory): each next one's
        # arrays then land in that room instead of on top of it.
        groups = group_rows(stage)
        rows_analysis.give_back_memory()
        assigned, how = choose_splits(stage, units, groups, options, progress)
        del units
        rows_analysis.give_back_memory()
        progress("checking leakage", 0, 1)
        leak = leakage(stage, assigned, parked.read("first"), near, groups)
        leak["splits_from"] = how
        return assigned, parked.read("clusters"), report, leak


# --- the whole thing --------------------------------------------------------------------------------


def ingest_file(dataset, path, fmt, options, *, user=None, source_sha256="", progress=None):
    """Run the pipeline; return the versions made (the raw one, and a redacted child if any)."""
    progress = progress or (lambda *args, **kwargs: None)
    stage, problems = stage_file(path, fmt, options, progress)
    return ingest_staged(dataset, stage, problems, options, user=user, source_sha256=source_sha256, progress=progress)


def ingest_staged(dataset, stage, problems, options, *, user=None, source_sha256="", progress):
    """The pipeline after the streaming pass (`stage_file`); the stage is cleaned up here."""
    texts = None
    try:
        report = validation_report(stage, problems, options)
        try:
            check_validation(stage, problems, options)
        except IngestRejected as exc:
            raise IngestRejected(str(exc), report) from None
        pii_found, pii_report = stage.pii.rows_with_pii > 0, stage.pii.to_dict()
        if pii_found and dataset.pii_policy == Dataset.PiiPolicy.BLOCK:
            raise IngestRejected(f"PII found in {stage.pii.rows_with_pii:,} rows ({_kinds(stage.pii)}) and this "
                                 "dataset's policy is to block: clean the file, or change the policy to redact",
                                 report | {"pii": pii_report})
        # The rows are final from here: their search index fills on the other core meanwhile.
        texts = TextIndexWriter.start(stage.path)
        assigned, clusters, dedup_report, leak = find_splits(stage, options, progress)
        reports = {"validation": report, "pii": pii_report, "dedup": dedup_report, "leakage": leak}
        label_set = sorted(stage.labels) if not options.label_set else list(options.label_set)
        progress("writing", 0, stage.rows)
        version = _write(dataset, stage, assigned, clusters, reports, label_set, pii_found, leak, user, source_sha256,
                         progress, texts)
    finally:
        if texts:
            texts.abandon()  # no-op once the version committed and the texts with it
        stage.cleanup()
    made = [version]
    if pii_found and dataset.pii_policy == Dataset.PiiPolicy.REDACT:
        progress("redacting", 0, version.row_count)
        made.append(redact_version(version, user=user))
    return made


def _kinds(report):
    return ", ".join(f"{count:,} {kind}" for kind, count in sorted(report.counts.items()))


def _write(dataset, stage, assigned, clusters, reports, label_set, pii_found, leak, user, source_sha256, progress,
           texts=None):
    writer = VersionWriter(dataset, operation=DatasetVersion.Operation.UPLOAD, user=user, source_sha256=source_sha256,
                           texts=texts)
    split_names = np.asarray(SPLIT_NAMES)
    rows_analysis.give_back_memory()  # what the splits freed: the write's batches go there
    offset = 0
    try:
        # Arrow all the way: the staged batch plus two columns, never a Python object per value.
        # Batches of 5,000 rows (a row group of the artifact each): at 20,000 the write's
        # working set was ~35 MB bigger, and no faster (measured).
        for batch in pq.ParquetFile(stage.path).iter_batches(batch_size=BATCH):
            part = slice(offset, offset + batch.num_rows)
            cluster = clusters[part].astype(np.int64)
            table = pa.Table.from_batches([batch]).append_column("split", pa.array(split_names[assigned[part]]))
            writer.add(table.append_column("duplicate_cluster", pa.array(cluster, mask=cluster < 0)))
            offset += batch.num_rows
            progress("writing", offset, stage.rows)
    except BaseException:
        writer.discard()
        raise
    status = DatasetVersion.PiiStatus.FOUND if pii_found else DatasetVersion.PiiStatus.CLEAN
    return writer.commit(reports=reports, label_set=label_set, pii_status=status, has_leakage=bool(leak["has_leakage"]))
