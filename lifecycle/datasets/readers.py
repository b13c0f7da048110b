"""Streaming readers for dataset uploads: CSV, JSON Lines and Parquet, row by row (docs/formats.md).

    with open_rows(path, "csv", max_bytes=..., max_cell_chars=...) as reader:
        reader.columns                          # known before the first row
        for item in reader:                     # Row(line, values) or RowError(line, reason)
            reader.bytes_read, reader.total_bytes

Memory stays flat whatever the file size. A problem with one row is a RowError the caller may
drop; a problem with the whole file raises FileFormatError, worded for the person who uploaded
it. No Django here: limits come in as arguments.
"""
import codecs
import contextlib
import csv
import io
import itertools
import json
import math
import os
import re
import stat
import struct
from collections import Counter
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FORMATS = ("csv", "jsonl", "parquet")
TARGETS = ("text", "label", "prompt", "response", "group", "timestamp", "split")

MiB = 1024 * 1024
# Sniffing, binary detection and format detection look at this much of the file.
HEAD_BYTES = 64 * 1024
READ_CHUNK = MiB
DEFAULT_MAX_CELL_CHARS = 1_000_000
# Whatever max_cell_chars says, these bound the memory one row can take (a stray quote would
# otherwise swallow the file).
MAX_LINE_BYTES = 32 * MiB
CSV_FIELD_CEILING = 16 * MiB
CSV_DELIMITERS = ",;\t|"
JSONL_SAMPLE_ROWS = 1000
JSONL_SAMPLE_BYTES = 8 * MiB
PARQUET_BATCH_BYTES = 32 * MiB
PARQUET_MAX_BATCH_ROWS = 8192
# A row group whose column holds more than this, uncompressed, and more than its rows could
# hold within the cell limit, is not decompressed at all: it cannot be read in bounded memory,
# and some cell of it is over the limit anyway. Below this size reading it is cheap, and the
# cell lengths (from Arrow, before any Python string is made) say which rows are at fault.
PARQUET_UNREAD_GROUP_BYTES = 64 * MiB
# The most UTF-8 bytes a character takes, plus a value's length prefix and level bytes.
_CELL_BYTES_PER_CHAR = 4
_CELL_OVERHEAD_BYTES = 16

_EXTENSIONS = {"csv": "csv", "tsv": "csv", "txt": "csv", "jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl",
               "parquet": "parquet", "pq": "parquet"}
_ARCHIVES = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip (or Excel)", b"BZh": "bzip2", b"\xfd7zXZ": "xz",
             b"7z\xbc\xaf": "7-Zip", b"\x28\xb5\x2f\xfd": "zstd"}
# Bytes that occur in text; whatever else is in the head counts towards "binary".
_TEXT_BYTES = bytes(range(32, 127)) + b"\t\n\r\f\b" + bytes(range(128, 256))
_NUL_IN_ROW = "the row contains a NUL character (0x00), which cannot be stored"


class FileFormatError(ValueError):
    """The whole file cannot be read; the message is for the person who uploaded it."""


class MappingError(ValueError):
    """A column mapping that cannot be used."""


Row = NamedTuple("Row", [("line", int), ("values", dict)])
RowError = NamedTuple("RowError", [("line", int), ("reason", str)])


def detect_format(filename, head):
    """Guess "csv", "jsonl" or "parquet" from the name's extension and the first bytes. The
    filename is only looked at, never opened or used to build a path."""
    _refuse_archive(head)
    if head.startswith(b"PAR1"):
        return "parquet"
    stem, dot, extension = filename.replace("\\", "/").rsplit("/", 1)[-1].rpartition(".")
    extension = extension.lower() if dot and stem else ""
    first = head.removeprefix(codecs.BOM_UTF8).lstrip()[:1]
    fmt = _EXTENSIONS.get(extension) or ("jsonl" if first == b"{" else None)
    if fmt is None:
        shown = f".{extension} files" if extension else "a file without an extension"
        raise FileFormatError(f"cannot tell the format of {shown}: upload CSV (.csv, .tsv), "
                              "JSON Lines (.jsonl) or Parquet (.parquet)")
    if fmt == "jsonl" and first == b"[":
        raise FileFormatError("this is a JSON array, not JSON Lines: write one JSON object per line")
    return fmt


def _refuse_archive(head):
    for magic, kind in _ARCHIVES.items():
        if head.startswith(magic):
            raise FileFormatError(f"this is a {kind} archive, not a data file: upload the CSV, "
                                  "JSON Lines or Parquet file itself, uncompressed")


def open_rows(path, fmt, *, max_bytes=None, max_cell_chars=DEFAULT_MAX_CELL_CHARS, encoding_check=True,
              columns=None, max_columns=None):
    """A RowReader (also a context manager) for `path`: a filesystem path, or an open binary file,
    read from where it is and not closed by us. `columns` limits the source columns read (Parquet
    never decodes the others). `encoding_check=False` turns bytes that are not UTF-8 into U+FFFD
    instead of refusing the file. A file with more than `max_columns` columns (JSON Lines: keys in
    the sampled rows) is refused once its header or schema is read."""
    readers = {"csv": CsvReader, "jsonl": JsonlReader, "parquet": ParquetReader}
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return readers[fmt](path, max_bytes=max_bytes, max_cell_chars=max_cell_chars,
                        encoding_check=encoding_check, columns=columns, max_columns=max_columns)


def check_columns(columns, required):
    """The names in `required` that are not in `columns`, in the order given."""
    present = set(columns)
    return [name for name in required if name not in present]


def duplicate_names(names):
    """The names that occur more than once, sorted (one pass: a header may be very wide)."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


def _too_large(max_bytes):
    return FileFormatError(f"the file is larger than the limit of {_size_text(max_bytes)}")


def _size_text(size):
    return f"{size / MiB:,.0f} MB" if size >= MiB else f"{size:,} bytes"


class RowReader:
    """Iterate once for Row / RowError items. Use as a context manager, or call close()."""

    def __init__(self, path, *, max_bytes, max_cell_chars, encoding_check, columns, max_columns=None):
        self.max_bytes, self.max_cell_chars, self.max_columns = max_bytes, max_cell_chars, max_columns
        self.encoding_check = encoding_check
        self.wanted = list(columns) if columns else None
        self.columns, self.total_bytes = [], None
        self._owned = None  # what close() closes: a file we opened, or the ParquetFile
        try:
            self._items = self._closing(self._open(path))
        except BaseException:
            self.close()
            raise

    def __iter__(self):
        return self._items

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def _closing(self, items):
        # Callers that just loop (no `with`) still release the file at the end.
        try:
            yield from items
        finally:
            self.close()

    def _check_size(self, fileobj):
        try:
            info = os.fstat(fileobj.fileno())
            self.total_bytes = info.st_size if stat.S_ISREG(info.st_mode) else None
        except (AttributeError, OSError, io.UnsupportedOperation):
            if fileobj.seekable():
                here = fileobj.tell()
                self.total_bytes = fileobj.seek(0, io.SEEK_END) - here
                fileobj.seek(here)
        # Refused before a byte is read when the size is known; streams are cut off later.
        if self.max_bytes is not None and self.total_bytes is not None and self.total_bytes > self.max_bytes:
            raise _too_large(self.max_bytes)

    def _check_column_count(self, count, what="columns"):
        if self.max_columns is not None and count > self.max_columns:
            raise FileFormatError(f"the file has {count:,} {what}, more than the limit of {self.max_columns:,} "
                                  "columns: keep only the columns the dataset needs")

    def _check_wanted(self):
        missing = check_columns(self.columns, self.wanted or ())
        if missing:
            raise FileFormatError(f"the file has no column {', '.join(map(repr, missing))}; "
                                  f"it has: {', '.join(self.columns) or 'no columns'}")

    def _over_limit(self, line, values):
        """A RowError for the first string value longer than max_cell_chars, else None."""
        for column, value in values.items():
            if isinstance(value, str) and len(value) > self.max_cell_chars:
                return RowError(line, f"text cell in column {column!r} is {len(value):,} characters, "
                                      f"over the limit of {self.max_cell_chars:,}")
        return None


# --- text files: counted bytes, head checks, lines ---------------------------------------------


class _CountingStream(io.RawIOBase):
    """The file's bytes, counted and cut off one byte past max_bytes; the head is served first."""

    def __init__(self, fileobj, max_bytes):
        super().__init__()
        self._file, self._max_bytes = fileobj, max_bytes
        self._pending, self.count = b"", 0

    def readable(self):
        return True

    def read_head(self, size):
        """Up to `size` bytes read ahead (a pipe may need several reads); served again, less a
        UTF-8 BOM, by the reads that follow."""
        chunks, got = [], 0
        while got < size and (chunk := self._read_file(size - got)):
            chunks.append(chunk)
            got += len(chunk)
        head = b"".join(chunks)
        self._pending = head.removeprefix(codecs.BOM_UTF8)
        return head

    def readinto(self, buffer):
        data, self._pending = self._pending[:len(buffer)], self._pending[len(buffer):]
        data = data or self._read_file(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _read_file(self, size):
        if self._max_bytes is not None:
            # One byte past the limit is enough to know the file is over it.
            size = min(size, self._max_bytes + 1 - self.count)
        data = self._file.read(size) or b""
        self.count += len(data)
        if self._max_bytes is not None and self.count > self._max_bytes:
            raise _too_large(self._max_bytes)
        return data


def _not_utf8(exc, line):
    byte = exc.object[exc.start]
    return FileFormatError(f"the file is not UTF-8: invalid byte 0x{byte:02X} at line {line} "
                           "(perhaps Latin-1 or Windows-1252): save it as UTF-8")


class _TextReader(RowReader):
    """Shared by CSV and JSON Lines: counted bytes, head checks, a 1 MiB read buffer."""

    @property
    def bytes_read(self):
        return self._stream.count

    def _open(self, path):
        if hasattr(path, "read"):
            fileobj = path
        else:
            fileobj = self._owned = open(os.fspath(path), "rb", buffering=0)
        self._check_size(fileobj)
        self._stream = _CountingStream(fileobj, self.max_bytes)
        self._head = head = self._stream.read_head(HEAD_BYTES)
        if not head:
            raise FileFormatError("the file is empty")
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise FileFormatError("the file is UTF-16 (or UTF-32), not UTF-8: save it as UTF-8")
        _refuse_archive(head)
        if b"\0" in head or len(head.translate(None, _TEXT_BYTES)) > len(head) // 10:
            raise FileFormatError("this is not a text file: it has NUL bytes or mostly non-text bytes")
        if b"\n" not in head and b"\r" in head.rstrip(b"\r"):
            raise FileFormatError("the file uses old Mac line endings (CR only): save it with LF or CRLF line endings")
        self._buffer = io.BufferedReader(self._stream, READ_CHUNK)
        self._errors = "strict" if self.encoding_check else "replace"
        return self._select(self._open_text())

    def _select(self, items):
        if not self.wanted:
            return items
        wanted = self.wanted
        return (Row(item.line, {name: item.values.get(name) for name in wanted}) if isinstance(item, Row) else item
                for item in items)


# --- CSV ----------------------------------------------------------------------------------------


def sniff_delimiter(sample):
    """The delimiter of a CSV sample, one of , ; tab | (comma when unsure)."""
    header = sample.split("\n", 1)[0]
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        delimiter = ","
    if delimiter not in header:
        # The header has no quoted text to mislead a count; trust it over the sniffer.
        delimiter = max(CSV_DELIMITERS, key=header.count) if any(d in header for d in CSV_DELIMITERS) else ","
    return delimiter


class CsvReader(_TextReader):
    def _open_text(self):
        # The limit is process-wide; only ever raised, so other users of csv are not surprised.
        csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_CEILING, self.max_cell_chars + 1))
        sample = self._head.removeprefix(codecs.BOM_UTF8)
        if b"\n" in sample and len(sample) == HEAD_BYTES:
            sample = sample[:sample.rindex(b"\n")]
        self.delimiter = sniff_delimiter(sample.decode("utf-8", "replace"))
        # The lines with a NUL byte in the row being parsed: the csv module reads no line of the
        # next row before it yields this one.
        self._nul_lines = []
        # Only the delimiter is sniffed: the Sniffer's quote guesses misfire on apostrophes.
        self._csv = csv.reader(self._lines(), delimiter=self.delimiter, quotechar='"', doublequote=True)
        self.columns = self._read_header()
        self._check_wanted()
        return self._rows()

    def _lines(self):
        readline, errors, number = self._buffer.readline, self._errors, 0
        while raw := readline(MAX_LINE_BYTES):
            number += 1
            if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
                # Inside a quoted cell we cannot tell where the next row starts.
                raise FileFormatError(f"line {number} is longer than {_size_text(MAX_LINE_BYTES)}; "
                                      "the file cannot be read past it")
            if b"\0" in raw:
                self._nul_lines.append(number)
            try:
                text = raw.decode("utf-8", errors)
            except UnicodeDecodeError as exc:
                raise _not_utf8(exc, number) from None
            yield text

    def _read_header(self):
        try:
            for fields in self._csv:
                if any(field.strip() for field in fields):
                    self._header_line = self._csv.line_num
                    # Counted before any per-name work: a header may be a million names long.
                    self._check_column_count(len(fields))
                    break
            else:
                raise FileFormatError("the CSV file has no header row")
        except csv.Error as exc:
            raise FileFormatError(f"line {self._csv.line_num}: {exc}") from None
        names = [field.strip() for field in fields]
        for position, name in enumerate(names, 1):
            if not name:
                raise FileFormatError(f"the header row has an empty column name (column {position})")
            try:
                float(name)
            except ValueError:
                continue
            raise FileFormatError(f"the first row looks like data, not a header ({name!r} is a number): "
                                  "add a header row with column names")
        if duplicates := duplicate_names(names):
            raise FileFormatError(f"the header row names a column more than once: {', '.join(duplicates)}")
        return names

    def _rows(self):
        names, width, limit = self.columns, len(self.columns), self.max_cell_chars
        nul_lines, end = self._nul_lines, self._header_line
        while True:
            try:
                for fields in self._csv:
                    start, end = end + 1, self._csv.line_num
                    if len(fields) == width and not nul_lines and 0 < max(map(len, fields)) <= limit:
                        yield Row(start, dict(zip(names, fields)))
                    elif item := self._odd_row(start, fields):
                        yield item
                return
            except csv.Error as exc:
                # The csv module starts afresh at the next line, which is where the next row starts.
                start, end = end + 1, self._csv.line_num
                nul_lines.clear()
                if "field larger than field limit" in str(exc):
                    raise FileFormatError(f"line {start}: a cell is longer than {csv.field_size_limit():,} "
                                          "characters (an unclosed quote?); the file cannot be read past it")
                if "new-line character" in str(exc):
                    yield RowError(start, "a carriage return (CR) inside an unquoted cell: quote the cell or "
                                          "remove the CR")
                else:
                    yield RowError(start, f"cannot parse the row: {exc}")

    def _odd_row(self, start, fields):
        """The slow path: a blank row (None), a RowError, or a row that is fine after all."""
        if not any(fields):
            return None
        if self._nul_lines:
            self._nul_lines.clear()
            return RowError(start, _NUL_IN_ROW)
        if len(fields) != len(self.columns):
            return RowError(start, f"expected {len(self.columns)} fields (as in the header), found {len(fields)}")
        values = dict(zip(self.columns, fields))
        return self._over_limit(start, values) or Row(start, values)


# --- JSON Lines ---------------------------------------------------------------------------------

# The C scanner is what json.loads runs underneath, minus the whitespace regexes around it.
_scan_json = json.JSONDecoder().scan_once
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}
# A \u escape that may stand for a NUL or a lone surrogate (\ud800), which no database stores as
# text. Escaped emoji (surrogate pairs) match too, and pass the slower check.
_RISKY_ESCAPE = re.compile(rb"\\u(?:0000|d|D)")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BLANK = object()


class JsonlReader(_TextReader):
    def _open_text(self):
        # The sampled rows' keys are the columns, so the sample is checked as a whole; a later
        # row with more keys than the file may have columns is a row error.
        self._max_keys = math.inf
        items, sample, objects = self._parse_lines(), [], 0
        # The first JSONL_SAMPLE_ROWS objects (fewer for big rows), kept to be yielded first.
        for item in items:
            sample.append(item)
            objects += isinstance(item, Row)
            if objects >= JSONL_SAMPLE_ROWS or self._stream.count >= JSONL_SAMPLE_BYTES:
                break
        self.columns = self._columns_from(sample)
        self._check_wanted()
        if self.max_columns is not None:
            self._max_keys = self.max_columns
        return itertools.chain(sample, items)

    def _columns_from(self, sample):
        rows = [item.values for item in sample if isinstance(item, Row)]
        if rows:
            keys = list(dict.fromkeys(key for values in rows for key in values))
            self._check_column_count(len(keys), "keys (columns)")
            return keys
        if sample:  # only RowErrors: blank lines yield nothing
            raise FileFormatError(f"no line holds a JSON object (line {sample[0].line}: {sample[0].reason}); "
                                  "is this JSON Lines, one object per line?")
        raise FileFormatError("the file has no JSON objects, only blank lines")

    def _parse_lines(self):
        readline, errors, limit, number = self._buffer.readline, self._errors, self.max_cell_chars, 0
        while raw := readline(MAX_LINE_BYTES):
            number += 1
            if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while (rest := readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass
                yield RowError(number, f"line {number} is longer than {_size_text(MAX_LINE_BYTES)}; skipped")
                continue
            try:
                text = raw.decode("utf-8", errors)
            except UnicodeDecodeError as exc:
                raise _not_utf8(exc, number) from None
            value = _parse_json(text)
            if (type(value) is dict and len(raw) <= limit and len(value) <= self._max_keys
                    and (b"\\u" not in raw or not _RISKY_ESCAPE.search(raw))):
                yield Row(number, value)
            elif item := self._odd_line(number, raw, value):
                yield item

    def _odd_line(self, number, raw, value):
        """The slow path: a blank line (None), a RowError, or a row that is fine after all."""
        if value is _BLANK:
            return None
        if isinstance(value, json.JSONDecodeError):
            return RowError(number, f"invalid JSON: {value.msg} (column {value.colno})")
        if type(value) is not dict:
            return RowError(number, f"expected a JSON object, found {_JSON_KINDS.get(type(value), 'something else')}")
        if len(value) > self._max_keys:
            return RowError(number, f"the object has {len(value):,} keys, more than the limit of "
                                    f"{self._max_keys:,} columns")
        if b"\\u0000" in raw and _any_text(value, lambda text: "\0" in text):
            return RowError(number, "the row contains a NUL character (\\u0000), which cannot be stored")
        if b"\\u" in raw and _any_text(value, _SURROGATE.search):
            return RowError(number, "the row contains a lone surrogate escape (such as \\ud800): "
                                    "it is not a character and cannot be stored as text")
        return self._over_limit(number, value) or Row(number, value)


def _parse_json(text):
    """The decoded value, _BLANK for a blank line, or the JSONDecodeError (returned, not raised)."""
    try:
        value, end = _scan_json(text, 0)
        if end == len(text) or text[end:].isspace():
            return value
    except (StopIteration, ValueError, RecursionError):
        pass
    if not text.strip():
        return _BLANK
    try:
        # Without the line ending, so an error's column counts on this line.
        return json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        return exc
    except RecursionError:
        return json.JSONDecodeError("nested too deeply", text, 0)


def _any_text(value, test):
    """Whether `test` holds for any string in a decoded JSON value, its keys included."""
    if isinstance(value, str):
        return test(value)
    if isinstance(value, dict):
        return any(test(k) or _any_text(v, test) for k, v in value.items())
    if isinstance(value, list):
        return any(_any_text(item, test) for item in value)
    return False


# --- Parquet ------------------------------------------------------------------------------------

# Before pyarrow 14 this name was tied to a loader that unpickled the type's metadata
# (CVE-2023-47248). pyarrow 22 registers nothing under it; should anything in the process
# register it again, we take it out before reading a file.
_PICKLED_EXTENSION = "arrow.py_extension_type"


class ParquetReader(RowReader):
    @property
    def bytes_read(self):  # an estimate: the share of the rows read so far
        total = self.total_bytes or 0
        return total * self._rows_done // self._total_rows if self._total_rows else total

    def _open(self, path):
        with contextlib.suppress(KeyError, pa.ArrowException):
            pa.unregister_extension_type(_PICKLED_EXTENSION)
        source = path if hasattr(path, "read") else os.fspath(path)
        self._total_rows = self._rows_done = 0
        self._check_source(source)
        try:
            # Parquet's JSON/UUID logical types stay plain strings/bytes: no extension types at all.
            self._parquet = self._owned = pq.ParquetFile(source, buffer_size=READ_CHUNK, pre_buffer=False,
                                                         arrow_extensions_enabled=False)
        except (pa.ArrowException, OSError) as exc:
            raise FileFormatError(f"this is not a valid Parquet file: {exc}") from None
        self.columns = self._parquet.schema_arrow.names
        self._check_column_count(len(self.columns))
        duplicates = duplicate_names(self.columns)
        if duplicates:
            raise FileFormatError(f"the Parquet schema names a column more than once: {', '.join(duplicates)}")
        self._check_wanted()
        self._read_names = self.wanted or self.columns
        for name in self._read_names:
            _refuse_extension_types(name, self._parquet.schema_arrow.field(name))
        self._total_rows = self._parquet.metadata.num_rows
        return self._rows()

    def _check_source(self, source):
        if not hasattr(source, "read"):
            with open(source, "rb") as fileobj:
                return self._check_source(fileobj)
        if not source.seekable():
            raise FileFormatError("a Parquet file must be read from a seekable file (its index is at the end)")
        self._check_size(source)
        here = source.tell()
        magic = source.read(4)
        source.seek(here)
        if not magic:
            raise FileFormatError("the file is empty")
        if magic == b"PARE":
            raise FileFormatError("encrypted Parquet files are not supported")
        if magic != b"PAR1":
            raise FileFormatError("this is not a valid Parquet file: it does not start with PAR1")
        if self.max_columns is not None:
            # pyarrow parses the whole footer first, which takes seconds at a million columns.
            nodes = _parquet_schema_nodes(source)
            if nodes is not None:
                self._check_column_count(nodes - 1, "columns (counting nested fields)")

    def _rows(self):
        meta = self._parquet.metadata
        # {leaf column index: its top-level column} for the columns that are read.
        wanted = set(self._read_names)
        leaves = {i: path[0] for i, path in enumerate(self._parquet.reader.column_paths) if path[0] in wanted}
        try:
            for index in range(meta.num_row_groups):
                yield from self._group_rows(index, meta.row_group(index), leaves)
        except (pa.ArrowException, OSError) as exc:
            raise FileFormatError(f"the Parquet file is damaged near row {self._rows_done + 1}: {exc}") from None

    def _group_rows(self, index, group, leaves):
        first = self._rows_done + 1
        if reason := self._unread_reason(group, leaves, first):
            yield from (RowError(first + i, reason) for i in range(group.num_rows))
            self._rows_done += group.num_rows
            return
        # Batches are counted in rows; size them so one batch of long texts stays small.
        per_row = max(1, group.total_byte_size // max(1, group.num_rows))
        batch_size = max(1, min(PARQUET_MAX_BATCH_ROWS, PARQUET_BATCH_BYTES // per_row))
        for batch in self._parquet.iter_batches(batch_size=batch_size, row_groups=[index], columns=self._read_names):
            yield from self._batch_rows(batch, first)
            first += batch.num_rows
            self._rows_done += batch.num_rows

    def _unread_reason(self, group, leaves, first):
        """Why no row of this group is read, if a read column holds more, uncompressed, than is
        cheap to read and than its rows could hold within the cell limit; else None."""
        rows = group.num_rows
        room = rows * (self.max_cell_chars * _CELL_BYTES_PER_CHAR + _CELL_OVERHEAD_BYTES)
        for leaf, name in leaves.items():
            size = group.column(leaf).total_uncompressed_size
            if size > PARQUET_UNREAD_GROUP_BYTES and size > room:
                break
        else:
            return None
        limit = f"the limit of {self.max_cell_chars:,} characters"
        if rows == 1:
            return f"the cell in column {name!r} is {_size_text(size)} uncompressed, over {limit}"
        return (f"not read: column {name!r} holds {_size_text(size)} uncompressed in rows {first:,} to "
                f"{first + rows - 1:,} (one Parquet row group), more than {rows:,} cells within {limit} can")

    def _batch_rows(self, batch, first):
        problems = _cell_problems(batch, self.max_cell_chars)
        good = batch.filter(pa.array([i not in problems for i in range(batch.num_rows)])) if problems else batch
        try:
            values = good.to_pylist()
        except UnicodeDecodeError:  # some cell is not UTF-8: find it row by row
            values = [_python_row(good, i) for i in range(good.num_rows)]
        else:
            if not problems:
                return map(Row, itertools.count(first), values)
        # In file order: the problems by position, the others' values (or why not) in turn.
        values = iter(values)
        items = (problems[i] if i in problems else next(values) for i in range(batch.num_rows))
        return [(RowError if isinstance(item, str) else Row)(line, item) for line, item in enumerate(items, first)]


def _parquet_schema_nodes(fileobj):
    """How many schema elements the footer declares, read from its first bytes: in Thrift's
    compact protocol FileMetaData opens with field 1 (version: 0x15 and a varint) and field 2
    (schema: 0x19 and a list header, 0xC for structs). None when it does not open so (pyarrow
    parses it then, and the count is checked after). pyarrow's thrift_container_size_limit is
    no substitute: it caps the number of row groups too, and does not say the count."""
    here = fileobj.tell()
    try:
        end = fileobj.seek(0, io.SEEK_END)
        if end < 12:
            return None
        fileobj.seek(end - 8)
        length, magic = struct.unpack("<I4s", fileobj.read(8))
        if magic != b"PAR1" or length > end - 12:
            return None
        fileobj.seek(end - 8 - length)
        data = fileobj.read(min(length, 32))
    finally:
        fileobj.seek(here)
    pos = _varint(data, 1)[1] if data[:1] == b"\x15" else len(data)
    if data[pos:pos + 1] != b"\x19" or pos + 1 >= len(data) or data[pos + 1] & 0x0F != 0x0C:
        return None
    size = data[pos + 1] >> 4
    return size if size != 0x0F else _varint(data, pos + 2)[0]


def _varint(data, pos):
    """The varint at `pos` and the position after it; (None, end) when the data stops first."""
    for end in range(pos, len(data)):
        if not data[end] & 0x80:
            return sum((byte & 0x7F) << 7 * i for i, byte in enumerate(data[pos:end + 1])), end + 1
    return None, len(data)


def _refuse_extension_types(name, field):
    """Extension types are Arrow-specific and can carry code-bearing metadata: refuse them, in
    column `name` or any field nested in it."""
    if isinstance(field.type, pa.BaseExtensionType):
        kind = field.type.extension_name
    else:
        kind = (field.metadata or {}).get(b"ARROW:extension:name", b"").decode("utf-8", "replace")
    if kind:
        raise FileFormatError(f"column {name!r} declares the Arrow extension type {kind!r}, which uploads "
                              "may not use: save it as a plain type (string, integer, ...)")
    for i in range(field.type.num_fields):
        _refuse_extension_types(name, field.type.field(i))


def _cell_problems(batch, limit):
    """{row index: reason} for rows with a NUL or an over-long cell, found in Arrow before any
    Python object is made: a cell of a gigabyte is measured, never copied."""
    long, nul = {}, {}
    for name, column in zip(batch.schema.names, batch.columns):
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            # Bytes bound characters from above, and cost nothing to count (the offsets).
            if pc.any(pc.greater(pc.binary_length(column), limit)).as_py():
                chars = pc.utf8_length(column)
                for i in _true_at(pc.greater(chars, limit)):
                    long.setdefault(i, f"text cell in column {name!r} is {chars[i].as_py():,} characters, "
                                       f"over the limit of {limit:,}")
            nul.update(dict.fromkeys(_true_at(pc.match_substring(column, "\0")), _NUL_IN_ROW))
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            sizes = pc.binary_length(column)
            for i in _true_at(pc.greater(sizes, limit * _CELL_BYTES_PER_CHAR)):
                long.setdefault(i, f"cell in column {name!r} is {sizes[i].as_py():,} bytes, "
                                   f"over the limit of {limit:,} characters")
    return {**long, **nul}  # a NUL is named first, as for the other formats


def _true_at(flags):
    return pc.indices_nonzero(pc.fill_null(flags, False)).to_pylist()


def _python_row(batch, i):
    """Row `i` as Python values, or why it cannot be: a cell that is not UTF-8."""
    row = {}
    for name, column in zip(batch.schema.names, batch.columns):
        try:
            row[name] = column[i].as_py()
        except UnicodeDecodeError:
            return (f"the cell in column {name!r} is not valid UTF-8 (a broken character, or a lone "
                    "surrogate such as \\ud800), so it cannot be stored as text")
    return row


# --- column mapping -----------------------------------------------------------------------------

_ALIASES = {
    "text": ("text", "body", "message", "utterance", "sentence", "content"),
    "label": ("label", "intent", "category", "class", "target"),
    "prompt": ("prompt", "instruction", "question", "input"),
    "response": ("response", "output", "answer", "completion"),
    "group": ("group", "customer_id", "user_id", "customer", "session_id"),
    "timestamp": ("timestamp", "created_at", "time", "date"),
    "split": ("split", "fold"),
}
_TASK_TARGETS = {"classification": ("text", "label"), "sft": ("prompt", "response")}
_COMMON_TARGETS = ("group", "timestamp", "split")


class ColumnMapping:
    """Our names (TARGETS) from the file's column names, `{"text": "body"}` or parsed from
    "text=body,label=intent"; everything else becomes metadata. A target not named explicitly
    is taken from a column of the same name, if there is one and no explicit entry uses it."""

    def __init__(self, pairs=None):
        self.pairs = dict(pairs or {})
        for target, source in self.pairs.items():
            if target not in TARGETS:
                raise MappingError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
            if not isinstance(source, str) or not source:
                raise MappingError(f"the column for {target!r} must be a non-empty column name")
        self._sources = frozenset(self.pairs.values())
        self._implicit = tuple(t for t in TARGETS if t not in self.pairs and t not in self._sources)

    @classmethod
    def parse(cls, text):
        pairs = {}
        for part in filter(None, (part.strip() for part in text.split(","))):
            target, equals, source = (s.strip() for s in part.partition("="))
            if not equals:
                raise MappingError(f"{part!r} is not of the form target=column")
            if target in pairs:
                raise MappingError(f"{target!r} is mapped twice")
            pairs[target] = source
        return cls(pairs)

    @property
    def targets(self):
        """The targets named explicitly."""
        return tuple(self.pairs)

    def source_for(self, target):
        return self.pairs.get(target, target)

    def apply(self, values):
        """{target: value, ..., "metadata": {other column: value}}; a missing source gives None."""
        mapped = {target: values.get(source) for target, source in self.pairs.items()}
        implicit = [target for target in self._implicit if target in values]
        for target in implicit:
            mapped[target] = values[target]
        used = self._sources.union(implicit)
        mapped["metadata"] = {key: value for key, value in values.items() if key not in used}
        return mapped

    def __str__(self):
        return ",".join(f"{target}={source}" for target, source in self.pairs.items())

    def __repr__(self):
        return f"ColumnMapping({self.pairs!r})"

    def __eq__(self, other):
        return isinstance(other, ColumnMapping) and self.pairs == other.pairs


def guess_mapping(columns, task=None):
    """A suggested {target: column} for common column names; task "classification" or "sft"
    limits the guess to that task's targets (plus group, timestamp, split)."""
    if task is not None and task not in _TASK_TARGETS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(_TASK_TARGETS)}")
    main = _TASK_TARGETS[task] if task else ("text", "label", "prompt", "response")
    by_name = {}
    for column in columns:
        by_name.setdefault(column.strip().lower().replace(" ", "_").replace("-", "_"), column)
    mapping, used = {}, set()
    for target in main + _COMMON_TARGETS:
        column = next((by_name[a] for a in _ALIASES[target] if a in by_name and by_name[a] not in used), None)
        if column is not None:
            mapping[target] = column
            used.add(column)
    return mapping


def clean_cell(value):
    """A text cell as str, or None when missing (None, NaN, empty or whitespace-only). Strings
    lose leading and trailing whitespace (an export artefact far more often than meaning), and
    nothing inside. 1.0 becomes "1" (a label column with gaps comes back as floats); nested
    values become JSON; bytes must be UTF-8."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8").strip() or None
        except UnicodeDecodeError:
            raise ValueError("the cell holds binary data, not UTF-8 text") from None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return None if value != value else str(value)
