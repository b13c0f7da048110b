"""Build upload files on the fly for the reader tests: every format, dialect and bad case."""
import csv
import io
import json
import pickle
import random

import pyarrow as pa
import pyarrow.parquet as pq

BOM = "\ufeff"
PICKLED_EXTENSION = "arrow.py_extension_type"


def csv_text(rows, *, delimiter=",", newline="\n"):
    """Rows (the header first) as CSV text, quoted only where needed."""
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator=newline).writerows(rows)
    return out.getvalue()


def write_text(path, text, *, encoding="utf-8", bom=False):
    path.write_bytes(((BOM if bom else "") + text).encode(encoding))
    return path


def write_csv(path, rows, *, delimiter=",", newline="\n", bom=False, encoding="utf-8"):
    return write_text(path, csv_text(rows, delimiter=delimiter, newline=newline), encoding=encoding, bom=bom)


def write_jsonl(path, lines):
    """Each item is an object to dump, or a str written as the raw line (for broken lines)."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return write_text(path, text)


def write_parquet(path, columns, *, row_group_size=None, schema=None):
    table = pa.table(columns, schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_binary(path, size=64 * 1024):
    path.write_bytes(random.Random(7).randbytes(size))
    return path


def write_big_cell_csv(path, cell_chars):
    """A row with one huge text cell between two ordinary rows; written in pieces."""
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("text,label\nfirst,a\n")
        f.write('"')
        for _ in range(cell_chars // 1024):
            f.write("x" * 1024)
        f.write("x" * (cell_chars % 1024))
        f.write('",b\nlast,c\n')
    return path


def write_big_cell_jsonl(path, cell_chars):
    with path.open("w", encoding="utf-8") as f:
        f.write('{"text": "first", "label": "a"}\n')
        f.write('{"text": "' + "x" * cell_chars + '", "label": "b"}\n')
        f.write('{"text": "last", "label": "c"}\n')
    return path


class GeneratedStream(io.RawIOBase):
    """A non-seekable stream of CSV rows (as from a pipe or a network body) of `size` bytes,
    made as it is read; `served` says how many bytes anyone actually took from it."""

    HEADER = b"text,label\n"
    LINE = b"some short text,label\n"

    def __init__(self, size):
        super().__init__()
        self.size, self.served = size, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self._bytes_at(self.served, min(len(buffer), self.size - self.served))
        buffer[:len(data)] = data
        self.served += len(data)
        return len(data)

    def _bytes_at(self, offset, count):
        if offset < len(self.HEADER):
            head = self.HEADER[offset:offset + count]
            return head + self._bytes_at(offset + len(head), count - len(head)) if count > len(head) else head
        start = (offset - len(self.HEADER)) % len(self.LINE)
        return (self.LINE * ((start + count) // len(self.LINE) + 1))[start:start + count]


# --- the CVE-2023-47248 shape: an extension type whose metadata is a pickle ----------------------


class MarkerPayload:
    """Unpickling this creates the marker file: proof that something unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_payload(marker):
    return pickle.dumps(MarkerPayload(marker))


def write_pickled_extension_parquet(path, marker):
    """A Parquet file whose "text" field claims the pickle-based extension type, with a payload
    that would create `marker` if anything unpickled it; "label" is an ordinary column."""
    metadata = {b"ARROW:extension:name": PICKLED_EXTENSION.encode(),
                b"ARROW:extension:metadata": pickle_payload(marker)}
    schema = pa.schema([pa.field("text", pa.string(), metadata=metadata), pa.field("label", pa.string())])
    return write_parquet(path, {"text": ["hello", "world"], "label": ["a", "b"]}, schema=schema)


class UnpicklingExtensionType(pa.ExtensionType):
    """What pyarrow < 14.0.1 had registered under arrow.py_extension_type: a loader that
    unpickles whatever the file says. Registered only by the test that shows we remove it."""

    def __init__(self, storage_type=pa.string()):
        super().__init__(storage_type, PICKLED_EXTENSION)

    def __arrow_ext_serialize__(self):
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        if serialized:
            pickle.loads(serialized)
        return cls(storage_type)


def register_unpickling_extension_type():
    pa.register_extension_type(UnpicklingExtensionType())


def unregister_unpickling_extension_type():
    try:
        pa.unregister_extension_type(PICKLED_EXTENSION)
    except KeyError:
        pass
