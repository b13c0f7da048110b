"""The streaming upload readers: formats, dialects, encodings, limits, row vs file errors,
the pickled Parquet extension type, column mapping and cell cleaning. No database."""
import csv
import io
import json
import pickle
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifecycle.datasets import readers
from lifecycle.datasets.readers import (
    ColumnMapping, FileFormatError, MappingError, Row, RowError, check_columns, clean_cell, detect_format,
    guess_mapping, open_rows,
)
from tests.datasets import files

TRICKY = [
    '<script>alert("x")</script>',
    "<b onmouseover='steal()'>hi</b> &amp; &lt;",
    '=HYPERLINK("http://evil.example","click")',
    "+1 555 0100",
    "-2+3",
    "@SUM(A1:A9)",
    "  padded, with a comma; semicolon|pipe\ttab  ",
]


def read(path, fmt, **options):
    with open_rows(path, fmt, **options) as reader:
        return reader.columns, list(reader)


def rows_of(items):
    return [item for item in items if isinstance(item, Row)]


def errors_of(items):
    return [item for item in items if isinstance(item, RowError)]


# --- CSV dialects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_dialects_are_detected_and_cells_come_back_exactly(tmp_path, delimiter):
    body = [["Hello, world; again", "greeting"], ["a|b\tc", "mixed"], *[[text, "tricky"] for text in TRICKY]]
    path = files.write_csv(tmp_path / "data.csv", [["text", "label"], *body], delimiter=delimiter)

    with open_rows(path, "csv") as reader:
        assert reader.delimiter == delimiter
        assert reader.columns == ["text", "label"]
        items = list(reader)

    assert [(r.line, r.values) for r in items] == [
        (n, {"text": text, "label": label}) for n, (text, label) in enumerate(body, 2)]


def test_csv_with_bom_and_crlf_is_read(tmp_path):
    rows = [["text", "label"], ["first", "a"], ["second", "b"]]
    path = files.write_csv(tmp_path / "excel.csv", rows, delimiter=";", newline="\r\n", bom=True)
    assert path.read_bytes().startswith(b"\xef\xbb\xbftext;label\r\n")

    columns, items = read(path, "csv")

    assert columns == ["text", "label"]
    assert items == [Row(2, {"text": "first", "label": "a"}), Row(3, {"text": "second", "label": "b"})]


def test_quoted_newlines_and_blank_lines_keep_physical_line_numbers(tmp_path):
    text = ('text,label\n'
            '"two\nlines, one cell",a\n'       # lines 2-3
            '\n'                                # 4: blank, skipped
            '"three\r\nlines\nhere",b\n'        # 5-7, CRLF inside the cell kept as is
            'too,many,fields\n'                 # 8
            ',\n'                               # 9: all empty, skipped
            'last,c\n')                         # 10
    path = files.write_text(tmp_path / "quoted.csv", text)

    _, items = read(path, "csv")

    assert items == [
        Row(2, {"text": "two\nlines, one cell", "label": "a"}),
        Row(5, {"text": "three\r\nlines\nhere", "label": "b"}),
        RowError(8, "expected 2 fields (as in the header), found 3"),
        Row(10, {"text": "last", "label": "c"}),
    ]


def test_csv_row_problems_are_row_errors_and_reading_goes_on(tmp_path):
    path = tmp_path / "odd.csv"
    # The odd rows come after 6,000 padding rows, past the 64 KiB head that is checked for NUL bytes.
    path.write_bytes(b"text,label\n" + b"padding,row\n" * 6000 +
                     b"short\nnul\x00inside,a\ncarriage\rreturn,b\nfine,c\n")

    _, items = read(path, "csv")

    assert len(rows_of(items)) == 6001
    assert errors_of(items) == [
        RowError(6002, "expected 2 fields (as in the header), found 1"),
        RowError(6003, "the row contains a NUL character (0x00), which cannot be stored"),
        RowError(6004, "a carriage return (CR) inside an unquoted cell: quote the cell or remove the CR"),
    ]
    assert items[-1] == Row(6005, {"text": "fine", "label": "c"})


@pytest.mark.parametrize("first_line, message", [
    ("1,hello world,positive", "looks like data, not a header ('1' is a number)"),
    ("text,,label", "empty column name (column 2)"),
    ("text,label,text", "names a column more than once: text"),
])
def test_csv_without_a_proper_header_is_refused(tmp_path, first_line, message):
    path = files.write_text(tmp_path / "noheader.csv", f"{first_line}\n2,more,data\n")
    with pytest.raises(FileFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_rows(path, "csv")


def test_csv_header_only_has_columns_and_no_rows(tmp_path):
    path = files.write_text(tmp_path / "empty-body.csv", " text , label \n")
    assert read(path, "csv") == (["text", "label"], [])


def test_csv_blank_lines_only_has_no_header(tmp_path):
    with pytest.raises(FileFormatError, match="has no header row"):
        open_rows(files.write_text(tmp_path / "blank.csv", "\n\n\n"), "csv")


def test_csv_columns_option_keeps_only_those_columns(tmp_path):
    path = files.write_csv(tmp_path / "wide.csv", [["text", "label", "secret"], ["hi", "a", "s3cr3t"]])
    assert read(path, "csv", columns=["label", "text"])[1] == [Row(2, {"label": "a", "text": "hi"})]
    with pytest.raises(FileFormatError, match="the file has no column 'intent'"):
        open_rows(path, "csv", columns=["intent"])


# --- JSON Lines -----------------------------------------------------------------------------------


def test_jsonl_broken_line_in_the_middle_is_a_row_error(tmp_path):
    lines = [{"text": "one", "label": "a"}, {"text": "two", "label": "b", "meta": {"k": [1, None]}},
             '{"text": "three", "label": ', "", [1, 2], '"just a string"', {"text": "seven", "label": 7}]
    path = files.write_jsonl(tmp_path / "data.jsonl", lines)

    columns, items = read(path, "jsonl")

    assert columns == ["text", "label", "meta"]
    assert items == [
        Row(1, {"text": "one", "label": "a"}),
        Row(2, {"text": "two", "label": "b", "meta": {"k": [1, None]}}),
        RowError(3, "invalid JSON: Expecting value (column 28)"),
        RowError(5, "expected a JSON object, found an array"),
        RowError(6, "expected a JSON object, found a string"),
        Row(7, {"text": "seven", "label": 7}),
    ]


def test_jsonl_with_bom_crlf_and_padding(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n  {"text": "b"}  \r\n\r\n{"text": "c\\u00e9"}\r\n')
    assert read(path, "jsonl") == (["text"], [Row(1, {"text": "a"}), Row(2, {"text": "b"}), Row(4, {"text": "cé"})])


def test_jsonl_columns_come_from_the_first_objects_and_later_keys_still_arrive(tmp_path):
    lines = [{"text": f"t{i}"} for i in range(1000)] + [{"text": "late", "extra": 1}]
    columns, items = read(files.write_jsonl(tmp_path / "late.jsonl", lines), "jsonl")
    assert columns == ["text"]
    assert items[-1] == Row(1001, {"text": "late", "extra": 1})


def test_jsonl_escaped_nul_is_a_row_error(tmp_path):
    path = files.write_jsonl(tmp_path / "nul.jsonl", ['{"text": "a\\u0000b"}', '{"text": "a\\\\u0000b"}'])
    assert read(path, "jsonl")[1] == [
        RowError(1, "the row contains a NUL character (\\u0000), which cannot be stored"),
        Row(2, {"text": "a\\u0000b"}),
    ]


def test_jsonl_too_deep_or_too_long_lines_are_row_errors(tmp_path, monkeypatch):
    deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = files.write_jsonl(tmp_path / "deep.jsonl", [deep, {"text": "after"}])
    assert read(path, "jsonl")[1] == [
        RowError(1, "invalid JSON: nested too deeply (column 1)"), Row(2, {"text": "after"})]

    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 1000)
    path = files.write_jsonl(tmp_path / "long.jsonl", [{"text": "x" * 5000}, {"text": "after"}])
    assert read(path, "jsonl")[1] == [
        RowError(1, "line 1 is longer than 1,000 bytes; skipped"), Row(2, {"text": "after"})]


def test_csv_line_or_cell_past_the_ceilings_is_a_file_error(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 1000)
    path = files.write_csv(tmp_path / "long.csv", [["text"], ["x" * 5000]])
    with pytest.raises(FileFormatError, match="^line 2 is longer than 1,000 bytes; the file cannot be read past"):
        list(open_rows(path, "csv"))

    monkeypatch.undo()
    monkeypatch.setattr(readers, "CSV_FIELD_CEILING", 1000)
    saved = csv.field_size_limit(1000)
    try:
        unclosed = files.write_text(tmp_path / "unclosed.csv", 'text,label\n"never closed,a\n' + "more,b\n" * 500)
        with pytest.raises(FileFormatError, match="^line 2: a cell is longer than 1,001 characters \\(an unclosed quote"):
            list(open_rows(unclosed, "csv", max_cell_chars=1000))
    finally:
        csv.field_size_limit(saved)


def test_jsonl_that_is_not_jsonl_is_refused(tmp_path):
    path = files.write_text(tmp_path / "pretty.json", '{\n  "text": "a"\n}\n')
    with pytest.raises(FileFormatError, match="is this JSON Lines"):
        open_rows(path, "jsonl")


# --- Parquet --------------------------------------------------------------------------------------


def test_parquet_with_several_row_groups_streams_in_order(tmp_path):
    n = 2500
    path = files.write_parquet(tmp_path / "data.parquet", {
        "text": [f"text {i}" for i in range(n)], "label": [i % 3 for i in range(n)],
        "score": [None if i % 7 == 0 else i / 2 for i in range(n)]}, row_group_size=1000)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3

    with open_rows(path, "parquet") as reader:
        assert reader.columns == ["text", "label", "score"]
        assert reader.total_bytes == path.stat().st_size
        items = list(reader)
        assert reader.bytes_read == reader.total_bytes

    assert [item.line for item in items] == list(range(1, n + 1))
    assert items[7] == Row(8, {"text": "text 7", "label": 1, "score": None})
    assert items[2498] == Row(2499, {"text": "text 2498", "label": 2, "score": 1249.0})


def test_parquet_with_the_wrong_schema(tmp_path):
    path = files.write_parquet(tmp_path / "wrong.parquet", {"body": ["hi"], "intent": ["a"]})
    with open_rows(path, "parquet") as reader:
        assert check_columns(reader.columns, ["text", "label"]) == ["text", "label"]
    with pytest.raises(FileFormatError, match="no column 'text'; it has: body, intent"):
        open_rows(path, "parquet", columns=["text"])


def test_parquet_reads_only_the_requested_columns(tmp_path):
    path = files.write_parquet(tmp_path / "wide.parquet", {"text": ["hi"], "label": ["a"], "blob": [b"\x00"]})
    assert read(path, "parquet", columns=["text"]) == (["text", "label", "blob"], [Row(1, {"text": "hi"})])


@pytest.mark.parametrize("content, message", [
    (b"text,label\nhello,a\n", "not a valid Parquet file: it does not start with PAR1"),
    (b"PAR1" + b"\x00" * 100, "not a valid Parquet file"),
    (b"PARE" + b"\x00" * 100, "encrypted Parquet files are not supported"),
])
def test_invalid_parquet_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.parquet"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match=message):
        open_rows(path, "parquet")


def test_truncated_parquet_is_refused(tmp_path):
    path = files.write_parquet(tmp_path / "cut.parquet", {"text": ["x" * 100] * 1000})
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(FileFormatError, match="not a valid Parquet file"):
        open_rows(path, "parquet")


def test_parquet_long_and_nul_cells_are_row_errors(tmp_path):
    path = files.write_parquet(tmp_path / "cells.parquet", {"text": ["ok", "x" * 101, "a\x00b", None]})
    assert read(path, "parquet", max_cell_chars=100)[1] == [
        Row(1, {"text": "ok"}),
        RowError(2, "text cell in column 'text' is 101 characters, over the limit of 100"),
        RowError(3, "the row contains a NUL character (0x00), which cannot be stored"),
        Row(4, {"text": None}),
    ]


def test_parquet_from_a_file_object(tmp_path):
    path = files.write_parquet(tmp_path / "data.parquet", {"text": ["a", "b"]})
    with path.open("rb") as fileobj:
        assert read(fileobj, "parquet")[1] == [Row(1, {"text": "a"}), Row(2, {"text": "b"})]


# --- the pickled extension type (CVE-2023-47248) --------------------------------------------------


def test_payload_in_the_test_file_is_live(tmp_path):
    """Guards the tests below: unpickling this payload really does create the marker."""
    marker = tmp_path / "proof"
    pickle.loads(files.pickle_payload(marker))
    assert marker.exists()


def test_parquet_claiming_the_pickled_extension_type_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = files.write_pickled_extension_parquet(tmp_path / "evil.parquet", marker)

    with pytest.raises(FileFormatError, match="column 'text' declares the Arrow extension type 'arrow.py_extension"):
        open_rows(path, "parquet")
    assert read(path, "parquet", columns=["label"])[1] == [Row(1, {"label": "a"}), Row(2, {"label": "b"})]
    assert not marker.exists()


def test_an_unpickling_loader_registered_in_the_process_is_taken_out_first(tmp_path):
    shown, attacked = tmp_path / "shown", tmp_path / "attacked"
    files.write_pickled_extension_parquet(tmp_path / "a.parquet", shown)
    files.write_pickled_extension_parquet(tmp_path / "b.parquet", attacked)
    files.register_unpickling_extension_type()
    try:
        pq.ParquetFile(tmp_path / "a.parquet")  # a plain read with the loader in place runs the payload
        assert shown.exists()
        with pytest.raises(FileFormatError, match="extension type"):
            open_rows(tmp_path / "b.parquet", "parquet")
        assert not attacked.exists()
        with pytest.raises(KeyError):
            pa.unregister_extension_type(files.PICKLED_EXTENSION)
    finally:
        files.unregister_unpickling_extension_type()


# --- file-level problems --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_empty_file_is_refused(tmp_path, fmt):
    path = tmp_path / f"empty.{fmt}"
    path.write_bytes(b"")
    with pytest.raises(FileFormatError, match="^the file is empty$"):
        open_rows(path, fmt)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_binary_file_named_as_text_is_refused(tmp_path, fmt):
    with pytest.raises(FileFormatError, match="this is not a text file"):
        open_rows(files.write_binary(tmp_path / f"photo.{fmt}"), fmt)


def test_text_with_many_control_bytes_is_refused(tmp_path):
    path = tmp_path / "controls.csv"
    path.write_bytes(b"text,label\n" + b"\x01\x02\x03abc,d\n" * 100)
    with pytest.raises(FileFormatError, match="this is not a text file"):
        open_rows(path, "csv")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_latin1_file_is_refused_with_the_line_number(tmp_path, fmt):
    path = tmp_path / f"latin.{fmt}"
    if fmt == "csv":
        lines = ["text,label"] + [f"row {i},a" for i in range(2, 12)] + ["café,b"]
    else:
        lines = [json.dumps({"text": f"row {i}"}) for i in range(1, 12)] + ['{"text": "café"}']
    files.write_text(path, "\n".join(lines) + "\n", encoding="latin-1")

    with pytest.raises(FileFormatError, match="^the file is not UTF-8: invalid byte 0xE9 at line 12 "):
        list(open_rows(path, fmt))


def test_latin1_file_is_read_with_replacements_when_asked(tmp_path):
    path = files.write_csv(tmp_path / "latin.csv", [["text"], ["café"]], encoding="latin-1")
    assert read(path, "csv", encoding_check=False)[1] == [Row(2, {"text": "caf\ufffd"})]


def test_utf16_and_old_mac_line_endings_are_named(tmp_path):
    files.write_text(tmp_path / "u16.csv", "text\nhi\n", encoding="utf-16")
    (tmp_path / "mac.csv").write_bytes(b"text,label\rhi,a\r")
    with pytest.raises(FileFormatError, match="UTF-16"):
        open_rows(tmp_path / "u16.csv", "csv")
    with pytest.raises(FileFormatError, match="CR only"):
        open_rows(tmp_path / "mac.csv", "csv")


def test_file_over_max_bytes_with_a_known_size_is_refused_before_reading(tmp_path):
    path = files.write_csv(tmp_path / "big.csv", [["text"]] + [[f"row number {i}"] for i in range(100_000)])
    assert path.stat().st_size > 1024 * 1024
    with pytest.raises(FileFormatError, match="^the file is larger than the limit of 1 MB$"):
        open_rows(path, "csv", max_bytes=1024 * 1024)  # raised by open_rows itself, before any row
    with pytest.raises(FileFormatError, match="^the file is larger than the limit of 1,000 bytes$"):
        open_rows(path, "csv", max_bytes=1000)


def test_stream_over_max_bytes_is_cut_off_at_the_limit(tmp_path):
    limit = 1024 * 1024
    stream = files.GeneratedStream(size=50 * limit)
    reader = open_rows(stream, "csv", max_bytes=limit)
    assert reader.total_bytes is None
    rows = 0
    with pytest.raises(FileFormatError, match="^the file is larger than the limit of 1 MB$"):
        for item in reader:
            rows += isinstance(item, Row)
    assert rows > 0  # rows came out before the limit was reached: it streams
    assert reader.bytes_read == limit + 1
    assert stream.served == limit + 1


def test_ten_megabyte_cell_is_a_row_error_with_bounded_memory(tmp_path):
    size = 10 * 1024 * 1024
    for path, fmt, first in ((files.write_big_cell_csv(tmp_path / "big.csv", size), "csv", 2),
                             (files.write_big_cell_jsonl(tmp_path / "big.jsonl", size), "jsonl", 1)):
        tracemalloc.start()
        try:
            _, items = read(path, fmt, max_cell_chars=20_000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert items == [
            Row(first, {"text": "first", "label": "a"}),
            RowError(first + 1, "text cell in column 'text' is 10,485,760 characters, over the limit of 20,000"),
            Row(first + 2, {"text": "last", "label": "c"}),
        ]
        assert peak < 12 * size  # a few copies of the cell while it is parsed, never the file


# --- values come through unchanged ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_html_script_and_formula_cells_are_preserved_exactly(tmp_path, fmt):
    path = tmp_path / f"tricky.{fmt}"
    if fmt == "csv":
        files.write_csv(path, [["text"]] + [[t] for t in TRICKY])
    elif fmt == "jsonl":
        files.write_jsonl(path, [{"text": t} for t in TRICKY])
    else:
        files.write_parquet(path, {"text": TRICKY})
    assert [item.values["text"] for item in read(path, fmt)[1]] == TRICKY


def test_label_column_mixing_numbers_and_strings_comes_through_unchanged(tmp_path):
    csv_path = files.write_csv(tmp_path / "mixed.csv", [["text", "label"], ["a", "1"], ["b", "pos"], ["c", "2.0"]])
    jsonl_path = files.write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "pos"},
                                                               {"text": "c", "label": 2.0}])
    assert [r.values["label"] for r in read(csv_path, "csv")[1]] == ["1", "pos", "2.0"]
    assert [r.values["label"] for r in read(jsonl_path, "jsonl")[1]] == [1, "pos", 2.0]


def test_csv_from_a_file_object_and_progress(tmp_path):
    data = files.csv_text([["text"]] + [[f"row {i}"] for i in range(50_000)]).encode()
    with open_rows(io.BytesIO(data), "csv") as reader:
        assert reader.total_bytes == len(data)
        seen = [reader.bytes_read for i, _ in enumerate(reader) if i % 10_000 == 0]
    assert seen == sorted(seen) and seen[-1] <= len(data)
    assert reader.bytes_read == len(data)


def test_reader_closes_the_file_when_iteration_ends(tmp_path):
    path = files.write_csv(tmp_path / "data.csv", [["text"], ["a"]])
    reader = open_rows(path, "csv")
    list(reader)
    assert reader._owned is None


# --- detect_format --------------------------------------------------------------------------------


@pytest.mark.parametrize("filename, expected", [
    ("data.csv", "csv"), ("DATA.TSV", "csv"), ("notes.txt", "csv"), ("C:\\fakepath\\x.csv", "csv"),
    ("../../etc/passwd.csv", "csv"), ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"), ("a.json", "jsonl"),
    ("a.parquet", "parquet"), ("a.pq", "parquet"),
])
def test_detect_format_by_extension(filename, expected):
    assert detect_format(filename, b"text,label\n") == expected


@pytest.mark.parametrize("filename, head, expected", [
    ("upload", b"PAR1\x15\x04", "parquet"),
    ("mislabelled.csv", b"PAR1\x15\x04", "parquet"),
    ("upload.dat", b'{"text": "a"}\n', "jsonl"),
    ("upload", b'\xef\xbb\xbf \n {"text": "a"}\n', "jsonl"),
])
def test_detect_format_by_content(filename, head, expected):
    assert detect_format(filename, head) == expected


@pytest.mark.parametrize("filename, head, message", [
    ("data.xlsx", b"text,label\n", "cannot tell the format of .xlsx files"),
    ("noext", b"text,label\n", "cannot tell the format of a file without an extension"),
    ("data.json", b'[{"text": "a"}]', "JSON array, not JSON Lines"),
    ("data.csv.gz", b"\x1f\x8b\x08\x00", "gzip archive"),
    ("data.xlsx", b"PK\x03\x04", "zip \\(or Excel\\) archive"),
])
def test_detect_format_refuses_what_it_cannot_read(filename, head, message):
    with pytest.raises(FileFormatError, match=message):
        detect_format(filename, head)


# --- column mapping -------------------------------------------------------------------------------


def test_mapping_parse_and_apply():
    mapping = ColumnMapping.parse(" text = body , label=intent ")
    assert mapping.pairs == {"text": "body", "label": "intent"}
    assert str(mapping) == "text=body,label=intent" and ColumnMapping.parse(str(mapping)) == mapping
    assert mapping.targets == ("text", "label")
    assert mapping.source_for("text") == "body" and mapping.source_for("group") == "group"

    mapped = mapping.apply({"body": "hi", "intent": 3, "group": "g1", "lang": "en", "text": "not the text"})

    assert mapped == {"text": "hi", "label": 3, "group": "g1", "metadata": {"lang": "en", "text": "not the text"}}


def test_mapping_gives_none_for_a_missing_source_and_empty_metadata():
    assert ColumnMapping({"text": "body"}).apply({}) == {"text": None, "metadata": {}}


def test_mapping_explicit_use_of_a_target_named_column_wins():
    assert ColumnMapping({"text": "label"}).apply({"label": "x", "intent": "y"}) == {
        "text": "x", "metadata": {"intent": "y"}}


@pytest.mark.parametrize("text, message", [
    ("text", "not of the form target=column"),
    ("body=text", "unknown target 'body'"),
    ("text=a,text=b", "'text' is mapped twice"),
    ("text=", "must be a non-empty column name"),
])
def test_mapping_parse_errors(text, message):
    with pytest.raises(MappingError, match=message):
        ColumnMapping.parse(text)


def test_guess_mapping_for_each_task():
    columns = ["Message", "Intent", "Customer ID", "created_at", "fold", "Question", "Answer", "content"]
    assert guess_mapping(columns, "classification") == {
        "text": "Message", "label": "Intent", "group": "Customer ID", "timestamp": "created_at", "split": "fold"}
    assert guess_mapping(columns, "sft") == {
        "prompt": "Question", "response": "Answer", "group": "Customer ID", "timestamp": "created_at", "split": "fold"}
    assert guess_mapping(["input", "output", "text", "target"]) == {
        "text": "text", "label": "target", "prompt": "input", "response": "output"}
    assert guess_mapping(["a", "b"], "sft") == {}
    with pytest.raises(ValueError, match="unknown task"):
        guess_mapping(columns, "regression")


# --- clean_cell -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (None, None), (float("nan"), None), ("", None), ("  \n\t ", None),
    ("  two  words \n", "two  words"), ("line one\n\nline two", "line one\n\nline two"),
    ("=1+2", "=1+2"), (3, "3"), (3.0, "3"), (2.5, "2.5"), (1e20, "1e+20"), (True, "true"),
    ({"a": [1, "é"]}, '{"a": [1, "é"]}'), (b"bytes ", "bytes"),
])
def test_clean_cell(value, expected):
    assert clean_cell(value) == expected


def test_clean_cell_refuses_binary_bytes():
    with pytest.raises(ValueError, match="binary data"):
        clean_cell(b"\xff\xfe")


def test_check_columns_keeps_the_required_order():
    assert check_columns(["label", "x"], ["text", "label", "group"]) == ["text", "group"]
