"""CSV export that spreadsheets cannot turn into formulas (CWE-1236)."""
import csv

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class Echo:
    """A file-like object whose write() returns the line, for streaming csv.writer output."""

    def write(self, value):
        return value


def csv_lines(header, rows):
    writer = csv.writer(Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow([safe_cell(cell) for cell in row])
