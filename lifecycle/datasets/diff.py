"""What changed between two versions: rows edited, added and removed, one page of each, and
how the label distribution moved.

Rows are matched by identity where the two versions descend from the same upload: each
example keeps `origin_row`, its row number in that upload, through redaction, dedup, new
splits and frozen labels. Same identity and another row hash (or split) is an edit; an
identity on one side only is a row added or removed. Two different uploads share no identity:
there a row is matched by its content key (the normalized text's hash) and its occurrence
among rows with that key, so the same text with another label is an edit, and a text held
twice where it was held once is one row added.

All of it is one pass over each version's row keys: a small Parquet artifact per version
(RowKeys; written as the version's rows stream) holding each row's number, identity, content
key, a 64-bit prefix of its row hash, and its split. Arrow joins the two (a hash full
join in C++, ~0.2 s at a million rows), and only the requested page of each kind is kept.
Then the rows of those pages are read by (version, row), and their texts compared.
"""
import difflib
import io
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from django.db import connection
from django.utils.html import escape
from django.utils.safestring import mark_safe

from lifecycle.core.artifacts import ArtifactNotFound, get_store
from lifecycle.datasets.models import SPLIT_NAMES, Example, RowKeys

PAGE_SIZE = 50
MAX_PAGE = 1_000_000  # 50 million changed rows: past any version a page can be asked for
EDITED, ADDED, REMOVED = "edited", "added", "removed"
KINDS = (EDITED, ADDED, REMOVED)
BY_IDENTITY, BY_CONTENT = "identity", "content"
FIELDS = ("version", "row", "text", "response", "label", "split", "group", "timestamp", "metadata", "row_sha256")
_WORDS = re.compile(r"(\s+)")


@dataclass
class Page:
    kind: str
    number: int
    total: int = 0
    rows: list = field(default_factory=list)

    @property
    def has_previous(self):
        return self.number > 1

    @property
    def has_next(self):
        return self.number * PAGE_SIZE < self.total

    @property
    def first(self):
        return (self.number - 1) * PAGE_SIZE + 1


@dataclass
class Edit:
    old: Example
    new: Example

    @property
    def text(self):
        return highlight(self.old.text, self.new.text)

    @property
    def response(self):
        return highlight(self.old.response, self.new.response) if self.old.response != self.new.response else None

    @property
    def label_changed(self):
        return self.old.label != self.new.label

    @property
    def split_changed(self):
        return self.old.split != self.new.split

    @property
    def other_changes(self):
        """Changed fields the page has no column for."""
        return [name for name in ("group", "timestamp", "metadata") if getattr(self.old, name) != getattr(self.new, name)]


def match_by(old, new):
    origin_old, origin_new = old.origin(), new.origin()
    return BY_IDENTITY if origin_old is not None and origin_new is not None and origin_old.pk == origin_new.pk else BY_CONTENT


# --- row keys -------------------------------------------------------------------------------

ROW_KEYS = pa.schema([
    ("row", pa.uint32()),
    ("origin_row", pa.uint32()),   # identity within an upload's family
    ("content_key", pa.int64()),   # the normalized text's key (matching between uploads)
    ("hash", pa.int64()),          # first 8 bytes of row_sha256: a changed row differs here
    ("split", pa.int8()),          # Example.split's number
])
KEYS_BATCH = 100_000


def _hash64(hexes):
    """The first 16 hex digits of each row hash as a signed 64-bit number, without a Python
    loop: the prefixes joined into one string, decoded at once."""
    if isinstance(hexes, pa.ChunkedArray):
        hexes = hexes.combine_chunks()
    prefixes = pc.utf8_slice_codeunits(hexes, 0, 16)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(prefixes)], pa.int32()), prefixes), "")[0]
    return np.frombuffer(bytes.fromhex(joined.as_py() or ""), dtype=">i8").astype(np.int64)


def keys_of_batch(batch):
    """The row keys of one batch of a version's rows (an Arrow table in versions.SCHEMA): the
    version writer appends them to the keys file as rows stream, so no step holds them all."""
    split = pc.fill_null(pc.index_in(batch.column("split"), value_set=pa.array(SPLIT_NAMES)), -1)
    return pa.table({
        "row": batch.column("row"), "origin_row": batch.column("origin_row"),
        "content_key": batch.column("content_key"), "hash": _hash64(batch.column("row_sha256")),
        "split": pc.cast(split, pa.int8()),
    }, schema=ROW_KEYS)


def with_occurrence(keys):
    """The keys with each row's place (1, 2, ...) among the rows sharing its content key, in
    row order: what matches two uploads by content (a text held twice against once is one row added)."""
    row, content_key = keys["row"].to_numpy(), keys["content_key"].to_numpy()
    n = len(row)
    order = np.lexsort((row, content_key))
    sorted_keys = content_key[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    index = np.arange(n)
    first = np.maximum.accumulate(np.where(starts, index, 0))
    occurrence = np.empty(n, dtype=np.uint32)
    occurrence[order] = index - first + 1
    return keys.append_column("occurrence", pa.array(occurrence, pa.uint32()))


def keys_from_database(version):
    """Row keys read from the version's examples: for a version made before RowKeys."""
    table = Example._meta.db_table
    query = f'SELECT "row", COALESCE(origin_row, "row"), content_key, row_sha256, split FROM {table} WHERE version_id = %s ORDER BY "row"'
    parts = []
    with connection.cursor() as cursor:
        cursor.execute(query, [version.pk])
        while batch := cursor.fetchmany(KEYS_BATCH):
            row, origin, key, sha, split = zip(*batch)
            parts.append(pa.table({"row": pa.array(row, pa.uint32()), "origin_row": pa.array(origin, pa.uint32()),
                                   "content_key": pa.array(key, pa.int64()), "hash": _hash64(pa.array(sha, pa.string())),
                                   "split": pa.array(split, pa.int8())}, schema=ROW_KEYS))
    return pa.concat_tables(parts) if parts else ROW_KEYS.empty_table()


def store_keys(table):
    """The row keys as an artifact; its sha256."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return get_store().put_bytes(sink.getvalue()).sha256


def row_keys(version):
    """The version's row keys (a ROW_KEYS table), from its artifact, made on first use for a
    version that has none (or whose artifact is gone)."""
    found = RowKeys.objects.filter(version=version).values_list("keys_sha256", flat=True).first()
    if found:
        try:
            return pq.read_table(pa.BufferReader(get_store().read_bytes(found)))
        except ArtifactNotFound:
            pass
    table = keys_from_database(version)
    sha256 = store_keys(table)
    RowKeys.objects.update_or_create(version=version, defaults={"keys_sha256": sha256})
    return table


# --- the diff ----------------------------------------------------------------------------------


def _joined(old, new, how):
    keys = ["origin_row"] if how == BY_IDENTITY else ["content_key", "occurrence"]
    columns = [*keys, "row", "hash", "split"]
    a, b = row_keys(old), row_keys(new)
    if how == BY_CONTENT:
        a, b = with_occurrence(a), with_occurrence(b)
    return a.select(columns).join(b.select(columns), keys=keys, join_type="full outer",
                                  left_suffix="_old", right_suffix="_new")


def changed_rows(old, new, how, pages):
    """{kind: Page} with each page's (old row, new row) pairs, in row order."""
    result = {kind: Page(kind, pages.get(kind, 1)) for kind in KINDS}
    joined = _joined(old, new, how)
    added, removed = pc.is_null(joined["row_old"]), pc.is_null(joined["row_new"])
    differs = pc.not_equal(joined["hash_old"], joined["hash_new"])
    if how == BY_IDENTITY:  # between two uploads (by content) a row's split says nothing
        differs = pc.or_(differs, pc.not_equal(joined["split_old"], joined["split_new"]))
    edited = pc.fill_null(differs, False)
    for kind, mask, position in ((EDITED, edited, "row_old"), (ADDED, added, "row_new"), (REMOVED, removed, "row_old")):
        page = result[kind]
        found = joined.filter(mask).select(["row_old", "row_new"])
        page.total = found.num_rows
        order = pc.sort_indices(found[position])[page.first - 1:page.first - 1 + PAGE_SIZE]
        taken = found.take(order)
        page.rows = list(zip(taken["row_old"].to_pylist(), taken["row_new"].to_pylist()))
    return result


def _examples(version, rows):
    wanted = [row for row in rows if row is not None]
    return {e.row: e for e in version.examples.filter(row__in=wanted).only(*FIELDS)} if wanted else {}


def _fill(pages, old, new):
    """Replace each page's row numbers by the examples themselves (two queries)."""
    olds = _examples(old, [o for page in pages.values() for o, _ in page.rows])
    news = _examples(new, [n for page in pages.values() for _, n in page.rows])
    pages[EDITED].rows = [Edit(olds[o], news[n]) for o, n in pages[EDITED].rows]
    pages[ADDED].rows = [news[n] for _, n in pages[ADDED].rows]
    pages[REMOVED].rows = [olds[o] for o, _ in pages[REMOVED].rows]


def highlight(old, new):
    """The two texts as HTML, the words only in `old` in <del>, only in `new` in <ins>; every
    piece of text is escaped before it is wrapped."""
    a, b = _WORDS.split(old or ""), _WORDS.split(new or "")
    before, after = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        left, right = escape("".join(a[i1:i2])), escape("".join(b[j1:j2]))
        if op == "equal":
            before.append(left)
            after.append(right)
            continue
        if left:
            before.append(f"<del>{left}</del>")
        if right:
            after.append(f"<ins>{right}</ins>")
    return mark_safe("".join(before)), mark_safe("".join(after))


def _label_totals(version):
    totals = {}
    for labels in version.split_counts().values():
        for label, count in labels.items():
            totals[label] = totals.get(label, 0) + count
    return totals


def label_changes(old, new):
    old_totals, new_totals = _label_totals(old), _label_totals(new)
    labels = sorted(set(old_totals) | set(new_totals))
    return {
        "labels": labels,
        "old_counts": [old_totals.get(label, 0) for label in labels],
        "new_counts": [new_totals.get(label, 0) for label in labels],
        "label_changes": [(label, old_totals.get(label, 0), new_totals.get(label, 0),
                           new_totals.get(label, 0) - old_totals.get(label, 0)) for label in labels],
    }


def compare(old, new, pages=None):
    """The diff of `old` → `new`: how rows were matched, a Page of each kind (page numbers
    from `pages`, {kind: number}, default 1), and the label distributions."""
    how = match_by(old, new)
    found = changed_rows(old, new, how, pages or {})
    _fill(found, old, new)
    return {"match_by": how, "pages": found, **{f"{kind}_count": found[kind].total for kind in KINDS},
            "split_names": SPLIT_NAMES, **label_changes(old, new)}
