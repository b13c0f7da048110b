"""Streaming readers for dataset uploads: CSV, JSON Lines and Parquet, row by row.

    reader = open_rows(path, "csv", max_bytes=..., max_cell_chars=...)
    reader.columns                      # known before the first row
    for item in reader:                 # Row(line, values) or RowError(line, reason)
        ...
    reader.bytes_read, reader.total_bytes   # for progress

Memory stays flat whatever the file size: text files are read line by line through a
1 MiB buffer, Parquet files batch by batch. A problem with one row is a `RowError` the
caller may drop; a problem with the whole file (empty, binary, not UTF-8, too large, not
valid Parquet) raises `FileFormatError` with a message meant for the person who uploaded it.
See docs/formats.md. No Django here: limits come in as arguments.
"""
import codecs
import csv
import io
import itertools
import json
import math
import os
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
# One physical line, and one CSV cell, may not exceed these, whatever max_cell_chars says:
# they bound the memory a single row can take (a stray quote would otherwise swallow the file).
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

_EXTENSIONS = {
    "csv": "csv", "tsv": "csv", "txt": "csv",
    "jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl",
    "parquet": "parquet", "pq": "parquet",
}
_ARCHIVES = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip (or Excel)", b"BZh": "bzip2", b"\xfd7zXZ": "xz",
             b"7z\xbc\xaf": "7-Zip", b"\x28\xb5\x2f\xfd": "zstd"}
# Bytes that occur in text; whatever else is in the head counts towards "binary".
_TEXT_BYTES = bytes(range(32, 127)) + b"\t\n\r\f\b" + bytes(range(128, 256))


class FileFormatError(ValueError):
    """The whole file cannot be read; the message is for the person who uploaded it."""


class MappingError(ValueError):
    """A column mapping that cannot be used."""


class Row(NamedTuple):
    line: int
    values: dict


class RowError(NamedTuple):
    line: int
    reason: str


# --- format detection ------------------------------------------------------------------------


def detect_format(filename, head):
    """Guess "csv", "jsonl" or "parquet" from the name's extension and the first bytes.

    The filename is only looked at, never opened or used to build a path.
    """
    _refuse_archive(head)
    extension = _extension(filename)
    content = _format_from_content(head)
    if content == "parquet":
        return content
    fmt = _EXTENSIONS.get(extension) or content
    if fmt is None:
        shown = f".{extension} files" if extension else "a file without an extension"
        raise FileFormatError(f"cannot tell the format of {shown}: upload CSV (.csv, .tsv), "
                              "JSON Lines (.jsonl) or Parquet (.parquet)")
    if fmt == "jsonl" and _text_start(head).startswith(b"["):
        raise FileFormatError("this is a JSON array, not JSON Lines: write one JSON object per line")
    return fmt


def _extension(filename):
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, extension = name.rpartition(".")
    return extension.lower() if dot and stem else ""


def _format_from_content(head):
    if head.startswith(b"PAR1"):
        return "parquet"
    if _text_start(head).startswith(b"{"):
        return "jsonl"
    return None


def _text_start(head):
    return head.removeprefix(codecs.BOM_UTF8).lstrip()


def _refuse_archive(head):
    for magic, kind in _ARCHIVES.items():
        if head.startswith(magic):
            raise FileFormatError(f"this is a {kind} archive, not a data file: upload the CSV, "
                                  "JSON Lines or Parquet file itself, uncompressed")


# --- opening -----------------------------------------------------------------------------------


def open_rows(path, fmt, *, max_bytes=None, max_cell_chars=DEFAULT_MAX_CELL_CHARS, encoding_check=True,
              columns=None, max_columns=None):
    """Open a file for streaming; return a RowReader (also a context manager).

    `path` is a filesystem path or an open binary file object (read from where it is; not
    closed by us). `columns` limits which source columns are read (None or empty: all);
    for Parquet the others are never decoded. `encoding_check=False` replaces bytes that
    are not UTF-8 with U+FFFD instead of refusing the file. `max_columns` refuses a file
    with more columns (JSON Lines: more distinct keys in the sampled rows, or in any one
    row) as soon as the header or schema is read.
    """
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


def _file_size(fileobj):
    try:
        info = os.fstat(fileobj.fileno())
        return info.st_size if stat.S_ISREG(info.st_mode) else None
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    if not fileobj.seekable():
        return None
    here = fileobj.tell()
    size = fileobj.seek(0, io.SEEK_END)
    fileobj.seek(here)
    return size - here


class RowReader:
    """Iterate once for Row / RowError items. Use as a context manager, or call close()."""

    def __init__(self, path, *, max_bytes, max_cell_chars, encoding_check, columns, max_columns=None):
        self.max_bytes = max_bytes
        self.max_columns = max_columns
        self.max_cell_chars = max_cell_chars
        self.encoding_check = encoding_check
        self.wanted = list(columns) if columns else None
        self.columns = []
        self.total_bytes = None
        self._items = iter(())
        self._owned = None
        try:
            self._open(path)
        except BaseException:
            self.close()
            raise
        self._items = self._closing(self._items)

    def __iter__(self):
        return self._items

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def bytes_read(self):
        raise NotImplementedError

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

    def _open(self, path):
        raise NotImplementedError

    def _open_binary(self, path):
        if hasattr(path, "read"):
            return path
        self._owned = open(os.fspath(path), "rb", buffering=0)
        return self._owned

    def _check_size(self, fileobj):
        self.total_bytes = _file_size(fileobj)
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


# --- text files: bytes, head checks, lines ------------------------------------------------------


class _CountingStream(io.RawIOBase):
    """The file's bytes, counted, refusing to go past max_bytes; the head is served first."""

    def __init__(self, fileobj, max_bytes):
        super().__init__()
        self._file = fileobj
        self._max_bytes = max_bytes
        self._pending = b""
        self.count = 0

    def readable(self):
        return True

    def read_head(self, size):
        """Read up to `size` bytes ahead (a pipe may need several reads) and keep them."""
        chunks, got = [], 0
        while got < size:
            chunk = self._read_file(size - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        self._pending = b"".join(chunks)
        return self._pending

    def skip_head_prefix(self, prefix):
        self._pending = self._pending.removeprefix(prefix)

    def readinto(self, buffer):
        data = self._take_pending(len(buffer)) or self._read_file(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _take_pending(self, size):
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def _read_file(self, size):
        if self._max_bytes is not None:
            # One byte past the limit is enough to know the file is over it.
            size = min(size, self._max_bytes + 1 - self.count)
        data = self._file.read(size) or b""
        self.count += len(data)
        if self._max_bytes is not None and self.count > self._max_bytes:
            raise _too_large(self._max_bytes)
        return data


def _check_text_head(head):
    if not head:
        raise FileFormatError("the file is empty")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise FileFormatError("the file is UTF-16 (or UTF-32), not UTF-8: save it as UTF-8")
    _refuse_archive(head)
    non_text = len(head.translate(None, _TEXT_BYTES))
    if b"\0" in head or non_text > len(head) // 10:
        raise FileFormatError("this is not a text file: it has NUL bytes or mostly non-text bytes")
    if b"\n" not in head and b"\r" in head.rstrip(b"\r"):
        raise FileFormatError("the file uses old Mac line endings (CR only): save it with LF or CRLF line endings")


def _not_utf8(exc, line):
    byte = exc.object[exc.start]
    return FileFormatError(f"the file is not UTF-8: invalid byte 0x{byte:02X} at line {line} "
                           "(perhaps Latin-1 or Windows-1252): save it as UTF-8")


def _line_too_long(line):
    return f"line {line} is longer than {_size_text(MAX_LINE_BYTES)}"


class _TextReader(RowReader):
    """Shared by CSV and JSON Lines: counted bytes, head checks, a 1 MiB read buffer."""

    @property
    def bytes_read(self):
        return self._stream.count

    def _open(self, path):
        fileobj = self._open_binary(path)
        self._check_size(fileobj)
        self._stream = _CountingStream(fileobj, self.max_bytes)
        self._head = self._stream.read_head(HEAD_BYTES)
        _check_text_head(self._head)
        self._stream.skip_head_prefix(codecs.BOM_UTF8)
        self._buffer = io.BufferedReader(self._stream, READ_CHUNK)
        self._errors = "strict" if self.encoding_check else "replace"
        self._open_text()

    def _open_text(self):
        raise NotImplementedError


# --- CSV ----------------------------------------------------------------------------------------


def _raise_csv_field_limit(needed):
    # The limit is process-wide; only ever raised, so other users of csv are not surprised.
    if csv.field_size_limit() < needed:
        csv.field_size_limit(needed)


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
        _raise_csv_field_limit(max(CSV_FIELD_CEILING, self.max_cell_chars + 1))
        self.delimiter = sniff_delimiter(self._sample())
        self._nul_lines = []
        # Only the delimiter is sniffed: the Sniffer's quote guesses misfire on apostrophes.
        self._csv = csv.reader(self._lines(), delimiter=self.delimiter, quotechar='"', doublequote=True)
        self.columns = self._read_header()
        self._check_wanted()
        self._items = self._rows()

    def _sample(self):
        head = self._head.removeprefix(codecs.BOM_UTF8)
        if b"\n" in head and len(head) == HEAD_BYTES:
            head = head[:head.rindex(b"\n")]
        return head.decode("utf-8", "replace")

    def _lines(self):
        readline, errors, number = self._buffer.readline, self._errors, 0
        while raw := readline(MAX_LINE_BYTES):
            number += 1
            if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
                # Inside a quoted cell we cannot tell where the next row starts.
                raise FileFormatError(f"{_line_too_long(number)}; the file cannot be read past it")
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
                    return _header_names(fields)
        except csv.Error as exc:
            raise FileFormatError(f"line {self._csv.line_num}: {exc}") from None
        raise FileFormatError("the CSV file has no header row")

    def _rows(self):
        names, width, limit = self.columns, len(self.columns), self.max_cell_chars
        wanted, nul_lines, end = self.wanted, self._nul_lines, self._header_line
        while True:
            try:
                for fields in self._csv:
                    start, end = end + 1, self._csv.line_num
                    if len(fields) == width and not nul_lines and 0 < max(map(len, fields)) <= limit:
                        values = dict(zip(names, fields))
                        yield Row(start, {name: values[name] for name in wanted} if wanted else values)
                    elif item := self._odd_row(start, end, fields):
                        yield item
                return
            except csv.Error as exc:
                # The csv module starts afresh at the next line, which is where the next row starts.
                start, end = end + 1, self._csv.line_num
                self._had_nul(end)
                yield self._csv_problem(start, exc)

    def _csv_problem(self, start, exc):
        if "field larger than field limit" in str(exc):
            raise FileFormatError(f"line {start}: a cell is longer than {csv.field_size_limit():,} characters "
                                  "(an unclosed quote?); the file cannot be read past it")
        if "new-line character" in str(exc):
            return RowError(start, "a carriage return (CR) inside an unquoted cell: quote the cell or remove the CR")
        return RowError(start, f"cannot parse the row: {exc}")

    def _had_nul(self, end):
        """Whether a line up to `end` held a NUL byte; forgets those lines."""
        count = sum(1 for number in self._nul_lines if number <= end)
        del self._nul_lines[:count]
        return count > 0

    def _odd_row(self, start, end, fields):
        """The slow path: a blank row (None), a RowError, or a row that is fine after all."""
        if not any(fields):
            return None
        if self._had_nul(end):
            return RowError(start, "the row contains a NUL character (0x00), which cannot be stored")
        if len(fields) != len(self.columns):
            return RowError(start, f"expected {len(self.columns)} fields (as in the header), found {len(fields)}")
        values = dict(zip(self.columns, fields))
        if problem := self._over_limit(start, values):
            return problem
        return Row(start, {name: values[name] for name in self.wanted} if self.wanted else values)


def _header_names(fields):
    names = [field.strip() for field in fields]
    for position, name in enumerate(names, 1):
        if not name:
            raise FileFormatError(f"the header row has an empty column name (column {position})")
        if _is_number(name):
            raise FileFormatError(f"the first row looks like data, not a header ({name!r} is a number): "
                                  "add a header row with column names")
    duplicates = duplicate_names(names)
    if duplicates:
        raise FileFormatError(f"the header row names a column more than once: {', '.join(duplicates)}")
    return names


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- JSON Lines ---------------------------------------------------------------------------------

# The C scanner is what json.loads runs underneath, minus the whitespace regexes around it.
_scan_json = json.JSONDecoder().scan_once
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}


class JsonlReader(_TextReader):
    def _open_text(self):
        # The sampled rows' keys are the columns, so the sample is checked as a whole; a later
        # row with more keys than the file may have columns is a row error.
        self._max_keys = math.inf
        items = self._parse_lines()
        sample = self._sample(items)
        self.columns = self._columns_from(sample)
        self._check_wanted()
        if self.max_columns is not None:
            self._max_keys = self.max_columns
        self._items = self._select(itertools.chain(sample, items))

    def _sample(self, items):
        """The first JSONL_SAMPLE_ROWS objects (less for big rows), parsed and kept to yield first."""
        sample, objects = [], 0
        for item in items:
            sample.append(item)
            objects += isinstance(item, Row)
            if objects >= JSONL_SAMPLE_ROWS or self._stream.count >= JSONL_SAMPLE_BYTES:
                break
        return sample

    def _columns_from(self, sample):
        keys = {}
        for item in sample:
            if isinstance(item, Row):
                keys.update(dict.fromkeys(item.values))
        if keys or any(isinstance(item, Row) for item in sample):
            self._check_column_count(len(keys), "keys (columns)")
            return list(keys)
        errors = [item for item in sample if isinstance(item, RowError)]
        if errors:
            raise FileFormatError(f"no line holds a JSON object (line {errors[0].line}: {errors[0].reason}); "
                                  "is this JSON Lines, one object per line?")
        raise FileFormatError("the file has no JSON objects, only blank lines")

    def _select(self, items):
        if not self.wanted:
            return items
        wanted = self.wanted
        return (Row(item.line, {name: item.values.get(name) for name in wanted}) if isinstance(item, Row) else item
                for item in items)

    def _parse_lines(self):
        readline, errors, limit, number = self._buffer.readline, self._errors, self.max_cell_chars, 0
        while raw := readline(MAX_LINE_BYTES):
            number += 1
            if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
                self._skip_rest_of_line()
                yield RowError(number, f"{_line_too_long(number)}; skipped")
                continue
            try:
                text = raw.decode("utf-8", errors)
            except UnicodeDecodeError as exc:
                raise _not_utf8(exc, number) from None
            value = _parse_json(text)
            if (type(value) is dict and len(raw) <= limit and len(value) <= self._max_keys
                    and (b"\\u" not in raw or _plain_escapes(raw))):
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
        if b"\\u0000" in raw and _any_text(value, _has_nul):
            return RowError(number, "the row contains a NUL character (\\u0000), which cannot be stored")
        if b"\\u" in raw and _any_text(value, _has_surrogate):
            return RowError(number, "the row contains a lone surrogate escape (such as \\ud800): "
                                    "it is not a character and cannot be stored as text")
        return self._over_limit(number, value) or Row(number, value)

    def _skip_rest_of_line(self):
        while (chunk := self._buffer.readline(MAX_LINE_BYTES)) and not chunk.endswith(b"\n"):
            pass


_BLANK = object()


def _plain_escapes(raw):
    """False when a \\u escape may stand for a NUL or a lone surrogate (\\ud800), which no
    database stores as text. Escaped emoji (surrogate pairs) take the slow path too, and pass it."""
    return not (b"\\u0000" in raw or b"\\ud" in raw or b"\\uD" in raw)


def _parse_json(text):
    """The decoded value, _BLANK for a blank line, or the JSONDecodeError (returned, not raised)."""
    try:
        value, end = _scan_json(text, 0)
    except (StopIteration, ValueError, RecursionError):
        return _parse_json_slowly(text)
    if end == len(text) or text[end:].isspace():
        return value
    return _parse_json_slowly(text)


def _parse_json_slowly(text):
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


def _has_nul(text):
    return "\0" in text


def _has_surrogate(text):
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --- Parquet ------------------------------------------------------------------------------------

# Before pyarrow 14 this name was tied to a loader that unpickled the type's metadata
# (CVE-2023-47248). pyarrow 22 registers nothing under it; should anything in the process
# register it again, we take it out before reading a file.
_PICKLED_EXTENSION = "arrow.py_extension_type"


def _forbid_pickled_extension_types():
    try:
        pa.unregister_extension_type(_PICKLED_EXTENSION)
    except (KeyError, pa.ArrowException):
        pass


def _extension_name(field):
    if isinstance(field.type, pa.BaseExtensionType):
        return field.type.extension_name
    name = (field.metadata or {}).get(b"ARROW:extension:name")
    return name.decode("utf-8", "replace") if name else None


def _nested_fields(field):
    kind = field.type
    if pa.types.is_struct(kind):
        children = [kind.field(i) for i in range(kind.num_fields)]
    elif pa.types.is_map(kind):
        children = [kind.key_field, kind.item_field]
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        children = [kind.value_field]
    else:
        children = []
    yield field
    for child in children:
        yield from _nested_fields(child)


def _refuse_extension_types(schema, names):
    """Extension types are Arrow-specific and can carry code-bearing metadata: refuse them."""
    for name in names:
        for field in _nested_fields(schema.field(name)):
            kind = _extension_name(field)
            if kind:
                raise FileFormatError(f"column {name!r} declares the Arrow extension type {kind!r}, which uploads "
                                      "may not use: save it as a plain type (string, integer, ...)")


class ParquetReader(RowReader):
    @property
    def bytes_read(self):
        if not self._total_rows:
            return self.total_bytes or 0
        return (self.total_bytes or 0) * self._rows_done // self._total_rows

    def close(self):
        if getattr(self, "_parquet", None) is not None:
            self._parquet.close()
            self._parquet = None
        super().close()

    def _open(self, path):
        _forbid_pickled_extension_types()
        source = path if hasattr(path, "read") else os.fspath(path)
        self._total_rows = self._rows_done = 0
        self._check_source(source)
        self._parquet = self._parquet_file(source)
        self.columns = self._parquet.schema_arrow.names
        self._check_names()
        self._read_names = self.wanted if self.wanted is not None else self.columns
        _refuse_extension_types(self._parquet.schema_arrow, self._read_names)
        self._total_rows = self._parquet.metadata.num_rows
        self._items = self._rows()

    def _check_source(self, source):
        if not hasattr(source, "read"):
            with open(source, "rb") as fileobj:
                return self._check_source(fileobj)
        if not source.seekable():
            raise FileFormatError("a Parquet file must be read from a seekable file (its index is at the end)")
        self._check_size(source)
        _check_parquet_head(source)
        if self.max_columns is not None:
            # pyarrow parses the whole footer first, which takes seconds at a million columns.
            nodes = _parquet_schema_nodes(source)
            if nodes is not None:
                self._check_column_count(nodes - 1, "columns (counting nested fields)")

    def _parquet_file(self, source):
        try:
            # Parquet's JSON/UUID logical types stay plain strings/bytes: no extension types at all.
            return pq.ParquetFile(source, buffer_size=READ_CHUNK, pre_buffer=False, arrow_extensions_enabled=False)
        except (pa.ArrowException, OSError) as exc:
            raise FileFormatError(f"this is not a valid Parquet file: {exc}") from None

    def _check_names(self):
        self._check_column_count(len(self.columns))
        duplicates = duplicate_names(self.columns)
        if duplicates:
            raise FileFormatError(f"the Parquet schema names a column more than once: {', '.join(duplicates)}")
        self._check_wanted()

    def _rows(self):
        meta, leaves = self._parquet.metadata, self._read_leaves()
        try:
            for index in range(meta.num_row_groups):
                yield from self._group_rows(index, meta.row_group(index), leaves)
        except (pa.ArrowException, OSError) as exc:
            raise FileFormatError(f"the Parquet file is damaged near row {self._rows_done + 1}: {exc}") from None

    def _read_leaves(self):
        """{leaf column index: top-level column name} for the columns that are read."""
        schema = self._parquet.schema_arrow
        owners = [field.name for field in schema for _ in range(_leaf_count(field.type))]
        if len(owners) != self._parquet.metadata.num_columns:  # not expected; the paths then
            owners = [column.path.split(".")[0] for column in self._parquet.schema]
        wanted = set(self._read_names)
        return {i: name for i, name in enumerate(owners) if name in wanted}

    def _group_rows(self, index, group, leaves):
        first = self._rows_done + 1
        if too_big := self._oversized_column(group, leaves):
            return self._unread_rows(first, group.num_rows, self._unread_reason(group.num_rows, first, *too_big))
        # Batches are counted in rows; size them so one batch of long texts stays small.
        per_row = max(1, group.total_byte_size // max(1, group.num_rows))
        batch_size = max(1, min(PARQUET_MAX_BATCH_ROWS, PARQUET_BATCH_BYTES // per_row))
        batches = self._parquet.iter_batches(batch_size=batch_size, row_groups=[index], columns=self._read_names)
        return self._batches_rows(batches, first)

    def _batches_rows(self, batches, first):
        for batch in batches:
            yield from self._batch_rows(batch, first)
            first += batch.num_rows
            self._rows_done += batch.num_rows

    def _unread_rows(self, first, count, reason):
        for i in range(count):
            yield RowError(first + i, reason)
        self._rows_done += count

    def _oversized_column(self, group, leaves):
        """(column, bytes) when a read column of this row group holds more, uncompressed, than
        is cheap to read and than its rows could hold within the cell limit; else None."""
        room = group.num_rows * (self.max_cell_chars * _CELL_BYTES_PER_CHAR + _CELL_OVERHEAD_BYTES)
        for leaf, name in leaves.items():
            size = group.column(leaf).total_uncompressed_size
            if size > PARQUET_UNREAD_GROUP_BYTES and size > room:
                return name, size
        return None

    def _unread_reason(self, rows, first, name, size):
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
        return _merge_rows(first, batch.num_rows, problems, iter(values))


def _check_parquet_head(fileobj):
    here = fileobj.tell()
    magic = fileobj.read(4)
    fileobj.seek(here)
    if not magic:
        raise FileFormatError("the file is empty")
    if magic == b"PARE":
        raise FileFormatError("encrypted Parquet files are not supported")
    if magic != b"PAR1":
        raise FileFormatError("this is not a valid Parquet file: it does not start with PAR1")


def _parquet_schema_nodes(fileobj):
    """How many schema elements the footer declares, from its first bytes alone; None when
    it does not start the usual way (pyarrow parses it then, and the count is checked after)."""
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
        return _thrift_schema_count(fileobj.read(min(length, 32)))
    finally:
        fileobj.seek(here)


def _thrift_schema_count(data):
    """FileMetaData in Thrift's compact protocol opens with field 1 (version, i32: 0x15 and a
    varint) and field 2 (schema, a list: 0x19 and the list's header, 0xC for structs)."""
    if len(data) < 3 or data[0] != 0x15:
        return None
    version, pos = _varint(data, 1)
    if version is None or pos + 1 >= len(data) or data[pos] != 0x19 or data[pos + 1] & 0x0F != 0x0C:
        return None
    size = data[pos + 1] >> 4
    return size if size != 0x0F else _varint(data, pos + 2)[0]


def _varint(data, pos):
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos
    return None, pos


def _leaf_count(kind):
    """How many Parquet leaf columns an Arrow type is stored as."""
    if pa.types.is_struct(kind):
        return sum(_leaf_count(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _leaf_count(kind.key_type) + _leaf_count(kind.item_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _leaf_count(kind.value_type)
    return 1


_NUL_IN_ROW = "the row contains a NUL character (0x00), which cannot be stored"


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
    if not pc.any(flags).as_py():
        return []
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


def _merge_rows(first, count, problems, values):
    """Rows and RowErrors in file order: `problems` by position, the others' values in turn."""
    for i in range(count):
        if i in problems:
            yield RowError(first + i, problems[i])
            continue
        values_or_reason = next(values)
        if isinstance(values_or_reason, str):
            yield RowError(first + i, values_or_reason)
        else:
            yield Row(first + i, values_or_reason)


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
    """Our names (TARGETS) from the file's column names; everything else becomes metadata.

    `ColumnMapping({"text": "body"})` or `ColumnMapping.parse("text=body,label=intent")`.
    A target not named explicitly is taken from a column of the same name, if there is one
    and no explicit entry uses it.
    """

    def __init__(self, pairs=None):
        self.pairs = dict(pairs or {})
        for target, source in self.pairs.items():
            _check_pair(target, source)
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


def _check_pair(target, source):
    if target not in TARGETS:
        raise MappingError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    if not isinstance(source, str) or not source:
        raise MappingError(f"the column for {target!r} must be a non-empty column name")


def guess_mapping(columns, task=None):
    """A suggested {target: column} for common column names; task "classification" or "sft"
    limits the guess to that task's targets (plus group, timestamp, split)."""
    if task is not None and task not in _TASK_TARGETS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(_TASK_TARGETS)}")
    main = _TASK_TARGETS[task] if task else ("text", "label", "prompt", "response")
    by_name = {}
    for column in columns:
        by_name.setdefault(_normalise(column), column)
    mapping, used = {}, set()
    for target in main + _COMMON_TARGETS:
        column = next((by_name[a] for a in _ALIASES[target] if a in by_name and by_name[a] not in used), None)
        if column is not None:
            mapping[target] = column
            used.add(column)
    return mapping


def _normalise(name):
    return name.strip().lower().replace(" ", "_").replace("-", "_")


# --- cell values --------------------------------------------------------------------------------


def clean_cell(value):
    """A text cell as str, or None when missing.

    None, NaN, and empty or whitespace-only strings are missing. Strings lose leading and
    trailing whitespace (an export artefact far more often than meaning) but nothing inside.
    Numbers keep their value (1.0 -> "1", since a label column with gaps comes back as floats);
    booleans are "true"/"false"; nested values become JSON; bytes must be UTF-8.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, bytes):
        return _bytes_text(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return None if value != value else str(value)


def _float_text(value):
    if math.isnan(value):
        return None
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _bytes_text(value):
    try:
        return value.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        raise ValueError("the cell holds binary data, not UTF-8 text") from None
